/* test_planner.c: EPLB on cases worked out by hand, the replica choice on a hand-made step,
 * and the trace planners' contracts: valid plans within their slots, --max-moves, the domain
 * mix and worker capacities changing the plan as documented, the ALF bias left out. */
#include <CUnit/CUnit.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "sched/dispatch.h"
#include "sched/eplb.h"
#include "sched/planin.h"
#include "sched/planner.h"
#include "sched/simulate.h"
#include "tests/runner.h"
#include "tests/sched/sched_test.h"

static int hosts_are(const place_plan *p, int l, int e, const int *want, int n_want) {
    int n;
    const int *ws = place_get(p, l, e, &n);
    if (n != n_want) return 0;
    for (int i = 0; i < n; i++)
        if (ws[i] != want[i]) return 0;
    return 1;
}

/* Loads 6, 3, 2, 1 on 2 workers of 3 slots: 2 redundant slots. Replication: 6/1 is the
 * highest, expert 0 gets a second replica (3 each); then 3 (expert 0) ties 3 (expert 1) and
 * the lower id wins: expert 0 has 3 replicas of 2. Packing, heaviest first: e1 (3) to pack 0;
 * e0 (2) to pack 1; e0 (2) to pack 1 (2 < 3); e0 (2) to pack 0 (3 < 4); e2 (2) to pack 1
 * (4 < 5), now full; e3 (1) to pack 0. Two replicas of e0 share pack 1: merged. */
static void test_eplb_replicates_and_packs_as_worked_by_hand(void) {
    const double load[4] = {6, 3, 2, 1};
    int cnt[4];
    eplb_replicate(load, 4, 6, cnt);
    CU_ASSERT(cnt[0] == 3 && cnt[1] == 1 && cnt[2] == 1 && cnt[3] == 1);
    place_plan *p = place_new(1, 4, 2);
    CU_ASSERT_EQUAL(eplb_layer(p, 0, load, 4, 2, 3, NULL), 1);
    CU_ASSERT(hosts_are(p, 0, 0, (int[]){1, 2}, 2));
    CU_ASSERT(hosts_are(p, 0, 1, (int[]){1}, 1));
    CU_ASSERT(hosts_are(p, 0, 2, (int[]){2}, 1));
    CU_ASSERT(hosts_are(p, 0, 3, (int[]){1}, 1));
    place_free(p);
}

/* No redundant slots: 4, 4, 1, 1 on 2 workers of 2: e0 to 0, e1 to 1, e2 to 0 (tie 4 = 4,
 * lower pack), e3 to 1. With speeds 1, 3 the slower pack 0 looks heavier: e0 to 0 (tie at 0),
 * e1 to 1 (0 < 4), e2 to 1 (4/3 < 4), pack 1 is full, e3 to 0. */
static void test_eplb_packs_without_replicas_and_by_capacity(void) {
    const double load[4] = {4, 4, 1, 1}, cap[2] = {1, 3};
    int pack[4];
    eplb_pack(load, 4, 2, 2, NULL, pack);
    CU_ASSERT(pack[0] == 0 && pack[1] == 1 && pack[2] == 0 && pack[3] == 1);
    eplb_pack(load, 4, 2, 2, cap, pack);
    CU_ASSERT(pack[0] == 0 && pack[1] == 1 && pack[2] == 1 && pack[3] == 0);
}

/* Experts: 0 on rank 1, 1 on rank 2, 2 on every rank, 3 on ranks 2 and 3. */
static place_plan *hand_plan(void) {
    place_plan *p = place_new(1, 4, 3);
    place_set(p, 0, 0, (int[]){1}, 1);
    place_set(p, 0, 1, (int[]){2}, 1);
    place_set(p, 0, 2, (int[]){1, 2, 3}, 3);
    place_set(p, 0, 3, (int[]){2, 3}, 2);
    return p;
}

/* Row 0 chooses only expert 2; rows 1 and 2 put one pair each on ranks 1 and 2. Counted
 * first, those leave rank 3 the lightest, so row 0's replica goes there, not to rank 1 as a
 * count of the rows before it alone would say. Row 3 (experts 1 and 3) visits rank 2 and
 * takes expert 3 there; row 4 (experts 0 and 2) takes expert 2 on rank 1, which it visits,
 * although rank 3 is lighter. */
