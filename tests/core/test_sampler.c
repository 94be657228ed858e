/* test_sampler.c: greedy, top-k, top-p and temperature sampling against their definitions; the
 * counter-based generator against Philox's published vectors, its statistics, and the rule
 * that a draw depends only on (seed, choice, position, purpose). */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
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
    CU_ASSERT_EQUAL(sampler_sample(s, logits, 0, 0, SAMPLER_TOKEN), 77);
    sampler_free(s);
}

static void test_a_seed_gives_the_same_tokens(void) {
    fill(3);
    int a[50], b[50];
    sampler_params p = {.temperature = 1, .top_p = 0.9f, .top_k = 0, .seed = 42};
    sampler *s1 = sampler_new(V, p), *s2 = sampler_new(V, p);
    for (int i = 0; i < 50; i++)
        a[i] = sampler_sample(s1, logits, 0, i, SAMPLER_TOKEN), b[i] = sampler_sample(s2, logits, 0, i, SAMPLER_TOKEN);
    CU_ASSERT_EQUAL(memcmp(a, b, sizeof a), 0);
    p.seed = 43;
    sampler *s3 = sampler_new(V, p);
    int differ = 0;
    for (int i = 0; i < 50; i++) differ |= sampler_sample(s3, logits, 0, i, SAMPLER_TOKEN) != a[i];
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
        int r = rank_of(sampler_sample(s, logits, 0, i, SAMPLER_TOKEN));
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
        int r = rank_of(sampler_sample(s, logits, 0, i, SAMPLER_TOKEN));
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
        int t = sampler_sample(s, logits, 0, i, SAMPLER_TOKEN);
        n20 += t == 20;
        other += t != 10 && t != 20;
    }
    CU_ASSERT_EQUAL(other, 0);
    CU_ASSERT(n20 > 2850 && n20 < 3150); /* 3000 expected, sd 27 */
    sampler_free(s);
}

/* Random123's tests/kat_vectors, the three "philox4x32 10" lines: counter, key, expected */
static void test_philox_matches_the_published_vectors(void) {
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
         0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
         0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    for (int v = 0; v < 3; v++) {
        uint32_t out[4];
        sampler_philox4x32(kat[v], kat[v] + 4, out);
        for (int w = 0; w < 4; w++) {
            if (out[w] != kat[v][6 + w]) printf("\n  vector %d word %d: %08x, expected %08x\n", v, w, out[w], kat[v][6 + w]);
            CU_ASSERT_EQUAL(out[w], kat[v][6 + w]);
        }
    }
}

/* The layout of a draw (counter = position, choice, purpose, 0; key = seed low, high; the top
 * 53 bits of words 0 and 1): expected values from a separate Python Philox written from the
 * paper, itself checked against the vectors above (tests/core/philox_ref.py prints them). */
static void test_a_draw_matches_an_independent_computation(void) {
    static const struct {
        uint64_t seed;
        int choice, position;
        sampler_purpose purpose;
        uint64_t bits53;
    } want[] = {
        {42, 0, 0, SAMPLER_TOKEN, 0xefea927739d5eULL},
        {42, 0, 7, SAMPLER_TOKEN, 0xd0f0990ab77b0ULL},
        {42, 1, 7, SAMPLER_TOKEN, 0x123f93dac0b64cULL},
        {42, 0, 7, SAMPLER_SPEC_ACCEPT, 0xa503869c98f18ULL},
        {0x123456789abcdef0ULL, 3, 100000, SAMPLER_TOKEN, 0x496530e840a19ULL},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        double u = sampler_uniform(want[i].seed, want[i].choice, want[i].position, want[i].purpose);
        uint64_t bits = (uint64_t)(u * 9007199254740992.0); /* exact: u is a multiple of 2^-53 */
        if (bits != want[i].bits53) printf("\n  case %zu: %llx, expected %llx\n", i, (unsigned long long)bits,
                                           (unsigned long long)want[i].bits53);
        CU_ASSERT_EQUAL(bits, want[i].bits53);
    }
}

#define NU (1 << 18)
#define BINS 256

/* the i-th of NU draws along one field of the key, the others fixed */
static double along(int field, int i) {
    switch (field) {
    case 0: return sampler_uniform(42, 0, i, SAMPLER_TOKEN);
    case 1: return sampler_uniform((uint64_t)i, 0, 5, SAMPLER_TOKEN);
    case 2: return sampler_uniform((uint64_t)i << 32, 0, 5, SAMPLER_TOKEN); /* the seed's high word */
    default: return sampler_uniform(42, i, 5, SAMPLER_TOKEN);
    }
}

