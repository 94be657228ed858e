/* test_trace.c: the in-memory trace: the halves a replay takes and their order, the layer map. */
#include <CUnit/CUnit.h>

#include "sched/trace.h"
#include "tests/runner.h"

/* seven sequences, file order d0 d1 d0 d1 d0 d1 d1: domain 0 holds s0 s2 s4, domain 1 s1 s3 s5 s6 */
static trace *two_domains(void) {
    static const int dom[7] = {0, 1, 0, 1, 0, 1, 1};
    trace *t = trace_new(1, 4, 1, 7, 7);
    t->n_domains = 2;
    for (int i = 0; i < 7; i++) t->seqs[i] = (trace_seq){.id = i, .domain = dom[i], .n_tokens = 1, .first = (size_t)i};
    return t;
}

static void check_order(trace_half h, const int *want, int n) {
    trace *t = two_domains();
    int got[7] = {0};
    int m = trace_select(t, h, got);
    CU_ASSERT_EQUAL(m, n);
    for (int i = 0; i < n && i < m; i++) {
        if (got[i] != want[i]) printf("\n  %s: position %d is s%d, want s%d\n", trace_half_name(h), i, got[i], want[i]);
        CU_ASSERT_EQUAL(got[i], want[i]);
    }
    trace_free(t);
}

static void test_trace_first_half_takes_floor_half_of_each_domain_in_turn(void) {
    /* floor(3/2) = 1 of domain 0 (s0), floor(4/2) = 2 of domain 1 (s1 s3); in turn: s0 s1, then s3 */
    check_order(TRACE_SEQS_FIRST_HALF, (const int[]){0, 1, 3}, 3);
}

static void test_trace_second_half_takes_the_rest_in_turn(void) {
    /* domain 0: s2 s4; domain 1: s5 s6; round 0: s2 s5, round 1: s4 s6 */
    check_order(TRACE_SEQS_SECOND_HALF, (const int[]){2, 5, 4, 6}, 4);
}

static void test_trace_all_takes_every_sequence_in_turn(void) {
    check_order(TRACE_SEQS_ALL, (const int[]){0, 1, 2, 3, 4, 5, 6}, 7);
}

static void test_trace_layer_map_is_floor_j_l_over_m(void) {
    /* 3 model MoE layers over a 2-layer trace: 0, 0, 1; 26 over 26: identity; 27 over 26: MTP -> 25 */
    CU_ASSERT_EQUAL(trace_layer_for(0, 3, 2), 0);
    CU_ASSERT_EQUAL(trace_layer_for(1, 3, 2), 0);
    CU_ASSERT_EQUAL(trace_layer_for(2, 3, 2), 1);
    CU_ASSERT_EQUAL(trace_layer_for(17, 26, 26), 17);
    CU_ASSERT_EQUAL(trace_layer_for(26, 27, 26), 25);
}

static CU_TestInfo trace_tests[] = {
    {"the first half takes floor(n/2) of each domain, in turn", test_trace_first_half_takes_floor_half_of_each_domain_in_turn},
    {"the second half takes the rest, in turn", test_trace_second_half_takes_the_rest_in_turn},
    {"all takes every sequence, in turn across domains", test_trace_all_takes_every_sequence_in_turn},
    {"model MoE layer j takes trace layer floor(j L / M)", test_trace_layer_map_is_floor_j_l_over_m},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo trace_suite = {"trace", NULL, NULL, NULL, NULL, trace_tests};
