/* test_simulate.c: the trace replay on hand-made traces, every figure worked out by hand in
 * the comments: loads, imbalance (mean and interpolated p99), fan-out, bytes and step time, in
 * both modes (decode with its staggered start), replicas under turns, the model layer map. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <string.h>

#include "sched/simulate.h"
#include "tests/runner.h"

#define CLOSE(got, want) check_close(#got, got, want)
static void check_close(const char *what, double got, double want) {
    if (fabs(got - want) > 1e-9 * (1 + fabs(want))) printf("\n  %s = %.12g, want %.12g\n", what, got, want);
    CU_ASSERT_DOUBLE_EQUAL(got, want, 1e-9 * (1 + fabs(want)));
}

/* One layer, E = 4, K = 2, one domain; sequences of lens[] tokens with ids pairs[N][2]. */
static trace *make_trace(int n_seqs, const int *lens, const int (*pairs)[2]) {
    size_t N = 0;
    for (int s = 0; s < n_seqs; s++) N += (size_t)lens[s];
    trace *t = trace_new(1, 4, 2, n_seqs, N);
    t->n_domains = 1;
    size_t first = 0;
    for (int s = 0; s < n_seqs; s++) {
        t->seqs[s] = (trace_seq){.id = s, .n_tokens = lens[s], .first = first};
        first += (size_t)lens[s];
    }
    for (size_t i = 0; i < N; i++) {
        t->ids[2 * i] = (int16_t)pairs[i][0], t->ids[2 * i + 1] = (int16_t)pairs[i][1];
        t->weights[2 * i] = t->weights[2 * i + 1] = 0.5f;
    }
    return t;
}

/* One-layer plan for 2 workers: expert e on the workers of hosts[e] (bit w-1 for worker w). */
static place_plan *make_plan(int n_layers, const unsigned *hosts) {
    place_plan *p = place_new(n_layers, 4, 2);
    for (int l = 0; l < n_layers; l++)
        for (int e = 0; e < 4; e++) {
            int ws[2], n = 0;
            for (int w = 1; w <= 2; w++)
                if (hosts[e] >> (w - 1) & 1) ws[n++] = w;
            place_set(p, l, e, ws, n);
        }
    return p;
}

/* Replay t against p (both freed here); the result's workers are the caller's to free. */
static sim_result replay(trace *t, place_plan *p, const sim_params *sp) {
    sim_result r;
    int rc = sim_run(t, p, sp, &r);
    place_free(p);
    trace_free(t);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return r;
}

static const unsigned contiguous[4] = {1, 1, 2, 2}; /* experts 0, 1 on worker 1; 2, 3 on worker 2 */

/* D 8, F 4, f32: a row costs 2*8 + 8*4 = 48 bytes out, 32 back. Rates chosen so times are
 * whole: 1e-6 GFLOP/s = 1000 flop/s, a pair 6*8*4 = 192 flop = 0.192 s; 1e-6 Gbit/s = 1000
 * bit/s, a row's 80 bytes = 0.64 s; latency 1000 us, 2 ms a round trip. */
static sim_params hand_params(sim_mode mode, int B) {
    static const double rates[2] = {1e-6, 1e-6};
    sim_params sp = sim_default_params();
    sp.mode = mode, sp.batch = B, sp.hidden_size = 8, sp.ffn_size = 4, sp.wire_bytes = 4;
    sp.worker_gflops = rates, sp.link_gbps = 1e-6, sp.link_us = 1000;
    return sp;
}

