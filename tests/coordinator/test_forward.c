/* test_forward.c: the single-process engine against DeepSeek-V3's reference implementation
 * (tests/data/ref-tiny and ref-tiny-yarn: prefill logits, hidden states, routing, step-by-step
 * decode through the KV cache, greedy ids, MTP logits), within expected.json's tolerance. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/forward.h"
#include "coordinator/kvcache.h"
#include "core/common.h"
#include "core/nn.h"
#include "tests/coordinator/refcase.h"
#include "tests/runner.h"

/* |got - want| <= atol + rtol |want| everywhere; prints the worst element on failure */
int ref_check(const char *what, const float *got, const float *want, size_t n, double atol, double rtol) {
    size_t worst = 0;
    double wr = -1, maxerr = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double tol = atol + rtol * fabs(want[i]), err = fabs((double)got[i] - want[i]);
        maxerr = fmax(maxerr, err);
        if (!(err <= tol)) bad++;
        if (err / tol > wr || isnan(err)) {
            wr = isnan(err) ? INFINITY : err / tol;
            worst = i;
        }
    }
    if (getenv("DH_TEST_VERBOSE")) printf("\n  %s: max abs difference %.3g", what, maxerr);
    if (bad)
        printf("\n  %s: %d of %zu outside tolerance; worst at %zu: got %.7g want %.7g (tol %.3g)\n", what,
               bad, n, worst, got[worst], want[worst], atol + rtol * fabs(want[worst]));
    return bad;
}

static int ids_of(json_t *a, int *out, int max) {
    int n = (int)json_array_size(a);
    for (int i = 0; i < n && i < max; i++) out[i] = (int)json_integer_value(json_array_get(a, (size_t)i));
    return n;
}

int ref_load(ref_case *rc, const char *name) {
    memset(rc, 0, sizeof *rc);
    snprintf(rc->dir, sizeof rc->dir, "%s", dh_test_data(name));
    char p[1200];
    snprintf(p, sizeof p, "%s/expected.json", rc->dir);
    json_error_t e;
    json_t *j = json_load_file(p, 0, &e);
    if (!j) return -1;
    rc->T = ids_of(json_object_get(j, "prompt_ids"), rc->prompt, REF_MAX);
    rc->n_gen = ids_of(json_object_get(j, "greedy_ids"), rc->greedy, REF_MAX);
    rc->next_after = (int)json_integer_value(json_object_get(j, "next_after_greedy"));
    json_t *tol = json_object_get(j, "tolerance");
    rc->atol = json_real_value(json_object_get(tol, "logits_atol"));
    rc->rtol = json_real_value(json_object_get(tol, "logits_rtol"));
    rc->hatol = json_real_value(json_object_get(tol, "hidden_atol"));
    rc->hrtol = json_real_value(json_object_get(tol, "hidden_rtol"));
    json_t *amb = json_object_get(json_object_get(tol, "argmax_ambiguous"), "prefill");
    for (size_t i = 0; i < json_array_size(amb); i++)
        rc->ambiguous_prefill[json_integer_value(json_array_get(amb, i))] = 1;
    json_decref(j);
    return 0;
}

float *ref_floats(const ref_case *rc, const char *file, size_t n) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", rc->dir, file);
    size_t len;
    float *d = dh_test_read_file(p, &len);
    if (!d || len != n * sizeof(float)) {
        printf("\n  %s: expected %zu floats, file has %zu bytes\n", p, n, d ? len : 0);
        free(d);
        return NULL;
    }
    return d;
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* The engine on one reference case */
typedef struct engine {
    model *m;
    kv_cache *kv;
    moe_backend *moe;
    fwd_ctx *f;
} engine;

static int engine_open(engine *e, const char *dir, int max_rows) {
    model_params p = model_default_params();
    e->m = model_load(dir, &p);
    if (!e->m) return -1;
    e->kv = kv_new(e->m->n_layers, e->m->cfg.kv_lora_rank + e->m->cfg.qk_rope_head_dim, 4096, 4, 1024);
    e->moe = moe_local_new(e->m, max_rows);
    e->f = fwd_new(e->m, e->kv, e->moe, max_rows);
    return 0;
}

static void engine_close(engine *e) {
    fwd_free(e->f);
    moe_free(e->moe);
    kv_free(e->kv);
    model_free(e->m);
}