static void test_smart_choice_on_a_hand_made_step(void) {
    place_plan *p = hand_plan();
    const int idx[5 * 2] = {2, -1, 0, -1, 1, -1, 1, 3, 0, 2};
    int wk[10];
    disp_state *d = disp_new(DISP_SMART, 1, 4, 3);
    disp_assign(d, p, 0, idx, 5, 2, wk);
    const int want[10] = {3, -1, 1, -1, 2, -1, 2, 2, 1, 1};
    for (int i = 0; i < 10; i++) {
        if (wk[i] != want[i]) fprintf(stderr, "slot %d: rank %d, want %d\n", i, wk[i], want[i]);
        CU_ASSERT_EQUAL(wk[i], want[i]);
    }
    // rows (1), (3), (3): expert 1 puts one pair on rank 2; the first expert-3 pair takes
    // rank 3 (0 < 1); the second sees ranks 2 and 3 at 1 and 1: the lower rank with equal
    // speeds, rank 3 when rank 3 is three times as fast (1/3 < 1)
    const int idx2[3 * 2] = {1, -1, 3, -1, 3, -1};
    disp_assign(d, p, 0, idx2, 3, 2, wk);
    CU_ASSERT(wk[2] == 3 && wk[4] == 2);
    disp_set_capacity(d, (const double[]){1, 1, 3});
    disp_assign(d, p, 0, idx2, 3, 2, wk);
    CU_ASSERT(wk[2] == 3 && wk[4] == 3);
    disp_free(d);
    // turns: expert 2's tokens go to ranks 1, 2, 3, 1 in turn, across steps
    d = disp_new(DISP_TURNS, 1, 4, 3);
    const int one[2] = {2, -1};
    int got[4];
    for (int s = 0; s < 4; s++) disp_assign(d, p, 0, one, 1, 2, wk), got[s] = wk[0];
    CU_ASSERT(got[0] == 1 && got[1] == 2 && got[2] == 3 && got[3] == 1);
    disp_free(d);
    place_free(p);
}

/* A trace of 2 layers, 8 experts, top-2, two domains of 20 sequences of 12 tokens: domain 0
 * leans to experts 0..3, domain 1 to 4..7, with a fixed pseudo-random mix of the rest. */
static trace *small_trace(void) {
    trace *t = trace_new(2, 8, 2, 40, 40 * 12);
    t->n_domains = 2;
    strcpy(t->domain_names[0], "alpha"), strcpy(t->domain_names[1], "beta");
    uint32_t r = 12345;
    for (int s = 0; s < 40; s++) {
        t->seqs[s] = (trace_seq){.id = s, .domain = s % 2, .n_tokens = 12, .first = (size_t)s * 12};
        for (int j = 0; j < 12; j++)
            for (int l = 0; l < 2; l++) {
                r = r * 1103515245u + 12345u;
                int a = (s % 2) * 4 + (int)(r >> 16) % 4, b = (int)(r >> 8) % 8;
                if (b == a) b = (b + 1) % 8;
                int16_t *ids = t->ids + (((size_t)s * 12 + j) * 2 + l) * 2;
                ids[0] = (int16_t)a, ids[1] = (int16_t)b;
            }
    }
    return t;
}

static void test_every_trace_algorithm_gives_a_valid_plan_within_its_slots(void) {
    trace *t = small_trace();
    plan_data *d = pin_from_trace(t, TRACE_SEQS_FIRST_HALF, NULL, 8);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    const uint8_t all[2] = {1, 1};
    for (int a = 0; planner_algos[a]; a++)
        for (int slots = 4; slots <= 6; slots++) {
            planner_params pp = planner_default_params(2);
            pp.algo = planner_algos[a], pp.slots = slots;
            place_plan *p = planner_compute(d, &pp);
            CU_ASSERT_PTR_NOT_NULL_FATAL(p);
            CU_ASSERT_EQUAL(place_validate(p, all), 0);
            for (int l = 0; l < 2; l++)
                for (int w = 1; w <= 2; w++) {
                    int c = sched_test_count_on(p, l, w);
                    if (c > slots) fprintf(stderr, "%s: layer %d rank %d hosts %d > %d\n", planner_algos[a], l, w, c, slots);
                    CU_ASSERT(c <= slots);
                }
            place_free(p);
        }
    planner_params pp = planner_default_params(2);
    pp.slots = 3; /* 2 x 3 < 8 experts */
    CU_ASSERT_PTR_NULL(planner_compute(d, &pp));
    pin_free(d), trace_free(t);
}

