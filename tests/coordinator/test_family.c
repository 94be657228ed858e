/* test_family.c: the engine on configurations the reference files do not cover, checked for
 * internal consistency: V2-style softmax routing with top-6, group-limited routing of both
 * kinds, q LoRA or not, odd head counts and sizes, F32 and BF16 storage, YaRN factors and
 * windows. For each generated checkpoint: the naive and absorbed attention agree, a prompt
 * prefilled at once equals the same prompt fed one token at a time through the cache, the MTP
 * block computed at once equals it computed incrementally, and a sequence's logits are bit
 * for bit the same alone or batched with other sequences. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/forward.h"
#include "core/common.h"
#include "core/genmodel.h"
#include "core/nn.h"
#include "tests/coordinator/refcase.h"
#include "tests/runner.h"

#define BASE                                                                                         \
    "\"vocab_size\":300,\"hidden_size\":64,\"intermediate_size\":96,\"moe_intermediate_size\":32,"   \
    "\"num_hidden_layers\":3,\"first_k_dense_replace\":1,\"rms_norm_eps\":1e-6,\"rope_theta\":10000,"  \
    "\"max_position_embeddings\":4096,\"bos_token_id\":0,\"eos_token_id\":1,"

static const struct {
    const char *name;
    const char *json;
} configs[] = {
    {"v2-lite style: softmax greedy top-6, no MTP, YaRN 40 with mscale 0.707",
     "{" BASE "\"model_type\":\"deepseek_v2\",\"num_attention_heads\":4,\"n_routed_experts\":64,"
     "\"num_experts_per_tok\":6,\"n_shared_experts\":2,\"kv_lora_rank\":32,\"q_lora_rank\":null,"
     "\"qk_nope_head_dim\":16,\"qk_rope_head_dim\":8,\"v_head_dim\":16,\"scoring_func\":\"softmax\","
     "\"topk_method\":\"greedy\",\"norm_topk_prob\":false,\"routed_scaling_factor\":1.0,"
     "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":40,\"original_max_position_embeddings\":16,"
     "\"beta_fast\":32,\"beta_slow\":1,\"mscale\":0.707,\"mscale_all_dim\":0.707}}"},
    {"v2 style: softmax group-limited (8 groups keep 3), top-6, q LoRA",
     "{" BASE "\"model_type\":\"deepseek_v2\",\"num_attention_heads\":2,\"n_routed_experts\":64,"
     "\"num_experts_per_tok\":6,\"n_shared_experts\":1,\"kv_lora_rank\":24,\"q_lora_rank\":40,"
     "\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":4,\"v_head_dim\":12,\"scoring_func\":\"softmax\","
     "\"topk_method\":\"group_limited_greedy\",\"n_group\":8,\"topk_group\":3,\"norm_topk_prob\":true,"
     "\"routed_scaling_factor\":16.0}"},
    {"v3 style: sigmoid noaux_tc (8 groups keep 4), top-8, q LoRA, MTP, odd heads, YaRN 4",
     "{" BASE "\"model_type\":\"deepseek_v3\",\"num_attention_heads\":3,\"n_routed_experts\":64,"
     "\"num_experts_per_tok\":8,\"n_shared_experts\":1,\"kv_lora_rank\":40,\"q_lora_rank\":48,"
     "\"qk_nope_head_dim\":24,\"qk_rope_head_dim\":12,\"v_head_dim\":20,\"scoring_func\":\"sigmoid\","
     "\"topk_method\":\"noaux_tc\",\"n_group\":8,\"topk_group\":4,\"norm_topk_prob\":true,"
     "\"routed_scaling_factor\":2.5,\"num_nextn_predict_layers\":1,"
     "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4,\"original_max_position_embeddings\":8,"
     "\"beta_fast\":32,\"beta_slow\":1,\"mscale\":1.0,\"mscale_all_dim\":1.0}}"},
    {"odd sizes: 24 experts in 3 groups, top-3, 5 heads, no shared experts, MTP",
     "{\"vocab_size\":257,\"hidden_size\":72,\"intermediate_size\":100,\"moe_intermediate_size\":20,"
     "\"num_hidden_layers\":2,\"first_k_dense_replace\":0,\"model_type\":\"deepseek_v3\","
     "\"num_attention_heads\":5,\"n_routed_experts\":24,\"num_experts_per_tok\":3,\"n_shared_experts\":0,"
     "\"kv_lora_rank\":40,\"qk_nope_head_dim\":20,\"qk_rope_head_dim\":6,\"v_head_dim\":12,"
     "\"n_group\":3,\"topk_group\":2,\"num_nextn_predict_layers\":1}"},
};
#define N_CONFIGS (int)(sizeof configs / sizeof configs[0])

typedef struct eng {
    model *m;
    kv_cache *kv;
    moe_backend *moe;
    fwd_ctx *f;
} eng;

/* weights: model_params.weights (-1: compute on the stored values) */
static int eng_open_w(eng *e, const char *dir, int weights) {
    model_params p = model_default_params();
    p.weights = weights;
    e->m = model_load(dir, &p);
    if (!e->m) return -1;
    e->kv = kv_new(e->m->n_layers, e->m->cfg.kv_lora_rank + e->m->cfg.qk_rope_head_dim, 2048, 8, 256);
    e->moe = moe_local_new(e->m, 64);
    e->f = fwd_new(e->m, e->kv, e->moe, 64);
    return 0;
}

