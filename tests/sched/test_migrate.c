/* test_migrate.c: the bounded migration toward a new plan, on cases worked out by hand. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "sched/migrate.h"
#include "tests/runner.h"

/* a plan of L layers (layer 0 dense) over E experts and W workers: layer l, expert e on
 * worker at[l][e] (1-based; 0 for the dense layer) */
static place_plan *plan_of(int L, int E, int W, const int *at) {
    place_plan *p = place_new(L, E, W);
    for (int l = 1; l < L; l++)
        for (int e = 0; e < E; e++) place_set(p, l, e, &at[l * E + e], 1);
    return p;
}

static int worker_of(const place_plan *p, int l, int e) {
    int n;
    const int *ws = place_get(p, l, e, &n);
    return n == 1 ? ws[0] : -n;
}

static const uint8_t moe2[2] = {0, 1}, moe3[3] = {0, 1, 1};

static void test_imbalance_is_the_busiest_worker_over_the_mean(void) {
    /* 64 experts on 3 workers, contiguous: 22, 21 and 21 a layer; uniform load */
    place_input in = {.n_layers = 3, .n_experts = 64, .n_workers = 3, .is_moe = moe3};
    place_plan *c = place_compute("contiguous", &in);
    CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(c, NULL, NULL), 22.0 / (64.0 / 3), 1e-12);
    /* layers count apart: a layer 8:2 and a layer 2:8 are not even together, (8+8)/(5+5) */
    int at[3 * 4] = {0, 0, 0, 0, 1, 1, 2, 2, 1, 1, 2, 2};
    place_plan *p = plan_of(3, 4, 2, at);
    double load[12] = {0, 0, 0, 0, 6, 2, 1, 1, 1, 1, 6, 2};
    CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(p, load, NULL), 16.0 / 10.0, 1e-12);
    /* capacity 3:1 with loads 6+2 on worker 1, 1+1 on worker 2 in layer 1 only:
     * max(8/3, 2/1) / (10/4) */
    double one[12] = {0, 0, 0, 0, 6, 2, 1, 1, 0, 0, 0, 0}, cap[2] = {3, 1};
    CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(p, one, cap), (8.0 / 3) / 2.5, 1e-12);
    double none[12] = {0};
    CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(p, none, NULL), 1.0, 1e-12); /* no load: nothing to wait for */
    place_free(c), place_free(p);
}

static void test_added_counts_placements_a_worker_must_map(void) {
    int a[2 * 4] = {0, 0, 0, 0, 1, 1, 2, 2}, b[2 * 4] = {0, 0, 0, 0, 1, 2, 1, 2};
    place_plan *pa = plan_of(2, 4, 2, a), *pb = plan_of(2, 4, 2, b);
    CU_ASSERT_EQUAL(place_added(pa, pb), 2); /* expert 1 to worker 2, expert 2 to worker 1 */
    CU_ASSERT_EQUAL(place_added(pa, pa), 0);
    int two[2] = {1, 2};
    place_set(pb, 1, 0, two, 2); /* a replica of expert 0 on worker 2 */
    CU_ASSERT_EQUAL(place_added(pa, pb), 3);
    CU_ASSERT_EQUAL(place_added(pb, pa), 0 + 1 + 1); /* dropping a replica adds nothing */
    place_free(pa), place_free(pb);
}