static void test_migration_adds_at_most_max_moves_placements(void) {
    trace *t = small_trace();
    plan_data *d = pin_from_trace(t, TRACE_SEQS_ALL, NULL, 8);
    const uint8_t all[2] = {1, 1};
    planner_params pp = planner_default_params(2);
    pp.algo = "contiguous";
    place_plan *from = planner_compute(d, &pp);
    pp.algo = NULL, pp.slots = 5;
    place_plan *best = planner_compute(d, &pp);
    int unlimited = place_added(from, best);
    CU_ASSERT(unlimited > 3); /* the affinity plan is far from contiguous: the budget binds */
    for (int m = 0; m <= 3; m++) {
        int made;
        place_plan *p = planner_migrate(d, &pp, from, m, &made);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p);
        CU_ASSERT_EQUAL(place_validate(p, all), 0);
        CU_ASSERT(made <= m);
        CU_ASSERT_EQUAL(place_added(from, p), made);
        if (m == 3) CU_ASSERT(made >= 1); /* contiguous splits the domains' experts evenly: a move helps */
        place_free(p);
    }
    place_free(from), place_free(best);
    pin_free(d), trace_free(t);
}

/* Domain alpha chooses expert 0 six times and expert 1 twice, beta experts 2 (6) and 3 (2);
 * K = 1, E = 4, 2 workers, balanced. Both domains: loads 6, 2, 6, 2; e0 to rank 1, e2 to
 * rank 2, e1 to rank 1 (6 = 6, as many experts, lower rank), e3 to rank 2. alpha=1 alone:
 * loads 6, 2, 0, 0: e0 to 1, e1 to 2, e2 (0) to rank 2 (2 < 6), which is then full (2 slots),
 * so e3 goes to rank 1. With speeds 3, 1
 * and both domains: e0 to 1 (6/3 < 6), e2 to 1 (12/3 = 4 < 6), e1 to 2 (2 < 14/3), e3 to 2
 * (4 < 14/3). */