static int eng_open(eng *e, const char *dir) { return eng_open_w(e, dir, -1); }

static void eng_close(eng *e) {
    fwd_free(e->f);
    moe_free(e->moe);
    kv_free(e->kv);
    model_free(e->m);
}

static uint64_t rs = 12345;
static int rand_token(int V) {
    rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
    return (int)((rs >> 33) % (uint64_t)V);
}

/* prefill T tokens of a fresh sequence at once (flags), logits of every row */
static void prefill(eng *e, const int *toks, int T, unsigned flags, float *logits, float *hidden) {
    int seq = kv_seq_open(e->kv);
    CU_ASSERT_EQUAL_FATAL(kv_seq_reserve(e->kv, seq, T), 0);
    fwd_row rows[64];
    for (int t = 0; t < T; t++) rows[t] = (fwd_row){seq, t, toks[t], flags | FWD_LOGITS};
    fwd_out o = {.logits = logits, .hidden = hidden};
    CU_ASSERT_EQUAL_FATAL(fwd_step(e->f, rows, T, &o), 0);
    kv_seq_close(e->kv, seq);
}

static void check_config(int ci, st_dtype dt) {
    const char *dir = dh_test_tmpdir();
    gen_params gp = {.seed = 7 + (uint64_t)ci, .dtype = dt};
    CU_ASSERT_EQUAL_FATAL(gen_checkpoint(dir, configs[ci].json, &gp), 0);
    eng e = {0};
    CU_ASSERT_EQUAL_FATAL(eng_open(&e, dir), 0);
    int V = e.m->cfg.vocab_size, D = e.m->cfg.hidden_size, T = 20;
    int toks[64];
    for (int t = 0; t < 40; t++) toks[t] = rand_token(V);
    float *naive = malloc((size_t)T * V * 4), *absd = malloc((size_t)T * V * 4), *step = malloc((size_t)T * V * 4);
    float *hidden = malloc((size_t)T * D * 4);
    char what[256];

    /* naive and absorbed attention agree */
    prefill(&e, toks, T, FWD_NAIVE, naive, hidden);
    prefill(&e, toks, T, 0, absd, NULL);
    snprintf(what, sizeof what, "%s [%s]: naive vs absorbed", configs[ci].name, st_dtype_name(dt));
    CU_ASSERT_EQUAL(ref_check(what, absd, naive, (size_t)T * V, 2e-5, 1e-4), 0);

    /* the prompt fed one token at a time through the cache equals the one-step prefill */
    int seq = kv_seq_open(e.kv);
    kv_seq_reserve(e.kv, seq, T);
    for (int t = 0; t < T; t++) {
        fwd_row r = {seq, t, toks[t], FWD_LOGITS};
        fwd_out o = {.logits = step + (size_t)t * V};
        CU_ASSERT_EQUAL_FATAL(fwd_step(e.f, &r, 1, &o), 0);
    }
    kv_seq_close(e.kv, seq);
    snprintf(what, sizeof what, "%s [%s]: step by step vs prefill", configs[ci].name, st_dtype_name(dt));
    CU_ASSERT_EQUAL(ref_check(what, step, naive, (size_t)T * V, 2e-5, 1e-4), 0);

    /* MTP at once vs one row at a time */
    if (e.m->has_mtp) {
        float *m1 = malloc((size_t)T * V * 4), *m2 = malloc((size_t)T * V * 4);
        fwd_row rows[64];
        int s1 = kv_seq_open(e.kv);
        kv_seq_reserve(e.kv, s1, T);
        for (int t = 0; t < T - 1; t++) rows[t] = (fwd_row){s1, t, toks[t + 1], FWD_NAIVE | FWD_LOGITS};
        CU_ASSERT_EQUAL(fwd_mtp(e.f, rows, hidden, T - 1, m1), 0);
        kv_seq_close(e.kv, s1);
        s1 = kv_seq_open(e.kv);
        kv_seq_reserve(e.kv, s1, T);
        for (int t = 0; t < T - 1; t++) {
            fwd_row r = {s1, t, toks[t + 1], FWD_LOGITS};
            CU_ASSERT_EQUAL(fwd_mtp(e.f, &r, hidden + (size_t)t * D, 1, m2 + (size_t)t * V), 0);
        }
        kv_seq_close(e.kv, s1);
        snprintf(what, sizeof what, "%s [%s]: MTP incremental vs at once", configs[ci].name, st_dtype_name(dt));
        CU_ASSERT_EQUAL(ref_check(what, m2, m1, (size_t)(T - 1) * V, 2e-5, 1e-4), 0);
        free(m1), free(m2);
    } else {
        CU_ASSERT_EQUAL(fwd_mtp(e.f, NULL, NULL, 1, NULL), DH_EUNSUPPORTED);
    }
    free(naive), free(absd), free(step), free(hidden);
    eng_close(&e);
}