/* Chi-square of NU draws in 256 bins, by their top 8 bits and by their lowest 8 of 53 (255
 * degrees of freedom: mean 255, sd 22.6), their mean, and the correlation of neighbours. A
 * generator that returned its counter scaled would be too even (chi-square near 0) and
 * correlated; one with weak bits or a short period, far too uneven. The bounds are 4.5 sd. */
static void test_draws_are_uniform_along_every_key_field(void) {
    static int hi[BINS], lo[BINS];
    static const char *name[] = {"position", "seed (low word)", "seed (high word)", "choice"};
    for (int field = 0; field < 4; field++) {
        memset(hi, 0, sizeof hi), memset(lo, 0, sizeof lo);
        double sum = 0, sxy = 0, sxx = 0, prev = along(field, NU);
        for (int i = 0; i < NU; i++) {
            double u = along(field, i);
            uint64_t b = (uint64_t)(u * 9007199254740992.0);
            hi[b >> 45]++, lo[b & 255]++;
            sum += u, sxy += (u - 0.5) * (prev - 0.5), sxx += (u - 0.5) * (u - 0.5), prev = u;
        }
        double e = (double)NU / BINS, chi_hi = 0, chi_lo = 0;
        for (int k = 0; k < BINS; k++) chi_hi += (hi[k] - e) * (hi[k] - e) / e, chi_lo += (lo[k] - e) * (lo[k] - e) / e;
        double mean = sum / NU, corr = sxy / sxx, sd_mean = sqrt(1.0 / 12 / NU), sd_corr = 1 / sqrt((double)NU);
        int ok = chi_hi > 153 && chi_hi < 357 && chi_lo > 153 && chi_lo < 357 && fabs(mean - 0.5) < 4.5 * sd_mean &&
                 fabs(corr) < 4.5 * sd_corr;
        if (!ok)
            printf("\n  along the %s: chi-square %.1f (top bits), %.1f (low bits), bounds (153, 357); mean %.5f; "
                   "neighbour correlation %.5f, bound %.5f\n",
                   name[field], chi_hi, chi_lo, mean, corr, 4.5 * sd_corr);
        CU_ASSERT(ok);
    }
}

/* Keys that differ in one field give unrelated streams: no value of one appears in another
 * (also at shifted positions, which catches a key that adds its fields), and streams are
 * uncorrelated position by position. */
static void test_distinct_keys_give_distinct_streams(void) {
    enum { NS = 6, NP = 2000 };
    static const struct {
        uint64_t seed;
        int choice;
        sampler_purpose purpose;
    } key[NS] = {{7, 0, SAMPLER_TOKEN}, {8, 0, SAMPLER_TOKEN}, {7ULL << 32, 0, SAMPLER_TOKEN},
                 {7, 1, SAMPLER_TOKEN}, {7, 0, SAMPLER_SPEC_ACCEPT}, {6, 1, SAMPLER_TOKEN}};
    static double u[NS][NP], all[NS * NP];
    for (int k = 0; k < NS; k++)
        for (int p = 0; p < NP; p++) all[k * NP + p] = u[k][p] = sampler_uniform(key[k].seed, key[k].choice, p, key[k].purpose);
    qsort(all, NS * NP, sizeof *all, dh_cmp_double);
    int dup = 0;
    for (int i = 1; i < NS * NP; i++) dup += all[i] == all[i - 1];
    CU_ASSERT_EQUAL(dup, 0); /* 12000 values of 53 bits: a repeat by chance has odds ~1e-8 */
    for (int a = 0; a < NS; a++)
        for (int b = a + 1; b < NS; b++) {
            double sxy = 0, sxx = 0, syy = 0;
            for (int p = 0; p < NP; p++) {
                double x = u[a][p] - 0.5, y = u[b][p] - 0.5;
                sxy += x * y, sxx += x * x, syy += y * y;
            }
            double r = sxy / sqrt(sxx * syy);
            if (fabs(r) >= 0.1) printf("\n  streams %d and %d: correlation %.3f (sd %.3f)\n", a, b, r, 1 / sqrt(NP));
            CU_ASSERT(fabs(r) < 0.1); /* 4.5 sd */
        }
}

/* The token at a position is the same from a fresh sampler, or after 100 draws at other
 * positions, choices and purposes over other logits, in any order. */
