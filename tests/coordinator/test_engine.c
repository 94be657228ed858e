/* test_engine.c: continuous batching. Concurrent greedy and seeded requests give exactly what
 * each gives alone, and what a plain decode loop gives; a seeded request resumed from its
 * tokens so far goes on as it would have; stop strings, max_tokens, cancellation, the queue
 * and context limits, shutdown. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/engine.h"
#include "core/common.h"
#include "core/genmodel.h"
#include "core/nn.h"
#include "core/tok_embedded.h"
#include "tests/runner.h"

#define NREQ 16

static const char *cfg_json =
    "{\"vocab_size\":512,\"hidden_size\":64,\"intermediate_size\":128,\"moe_intermediate_size\":32,"
    "\"num_hidden_layers\":3,\"first_k_dense_replace\":1,\"num_attention_heads\":4,\"n_routed_experts\":64,"
    "\"num_experts_per_tok\":4,\"n_shared_experts\":2,\"kv_lora_rank\":32,\"qk_nope_head_dim\":16,"
    "\"qk_rope_head_dim\":8,\"v_head_dim\":16,\"eos_token_id\":1,\"model_type\":\"deepseek_v3\"}";

static model *g_m;
static tokenizer *g_tok;

typedef struct result {
    char text[8192];
    size_t len;
    int done, finish, completion_tokens, error;
    double share_sum;
} result;

typedef struct harness {
    kv_cache *kv;
    moe_backend *moe;
    fwd_ctx *f;
    ls_stats *stats;
    engine *e;
    result res[64];
    int outstanding;  /* stop the engine when it reaches 0 */
    uint64_t cancel_after_text; /* cancel this id on its first text */
    sampler_params sampling;    /* of every request; request i has seed sampling.seed + i */
} harness;

static void on_event(void *ctx, const engine_event *ev) {
    harness *h = ctx;
    result *r = ev->user;
    if (ev->kind == ENGINE_EV_TEXT || ev->kind == ENGINE_EV_DONE) {
        CU_ASSERT(r->len + ev->len < sizeof r->text);
        memcpy(r->text + r->len, ev->text, ev->len);
        r->len += ev->len;
        r->text[r->len] = 0;
        if (ev->kind == ENGINE_EV_TEXT && ev->id == h->cancel_after_text) engine_cancel(h->e, ev->id);
    }
    if (ev->kind == ENGINE_EV_DONE) {
        r->done = 1, r->finish = ev->finish, r->completion_tokens = ev->completion_tokens;
        for (int d = 0; d < CFG_N_DOMAINS; d++) r->share_sum += ev->domain_share[d];
    }
    if (ev->kind == ENGINE_EV_ERROR) r->error = ev->code;
    if (ev->kind != ENGINE_EV_TEXT && --h->outstanding == 0) engine_stop(h->e, 10);
}

static void h_open(harness *h, int max_seqs, int max_batch, int max_queue, size_t kv_tokens) {
    memset(h, 0, sizeof *h);
    h->kv = kv_new(g_m->n_layers, g_m->cfg.kv_lora_rank + g_m->cfg.qk_rope_head_dim, kv_tokens, max_seqs, 512);
    h->moe = moe_local_new(g_m, max_batch);
    h->f = fwd_new(g_m, h->kv, h->moe, max_batch);
    h->stats = ls_new(g_m->n_layers, g_m->cfg.n_routed_experts, 0);
    fwd_set_route_counts(h->f, h->stats->routed);
    engine_params p = {.max_seqs = max_seqs, .max_batch_tokens = max_batch, .max_queue = max_queue, .max_context = 512};
    h->e = engine_new(g_m, h->f, h->kv, g_tok, h->stats, &p, on_event, h);
}

static void h_close(harness *h) {
    engine_free(h->e);
    fwd_free(h->f);
    moe_free(h->moe);
    ls_free(h->stats);
    kv_free(h->kv);
}

static int prompt_of(int i, int *out) {
    int n = 3 + (i * 7) % 29; /* prompts of 3..31 tokens */
    for (int t = 0; t < n; t++) out[t] = 2 + (i * 131 + t * 17) % 500;
    return n;
}