static void test_every_configuration_is_self_consistent(void) {
    for (int ci = 0; ci < N_CONFIGS; ci++) {
        check_config(ci, ST_F32);
        check_config(ci, ST_BF16);
    }
}

/* Sequence A's logits: alone (prefill 12 then 6 decode steps), and again while B prefills in
 * chunks of different sizes and C decodes in the same steps: bit for bit equal. */
static void test_a_sequence_computes_the_same_alone_or_in_a_batch(void) {
    const char *dir = dh_test_tmpdir();
    gen_params gp = {.seed = 3, .dtype = ST_BF16};
    CU_ASSERT_EQUAL_FATAL(gen_checkpoint(dir, configs[2].json, &gp), 0);
    eng e = {0};
    CU_ASSERT_EQUAL_FATAL(eng_open(&e, dir), 0);
    int V = e.m->cfg.vocab_size, PA = 12, NDEC = 6;
    int ta[32], tb[64], tc[32];
    for (int i = 0; i < 32; i++) ta[i] = rand_token(V), tc[i] = rand_token(V);
    for (int i = 0; i < 64; i++) tb[i] = rand_token(V);
    float *alone = malloc((size_t)(NDEC + 1) * V * 4), *batched = malloc((size_t)(NDEC + 1) * V * 4);
    float *lg = malloc((size_t)64 * V * 4);
    for (int pass = 0; pass < 2; pass++) {
        float *dst = pass ? batched : alone;
        int a = kv_seq_open(e.kv), b = kv_seq_open(e.kv), c = kv_seq_open(e.kv);
        kv_seq_reserve(e.kv, a, 64), kv_seq_reserve(e.kv, b, 64), kv_seq_reserve(e.kv, c, 64);
        int bpos = 0, cpos = 0;
        for (int step = 0; step <= NDEC; step++) {
            fwd_row rows[64];
            int n = 0, arow = -1;
            if (pass) { /* C decodes first, then part of B's prompt, A in between */
                rows[n++] = (fwd_row){c, cpos, tc[cpos], FWD_LOGITS}, cpos++;
                for (int k = 0; k < 3 + step % 4 && bpos < 60; k++, bpos++)
                    rows[n++] = (fwd_row){b, bpos, tb[bpos], FWD_NAIVE | FWD_LOGITS};
            }
            if (step == 0)
                for (int t = 0; t < PA; t++) rows[n++] = (fwd_row){a, t, ta[t], FWD_NAIVE | FWD_LOGITS};
            else
                rows[n++] = (fwd_row){a, PA + step - 1, ta[PA + step - 1], FWD_LOGITS};
            arow = n - 1;
            if (pass) rows[n++] = (fwd_row){c, cpos, tc[cpos], FWD_LOGITS}, cpos++;
            fwd_out o = {.logits = lg};
            CU_ASSERT_EQUAL_FATAL(fwd_step(e.f, rows, n, &o), 0);
            memcpy(dst + (size_t)step * V, lg + (size_t)arow * V, (size_t)V * 4); /* every row has logits */
        }
        kv_seq_close(e.kv, a), kv_seq_close(e.kv, b), kv_seq_close(e.kv, c);
    }
    int same = memcmp(alone, batched, (size_t)(NDEC + 1) * V * 4) == 0;
    if (!same) ref_check("batched vs alone (must be bit-equal)", batched, alone, (size_t)(NDEC + 1) * V, 0, 0);
    CU_ASSERT(same);
    free(alone), free(batched), free(lg);
    eng_close(&e);
}

