/* test_placement.c: placement algorithms, the plan text format and its errors. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "sched/placement.h"
#include "tests/runner.h"
#include "tests/sched/sched_test.h"

static const uint8_t is_moe[5] = {0, 1, 1, 1, 1}; /* one dense layer, like genesis */

static place_input input(int E, int W, const double *load) {
    return (place_input){.n_layers = 5, .n_experts = E, .n_workers = W, .is_moe = is_moe, .load = load};
}

int sched_test_count_on(const place_plan *p, int l, int w) {
    int c = 0;
    for (int e = 0; e < p->n_experts; e++) {
        int n;
        const int *ws = place_get(p, l, e, &n);
        for (int i = 0; i < n; i++) c += ws[i] == w;
    }
    return c;
}

static void test_every_algorithm_covers_every_expert_once(void) {
    static const int shapes[][2] = {{64, 1}, {64, 2}, {64, 3}, {64, 4}, {64, 7}, {10, 10}, {24, 5}};
    for (int a = 0; place_algos[a]; a++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            place_input in = input(shapes[s][0], shapes[s][1], NULL);
            place_plan *p = place_compute(place_algos[a], &in);
            CU_ASSERT_PTR_NOT_NULL_FATAL(p);
            CU_ASSERT_EQUAL(place_validate(p, is_moe), 0);
            int n;
            place_get(p, 0, 0, &n);
            CU_ASSERT_EQUAL(n, 0); /* the dense layer hosts nothing */
            for (int l = 1; l < 5; l++) {
                int total = 0, lo = 1 << 30, hi = 0;
                for (int w = 1; w <= in.n_workers; w++) {
                    int c = sched_test_count_on(p, l, w);
                    total += c, lo = DH_MIN(lo, c), hi = DH_MAX(hi, c);
                }
                CU_ASSERT_EQUAL(total, in.n_experts); /* no replicas from these algorithms */
                CU_ASSERT(hi - lo <= 1);             /* uniform load: counts differ by at most one */
            }
            place_free(p);
        }
}

static void test_contiguous_and_round_robin_lay_experts_out_as_named(void) {
    place_input in = input(64, 3, NULL);
    place_plan *c = place_compute("contiguous", &in), *r = place_compute("round-robin", &in);
    int n;
    CU_ASSERT_EQUAL(*place_get(c, 1, 0, &n), 1);
    CU_ASSERT_EQUAL(*place_get(c, 1, 21, &n), 1);
    CU_ASSERT_EQUAL(*place_get(c, 1, 22, &n), 2);
    CU_ASSERT_EQUAL(*place_get(c, 1, 63, &n), 3);
    CU_ASSERT_EQUAL(*place_get(r, 2, 4, &n), 2);
    CU_ASSERT_EQUAL(*place_get(r, 2, 5, &n), 3);
    place_free(c), place_free(r);
}

static void test_balanced_evens_out_a_skewed_load(void) {
    double load[5 * 64];
    for (int i = 0; i < 5 * 64; i++) load[i] = (i % 64) < 8 ? 100.0 : 1.0; /* 8 hot experts */
    place_input in = input(64, 4, load);
    place_plan *b = place_compute("balanced", &in), *c = place_compute("contiguous", &in);
    double wl[4];
    double bb = place_worker_load(b, load, NULL, wl), bc = place_worker_load(c, load, NULL, wl);
    CU_ASSERT(bb > 0.95); /* the hot experts spread over the workers */
    CU_ASSERT(bc < 0.5);  /* contiguous puts all eight on worker 1 */
    /* capacity: a worker twice as fast takes about twice the load */
    double cap[2] = {2.0, 1.0};
    place_input in2 = input(64, 2, NULL);
    in2.capacity = cap;
    place_plan *w = place_compute("balanced", &in2);
    CU_ASSERT(sched_test_count_on(w, 1, 1) >= 42 && sched_test_count_on(w, 1, 1) <= 43);
    place_free(b), place_free(c), place_free(w);
}

