/* test_cluster.c: the MPI expert backend against the in-process one, under mpirun.
 *
 * Run as `mpirun -n N test_cluster MODEL_DIR`: rank 0 runs the CUnit suite, ranks 1..N-1 are
 * expert workers. For every placement algorithm (applied while serving, by re-planning the
 * running cluster) and for a plan with replicated experts, the prompt's prefill logits and
 * MTP logits stay within 1e-5 of the in-process engine's and greedy generation gives the
 * same ids. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cluster.h"
#include "coordinator/forward.h"
#include "core/common.h"
#include "core/nn.h"
#include "core/sampler.h"
#include "proto/exchange.h"
#include "tests/runner.h"
#include "worker/worker.h"
#include "core/cpu.h"

#define T 24
#define NGEN 12
#define MAXR 64

static const char *g_dir;
static model *g_local, *g_meta; /* every expert / none (the coordinator's) */
static cluster g_cl;
static float *g_want, *g_want_mtp;
static int g_want_ids[NGEN];
static int g_prompt[T];

typedef struct eng {
    kv_cache *kv;
    fwd_ctx *f;
    moe_backend *moe; /* owned only for the local engine */
} eng;

static eng eng_new(model *m, moe_backend *moe) {
    eng e = {.kv = kv_new(m->n_layers, m->cfg.kv_lora_rank + m->cfg.qk_rope_head_dim, 1024, 2, 256), .moe = moe};
    e.f = fwd_new(m, e.kv, moe, MAXR);
    return e;
}

static void eng_free(eng *e) {
    fwd_free(e->f);
    kv_free(e->kv);
}

/* prefill logits [T, V], MTP logits [T-1, V], then NGEN greedy ids */
static int run(eng *e, const model *m, float *logits, float *mtp, int *ids) {
    int V = m->cfg.vocab_size, D = m->cfg.hidden_size;
    float *hidden = malloc((size_t)T * D * 4), *lg = malloc((size_t)V * 4);
    int seq = kv_seq_open(e->kv), rc;
    kv_seq_reserve(e->kv, seq, T + NGEN + 1);
    fwd_row rows[T];
    for (int t = 0; t < T; t++) rows[t] = (fwd_row){seq, t, g_prompt[t], FWD_NAIVE | FWD_LOGITS};
    fwd_out o = {.logits = logits, .hidden = hidden};
    rc = fwd_step(e->f, rows, T, &o);
    if (!rc && m->has_mtp) {
        for (int t = 0; t < T - 1; t++) rows[t] = (fwd_row){seq, t, g_prompt[t + 1], FWD_NAIVE | FWD_LOGITS};
        rc = fwd_mtp(e->f, rows, hidden, T - 1, mtp);
    }
    int next = sampler_argmax(logits + (size_t)(T - 1) * V, V);
    for (int i = 0; i < NGEN && !rc; i++) {
        ids[i] = next;
        fwd_row r = {seq, T + i, next, FWD_LOGITS};
        fwd_out od = {.logits = lg};
        rc = fwd_step(e->f, &r, 1, &od);
        next = sampler_argmax(lg, V);
    }
    kv_seq_close(e->kv, seq);
    free(hidden), free(lg);
    return rc;
}

static double max_diff(const float *a, const float *b, size_t n, size_t *at) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)a[i] - b[i]) > m) m = fabs((double)a[i] - b[i]), *at = i;
    return m;
}

/* the cluster with its current plan against the in-process results */
static void check_plan(const char *what) {
    int V = g_meta->cfg.vocab_size;
    eng e = eng_new(g_meta, g_cl.moe);
    fwd_set_route_counts(e.f, g_cl.stats->routed);
    float *lg = malloc((size_t)T * V * 4), *mtp = malloc((size_t)T * V * 4);
    int ids[NGEN];
    CU_ASSERT_EQUAL_FATAL(run(&e, g_meta, lg, mtp, ids), 0);
    size_t at = 0;
    double d = max_diff(lg, g_want, (size_t)T * V, &at);
    if (d > 1e-5) printf("\n  %s: prefill logits differ by %.3g at %zu (%.7g vs %.7g)\n", what, d, at, lg[at], g_want[at]);
    CU_ASSERT(d <= 1e-5);
    if (g_meta->has_mtp) {
        d = max_diff(mtp, g_want_mtp, (size_t)(T - 1) * V, &at);
        if (d > 1e-5) printf("\n  %s: MTP logits differ by %.3g at %zu\n", what, d, at);
        CU_ASSERT(d <= 1e-5);
    }
    CU_ASSERT_EQUAL(memcmp(ids, g_want_ids, sizeof ids), 0);
    free(lg), free(mtp);
    eng_free(&e);
}

static uint8_t *moe_layers(const model *m) {
    uint8_t *is_moe = calloc((size_t)m->n_layers, 1);
    for (int l = 0; l < m->n_layers; l++) is_moe[l] = (uint8_t)m->layers[l].is_moe;
    return is_moe;
}