static void test_a_renumbered_ideal_plan_moves_only_what_it_must(void) {
    /* loads 6, 2, 1, 1: old {0,1} | {2,3} is 8:2. The ideal {1,2,3} | {0} (6:4 with its workers
     * numbered the other way round) differs from old in three experts, but after renaming its
     * workers it differs in one: expert 1 to worker 2, for 6:4. */
    int o[2 * 4] = {0, 0, 0, 0, 1, 1, 2, 2}, i[2 * 4] = {0, 0, 0, 0, 2, 1, 1, 1};
    place_plan *old = plan_of(2, 4, 2, o), *ideal = plan_of(2, 4, 2, i);
    double load[8] = {0, 0, 0, 0, 6, 2, 1, 1};
    int moved = -1;
    place_plan *p = mig_limit(old, ideal, load, NULL, 1, &moved);
    CU_ASSERT_EQUAL(moved, 1);
    CU_ASSERT_EQUAL(worker_of(p, 1, 0), 1);
    CU_ASSERT_EQUAL(worker_of(p, 1, 1), 2);
    CU_ASSERT_EQUAL(worker_of(p, 1, 2), 2);
    CU_ASSERT_EQUAL(worker_of(p, 1, 3), 2);
    CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(old, load, NULL), 8.0 / 5, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(p, load, NULL), 6.0 / 5, 1e-12);
    CU_ASSERT_EQUAL(place_added(old, p), 1);
    CU_ASSERT_EQUAL(place_validate(p, moe2), 0);
    place_free(p);
    /* no budget: the old plan */
    p = mig_limit(old, ideal, load, NULL, 0, &moved);
    CU_ASSERT_EQUAL(moved, 0);
    CU_ASSERT_EQUAL(memcmp(p->offsets, old->offsets, 9 * sizeof(int)), 0);
    CU_ASSERT_EQUAL(memcmp(p->workers, old->workers, 4 * sizeof(int)), 0);
    place_free(p), place_free(old), place_free(ideal);
}

static void test_the_budget_goes_to_the_moves_that_gain_most(void) {
    /* layer 1: loads 10, 10, 0, 0 on {0,1} | {2,3}: 20:0. Moving expert 1 gains 10.
     * layer 2: loads 3, 3, 1, 1 on {0,1} | {2,3}: 6:2. Expert 1 gains 1 (3:5), then expert 2
     * gains 1 more (4:4). The ideal plan is {0,2} | {1,3} in both; expert 2 of layer 1 has
     * no load and moving it gains nothing. Before: (20 + 6) / (10 + 4). */
    int o[3 * 4] = {0, 0, 0, 0, 1, 1, 2, 2, 1, 1, 2, 2}, i[3 * 4] = {0, 0, 0, 0, 1, 2, 1, 2, 1, 2, 1, 2};
    place_plan *old = plan_of(3, 4, 2, o), *ideal = plan_of(3, 4, 2, i);
    double load[12] = {0, 0, 0, 0, 10, 10, 0, 0, 3, 3, 1, 1};
    CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(old, load, NULL), 26.0 / 14, 1e-12);
    static const struct { int budget, moved; double imbalance; } want[] = {
        {1, 1, 16.0 / 14}, {2, 2, 15.0 / 14}, {3, 3, 1.0}, {-1, 3, 1.0}, {10, 3, 1.0}};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        int moved = -1;
        place_plan *p = mig_limit(old, ideal, load, NULL, want[k].budget, &moved);
        if (moved != want[k].moved) printf("\n  budget %d: %d moves, not %d\n", want[k].budget, moved, want[k].moved);
        CU_ASSERT_EQUAL(moved, want[k].moved);
        CU_ASSERT_EQUAL(place_added(old, p), moved);
        CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(p, load, NULL), want[k].imbalance, 1e-12);
        CU_ASSERT_EQUAL(worker_of(p, 1, 1), 2); /* the first move, in every budget */
        CU_ASSERT_EQUAL(worker_of(p, 1, 2), 2); /* never moved: no gain */
        CU_ASSERT_EQUAL(place_validate(p, moe3), 0);
        place_free(p);
    }
    place_free(old), place_free(ideal);
}