static int64_t submit(harness *h, int i, int max_tokens, const char *const *stop, int n_stop) {
    int prompt[64];
    engine_request q = {.prompt = prompt, .n_prompt = prompt_of(i, prompt), .max_tokens = max_tokens,
                        .sampling = h->sampling, .stop = stop, .n_stop = n_stop, .ignore_eos = 1,
                        .user = &h->res[i]};
    q.sampling.seed += (uint64_t)i;
    char err[256];
    int64_t id = engine_submit(h->e, &q, err, sizeof err);
    if (id > 0) h->outstanding++;
    return id;
}

/* NREQ requests sampled with sp, each alone, then all at once */
static void check_batched_equal_each_alone(sampler_params sp) {
    static result alone[NREQ];
    for (int i = 0; i < NREQ; i++) {
        harness h;
        h_open(&h, 4, 32, 64, 4096);
        h.sampling = sp;
        CU_ASSERT(submit(&h, i, 20, NULL, 0) > 0);
        CU_ASSERT_EQUAL(engine_run(h.e), 0);
        alone[i] = h.res[i];
        CU_ASSERT(alone[i].done && alone[i].completion_tokens == 20);
        h_close(&h);
    }
    /* all at once, few slots and a small step budget: prompts are chunked and mixed with
     * decode rows of other requests, and requests wait for slots */
    harness h;
    h_open(&h, 6, 13, 64, 4096);
    h.sampling = sp;
    for (int i = 0; i < NREQ; i++) CU_ASSERT(submit(&h, i, 20, NULL, 0) > 0);
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    for (int i = 0; i < NREQ; i++) {
        CU_ASSERT(h.res[i].done);
        if (strcmp(h.res[i].text, alone[i].text) != 0)
            printf("\n  request %d alone: \"%s\"\n  in a batch: \"%s\"\n", i, alone[i].text, h.res[i].text);
        CU_ASSERT_STRING_EQUAL(h.res[i].text, alone[i].text);
        CU_ASSERT_DOUBLE_EQUAL(h.res[i].share_sum, 1.0, 1e-9);
    }
    engine_metrics m;
    engine_get_metrics(h.e, &m);
    CU_ASSERT_EQUAL(m.finished_length, NREQ);
    CU_ASSERT_EQUAL(m.generated_tokens, NREQ * 20);
    CU_ASSERT_EQUAL(m.kv_used_tokens, 0); /* every sequence gave its blocks back */
    CU_ASSERT_EQUAL(m.ttft.n, NREQ);
    h_close(&h);
}

static void test_concurrent_greedy_requests_equal_each_alone(void) {
    check_batched_equal_each_alone((sampler_params){.temperature = 0});
}

/* flat enough that most draws matter: a random-weight model's 512 tokens are near equally likely */
static const sampler_params seeded = {.temperature = 1, .top_p = 0.95f, .top_k = 0, .seed = 1000};

static void test_concurrent_seeded_requests_equal_each_alone(void) {
    check_batched_equal_each_alone(seeded);
}

/* The plain decode loop of one request on its own cache: the prompt in prompt rows, then
 * given[0..n_given) as decode rows in one step (a resume: DESIGN.md's row forms), then one
 * token per step, sampled at its position, until out[0..n) is full (out[i] = given[i] for
 * i < n_given). */