static void test_simulate_prefill_cuts_concatenated_tokens_into_whole_steps(void) {
    /* s0 = t0 (0,1) t1 (0,2); s1 = t2 (2,3) t3 (1,3) t4 (0,1). B = 2: [t0 t1] [t2 t3]; t4 dropped.
     * step 1: w1 takes 0,1 | 0 = 3 pairs, w2 takes 2 = 1: imbalance 3 / 2 = 1.5; fan-out 1, 2
     * step 2: w2 takes 2,3 | 3 = 3, w1 takes 1 = 1: 1.5; fan-out 1, 2 */
    static const int lens[2] = {2, 3};
    static const int ids[5][2] = {{0, 1}, {0, 2}, {2, 3}, {1, 3}, {0, 1}};
    sim_params sp = hand_params(SIM_PREFILL, 2);
    sim_result r = replay(make_trace(2, lens, ids), make_plan(1, contiguous), &sp);
    CU_ASSERT_EQUAL(r.steps, 2);
    CU_ASSERT_EQUAL(r.tokens, 4);
    CLOSE(r.imbalance_mean, 1.5);
    CLOSE(r.imbalance_p99, 1.5);
    CLOSE(r.fanout_mean, 1.5);
    CU_ASSERT_EQUAL(r.workers[1].pairs, 4);   /* 3 + 1 */
    CU_ASSERT_EQUAL(r.workers[2].pairs, 4);   /* 1 + 3 */
    CU_ASSERT_EQUAL(r.workers[1].rows, 3);    /* t0 t1, t3 */
    CU_ASSERT_EQUAL(r.workers[2].rows, 3);    /* t1, t2 t3 */
    CU_ASSERT_EQUAL(r.workers[1].bytes_in, 3 * 48);
    CU_ASSERT_EQUAL(r.workers[2].bytes_out, 3 * 32);
    CLOSE(r.bytes_per_token, 6 * 80 / 4.0);
    /* step 1: w1 = 0.002 + 2 rows * 0.64 + 3 * 0.192 = 1.858 s, w2 = 0.002 + 0.64 + 0.192; step 2
     * the mirror image: the slower worker sets each step, 1858 ms */
    CLOSE(r.step_ms_mean, 1858);
    CU_ASSERT_EQUAL(r.workers[1].hosted, 2);
    sim_result_free(&r);
}

/* sA = a0..a3 all (0,1); sB = b0 (2,3) b1 (2,3) b2 (0,2) b3 (1,3); sC = c0 (2,3) c1 (0,1) */
static const int dec_lens[3] = {4, 4, 2};
static const int dec_ids[10][2] = {{0, 1}, {0, 1}, {0, 1}, {0, 1}, {2, 3}, {2, 3}, {0, 2}, {1, 3}, {2, 3}, {0, 1}};

static void test_simulate_decode_staggers_the_first_batch_and_replaces_finished_sequences(void) {
    /* B = 2: slot 0 starts sA at floor(0 * 4 / 2) = 0, slot 1 sB at floor(1 * 4 / 2) = 2.
     * step 1: a0, b2: loads 3, 1 -> 1.5; fan-out 1, 2
     * step 2: a1, b3: loads 3, 1 -> 1.5; fan-out 1, 2
     * step 3: a2, c0 (sB finished, sC starts at its first token): loads 2, 2 -> 1.0; fan-out 1, 1
     * step 4: a3, c1: loads 4, 0 -> 2.0; fan-out 1, 1
     * step 5: sA finished, nothing left to start: the replay ends.
     * imbalance mean 6 / 4 = 1.5; p99 over sorted 1, 1.5, 1.5, 2 at h = 0.99 * 3 = 2.97:
     * 1.5 + 0.97 * 0.5 = 1.985; fan-out 10 / 8; rows 3 + 3 + 2 + 2 = 10, 80 bytes each, 8 tokens */
    sim_params sp = hand_params(SIM_DECODE, 2);
    sim_result r = replay(make_trace(3, dec_lens, dec_ids), make_plan(1, contiguous), &sp);
    CU_ASSERT_EQUAL(r.steps, 4);
    CU_ASSERT_EQUAL(r.tokens, 8);
    CLOSE(r.imbalance_mean, 1.5);
    CLOSE(r.imbalance_p99, 1.985);
    CLOSE(r.fanout_mean, 10.0 / 8);
    CLOSE(r.bytes_per_token, 10 * 80 / 8.0);
    CU_ASSERT_EQUAL(r.workers[1].pairs, 3 + 3 + 2 + 4);
    CU_ASSERT_EQUAL(r.workers[2].pairs, 1 + 1 + 2 + 0);
    sim_result_free(&r);
}