static void test_every_algorithm_matches_in_process(void) {
    uint8_t *is_moe = moe_layers(g_meta);
    for (int a = 0; place_algos[a]; a++) {
        place_input in = {.n_layers = g_meta->n_layers, .n_experts = g_meta->cfg.n_routed_experts,
                          .n_workers = g_cl.n_workers, .is_moe = is_moe};
        place_plan *p = place_compute(place_algos[a], &in);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p);
        CU_ASSERT_EQUAL_FATAL(cluster_replan(&g_cl, p), 0); /* applied while serving */
        check_plan(place_algos[a]);
    }
    free(is_moe);
}

/* every expert on every worker: each expert's tokens alternate between its replicas */
static void test_replicated_experts_match_in_process(void) {
    uint8_t *is_moe = moe_layers(g_meta);
    int W = g_cl.n_workers, E = g_meta->cfg.n_routed_experts, ws[64];
    place_plan *p = place_new(g_meta->n_layers, E, W);
    for (int l = 0; l < g_meta->n_layers; l++)
        for (int e = 0; is_moe[l] && e < E; e++) {
            int n = e % 3 == 0 ? W : DH_MIN(W, 1 + e % 2); /* a third everywhere, others on 1 or 2 */
            for (int i = 0; i < n; i++) ws[i] = (e + l + i) % W + 1;
            place_set(p, l, e, ws, n);
        }
    CU_ASSERT_EQUAL_FATAL(place_validate(p, is_moe), 0);
    CU_ASSERT_EQUAL_FATAL(cluster_replan(&g_cl, p), 0);
    check_plan("replicated");
    free(is_moe);
}

static void test_load_statistics_count_what_was_sent(void) {
    CU_ASSERT_EQUAL(cluster_report(&g_cl), 0);
    uint64_t pairs = 0, routed = 0;
    for (int w = 1; w <= g_cl.n_workers; w++) {
        pairs += g_cl.stats->workers[w].expert_tokens;
        CU_ASSERT(g_cl.stats->workers[w].bytes_in > 0);
    }
    for (size_t i = 0; i < (size_t)g_meta->n_layers * g_meta->cfg.n_routed_experts; i++) routed += g_cl.stats->routed[i];
    /* every routed choice of every run went to exactly one worker */
    CU_ASSERT_EQUAL(pairs, routed);
    CU_ASSERT(ls_balance(g_cl.stats) > 0 && ls_balance(g_cl.stats) <= 1);
}

static int suite_init(void) {
    model_params p = model_default_params();
    g_local = model_load(g_dir, &p);
    p.experts = 0;
    g_meta = model_load(g_dir, &p);
    if (!g_local || !g_meta) return 1;
    int V = g_local->cfg.vocab_size;
    for (int t = 0; t < T; t++) g_prompt[t] = (t * 7919 + 13) % V;
    g_want = malloc((size_t)T * V * 4), g_want_mtp = malloc((size_t)T * V * 4);
    moe_backend *loc = moe_local_new(g_local, MAXR);
    eng e = eng_new(g_local, loc);
    int rc = run(&e, g_local, g_want, g_want_mtp, g_want_ids);
    eng_free(&e);
    moe_free(loc);
    cluster_params cp = {.placement_algo = "contiguous", .timeout = 30, .max_rows = MAXR};
    if (rc || cluster_start(&g_cl, g_meta, &cp) != 0) return 1;
    return 0;
}

static int suite_clean(void) {
    cluster_stop(&g_cl);
    model_free(g_local), model_free(g_meta);
    free(g_want), free(g_want_mtp);
    return 0;
}

static CU_TestInfo cluster_tests[] = {
    {"every placement algorithm matches the in-process engine", test_every_algorithm_matches_in_process},
    {"replicated experts match the in-process engine", test_replicated_experts_match_in_process},
    {"load statistics count what was sent", test_load_statistics_count_what_was_sent},
    CU_TEST_INFO_NULL,
};

int main(int argc, char **argv) {
    cpu_fix_openblas(argv); /* OpenBLAS's AVX-512 kernels, as darkhorse does (core/cpu.c) */
    xchg_init(&argc, &argv);
    if (argc < 2) {
        fprintf(stderr, "usage: mpirun -n N test_cluster MODEL_DIR\n");
        xchg_finalize();
        return 2;
    }
    g_dir = argv[1];
    nn_init(xchg_rank() == 0 ? 2 : 1, 0);
    int rc;
    if (xchg_rank() > 0) {
        worker_opts wo = {.model_dir = g_dir, .weights = -1};
        rc = worker_main(&wo);
    } else if (xchg_size() < 2) {
        fprintf(stderr, "test_cluster needs at least one worker: run it under mpirun -n 2 or more\n");
        rc = 2;
    } else {
        CU_SuiteInfo suites[] = {{"cluster", suite_init, suite_clean, NULL, NULL, cluster_tests}, CU_SUITE_INFO_NULL};
        char *args[] = {argv[0], NULL};
        rc = dh_test_main(1, args, suites);
        if (rc) xchg_abort(rc); /* a failed init leaves the workers waiting */
    }
    nn_shutdown();
    xchg_finalize();
    return rc;
}