static void decode_alone(const int *prompt, int n_prompt, const int *given, int n_given, sampler_params sp,
                         int *out, int n) {
    enum { ROWS = 64 };
    DH_ASSERT(n_prompt + n <= ROWS && n_given < n);
    kv_cache *kv = kv_new(g_m->n_layers, g_m->cfg.kv_lora_rank + g_m->cfg.qk_rope_head_dim, 256, 1, 256);
    moe_backend *moe = moe_local_new(g_m, ROWS);
    fwd_ctx *f = fwd_new(g_m, kv, moe, ROWS);
    sampler *smp = sampler_new(g_m->cfg.vocab_size, sp);
    float *logits = xmalloc((size_t)g_m->cfg.vocab_size * sizeof *logits);
    fwd_row rows[ROWS];
    int seq = kv_seq_open(kv), T = 0;
    CU_ASSERT_FATAL(seq >= 0 && kv_seq_reserve(kv, seq, n_prompt + n) == 0);
    for (int t = 0; t < n_prompt; t++) rows[T++] = (fwd_row){seq, t, prompt[t], FWD_NAIVE};
    CU_ASSERT_EQUAL(fwd_step(f, rows, T, &(fwd_out){0}), 0);
    // the last prompt token and the given tokens as decode rows; the last one's logits
    T = 0;
    for (int i = -1; i < n_given; i++) rows[T++] = (fwd_row){seq, n_prompt + i, i < 0 ? prompt[n_prompt - 1] : given[i], 0};
    rows[T - 1].flags = FWD_LOGITS;
    if (n_given) memcpy(out, given, (size_t)n_given * sizeof *out);
    for (int i = n_given; i < n; i++) {
        CU_ASSERT_EQUAL(fwd_step(f, rows, T, &(fwd_out){.logits = logits}), 0);
        out[i] = sampler_sample(smp, logits, 0, n_prompt + i, SAMPLER_TOKEN);
        rows[0] = (fwd_row){seq, n_prompt + i, out[i], FWD_LOGITS}, T = 1;
    }
    free(logits);
    sampler_free(smp);
    fwd_free(f);
    moe_free(moe);
    kv_free(kv);
}

/* A seeded request's tokens are a function of its prompt, its seed and the positions alone:
 * the engine (batched with others) gives what the plain loop gives, and a loop resumed from
 * the first k tokens goes on with exactly the tokens the uninterrupted one drew. A generator
 * whose state advanced with every draw would start the resumed request's stream over. */
static void test_a_resumed_seeded_request_goes_on_as_before(void) {
    enum { N = 24, REQ = 5 };
    int prompt[64], full[N], resumed[N];
    int n_prompt = prompt_of(REQ, prompt);
    sampler_params sp = seeded;
    sp.seed += REQ; /* as submit() seeds request REQ */
    decode_alone(prompt, n_prompt, NULL, 0, sp, full, N);
    // the engine, with other requests in the step, agrees with the plain loop
    harness h;
    h_open(&h, 4, 16, 64, 4096);
    h.sampling = seeded;
    for (int i = 0; i < 6; i++) CU_ASSERT(submit(&h, i, N, NULL, 0) > 0);
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    char *text;
    tok_decode(g_tok, full, N, &text, NULL);
    if (strcmp(h.res[REQ].text, text) != 0)
        printf("\n  the plain loop: \"%s\"\n  the engine: \"%s\"\n", text, h.res[REQ].text);
    CU_ASSERT_STRING_EQUAL(h.res[REQ].text, text);
    free(text);
    h_close(&h);
    int distinct = 0;
    for (int i = 0; i < N; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= full[j] == full[i];
        distinct += !seen;
    }
    CU_ASSERT(distinct > N / 2); /* sampling, not a greedy loop */
    for (int k = 1; k < N; k += 7) {
        decode_alone(prompt, n_prompt, full, k, sp, resumed, N);
        for (int i = k; i < N; i++)
            if (resumed[i] != full[i]) {
                printf("\n  resumed after %d tokens: token %d is %d, uninterrupted %d\n", k, i, resumed[i], full[i]);
                CU_FAIL("the resumed request drew differently");
                break;
            }
    }
}

static void test_a_stop_string_ends_the_text_before_it(void) {
    harness h;
    h_open(&h, 2, 32, 8, 4096);
    submit(&h, 3, 30, NULL, 0);
    engine_run(h.e);
    result full = h.res[3];
    h_close(&h);
    CU_ASSERT_FATAL(full.len > 12);
    /* a stop string taken from the middle of the full text */
    char stop[8];
    memcpy(stop, full.text + full.len / 2, 4);
    stop[4] = 0;
    size_t at = (size_t)(strstr(full.text, stop) - full.text);
    const char *stops[2] = {"never appears \x01", stop};
    h_open(&h, 2, 32, 8, 4096);
    submit(&h, 3, 30, stops, 2);
    engine_run(h.e);
    CU_ASSERT_EQUAL(h.res[3].finish, ENGINE_FINISH_STOP);
    CU_ASSERT_EQUAL(h.res[3].len, at);
    CU_ASSERT_EQUAL(strncmp(h.res[3].text, full.text, at), 0);
    h_close(&h);
}

