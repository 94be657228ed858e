/* test_engine.c: continuous batching. Concurrent greedy and seeded requests give exactly what
 * each gives alone, and what a plain decode loop gives; a request resumed from its first k
 * tokens (greedy and seeded, several k, beside other requests) goes on with exactly the tokens
 * it would have drawn; max_tokens, the caller's end, cancellation, the queue and context
 * limits, shutdown. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/engine.h"
#include "core/common.h"
#include "core/genmodel.h"
#include "core/nn.h"
#include "tests/runner.h"

#define NREQ 16

static const char *cfg_json =
    "{\"vocab_size\":512,\"hidden_size\":64,\"intermediate_size\":128,\"moe_intermediate_size\":32,"
    "\"num_hidden_layers\":3,\"first_k_dense_replace\":1,\"num_attention_heads\":4,\"n_routed_experts\":64,"
    "\"num_experts_per_tok\":4,\"n_shared_experts\":2,\"kv_lora_rank\":32,\"qk_nope_head_dim\":16,"
    "\"qk_rope_head_dim\":8,\"v_head_dim\":16,\"eos_token_id\":1,\"model_type\":\"deepseek_v3\"}";

static model *g_m;   /* a random-weight model: its 512 tokens near equally likely */
static model *g_ref; /* tests/data/ref-tiny */

#define MAX_TOK 512
typedef struct result {
    int tokens[MAX_TOK]; /* by completion index */
    int first, n;        /* indices reported: [first, n) */
    int gaps;            /* tokens out of order */
    int done, finish, completion_tokens, error;
    double share_sum;
} result;

typedef struct route_rec route_rec;

typedef struct harness {
    const model *m;
    kv_cache *kv;
    moe_backend *moe;
    fwd_ctx *f;
    ls_stats *stats;
    engine *e;
    result res[64];
    int outstanding;  /* stop the engine when it reaches 0 */
    route_rec *rec;   /* record the routing here, when set (h_record) */
    uint64_t cancel_after_token; /* cancel this id on its first token... */
    int cancel_finished;         /* ...as finished (1) or gone (0) */
    sampler_params sampling;    /* of every request; request i has seed sampling.seed + i */
} harness;

static void on_event(void *ctx, const engine_event *ev) {
    harness *h = ctx;
    result *r = ev->user;
    if (ev->kind == ENGINE_EV_TOKEN) {
        if (r->n == 0 && r->first == 0) r->first = r->n = ev->index;
        if (ev->index != r->n || ev->index >= MAX_TOK) {
            r->gaps++;
            return;
        }
        r->tokens[r->n++] = ev->token;
        if (ev->id == h->cancel_after_token) engine_cancel(h->e, ev->id, h->cancel_finished);
    }
    if (ev->kind == ENGINE_EV_DONE) {
        r->done = 1, r->finish = ev->finish, r->completion_tokens = ev->completion_tokens;
        for (int d = 0; d < CFG_N_DOMAINS; d++) r->share_sum += ev->domain_share[d];
    }
    if (ev->kind == ENGINE_EV_ERROR) r->error = ev->code;
    if (ev->kind != ENGINE_EV_TOKEN && --h->outstanding == 0) engine_stop(h->e, 10);
}

static void h_open_model(harness *h, const model *m, int max_seqs, int max_batch, int max_queue, size_t kv_tokens) {
    memset(h, 0, sizeof *h);
    h->kv = kv_new(m->n_layers, m->cfg.kv_lora_rank + m->cfg.qk_rope_head_dim, kv_tokens, max_seqs, 512);
    h->moe = moe_local_new(m, max_batch);
    h->f = fwd_new(m, h->kv, h->moe, max_batch);
    h->stats = ls_new(m->n_layers, m->cfg.n_routed_experts, 0);
    fwd_set_route_counts(h->f, h->stats->routed);
    engine_params p = {.max_seqs = max_seqs, .max_batch_tokens = max_batch, .max_queue = max_queue, .max_context = 512};
    h->e = engine_new(m, h->f, h->kv, h->stats, &p, on_event, h);
    h->m = m;
}