static void check_case(const char *name) {
    ref_case rc;
    CU_ASSERT_EQUAL_FATAL(ref_load(&rc, name), 0);
    engine e = {0};
    CU_ASSERT_EQUAL_FATAL(engine_open(&e, rc.dir, 128), 0);
    const model_config *c = &e.m->cfg;
    int T = rc.T, V = c->vocab_size, D = c->hidden_size, K = c->num_experts_per_tok, L = c->num_hidden_layers;
    int n_moe = 0;
    for (int l = 0; l < L; l++) n_moe += e.m->layers[l].is_moe;
    int seq = kv_seq_open(e.kv);
    CU_ASSERT_EQUAL_FATAL(kv_seq_reserve(e.kv, seq, T + rc.n_gen + 1), 0);

    /* prefill: every prompt row, naive form, logits for all */
    fwd_row rows[REF_MAX];
    for (int t = 0; t < T; t++) rows[t] = (fwd_row){seq, t, rc.prompt[t], FWD_NAIVE | FWD_LOGITS};
    float *logits = malloc((size_t)T * V * 4), *hidden = malloc((size_t)(T + rc.n_gen + 1) * D * 4);
    float *lh = malloc((size_t)L * T * D * 4), *fn = malloc((size_t)T * D * 4);
    int *ridx = malloc((size_t)n_moe * T * K * sizeof(int));
    fwd_out out = {.logits = logits, .hidden = hidden, .layer_hidden = lh, .final_norm = fn, .route_idx = ridx};
    CU_ASSERT_EQUAL_FATAL(fwd_step(e.f, rows, T, &out), 0);
    float *want = ref_floats(&rc, "prefill_logits.f32", (size_t)T * V);
    CU_ASSERT_EQUAL(ref_check("prefill logits", logits, want, (size_t)T * V, rc.atol, rc.rtol), 0);
    for (int t = 0; t < T; t++)
        if (!rc.ambiguous_prefill[t]) CU_ASSERT_EQUAL(argmax(logits + (size_t)t * V, V), argmax(want + (size_t)t * V, V));
    free(want);
    want = ref_floats(&rc, "prefill_hidden_layers.f32", (size_t)L * T * D);
    CU_ASSERT_EQUAL(ref_check("hidden layers", lh, want, (size_t)L * T * D, rc.hatol, rc.hrtol), 0);
    free(want);
    want = ref_floats(&rc, "prefill_final_norm.f32", (size_t)T * D);
    CU_ASSERT_EQUAL(ref_check("final norm", fn, want, (size_t)T * D, rc.hatol, rc.hrtol), 0);
    free(want);

    /* routing: the expert set of every prompt token in every MoE layer */
    char p[1200];
    snprintf(p, sizeof p, "%s/routing_prefill.json", rc.dir);
    json_t *rj = json_load_file(p, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rj);
    int moe_i = 0, bad_sets = 0;
    for (int l = 0; l < L; l++) {
        if (!e.m->layers[l].is_moe) continue;
        char key[32];
        snprintf(key, sizeof key, "layer%d", l);
        json_t *ex = json_object_get(json_object_get(json_object_get(rj, "layers"), key), "experts");
        CU_ASSERT_EQUAL(json_array_size(ex), (size_t)T);
        for (int t = 0; t < T; t++) {
            uint64_t a = 0, b = 0;
            for (int k = 0; k < K; k++) {
                a |= 1ULL << ridx[((size_t)moe_i * T + t) * K + k];
                b |= 1ULL << json_integer_value(json_array_get(json_array_get(ex, (size_t)t), (size_t)k));
            }
            bad_sets += a != b;
        }
        moe_i++;
    }
    CU_ASSERT_EQUAL(bad_sets, 0);
    json_decref(rj);

    /* decode: feed the greedy ids one at a time through the cache (absorbed form) */
    float *dl = malloc((size_t)rc.n_gen * V * 4);
    int next = argmax(logits + (size_t)(T - 1) * V, V);
    CU_ASSERT_EQUAL(next, rc.greedy[0]);
    for (int s = 0; s < rc.n_gen; s++) {
        fwd_row r = {seq, T + s, rc.greedy[s], FWD_LOGITS};
        fwd_out o = {.logits = dl + (size_t)s * V, .hidden = hidden + (size_t)(T + s) * D};
        CU_ASSERT_EQUAL_FATAL(fwd_step(e.f, &r, 1, &o), 0);
        int g = argmax(dl + (size_t)s * V, V);
        CU_ASSERT_EQUAL(g, s + 1 < rc.n_gen ? rc.greedy[s + 1] : rc.next_after);
    }
    want = ref_floats(&rc, "decode_logits.f32", (size_t)rc.n_gen * V);
    CU_ASSERT_EQUAL(ref_check("decode logits", dl, want, (size_t)rc.n_gen * V, rc.atol, rc.rtol), 0);
    free(want);

    /* MTP over the prompt in one step: row i from h_i and prompt token i+1 */
    float *ml = malloc((size_t)(T + rc.n_gen) * V * 4);
    for (int t = 0; t < T - 1; t++) rows[t] = (fwd_row){seq, t, rc.prompt[t + 1], FWD_NAIVE | FWD_LOGITS};
    CU_ASSERT_EQUAL_FATAL(fwd_mtp(e.f, rows, hidden, T - 1, ml), 0);
    want = ref_floats(&rc, "mtp_logits.f32", (size_t)(T - 1) * V);
    CU_ASSERT_EQUAL(ref_check("mtp logits", ml, want, (size_t)(T - 1) * V, rc.atol, rc.rtol), 0);
    free(want);
    /* ...continued one row at a time over the generated tokens, as drafting does */
    int seqall[2 * REF_MAX];
    memcpy(seqall, rc.prompt, (size_t)T * sizeof(int));
    memcpy(seqall + T, rc.greedy, (size_t)rc.n_gen * sizeof(int));
    seqall[T + rc.n_gen] = rc.next_after;
    for (int i = T - 1; i < T + rc.n_gen; i++) {
        fwd_row r = {seq, i, seqall[i + 1], FWD_LOGITS};
        CU_ASSERT_EQUAL_FATAL(fwd_mtp(e.f, &r, hidden + (size_t)i * D, 1, ml + (size_t)i * V), 0);
    }
    want = ref_floats(&rc, "mtp_logits_full.f32", (size_t)(T + rc.n_gen) * V);
    /* rows 0..T-2 from the prompt step, the rest incremental */
    CU_ASSERT_EQUAL(ref_check("mtp logits full", ml, want, (size_t)(T + rc.n_gen) * V, rc.atol, rc.rtol), 0);
    free(want);

    free(logits), free(hidden), free(lh), free(fn), free(ridx), free(dl), free(ml);
    kv_seq_close(e.kv, seq);
    engine_close(&e);
}