static void test_simulate_decode_needs_a_full_first_batch(void) {
    /* three sequences cannot fill B = 4 concurrent users: no step */
    sim_params sp = hand_params(SIM_DECODE, 4);
    sim_result r = replay(make_trace(3, dec_lens, dec_ids), make_plan(1, contiguous), &sp);
    CU_ASSERT_EQUAL(r.steps, 0);
    CU_ASSERT_EQUAL(r.tokens, 0);
    sim_result_free(&r);
}

static void test_simulate_replicas_under_turns_take_tokens_in_turn_across_steps(void) {
    /* expert 0 on both workers, 1 on w1, 2 and 3 on w2. t0 (0,1) t1 (1,2) | t2 (0,3) t3 (0,1).
     * turns of expert 0 persist across steps: t0 -> w1 (turn 0), t2 -> w2 (turn 1), t3 -> w1 (2).
     * step 1: t0 w1 w1, t1 w1 w2: loads 3, 1 -> 1.5; fan-out 1, 2
     * step 2: t2 w2 w2, t3 w1 w1: loads 2, 2 -> 1.0; fan-out 1, 1
     * (were the turns reset every step, t2's expert 0 would go to w1 and t3's to w2: fan-out 2, 2) */
    static const int lens[1] = {4};
    static const int ids[4][2] = {{0, 1}, {1, 2}, {0, 3}, {0, 1}};
    static const unsigned replicated[4] = {3, 1, 2, 2};
    sim_params sp = hand_params(SIM_PREFILL, 2);
    sp.dispatch = DISP_TURNS;
    sim_result r = replay(make_trace(1, lens, ids), make_plan(1, replicated), &sp);
    CU_ASSERT_EQUAL(r.steps, 2);
    CLOSE(r.imbalance_mean, 1.25);
    CLOSE(r.fanout_mean, 5.0 / 4);
    CU_ASSERT_EQUAL(r.workers[1].pairs, 3 + 2);
    CU_ASSERT_EQUAL(r.workers[2].pairs, 1 + 2);
    CU_ASSERT_EQUAL(r.workers[1].hosted, 2);  /* experts 0 and 1 */
    CU_ASSERT_EQUAL(r.workers[2].hosted, 3);  /* 0, 2 and 3 */
    sim_result_free(&r);
}

static void test_simulate_model_layers_take_trace_layer_floor_j_l_over_m(void) {
    /* a 2-layer trace against a model plan of 4 layers, layer 0 dense: MoE layers 1, 2, 3 are
     * j = 0, 1, 2 and replay trace layers 0, 0, 1. Trace layer 0 chooses (0,1) (worker 1),
     * layer 1 chooses (2,3) (worker 2): worker 1 computes 2 layers' pairs, worker 2 one. */
    trace *t = trace_new(2, 4, 2, 1, 2);
    t->n_domains = 1;
    t->seqs[0] = (trace_seq){.n_tokens = 2};
    static const int16_t ids[8] = {0, 1, 2, 3, 0, 1, 2, 3}; /* [token][layer][k] */
    memcpy(t->ids, ids, sizeof ids);
    place_plan *p = place_new(4, 4, 2);
    for (int l = 1; l < 4; l++)
        for (int e = 0; e < 4; e++) place_set(p, l, e, (const int[]){e < 2 ? 1 : 2}, 1);
    static const uint8_t is_moe[4] = {0, 1, 1, 1};
    sim_params sp = hand_params(SIM_PREFILL, 2);
    sp.is_moe = is_moe;
    sim_result r = replay(t, p, &sp);
    CU_ASSERT_EQUAL(r.steps, 1);
    CU_ASSERT_EQUAL(r.workers[1].pairs, 2 * 2 * 2); /* 2 tokens x 2 experts x 2 layers */
    CU_ASSERT_EQUAL(r.workers[2].pairs, 2 * 2 * 1);
    CLOSE(r.imbalance_mean, 2.0);  /* every (layer, step) has all its pairs on one worker */
    sim_result_free(&r);
}