/* A prompt fed to seq in chunks (sizes cs[0..ncs), in turn) by feed_steps; every row's logits
 * go to out [T, V] */
typedef struct feed {
    int seq, T, ncs;
    const int *toks, *cs;
    float *out;
    int pos, k; /* next position, chunks fed */
} feed;

/* Steps of the n feeds' next chunks (feed 0's rows first) until all are fed */
static void feed_steps(eng *e, feed *fd, int n, float *lg) {
    int V = e->m->cfg.vocab_size;
    for (;;) {
        fwd_row rows[64];
        int nr = 0, who[64], at[64];
        for (int i = 0; i < n; i++) {
            feed *d = &fd[i];
            int want = d->cs[d->k++ % d->ncs], c = DH_MIN(want, d->T - d->pos);
            for (int j = 0; j < c; j++, d->pos++, nr++) {
                rows[nr] = (fwd_row){d->seq, d->pos, d->toks[d->pos], FWD_NAIVE | FWD_LOGITS};
                who[nr] = i, at[nr] = d->pos;
            }
        }
        if (!nr) return;
        fwd_out o = {.logits = lg};
        CU_ASSERT_EQUAL_FATAL(fwd_step(e->f, rows, nr, &o), 0);
        for (int r = 0; r < nr; r++) memcpy(fd[who[r]].out + (size_t)at[r] * V, lg + (size_t)r * V, (size_t)V * 4);
    }
}

/* a fresh sequence fed toks [T] in chunks cs [ncs] alone, then closed: its logits into out;
 * returns the id it had */
static int feed_alone(eng *e, const int *toks, int T, const int *cs, int ncs, float *out, float *lg) {
    feed d = {.seq = kv_seq_open(e->kv), .T = T, .ncs = ncs, .toks = toks, .cs = cs, .out = out};
    CU_ASSERT_EQUAL_FATAL(kv_seq_reserve(e->kv, d.seq, T), 0);
    feed_steps(e, &d, 1, lg);
    kv_seq_close(e->kv, d.seq);
    return d.seq;
}

static int same_logits(const char *what, const float *got, const float *want, size_t n) {
    int same = memcmp(got, want, n * 4) == 0;
    if (!same) ref_check(what, got, want, n, 0, 0);
    return same;
}

/* The prefill cache (forward.h): prompts of 150-200 positions fed in uneven chunks give every
 * row's logits bit for bit as with the cache off (chunks of 64, every earlier position expanded
 * again): alone; two prompts in the same steps (one owns the cache, the other expands, then
 * takes it over); a prompt in the owner's reused slot (the cut at a rewritten position); and
 * under a budget smaller than the prompt. With weights as stored (bf16) and converted to q8
 * (config 0's kv_b_proj is 32 wide, so q8; config 2's stays bf16). */