static void h_open(harness *h, int max_seqs, int max_batch, int max_queue, size_t kv_tokens) {
    h_open_model(h, g_m, max_seqs, max_batch, max_queue, kv_tokens);
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

/* The router's gate weights of every (request, position, layer), recorded through the
 * forward pass's routing hook: they are a function of the row's hidden state, so two runs that
 * computed a position alike have the same bits, and a row computed in the other form (naive
 * for absorbed) shows up as a difference in the last bits even when the tokens agree. */
enum { REC_REQ = 8, REC_POS = 64, REC_L = 4, REC_K = 4 };
struct route_rec {
    int seq_req[64];                            /* KV sequence -> request, from its position-0 row */
    float w[REC_REQ][REC_POS][REC_L][REC_K];
    unsigned char seen[REC_REQ][REC_POS][REC_L];
};

static void record_route(void *ctx, int layer, const fwd_row *rows, int T, const int *idx, const float *w) {
    (void)idx;
    route_rec *rec = ctx;
    if (layer < 0) return;
    DH_ASSERT(layer < REC_L);
    for (int t = 0; t < T; t++) {
        if (rows[t].pos != 0) continue;
        int p[64];
        for (int i = 0; i < REC_REQ; i++)
            if (prompt_of(i, p) && p[0] == rows[t].token) rec->seq_req[rows[t].seq] = i;
    }
    for (int t = 0; t < T; t++) {
        int i = rec->seq_req[rows[t].seq], pos = rows[t].pos;
        DH_ASSERT(i >= 0 && pos < REC_POS);
        memcpy(rec->w[i][pos][layer], w + (size_t)t * REC_K, sizeof rec->w[i][pos][layer]);
        rec->seen[i][pos][layer] = 1;
    }
}

/* positions of request i computed in both runs with different bits: their count; *n: compared */
static int route_differences(const route_rec *a, const route_rec *b, int i, int *n) {
    int diff = 0;
    *n = 0;
    for (int pos = 0; pos < REC_POS; pos++)
        for (int l = 0; l < REC_L; l++) {
            if (!a->seen[i][pos][l] || !b->seen[i][pos][l]) continue;
            ++*n;
            diff += memcmp(a->w[i][pos][l], b->w[i][pos][l], sizeof a->w[i][pos][l]) != 0;
        }
    return diff;
}

static void h_record(harness *h, route_rec *rec) {
    memset(rec, 0, sizeof *rec);
    for (int s = 0; s < 64; s++) rec->seq_req[s] = -1;
    h->rec = rec;
    DH_ASSERT(h->m->cfg.num_experts_per_tok == REC_K);
    fwd_set_route_hook(h->f, record_route, rec);
}


static int eos_respected; /* submit requests that stop at the end-of-sentence token */

/* request i (id i + 1, seed sampling.seed + i), resumed after its first n_given tokens given[] */
static int submit_resumed(harness *h, int i, int max_tokens, const int *given, int n_given) {
    int prompt[64];
    engine_request q = {.id = (uint64_t)i + 1, .prompt = prompt, .n_prompt = prompt_of(i, prompt),
                        .generated = given, .n_generated = n_given, .max_tokens = max_tokens,
                        .sampling = h->sampling, .ignore_eos = !eos_respected, .user = &h->res[i]};
    q.sampling.seed += (uint64_t)i;
    char err[256];
    int rc = engine_submit(h->e, &q, err, sizeof err);
    if (rc == 0) h->outstanding++;
    return rc;
}

static int submit(harness *h, int i, int max_tokens) {
    return submit_resumed(h, i, max_tokens, NULL, 0);
}

/* 1 if r reported exactly want[from..n) at indices from..n-1 and then ended by length */
static int same_tokens(const result *r, const int *want, int from, int n) {
    return r->done && !r->gaps && r->first == from && r->n == n && r->completion_tokens == n &&
           memcmp(r->tokens + from, want + from, (size_t)(n - from) * sizeof *want) == 0;
}

/* NREQ requests sampled with sp, each alone, then all at once */
static void check_batched_equal_each_alone(sampler_params sp) {
    static result alone[NREQ];
    for (int i = 0; i < NREQ; i++) {
        harness h;
        h_open(&h, 4, 32, 64, 4096);
        h.sampling = sp;
        CU_ASSERT(submit(&h, i, 20) == 0);
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
    for (int i = 0; i < NREQ; i++) CU_ASSERT(submit(&h, i, 20) == 0);
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    for (int i = 0; i < NREQ; i++) {
        CU_ASSERT(h.res[i].done);
        CU_ASSERT(same_tokens(&h.res[i], alone[i].tokens, 0, 20));
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

/* The plain decode loop of one request on its own cache: the prompt in prompt rows (the last
 * one's logits), then one decode row per step, each token sampled at its position, until
 * out[0..n) is full. */
static void decode_alone(const model *m, const int *prompt, int n_prompt, sampler_params sp, int *out, int n) {
    enum { ROWS = 64 };
    DH_ASSERT(n_prompt <= ROWS);
    kv_cache *kv = kv_new(m->n_layers, m->cfg.kv_lora_rank + m->cfg.qk_rope_head_dim, 256, 1, 256);
    moe_backend *moe = moe_local_new(m, ROWS);
    fwd_ctx *f = fwd_new(m, kv, moe, ROWS);
    sampler *smp = sampler_new(m->cfg.vocab_size, sp);
    float *logits = xmalloc((size_t)m->cfg.vocab_size * sizeof *logits);
    fwd_row rows[ROWS];
    int seq = kv_seq_open(kv), T = 0;
    CU_ASSERT_FATAL(seq >= 0 && kv_seq_reserve(kv, seq, n_prompt + n) == 0);
    for (int t = 0; t < n_prompt; t++) rows[T++] = (fwd_row){seq, t, prompt[t], FWD_NAIVE};
    rows[T - 1].flags |= FWD_LOGITS;
    for (int i = 0; i < n; i++) {
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
 * the engine, batched with others, gives what the plain loop gives. */
static void test_the_engine_draws_what_the_plain_loop_draws(void) {
    enum { N = 24, REQ = 5 };
    int prompt[64], full[N];
    int n_prompt = prompt_of(REQ, prompt);
    sampler_params sp = seeded;
    sp.seed += REQ; /* as submit() seeds request REQ */
    decode_alone(g_m, prompt, n_prompt, sp, full, N);
    harness h;
    h_open(&h, 4, 16, 64, 4096);
    h.sampling = seeded;
    for (int i = 0; i < 6; i++) CU_ASSERT(submit(&h, i, N) == 0);
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    CU_ASSERT(same_tokens(&h.res[REQ], full, 0, N));
    h_close(&h);
    int distinct = 0;
    for (int i = 0; i < N; i++) {
        int seen = 0;
        for (int j = 0; j < i; j++) seen |= full[j] == full[i];
        distinct += !seen;
    }
    CU_ASSERT(distinct > N / 2); /* sampling, not a greedy loop */
}

/* Resume, on ref-tiny. Requests 0..5 run whole, together; then, for several k, request R is
 * submitted again with its first k tokens (its prompt and those tokens are fed in steps of at
 * most 8 rows, so the k tokens go in as several decode rows per step), beside the other
 * requests run from scratch, and a second request resumed after k/2 tokens: each reports
 * exactly the tokens after the ones it was given, at their indices, and nothing twice. */
static void check_resume(sampler_params sp) {
    enum { N = 24, NR = 6, R = 3 };
    static const int ks[] = {1, 2, 7, 13, 23};
    static result whole[NR];
    static route_rec rec_whole, rec;
    harness h;
    h_open_model(&h, g_ref, NR, 8, 64, 4096);
    h_record(&h, &rec_whole);
    h.sampling = sp;
    for (int i = 0; i < NR; i++) CU_ASSERT(submit(&h, i, N) == 0);
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    memcpy(whole, h.res, sizeof whole);
    h_close(&h);
    for (int i = 0; i < NR; i++) CU_ASSERT_FATAL(whole[i].done && whole[i].n == N);
    int n_moe = 0; /* MoE layers of the main model (the MTP block does not run here) */
    for (int l = 0; l < g_ref->cfg.num_hidden_layers; l++) n_moe += g_ref->layers[l].is_moe;
    for (size_t j = 0; j < sizeof ks / sizeof *ks; j++) {
        int k = ks[j], k2 = k / 2;
        h_open_model(&h, g_ref, NR, 8, 64, 4096);
        h_record(&h, &rec);
        h.sampling = sp;
        for (int i = 0; i < NR; i++) {
            int given = i == R ? k : i == R + 1 ? k2 : 0;
            CU_ASSERT(submit_resumed(&h, i, N, whole[i].tokens, given) == 0);
        }
        CU_ASSERT_EQUAL(engine_run(h.e), 0);
        for (int i = 0; i < NR; i++) {
            int from = i == R ? k : i == R + 1 ? k2 : 0;
            if (!same_tokens(&h.res[i], whole[i].tokens, from, N)) {
                printf("\n  request %d resumed after %d tokens: reported [%d, %d), %d out of order", i, from,
                       h.res[i].first, h.res[i].n, h.res[i].gaps);
                for (int t = from; t < h.res[i].n && t < N; t++)
                    if (h.res[i].tokens[t] != whole[i].tokens[t]) {
                        printf("; token %d is %d, uninterrupted %d", t, h.res[i].tokens[t], whole[i].tokens[t]);
                        break;
                    }
                CU_FAIL("a resumed request did not go on as the uninterrupted one");
            }
            // every position of every request computed with the same bits as in the whole run
            int n, diff = route_differences(&rec_whole, &rec, i, &n);
            int p[64], want = (prompt_of(i, p) + N - 1) * n_moe; /* the last token is not fed */
            if (diff || n != want)
                printf("\n  request %d resumed after %d tokens: %d of %d routed positions differ (%d expected)", i,
                       from, diff, n, want);
            CU_ASSERT_EQUAL(diff, 0);
            CU_ASSERT_EQUAL(n, want);
        }
        engine_metrics m;
        engine_get_metrics(h.e, &m);
        CU_ASSERT_EQUAL(m.resumed_tokens, (uint64_t)(k + k2));
        CU_ASSERT_EQUAL(m.generated_tokens, (uint64_t)(NR * N - k - k2)); /* the given ones are not drawn again */
        h_close(&h);
    }
}

static void test_a_resumed_greedy_request_goes_on_as_before(void) {
    check_resume((sampler_params){.temperature = 0});
}

static void test_a_resumed_seeded_request_goes_on_as_before(void) {
    sampler_params sp = seeded;
    check_resume(sp);
}

static void test_a_resume_with_nothing_left_is_refused(void) {
    harness h;
    h_open(&h, 1, 16, 4, 256);
    int given[4] = {5, 6, 7, 8}, bad[2] = {5, 512};
    CU_ASSERT_EQUAL(submit_resumed(&h, 0, 4, given, 4), DH_EINVAL); /* max_tokens reached already */
    CU_ASSERT_EQUAL(submit_resumed(&h, 0, 4, bad, 2), DH_EINVAL);   /* 512 is beyond the vocabulary */
    CU_ASSERT_EQUAL(submit_resumed(&h, 0, 5, given, 4), 0);         /* one token left */
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    CU_ASSERT(h.res[0].done && h.res[0].first == 4 && h.res[0].n == 5 && h.res[0].completion_tokens == 5);
    h_close(&h);
}

static void test_cancelling_frees_the_sequence_at_once(void) {
    harness h;
    h_open(&h, 2, 32, 8, 4096);
    submit(&h, 1, 400);
    submit(&h, 2, 5);
    h.cancel_after_token = 2; /* request 1 */
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

/* the caller saw the end (a stop string in its text): a DONE with STOP, counted as finished */
static void test_ending_a_request_as_finished_sends_done(void) {
    harness h;
    h_open(&h, 2, 32, 8, 4096);
    submit(&h, 1, 400);
    h.cancel_after_token = 2, h.cancel_finished = 1;
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    CU_ASSERT(h.res[1].done && !h.res[1].error);
    CU_ASSERT_EQUAL(h.res[1].finish, ENGINE_FINISH_STOP);
    CU_ASSERT(h.res[1].n >= 1 && h.res[1].n < 400);
    CU_ASSERT_EQUAL(h.res[1].completion_tokens, h.res[1].n);
    CU_ASSERT_DOUBLE_EQUAL(h.res[1].share_sum, 1.0, 1e-9);
    engine_metrics m;
    engine_get_metrics(h.e, &m);
    CU_ASSERT_EQUAL(m.finished_stop, 1);
    CU_ASSERT_EQUAL(m.cancelled, 0);
    CU_ASSERT_EQUAL(m.kv_used_tokens, 0);
    h_close(&h);
}

/* The end-of-sentence token ends a request with EOS and is not reported: made the model's EOS
 * for a run, a token that request 0 draws greedily at index 5 (and not before) ends it there */
static void test_the_end_of_sentence_token_ends_a_request_unreported(void) {
    harness h;
    h_open(&h, 2, 32, 8, 4096);
    CU_ASSERT(submit(&h, 0, 20) == 0);
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    result whole = h.res[0];
    h_close(&h);
    int at = 5, tok = whole.tokens[at];
    for (int i = 0; i < at; i++) CU_ASSERT_FATAL(whole.tokens[i] != tok);
    int eos = g_m->cfg.eos_token_id;
    g_m->cfg.eos_token_id = tok;
    eos_respected = 1;
    h_open(&h, 2, 32, 8, 4096);
    CU_ASSERT(submit(&h, 0, 20) == 0);
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    g_m->cfg.eos_token_id = eos;
    eos_respected = 0;
    CU_ASSERT(h.res[0].done && !h.res[0].gaps);
    CU_ASSERT_EQUAL(h.res[0].finish, ENGINE_FINISH_EOS);
    CU_ASSERT_EQUAL(h.res[0].n, at);
    CU_ASSERT_EQUAL(h.res[0].completion_tokens, at);
    CU_ASSERT_EQUAL(memcmp(h.res[0].tokens, whole.tokens, (size_t)at * sizeof *whole.tokens), 0);
    engine_metrics m;
    engine_get_metrics(h.e, &m);
    CU_ASSERT_EQUAL(m.finished_stop, 1);
    h_close(&h);
}

static void test_queue_and_context_limits_are_refused(void) {
    harness h;
    h_open(&h, 1, 16, 2, 256);
    CU_ASSERT(submit(&h, 0, 10) == 0);
    CU_ASSERT(submit(&h, 1, 10) == 0);
    CU_ASSERT_EQUAL(submit(&h, 2, 10), DH_EBUSY); /* two waiting already */
    int prompt[8] = {5, 6, 7};
    char err[256] = "";
    engine_request q = {.id = 99, .prompt = prompt, .n_prompt = 3, .max_tokens = 600, .user = &h.res[9]};
    CU_ASSERT_EQUAL(engine_submit(h.e, &q, err, sizeof err), DH_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "context limit of 512"));
    q.max_tokens = 300; /* fits the context, not the 256-token cache */
    CU_ASSERT_EQUAL(engine_submit(h.e, &q, err, sizeof err), DH_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "KV cache"));
    engine_run(h.e);
    CU_ASSERT(h.res[0].done && h.res[1].done);
    h_close(&h);
}

/* A request resumed after a failure was accepted before: the queue limit is for new work. */
static void test_an_admitted_request_is_queued_beyond_the_limit(void) {
    harness h;
    h_open(&h, 1, 16, 1, 1024);
    CU_ASSERT(submit(&h, 0, 10) == 0);
    CU_ASSERT_EQUAL(submit(&h, 1, 10), DH_EBUSY); /* one waiting already */
    int prompt[64];
    char err[256] = "";
    engine_request q = {.id = 3, .prompt = prompt, .n_prompt = prompt_of(2, prompt), .max_tokens = 10,
                        .ignore_eos = 1, .admitted = 1, .user = &h.res[2]};
    CU_ASSERT_EQUAL(engine_submit(h.e, &q, err, sizeof err), 0);
    h.outstanding++;
    CU_ASSERT_EQUAL(submit(&h, 3, 10), DH_EBUSY); /* new work is still held to the limit */
    engine_run(h.e);
    CU_ASSERT(h.res[0].done && h.res[2].done && h.res[2].n == 10);
    h_close(&h);
}

static void test_stopping_fails_what_cannot_finish(void) {
    harness h;
    h_open(&h, 2, 32, 8, 4096);
    submit(&h, 4, 400);
    engine_stop(h.e, 0); /* no grace: the request in flight fails */
    CU_ASSERT_EQUAL(engine_run(h.e), 0);
    CU_ASSERT_EQUAL(h.res[4].error, DH_ECANCELLED);
    char err[128];
    int prompt[2] = {3, 4};
    engine_request q = {.id = 99, .prompt = prompt, .n_prompt = 2, .max_tokens = 2, .user = &h.res[5]};
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
    g_ref = model_load(DH_TEST_DATA "/ref-tiny", &p);
    return !g_m || !g_ref;
}

static int engine_clean(void) {
    model_free(g_m);
    model_free(g_ref);
    nn_shutdown();
    return 0;
}

static CU_TestInfo engine_tests[] = {
    {"16 concurrent greedy requests equal each alone", test_concurrent_greedy_requests_equal_each_alone},
    {"16 concurrent seeded requests equal each alone", test_concurrent_seeded_requests_equal_each_alone},
    {"the engine draws what the plain loop draws", test_the_engine_draws_what_the_plain_loop_draws},
    {"a resumed greedy request goes on as before", test_a_resumed_greedy_request_goes_on_as_before},
    {"a resumed seeded request goes on as before", test_a_resumed_seeded_request_goes_on_as_before},
    {"a resume with nothing left is refused", test_a_resume_with_nothing_left_is_refused},
    {"cancelling frees the sequence at once", test_cancelling_frees_the_sequence_at_once},
    {"ending a request as finished sends DONE", test_ending_a_request_as_finished_sends_done},
    {"the end-of-sentence token ends a request, unreported", test_the_end_of_sentence_token_ends_a_request_unreported},
    {"queue and context limits are refused", test_queue_and_context_limits_are_refused},
    {"an admitted request is queued beyond the limit", test_an_admitted_request_is_queued_beyond_the_limit},
    {"stopping fails what cannot finish", test_stopping_fails_what_cannot_finish},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo engine_suite = {"engine", engine_init, engine_clean, NULL, NULL, engine_tests};