static void test_simulate_skips_what_a_live_trace_did_not_record(void) {
    /* 2 layers, the second never recorded (ids -1, as the MTP block's when it does not run):
     * t0 (0,1) t1 (0,2) in layer 0 only. One step: loads 3, 1 -> 1.5; fan-out 1, 2; 3 rows of
     * 80 bytes for 2 tokens; 1858 ms (see the prefill test); layer 1 adds nothing anywhere. */
    trace *t = trace_new(2, 4, 2, 1, 2);
    t->n_domains = 1;
    t->seqs[0] = (trace_seq){.n_tokens = 2};
    static const int16_t ids[8] = {0, 1, -1, -1, 0, 2, -1, -1}; /* [token][layer][k] */
    memcpy(t->ids, ids, sizeof ids);
    sim_params sp = hand_params(SIM_PREFILL, 2);
    sim_result r = replay(t, make_plan(2, contiguous), &sp);
    CU_ASSERT_EQUAL(r.steps, 1);
    CLOSE(r.imbalance_mean, 1.5);
    CLOSE(r.fanout_mean, 1.5);
    CLOSE(r.bytes_per_token, 3 * 80 / 2.0);
    CLOSE(r.step_ms_mean, 1858);
    sim_result_free(&r);
}

static void test_simulate_host_model_shares_cores_and_adds_the_coordinator(void) {
    /* The prefill case above (2 steps, w1 and w2 mirror each other) with the coordinator: 1000
     * ms of its own work at one core, its rate 1000 flop/s a core, shared width 4.
     * 3 ranks on 2 cores, 2 coordinator threads: during the exchange workers at 2/3 of a core,
     * the shared experts at 2 * min(1, 2 / 4) = 1 core; outside it the workers wait asleep, so
     * the coordinator has min(2, 2) = 2 cores. Slower worker: 0.002 + 2 * 0.64 + 3 * 0.192 /
     * (2/3) = 2.146 s. Router: 2 tokens * 2 * D 8 * E 4 = 128 flop at 2 cores = 0.064 s; shared:
     * 2 * 6 * 8 * 4 = 384 flop = 0.384 s, under the workers' 2.146. Own work 1 s / 2 = 0.5 s.
     * Step 2.146 + 0.5 + 0.064 = 2.710 s. */
    static const int lens[2] = {2, 3};
    static const int ids[5][2] = {{0, 1}, {0, 2}, {2, 3}, {1, 3}, {0, 1}};
    sim_params sp = hand_params(SIM_PREFILL, 2);
    sp.ranks_per_host = 3, sp.cores_per_host = 2, sp.coord_threads = 2;
    sp.coord_ms = 1000, sp.coord_gflops = 1e-6, sp.shared_ffn = 4;
    sim_result r = replay(make_trace(2, lens, ids), make_plan(1, contiguous), &sp);
    CU_ASSERT_EQUAL(r.steps, 2);
    CLOSE(r.exchange_ms_mean, 2146);
    CLOSE(r.worker_compute_ms_mean, 864); /* 2146 less the link's 2 + 1280 */
    CLOSE(r.coord_ms_mean, 564);
    CLOSE(r.step_ms_mean, 2710);
    sim_result_free(&r);
    /* shared width 40: 3840 flop = 3.84 s, longer than the workers: the exchange waits for it */
    sp.shared_ffn = 40;
    r = replay(make_trace(2, lens, ids), make_plan(1, contiguous), &sp);
    CLOSE(r.exchange_ms_mean, 3840);
    CLOSE(r.step_ms_mean, 3840 + 564);
    sim_result_free(&r);
    /* one coordinator thread: 1 core outside the exchange whatever the host, 1000 + 128 ms */
    sp.shared_ffn = 4, sp.coord_threads = 1;
    r = replay(make_trace(2, lens, ids), make_plan(1, contiguous), &sp);
    CLOSE(r.coord_ms_mean, 1128);
    sim_result_free(&r);
    sp.coord_threads = 2;
    /* no shared host, one coordinator thread: workers at a whole core (1.858 s, as above) */
    sp.shared_ffn = 4, sp.ranks_per_host = 0, sp.cores_per_host = 0, sp.coord_threads = 0;
    r = replay(make_trace(2, lens, ids), make_plan(1, contiguous), &sp);
    CLOSE(r.step_ms_mean, 1858 + 1128);
    sim_result_free(&r);
    /* the coordinator's link at 1e-6 Gbit/s: step 1 sends 3 rows of 48 bytes (w1 2, w2 1) and gets
     * 3 of 32 back: 0.002 + 144 * 8 / 1000 = 1.154 s, under the workers' 1.858; at 0.5e-6 Gbit/s
     * 0.002 + 2.304 = 2.306 s, over them */
    sp.coord_link_gbps = 1e-6;
    r = replay(make_trace(2, lens, ids), make_plan(1, contiguous), &sp);
    CLOSE(r.exchange_ms_mean, 1858);
    sim_result_free(&r);
    sp.coord_link_gbps = 0.5e-6;
    r = replay(make_trace(2, lens, ids), make_plan(1, contiguous), &sp);
    CLOSE(r.exchange_ms_mean, 2306);
    sim_result_free(&r);
    sp.coord_link_gbps = 0;
    /* weights read at 1000 B/s, 1000 bytes an expert: step 1 w1 uses experts 0, 1 (w2 only 2),
     * step 2 the mirror: 2 s more for the slower worker, 3 distinct (worker, expert) a step; the
     * shared pathway (width 4 = F: one expert's weights) 1 s + 0.384 s, under the workers */
    sp.expert_bytes = 1000, sp.mem_gbs = 1e-6;
    r = replay(make_trace(2, lens, ids), make_plan(1, contiguous), &sp);
    CLOSE(r.exchange_ms_mean, 3858);
    CLOSE(r.step_ms_mean, 3858 + 1128);
    CLOSE(r.touched_mean, 3);
    sim_result_free(&r);
    /* 3 ranks on the host: its 2 workers share the bandwidth, 4 s for the slower one's 2 experts */
    sp.ranks_per_host = 3, sp.cores_per_host = 2, sp.coord_threads = 2;
    r = replay(make_trace(2, lens, ids), make_plan(1, contiguous), &sp);
    CLOSE(r.exchange_ms_mean, 2146 + 4000);
    CLOSE(r.worker_compute_ms_mean, 864 + 4000);
    sim_result_free(&r);
    sp.ranks_per_host = 0, sp.cores_per_host = 0, sp.coord_threads = 0, sp.mem_gbs = 0;
    /* skip_last: of 2 layers only the first runs (the second, the MTP block's, would double it) */
    trace *t = trace_new(2, 4, 2, 1, 2);
    t->n_domains = 1;
    t->seqs[0] = (trace_seq){.n_tokens = 2};
    static const int16_t two[8] = {0, 1, 0, 1, 0, 2, 0, 2}; /* [token][layer][k] */
    memcpy(t->ids, two, sizeof two);
    sp.skip_last = 1;
    r = replay(t, make_plan(2, contiguous), &sp);
    CLOSE(r.step_ms_mean, 1858 + 1128);
    sim_result_free(&r);
}