static void test_ref_tiny_matches_the_reference(void) { check_case("ref-tiny"); }
static void test_ref_tiny_yarn_matches_the_reference(void) { check_case("ref-tiny-yarn"); }

/* The latent cache's layout (kvcache.c): a sequence whose blocks were taken in order (the
 * free list gives them so, and again after a close) has each layer's rows as one run of
 * memory, which decode attention reads as a stream; every (layer, position) has a row of its
 * own, and two sequences' rows never meet. */
static void test_a_layers_cache_is_one_stream_of_rows(void) {
    enum { L = 3, ROW = 8, T = 70 };
    kv_cache *kv = kv_new(L, ROW, 256, 2, 128);
    CU_ASSERT_PTR_NOT_NULL_FATAL(kv);
    for (int round = 0; round < 2; round++) { /* the second after a close: the same order again */
        int sq[2] = {kv_seq_open(kv), kv_seq_open(kv)};
        for (int k = 0; k < 2; k++) CU_ASSERT_EQUAL_FATAL(kv_seq_reserve(kv, sq[k], T), 0);
        for (int k = 0; k < 2; k++)
            for (int l = 0; l < L; l++)
                for (int p = 0; p + 1 < T; p++)
                    CU_ASSERT_PTR_EQUAL(kv_row(kv, sq[k], l, p + 1), kv_row(kv, sq[k], l, p) + ROW);
        for (int k = 0; k < 2; k++) /* a value a row, read back after all are written */
            for (int l = 0; l < L; l++)
                for (int p = 0; p < T; p++)
                    for (int i = 0; i < ROW; i++) kv_row(kv, sq[k], l, p)[i] = (float)(((k * L + l) * T + p) * ROW + i);
        int all = 1;
        for (int k = 0; k < 2; k++)
            for (int l = 0; l < L; l++)
                for (int p = 0; p < T; p++)
                    for (int i = 0; i < ROW; i++)
                        all &= kv_row_c(kv, sq[k], l, p)[i] == (float)(((k * L + l) * T + p) * ROW + i);
        CU_ASSERT(all);
        kv_seq_close(kv, sq[1]), kv_seq_close(kv, sq[0]);
    }
    kv_free(kv);
}

static int fwd_init(void) {
    nn_init(2, 0);
    return 0;
}
static int fwd_clean(void) {
    nn_shutdown();
    return 0;
}

static CU_TestInfo forward_tests[] = {
    {"ref-tiny matches the reference", test_ref_tiny_matches_the_reference},
    {"ref-tiny-yarn (q LoRA, groups, bf16, YaRN) matches the reference", test_ref_tiny_yarn_matches_the_reference},
    {"a layer's cache is one stream of rows", test_a_layers_cache_is_one_stream_of_rows},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo forward_suite = {"forward", fwd_init, fwd_clean, NULL, NULL, forward_tests};