static void test_domain_mix_and_capacity_change_the_plan_as_documented(void) {
    trace *t = trace_new(1, 4, 1, 4, 16);
    t->n_domains = 2;
    strcpy(t->domain_names[0], "alpha"), strcpy(t->domain_names[1], "beta");
    const int16_t ids[16] = {0, 0, 0, 1, 0, 0, 0, 1, 2, 2, 2, 3, 2, 2, 2, 3};
    memcpy(t->ids, ids, sizeof ids);
    for (int s = 0; s < 4; s++) t->seqs[s] = (trace_seq){.id = s, .domain = s / 2, .n_tokens = 4, .first = (size_t)s * 4};
    double share[2];
    CU_ASSERT_EQUAL(pin_parse_mix(t, "alpha=1", share), 0);
    CU_ASSERT(share[0] == 1 && share[1] == 0);
    CU_ASSERT_EQUAL(pin_parse_mix(t, "gamma=1", share), DH_EINVAL);
    CU_ASSERT_EQUAL(pin_parse_mix(t, "alpha=x", share), DH_EINVAL);
    planner_params pp = planner_default_params(2);
    pp.algo = "balanced";
    plan_data *d = pin_from_trace(t, TRACE_SEQS_ALL, NULL, 4);
    place_plan *p = planner_compute(d, &pp);
    CU_ASSERT(hosts_are(p, 0, 0, (int[]){1}, 1) && hosts_are(p, 0, 1, (int[]){1}, 1));
    CU_ASSERT(hosts_are(p, 0, 2, (int[]){2}, 1) && hosts_are(p, 0, 3, (int[]){2}, 1));
    place_free(p);
    const double cap[2] = {3, 1};
    pp.capacity = cap;
    p = planner_compute(d, &pp);
    CU_ASSERT(hosts_are(p, 0, 0, (int[]){1}, 1) && hosts_are(p, 0, 2, (int[]){1}, 1));
    CU_ASSERT(hosts_are(p, 0, 1, (int[]){2}, 1) && hosts_are(p, 0, 3, (int[]){2}, 1));
    place_free(p), pin_free(d);
    pp.capacity = NULL;
    pin_parse_mix(t, "alpha=0.7", share); /* normalised: alpha alone */
    d = pin_from_trace(t, TRACE_SEQS_ALL, share, 4);
    CU_ASSERT_DOUBLE_EQUAL(d->load[2], 0, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(d->load[0] + d->load[1], 16, 1e-9); /* all 16 tokens' weight on alpha */
    p = planner_compute(d, &pp);
    CU_ASSERT(hosts_are(p, 0, 0, (int[]){1}, 1) && hosts_are(p, 0, 1, (int[]){2}, 1));
    CU_ASSERT(hosts_are(p, 0, 2, (int[]){2}, 1) && hosts_are(p, 0, 3, (int[]){1}, 1));
    place_free(p), pin_free(d);
    CU_ASSERT_PTR_NULL(pin_from_trace(t, TRACE_SEQS_ALL, (double[]){0, 0}, 4)); /* nothing to plan for */
    trace_free(t);
}

/* docs/placement.md, "What the ALF bias says": the correction bias is no load prior, so a
 * checkpoint's bias, however skewed, leaves balanced's plan as it is without one. */
static void test_balanced_ignores_the_alf_bias(void) {
    const uint8_t moe[2] = {0, 1};
    float bias[2 * 8] = {0};
    for (int e = 0; e < 8; e++) bias[8 + e] = e < 4 ? -2.0f : 1.5f; /* experts 0..3 pushed down hard */
    place_input in = {.n_layers = 2, .n_experts = 8, .n_workers = 2, .is_moe = moe};
    place_plan *plain = place_compute("balanced", &in);
    in.bias = bias;
    place_plan *biased = place_compute("balanced", &in);
    for (int e = 0; e < 8; e++) {
        int n, m;
        const int *a = place_get(plain, 1, e, &n), *b = place_get(biased, 1, e, &m);
        CU_ASSERT(n == 1 && m == 1 && a[0] == b[0]);
    }
    CU_ASSERT_EQUAL(sched_test_count_on(biased, 1, 1), 4);
    place_free(plain), place_free(biased);
}

/* The planner balances the steps a replay judges: as many decode and prefill steps as
 * simulate replays for the same half and batch, and the same tokens in its first decode step
 * (the staggered start: slot k at token floor(k * T_k / B) of the k-th sequence). */
static void test_planning_steps_are_the_replays(void) {
    trace *t = small_trace();
    place_plan *p = place_new(2, 8, 1);
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < 8; e++) place_set(p, l, e, (int[]){1}, 1);
    for (int h = 0; h < 3; h++)
        for (int B = 4; B <= 16; B += 6) {
            plan_data *d = pin_from_trace(t, (trace_half)h, NULL, B);
            sim_params sp = sim_default_params();
            sp.batch = B, sp.half = (trace_half)h, sp.hidden_size = 8, sp.ffn_size = 4, sp.wire_bytes = 4;
            sim_result r[2];
            for (int m = 0; m < 2; m++) {
                sp.mode = m ? SIM_PREFILL : SIM_DECODE;
                CU_ASSERT_EQUAL_FATAL(sim_run(t, p, &sp, &r[m]), 0);
            }
            CU_ASSERT_EQUAL(d->n_decode, r[0].steps);
            CU_ASSERT_EQUAL(d->n_steps - d->n_decode, r[1].steps);
            int order[40], n = trace_select(t, (trace_half)h, order);
            for (int k = 0; k < B && k < n && d->n_decode > 0; k++) /* sequences of 12 tokens, in replay order */
                CU_ASSERT_EQUAL(d->step_tok[k], k * 12 + k * 12 / B);
            sim_result_free(&r[0]), sim_result_free(&r[1]);
            pin_free(d);
        }
    place_free(p), trace_free(t);
}

static CU_TestInfo planner_tests[] = {
    {"the planning steps are the replay's", test_planning_steps_are_the_replays},
    {"eplb replicates and packs as worked by hand", test_eplb_replicates_and_packs_as_worked_by_hand},
    {"eplb packs without replicas and by capacity", test_eplb_packs_without_replicas_and_by_capacity},
    {"the smart choice on a hand-made step", test_smart_choice_on_a_hand_made_step},
    {"every trace algorithm gives a valid plan within its slots", test_every_trace_algorithm_gives_a_valid_plan_within_its_slots},
    {"migration adds at most max-moves placements", test_migration_adds_at_most_max_moves_placements},
    {"the domain mix and capacity change the plan as documented", test_domain_mix_and_capacity_change_the_plan_as_documented},
    {"balanced ignores the ALF bias", test_balanced_ignores_the_alf_bias},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo planner_suite = {"planner", NULL, NULL, NULL, NULL, planner_tests};