static void test_worker_capacities_parse_and_bad_ones_are_errors(void) {
    double *cap;
    CU_ASSERT_EQUAL(place_parse_capacity("2,1,0.5", &cap), 3);
    CU_ASSERT(cap[0] == 2.0 && cap[1] == 1.0 && cap[2] == 0.5);
    free(cap);
    CU_ASSERT_EQUAL(place_parse_capacity("7", &cap), 1);
    free(cap);
    static const char *bad[] = {"", ",", "1,", ",1", "1,,2", "0,1", "-1,2", "1,x", "2e", "nan", "inf", "1;2", "1e13"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CU_ASSERT_EQUAL(place_parse_capacity(bad[i], &cap), -1);
        CU_ASSERT_PTR_NULL(cap);
    }
    /* a worker three times as fast takes three quarters of equal experts */
    double three[2] = {3.0, 1.0};
    place_input in = input(64, 2, NULL);
    in.capacity = three;
    place_plan *p = place_compute("balanced", &in);
    CU_ASSERT_EQUAL(sched_test_count_on(p, 1, 1), 48);
    CU_ASSERT_EQUAL(sched_test_count_on(p, 4, 2), 16);
    double wl[2];
    CU_ASSERT_DOUBLE_EQUAL(place_worker_load(p, NULL, three, wl), 1.0, 1e-12); /* 48/3 = 16/1 */
    CU_ASSERT_DOUBLE_EQUAL(place_worker_load(p, NULL, NULL, wl), 0.5 * (48 + 16) / 48.0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(wl[0], 4 * 48, 1e-9); /* four MoE layers */
    place_free(p);
}

static void test_impossible_inputs_are_errors(void) {
    place_input in = input(8, 9, NULL);
    CU_ASSERT_PTR_NULL(place_compute("contiguous", &in)); /* more workers than experts */
    in = input(64, 0, NULL);
    CU_ASSERT_PTR_NULL(place_compute("balanced", &in));
    in = input(64, 2, NULL);
    CU_ASSERT_PTR_NULL(place_compute("random", &in));
}

static const char *write_tmp(const char *text) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/plan.txt", dh_test_tmpdir());
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return path;
}

static void test_text_format_round_trips_with_replicas(void) {
    place_input in = input(64, 3, NULL);
    place_plan *p = place_compute("balanced", &in);
    int ws[2] = {3, 1};
    place_set(p, 2, 17, ws, 2); /* a replica */
    char path[4200];
    snprintf(path, sizeof path, "%s/plan.txt", dh_test_tmpdir());
    CU_ASSERT_EQUAL_FATAL(place_save(p, path), 0);
    place_plan *q = place_load(path, 5, 64, 3, is_moe);
    CU_ASSERT_PTR_NOT_NULL_FATAL(q);
    CU_ASSERT_EQUAL(memcmp(p->offsets, q->offsets, (5 * 64 + 1) * sizeof(int)), 0);
    CU_ASSERT_EQUAL(memcmp(p->workers, q->workers, (size_t)p->offsets[5 * 64] * sizeof(int)), 0);
    int n;
    const int *got = place_get(q, 2, 17, &n);
    CU_ASSERT(n == 2 && got[0] == 1 && got[1] == 3);
    CU_ASSERT_STRING_EQUAL(q->algo, "balanced");
    place_free(p), place_free(q);
}

static void test_hand_written_plans_load_and_bad_ones_say_why(void) {
    const char *ok = "darkhorse-placement 1\nworkers 2\nexperts 8\n"
                     "# comment\nlayer 1 worker 1: 0-3\nlayer 1 worker 2: 4-7, 0\n"
                     "layer 2 worker 1: 0 1 2 3 4 5 6 7\n";
    static const uint8_t moe3[3] = {0, 1, 1};
    place_plan *p = place_load(write_tmp(ok), 3, 8, 2, moe3);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    int n;
    place_get(p, 1, 0, &n);
    CU_ASSERT_EQUAL(n, 2);
    place_free(p);
    /* a plan for another number of workers */
    CU_ASSERT_PTR_NULL(place_load(write_tmp(ok), 3, 8, 3, moe3));
    /* an expert nobody hosts */
    CU_ASSERT_PTR_NULL(place_load(write_tmp("darkhorse-placement 1\nlayer 1 worker 1: 0-6\nlayer 2 worker 1: 0-7\n"),
                                  3, 8, 2, moe3));
    /* a dense layer, an expert out of range, garbage, no header */
    CU_ASSERT_PTR_NULL(place_load(write_tmp("darkhorse-placement 1\nlayer 0 worker 1: 0\n"), 3, 8, 2, moe3));
    CU_ASSERT_PTR_NULL(place_load(write_tmp("darkhorse-placement 1\nlayer 1 worker 1: 0-8\n"), 3, 8, 2, moe3));
    CU_ASSERT_PTR_NULL(place_load(write_tmp("darkhorse-placement 1\nlayer one\n"), 3, 8, 2, moe3));
    CU_ASSERT_PTR_NULL(place_load(write_tmp("layer 1 worker 1: 0-7\n"), 3, 8, 2, moe3));
    CU_ASSERT_PTR_NULL(place_load("/nonexistent/plan.txt", 3, 8, 2, moe3));
}

static CU_TestInfo placement_tests[] = {
    {"every algorithm covers every expert once", test_every_algorithm_covers_every_expert_once},
    {"contiguous and round-robin lay experts out as named", test_contiguous_and_round_robin_lay_experts_out_as_named},
    {"balanced evens out a skewed load", test_balanced_evens_out_a_skewed_load},
    {"worker capacities parse, and bad ones are errors", test_worker_capacities_parse_and_bad_ones_are_errors},
    {"impossible inputs are errors", test_impossible_inputs_are_errors},
    {"the text format round-trips, replicas included", test_text_format_round_trips_with_replicas},
    {"hand-written plans load and bad ones say why", test_hand_written_plans_load_and_bad_ones_say_why},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo placement_suite = {"placement", NULL, NULL, NULL, NULL, placement_tests};