static void test_cancelling_frees_the_sequence_at_once(void) {
    harness h;
    h_open(&h, 2, 32, 8, 4096);
    int64_t id = submit(&h, 1, 400, NULL, 0);
    submit(&h, 2, 5, NULL, 0);
    h.cancel_after_text = (uint64_t)id;
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    CU_ASSERT_EQUAL(h.res[1].error, DH_ECANCELLED);
    CU_ASSERT(!h.res[1].done);
    CU_ASSERT(h.res[2].done); /* the other request is not disturbed */
    engine_metrics m;
    engine_get_metrics(h.e, &m);
    CU_ASSERT_EQUAL(m.cancelled, 1);
    CU_ASSERT_EQUAL(m.kv_used_tokens, 0);
    h_close(&h);
}

static void test_queue_and_context_limits_are_refused(void) {
    harness h;
    h_open(&h, 1, 16, 2, 256);
    CU_ASSERT(submit(&h, 0, 10, NULL, 0) > 0);
    CU_ASSERT(submit(&h, 1, 10, NULL, 0) > 0);
    CU_ASSERT_EQUAL(submit(&h, 2, 10, NULL, 0), DH_EBUSY); /* two waiting already */
    int prompt[8] = {5, 6, 7};
    char err[256] = "";
    engine_request q = {.prompt = prompt, .n_prompt = 3, .max_tokens = 600, .user = &h.res[9]};
    CU_ASSERT_EQUAL(engine_submit(h.e, &q, err, sizeof err), DH_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "context limit of 512"));
    q.max_tokens = 300; /* fits the context, not the 256-token cache */
    CU_ASSERT_EQUAL(engine_submit(h.e, &q, err, sizeof err), DH_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "KV cache"));
    engine_run(h.e);
    CU_ASSERT(h.res[0].done && h.res[1].done);
    h_close(&h);
}

static void test_stopping_fails_what_cannot_finish(void) {
    harness h;
    h_open(&h, 2, 32, 8, 4096);
    submit(&h, 4, 400, NULL, 0);
    engine_stop(h.e, 0); /* no grace: the request in flight fails */
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    CU_ASSERT_EQUAL(h.res[4].error, DH_ECANCELLED);
    char err[128];
    int prompt[2] = {3, 4};
    engine_request q = {.prompt = prompt, .n_prompt = 2, .max_tokens = 2, .user = &h.res[5]};
    CU_ASSERT_EQUAL(engine_submit(h.e, &q, err, sizeof err), DH_ECANCELLED);
    h_close(&h);
}

static int engine_init(void) {
    nn_init(2, 0);
    const char *dir = dh_test_tmpdir();
    gen_params gp = {.seed = 11, .dtype = ST_F32};
    if (gen_checkpoint(dir, cfg_json, &gp) != 0) return 1;
    model_params p = model_default_params();
    g_m = model_load(dir, &p);
    size_t len;
    const unsigned char *json = tok_embedded_json(&len);
    g_tok = tok_load_buffer((const char *)json, len, "embedded tokenizer.json");
    return !g_m || !g_tok;
}

static int engine_clean(void) {
    model_free(g_m);
    tok_free(g_tok);
    nn_shutdown();
    return 0;
}

static CU_TestInfo engine_tests[] = {
    {"16 concurrent greedy requests equal each alone", test_concurrent_greedy_requests_equal_each_alone},
    {"16 concurrent seeded requests equal each alone", test_concurrent_seeded_requests_equal_each_alone},
    {"a resumed seeded request goes on as before", test_a_resumed_seeded_request_goes_on_as_before},
    {"a stop string ends the text before it", test_a_stop_string_ends_the_text_before_it},
    {"cancelling frees the sequence at once", test_cancelling_frees_the_sequence_at_once},
    {"queue and context limits are refused", test_queue_and_context_limits_are_refused},
    {"stopping fails what cannot finish", test_stopping_fails_what_cannot_finish},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo engine_suite = {"engine", engine_init, engine_clean, NULL, NULL, engine_tests};