static void test_a_chunked_prompt_reads_its_kept_expansions_bit_for_bit(void) {
    static const int cfg[2] = {0, 2}, weights[2] = {-1, DT_Q8};
    for (int ci = 0; ci < 4; ci++) {
        const char *dir = dh_test_tmpdir();
        gen_params gp = {.seed = 5, .dtype = ST_BF16};
        CU_ASSERT_EQUAL_FATAL(gen_checkpoint(dir, configs[cfg[ci / 2]].json, &gp), 0);
        int wi = ci % 2;
        eng e = {0};
        CU_ASSERT_EQUAL_FATAL(eng_open_w(&e, dir, weights[wi]), 0);
        int V = e.m->cfg.vocab_size, TA = 200, TB = 150, TC = 180;
        int ta[200], tb[150], tc[180];
        for (int i = 0; i < TA; i++) ta[i] = rand_token(V);
        for (int i = 0; i < TB; i++) tb[i] = rand_token(V);
        for (int i = 0; i < TC; i++) tc[i] = rand_token(V);
        float *lg = malloc((size_t)64 * V * 4), *ref[3], *got[3];
        int T[3] = {TA, TB, TC};
        const int *tk[3] = {ta, tb, tc};
        for (int i = 0; i < 3; i++) ref[i] = malloc((size_t)T[i] * V * 4), got[i] = malloc((size_t)T[i] * V * 4);
        // without the cache, in chunks of 64: every chunk expands every earlier position
        static const int c64[] = {64};
        fwd_set_prefill_cache(e.f, 0);
        for (int i = 0; i < 3; i++) feed_alone(&e, tk[i], T[i], c64, 1, ref[i], lg);
        fwd_prefill_stats st;
        fwd_prefill_cache_stats(e.f, &st);
        CU_ASSERT(st.reused == 0 && st.expanded == 0 && st.bytes == 0);
        // with it: A alone in uneven chunks
        fwd_set_prefill_cache(e.f, FWD_PREFILL_CACHE_DEFAULT);
        static const int ca[] = {37, 64, 1, 50}, cb[] = {9, 1, 14}, cc[] = {20, 31, 7};
        feed_alone(&e, ta, TA, ca, 4, got[0], lg);
        CU_ASSERT(same_logits("A alone, kept expansions", got[0], ref[0], (size_t)TA * V));
        fwd_prefill_cache_stats(e.f, &st);
        uint64_t L = (uint64_t)e.m->cfg.num_hidden_layers, starts = 0; /* positions before each chunk */
        for (int p = 0, k = 0; p < TA; p += ca[k++ % 4]) starts += (uint64_t)p;
        CU_ASSERT_EQUAL(st.expanded, (uint64_t)TA * L); /* each position once */
        CU_ASSERT_EQUAL(st.reused, starts * L);         /* every earlier one read back */
        CU_ASSERT(st.bytes > 0);
        uint64_t reused = st.reused;
        // A and B in the same steps, A's rows first: A keeps its expansions, B expands its own
        // until A is done (after 11 steps; B takes 19), then takes the cache over
        feed fd[2] = {{.seq = kv_seq_open(e.kv), .T = TA, .ncs = 3, .toks = ta, .cs = cc, .out = got[0]},
                      {.seq = kv_seq_open(e.kv), .T = TB, .ncs = 3, .toks = tb, .cs = cb, .out = got[1]}};
        CU_ASSERT_EQUAL_FATAL(kv_seq_reserve(e.kv, fd[0].seq, TA), 0);
        CU_ASSERT_EQUAL_FATAL(kv_seq_reserve(e.kv, fd[1].seq, TB), 0);
        feed_steps(&e, fd, 2, lg);
        CU_ASSERT(same_logits("A beside B", got[0], ref[0], (size_t)TA * V));
        CU_ASSERT(same_logits("B beside A", got[1], ref[1], (size_t)TB * V));
        fwd_prefill_cache_stats(e.f, &st);
        CU_ASSERT(st.reused > reused);
        CU_ASSERT_EQUAL(st.seq, fd[1].seq);
        // C in B's slot (B owned the cache last): its first rows cut B's kept positions
        kv_seq_close(e.kv, fd[1].seq);
        int c = feed_alone(&e, tc, TC, ca, 4, got[2], lg);
        CU_ASSERT_EQUAL(c, fd[1].seq);
        CU_ASSERT(same_logits("C in B's reused slot", got[2], ref[2], (size_t)TC * V));
        kv_seq_close(e.kv, fd[0].seq);
        // a budget of 100 positions: the rest expanded at every chunk
        size_t per_pos = (size_t)e.m->n_layers * e.m->cfg.num_attention_heads *
                         (e.m->cfg.qk_nope_head_dim + e.m->cfg.v_head_dim) * sizeof(float);
        fwd_set_prefill_cache(e.f, 100 * per_pos + per_pos / 2);
        feed_alone(&e, ta, TA, ca, 4, got[0], lg);
        CU_ASSERT(same_logits("A under a budget of 100 positions", got[0], ref[0], (size_t)TA * V));
        fwd_prefill_cache_stats(e.f, &st);
        CU_ASSERT_EQUAL(st.cap_positions, 100);
        CU_ASSERT(st.reused > 0 && st.bytes <= 100 * per_pos);
        for (int i = 0; i < 3; i++) free(ref[i]), free(got[i]);
        free(lg);
        eng_close(&e);
    }
}

static int fam_init(void) {
    nn_init(2, 0);
    return 0;
}
static int fam_clean(void) {
    nn_shutdown();
    return 0;
}

static CU_TestInfo family_tests[] = {
    {"every configuration is self-consistent", test_every_configuration_is_self_consistent},
    {"a sequence computes the same alone or in a batch", test_a_sequence_computes_the_same_alone_or_in_a_batch},
    {"a chunked prompt reads its kept expansions bit for bit", test_a_chunked_prompt_reads_its_kept_expansions_bit_for_bit},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo family_suite = {"family", fam_init, fam_clean, NULL, NULL, family_tests};
