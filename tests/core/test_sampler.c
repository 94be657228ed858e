/* test_sampler.c: greedy, top-k, top-p and temperature sampling against their definitions. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/sampler.h"

#define V 5000

static float logits[V];

static void fill(double spread) {
    for (int i = 0; i < V; i++) logits[i] = (float)(spread * sin(i * 12.9898) * 0.5);
}

static void test_greedy_is_the_argmax_with_ties_to_the_lower_id(void) {
    fill(4);
    logits[77] = logits[1234] = 100;
    sampler *s = sampler_new(V, (sampler_params){.temperature = 0, .seed = 1});
    CU_ASSERT_EQUAL(sampler_sample(s, logits), 77);
    sampler_free(s);
}

static void test_a_seed_gives_the_same_tokens(void) {
    fill(3);
    int a[50], b[50];
    sampler_params p = {.temperature = 1, .top_p = 0.9f, .top_k = 0, .seed = 42};
    sampler *s1 = sampler_new(V, p), *s2 = sampler_new(V, p);
    for (int i = 0; i < 50; i++) a[i] = sampler_sample(s1, logits), b[i] = sampler_sample(s2, logits);
    CU_ASSERT_EQUAL(memcmp(a, b, sizeof a), 0);
    p.seed = 43;
    sampler *s3 = sampler_new(V, p);
    int differ = 0;
    for (int i = 0; i < 50; i++) differ |= sampler_sample(s3, logits) != a[i];
    CU_ASSERT(differ);
    sampler_free(s1), sampler_free(s2), sampler_free(s3);
}

/* rank of logit i among all (0 = best) */
static int rank_of(int i) {
    int r = 0;
    for (int j = 0; j < V; j++) r += logits[j] > logits[i] || (logits[j] == logits[i] && j < i);
    return r;
}

static void test_top_k_draws_only_from_the_k_best(void) {
    fill(2);
    sampler *s = sampler_new(V, (sampler_params){.temperature = 1.5f, .top_p = 1, .top_k = 7, .seed = 3});
    int seen[7] = {0}, outside = 0;
    for (int i = 0; i < 2000; i++) {
        int r = rank_of(sampler_sample(s, logits));
        if (r < 7) seen[r]++;
        else outside++;
    }
    CU_ASSERT_EQUAL(outside, 0);
    for (int r = 0; r < 7; r++) CU_ASSERT(seen[r] > 0); /* all seven get drawn at this temperature */
    sampler_free(s);
}

/* the nucleus of top_p by definition, in ranks */
static int nucleus(double top_p, double t) {
    float mx = -INFINITY;
    for (int i = 0; i < V; i++) mx = fmaxf(mx, logits[i]);
    double *p = malloc(V * sizeof *p), tot = 0;
    for (int i = 0; i < V; i++) tot += p[i] = exp((logits[i] - mx) / t);
    int *ord = malloc(V * sizeof *ord);
    for (int i = 0; i < V; i++) ord[rank_of(i)] = i;
    double acc = 0;
    int n = 0;
    while (n < V && acc < top_p) acc += p[ord[n++]] / tot;
    free(p), free(ord);
    return n;
}

static void check_top_p(double spread, double top_p) {
    fill(spread);
    int n = nucleus(top_p, 1.0);
    sampler *s = sampler_new(V, (sampler_params){.temperature = 1, .top_p = (float)top_p, .top_k = 0, .seed = 9});
    int outside = 0, max_rank = 0;
    for (int i = 0; i < 3000; i++) {
        int r = rank_of(sampler_sample(s, logits));
        outside += r >= n;
        if (r > max_rank) max_rank = r;
    }
    if (outside) printf("\n  spread %g top_p %g: nucleus %d tokens, drew rank %d\n", spread, top_p, n, max_rank);
    CU_ASSERT_EQUAL(outside, 0);
    if (n > 2048) CU_ASSERT(max_rank > 1024); /* the whole nucleus is used, not just the first candidates */
    sampler_free(s);
}

/* peaked logits: the nucleus is within the first 1024 candidates; flat ones: it is not, and the
 * sampler must fall back to the whole vocabulary */
static void test_top_p_draws_only_from_the_nucleus(void) {
    check_top_p(40, 0.9);
    check_top_p(0.5, 0.9); /* nearly flat: about 4500 tokens in the nucleus */
}

static void test_temperature_sampling_follows_the_softmax(void) {
    for (int i = 0; i < V; i++) logits[i] = -1000;
    logits[10] = 0, logits[20] = (float)log(3.0); /* p = 1/4, 3/4 at temperature 1 */
    sampler *s = sampler_new(V, (sampler_params){.temperature = 1, .top_p = 1, .top_k = 0, .seed = 5});
    int n20 = 0, other = 0;
    for (int i = 0; i < 4000; i++) {
        int t = sampler_sample(s, logits);
        n20 += t == 20;
        other += t != 10 && t != 20;
    }
    CU_ASSERT_EQUAL(other, 0);
    CU_ASSERT(n20 > 2850 && n20 < 3150); /* 3000 expected, sd 27 */
    sampler_free(s);
}

static CU_TestInfo sampler_tests[] = {
    {"greedy is the argmax, ties to the lower id", test_greedy_is_the_argmax_with_ties_to_the_lower_id},
    {"a seed gives the same tokens", test_a_seed_gives_the_same_tokens},
    {"top-k draws only from the k best", test_top_k_draws_only_from_the_k_best},
    {"top-p draws only from the nucleus", test_top_p_draws_only_from_the_nucleus},
    {"temperature sampling follows the softmax", test_temperature_sampling_follows_the_softmax},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo sampler_suite = {"sampler", NULL, NULL, NULL, NULL, sampler_tests};