static void test_capacities_weigh_the_gain_and_are_never_renamed(void) {
    /* worker 1 three times as fast. Old: expert 1 (load 1) on worker 1, expert 0 (load 3) on
     * worker 2: max(1/3, 3/1) = 3. The ideal swaps them: max(3/3, 1/1) = 1. Renaming the
     * ideal's workers would give back the old plan, but the two differ in speed. */
    int o[2 * 2] = {0, 0, 2, 1}, i[2 * 2] = {0, 0, 1, 2};
    place_plan *old = plan_of(2, 2, 2, o), *ideal = plan_of(2, 2, 2, i);
    double load[4] = {0, 0, 3, 1}, cap[2] = {3, 1};
    int moved = -1;
    place_plan *p = mig_limit(old, ideal, load, cap, -1, &moved);
    CU_ASSERT_EQUAL(moved, 2);
    CU_ASSERT_EQUAL(worker_of(p, 1, 0), 1);
    CU_ASSERT_EQUAL(worker_of(p, 1, 1), 2);
    CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(old, load, cap), 3.0 / (4.0 / 4), 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(mig_imbalance(p, load, cap), 1.0, 1e-12);
    place_free(p);
    /* one move: expert 0 to the fast worker (max 4/3) gains more than expert 1 to the slow one
     * (max(0, 4/1)), which would lose */
    p = mig_limit(old, ideal, load, cap, 1, &moved);
    CU_ASSERT_EQUAL(moved, 1);
    CU_ASSERT_EQUAL(worker_of(p, 1, 0), 1);
    CU_ASSERT_EQUAL(worker_of(p, 1, 1), 1);
    place_free(p), place_free(old), place_free(ideal);
}

static void test_random_plans_stay_valid_within_budget_and_never_worse(void) {
    /* 5 layers (one dense) of 64 experts on 4 workers, skewed random loads, from contiguous
     * toward balanced: every expert hosted, at most M placements added, the imbalance never
     * above the old plan's and never rising with the budget (the moves of budget M are the
     * first M of budget M + 1 when each move adds one placement). */
    static const uint8_t moe5[5] = {0, 1, 1, 1, 1};
    double load[5 * 64];
    uint64_t x = 12345;
    for (int trial = 0; trial < 20; trial++) {
        for (int i = 0; i < 5 * 64; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            double u = (double)(x >> 11) / 9007199254740992.0;
            load[i] = i < 64 ? 0 : 1000 * u * u * u; /* a few hot experts */
        }
        place_input in = {.n_layers = 5, .n_experts = 64, .n_workers = 4, .is_moe = moe5, .load = load};
        place_plan *old = place_compute(trial % 2 ? "round-robin" : "contiguous", &in);
        place_plan *ideal = place_compute("balanced", &in);
        double before = mig_imbalance(old, load, NULL), prev = before;
        static const int budgets[] = {0, 1, 2, 4, 8, 16, 64, -1};
        for (size_t k = 0; k < sizeof budgets / sizeof budgets[0]; k++) {
            int moved = -1;
            place_plan *p = mig_limit(old, ideal, load, NULL, budgets[k], &moved);
            double imb = mig_imbalance(p, load, NULL);
            CU_ASSERT_EQUAL(place_validate(p, moe5), 0);
            CU_ASSERT(budgets[k] < 0 || moved <= budgets[k]);
            CU_ASSERT_EQUAL(place_added(old, p), moved);
            if (imb > prev + 1e-12) printf("\n  trial %d budget %d: imbalance %.6f above %.6f\n", trial, budgets[k], imb, prev);
            CU_ASSERT(imb <= prev + 1e-12);
            prev = imb;
            place_free(p);
        }
        CU_ASSERT(prev < before || before < 1.0 + 1e-9); /* skewed loads: some move gains */
        place_free(old), place_free(ideal);
    }
}

static CU_TestInfo migrate_tests[] = {
    {"imbalance is the busiest worker over the mean, per layer", test_imbalance_is_the_busiest_worker_over_the_mean},
    {"added counts the placements a worker must map", test_added_counts_placements_a_worker_must_map},
    {"a renumbered ideal plan moves only what it must", test_a_renumbered_ideal_plan_moves_only_what_it_must},
    {"the budget goes to the moves that gain most", test_the_budget_goes_to_the_moves_that_gain_most},
    {"capacities weigh the gain and are never renamed", test_capacities_weigh_the_gain_and_are_never_renamed},
    {"random plans stay valid, within budget, never worse", test_random_plans_stay_valid_within_budget_and_never_worse},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo migrate_suite = {"migrate", NULL, NULL, NULL, NULL, migrate_tests};