static void test_simulate_quantile_interpolates_linearly(void) {
    double v[5] = {5, 1, 4, 2, 3};                 /* sorted 1..5; h = 0.99 * 4 = 3.96 */
    CLOSE(sim_quantile(v, 5, 0.99), 4.96);
    double one[1] = {7};
    CLOSE(sim_quantile(one, 1, 0.99), 7);
    CLOSE(sim_quantile(v, 5, 0.5), 3);
}

static CU_TestInfo simulate_tests[] = {
    {"prefill cuts the concatenated tokens into whole steps", test_simulate_prefill_cuts_concatenated_tokens_into_whole_steps},
    {"decode staggers the first batch and replaces finished sequences", test_simulate_decode_staggers_the_first_batch_and_replaces_finished_sequences},
    {"decode needs a full first batch", test_simulate_decode_needs_a_full_first_batch},
    {"replicas under turns take tokens in turn across steps", test_simulate_replicas_under_turns_take_tokens_in_turn_across_steps},
    {"model MoE layers take trace layer floor(j L / M)", test_simulate_model_layers_take_trace_layer_floor_j_l_over_m},
    {"what a live trace did not record is skipped", test_simulate_skips_what_a_live_trace_did_not_record},
    {"the host model shares cores and adds the coordinator", test_simulate_host_model_shares_cores_and_adds_the_coordinator},
    {"the p99 interpolates linearly between ranks", test_simulate_quantile_interpolates_linearly},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo simulate_suite = {"simulate", NULL, NULL, NULL, NULL, simulate_tests};