static void test_a_draw_depends_only_on_its_key(void) {
    enum { NP = 64 };
    sampler_params p = {.temperature = 1, .top_p = 0.9f, .top_k = 0, .seed = 2026};
    int alone[NP], later[NP], distinct = 0;
    fill(1); /* flat: hundreds of tokens in the nucleus, so a different draw gives a different token */
    for (int pos = 0; pos < NP; pos++) {
        sampler *s = sampler_new(V, p);
        alone[pos] = sampler_sample(s, logits, 0, 1000 + pos, SAMPLER_TOKEN);
        sampler_free(s);
    }
    sampler *s = sampler_new(V, p);
    fill(3);
    for (int i = 0; i < 100; i++) sampler_sample(s, logits, i % 3, i, i % 2 ? SAMPLER_SPEC_ACCEPT : SAMPLER_TOKEN);
    fill(1);
    for (int pos = NP - 1; pos >= 0; pos--) later[pos] = sampler_sample(s, logits, 0, 1000 + pos, SAMPLER_TOKEN);
    sampler_free(s);
    for (int i = 0; i < NP; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= alone[j] == alone[i];
        distinct += !seen;
    }
    CU_ASSERT(distinct > NP / 2); /* the positions really draw different tokens */
    CU_ASSERT_EQUAL(memcmp(alone, later, sizeof alone), 0);
}

/* `better` by definition: higher logit, then lower id */
static int by_logit_then_id(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (logits[i] > logits[j]) return -1;
    if (logits[j] > logits[i]) return 1;
    return (i > j) - (i < j);
}

static uint64_t xs = 88172645463325252ULL;
static uint32_t xorshift(void) {
    xs ^= xs << 13, xs ^= xs >> 7, xs ^= xs << 17;
    return (uint32_t)xs;
}

/* The order top-p takes the whole vocabulary in (a radix sort on the logits' bits) against a
 * comparison sort with `better`'s rule, on logits of every kind: any bit pattern but NaN; ties
 * among a few values with -0 and +0 (equal: ties go to the lower id), infinities and
 * subnormals; a narrow range (keys sharing their top digits: passes skipped); all equal. With a
 * NaN the order is the heap sort's: still a permutation. */
static void test_the_whole_vocabulary_is_ordered_as_compared(void) {
    static const float few[] = {0.0f, -0.0f, 1.0f, -1.0f, INFINITY, -INFINITY, 1e-45f, -1e-45f, 3.5f, 3.5000002f};
    int *ids = malloc(V * sizeof *ids), *want = malloc(V * sizeof *want);
    sampler *s = sampler_new(V, (sampler_params){.temperature = 1, .top_p = 0.9f, .seed = 1});
    for (int kind = 0; kind < 5; kind++) {
        for (int i = 0; i < V; i++) {
            uint32_t u = xorshift();
            float x;
            memcpy(&x, &u, 4);
            switch (kind) {
            case 0: logits[i] = isnan(x) ? 0.5f : x; break;
            case 1: logits[i] = few[u % 10]; break;
            case 2: logits[i] = 7.0f + (float)(u % 1000) * 1e-6f; break;
            case 3: logits[i] = -2.25f; break;
            default: logits[i] = u % 97 == 0 ? NAN : (float)(u % 50); break;
            }
        }
        sampler_order(s, logits, ids);
        int bad = 0;
        if (kind < 4) {
            for (int i = 0; i < V; i++) want[i] = i;
            qsort(want, V, sizeof *want, by_logit_then_id);
            for (int i = 0; i < V; i++) bad += ids[i] != want[i];
        } else {
            memset(want, 0, V * sizeof *want);
            for (int i = 0; i < V; i++) bad += ids[i] < 0 || ids[i] >= V || want[ids[i]]++;
        }
        if (bad) printf("\n  kind %d: %d of %d places differ\n", kind, bad, V);
        CU_ASSERT_EQUAL(bad, 0);
    }
    sampler_free(s);
    free(ids), free(want);
}

static CU_TestInfo sampler_tests[] = {
    {"greedy is the argmax, ties to the lower id", test_greedy_is_the_argmax_with_ties_to_the_lower_id},
    {"a seed gives the same tokens", test_a_seed_gives_the_same_tokens},
    {"top-k draws only from the k best", test_top_k_draws_only_from_the_k_best},
    {"top-p draws only from the nucleus", test_top_p_draws_only_from_the_nucleus},
    {"the whole vocabulary is ordered as compared", test_the_whole_vocabulary_is_ordered_as_compared},
    {"temperature sampling follows the softmax", test_temperature_sampling_follows_the_softmax},
    {"Philox matches the published vectors", test_philox_matches_the_published_vectors},
    {"a draw matches an independent computation", test_a_draw_matches_an_independent_computation},
    {"draws are uniform along every key field", test_draws_are_uniform_along_every_key_field},
    {"distinct keys give distinct streams", test_distinct_keys_give_distinct_streams},
    {"a draw depends only on its key", test_a_draw_depends_only_on_its_key},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo sampler_suite = {"sampler", NULL, NULL, NULL, NULL, sampler_tests};
