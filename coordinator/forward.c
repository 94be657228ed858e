/* forward.c: embedding, MLA attention with the latent cache, dense and MoE FFNs, the head,
 * and the MTP block, for a batch of rows (DeepSeek-V3 inference/model.py, row-wise).
 *
 * Dims legend: T rows this step, S cached positions, D hidden, H heads, Dn/Dr/Dv nope/rope/v
 * head dims, C kv_lora_rank, Q q_lora_rank, E routed experts, K experts per token, V vocab.
 *
 * Attention caches one row per position and layer: [kv_a_layernorm(c_kv) (C) | rope(k_pe) (Dr)].
 * Prompt rows (FWD_NAIVE) attend in the naive form: the cached latents are expanded through
 * W_UKV = kv_b_proj into per-head keys and values, in blocks of NB positions aligned at 0,
 * with an online softmax over the blocks. Decode rows attend in the absorbed form: W_UK is
 * folded into the query (q_abs = W_UK^T q_nope, [H, C]), scores are taken against the latents
 * directly, and W_UV is applied to the attention-weighted latent. Both forms see only the
 * row's own sequence, and block boundaries are fixed by position, not by how a prompt was
 * chunked, so a row's result never depends on the rest of the batch.
 *
 * A prompt fed in chunks would expand its earlier positions again at every chunk (the cost of
 * a chunk's naive form grows with its depth twice over: the scores and the expansion). So the
 * expansions of one prefilling sequence are kept (the prefill cache, below, within a budget):
 * a later chunk reads them where an earlier one computed them. The kernels are batch
 * invariant, so a kept row is the row a new expansion would give, bit for bit.
 *
 * All scratch is allocated in fwd_new for max_rows rows and the cache's longest sequence; the
 * prefill cache grows as a prompt does, up to its budget. */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/router.h"
#include "core/common.h"
#include "core/nn.h"
#include "core/experts.h"

#define NB 64 /* key positions expanded at once in the naive form */

/* The prefill cache: [k_nope | v] = W_UKV c_kv of positions [0, n[l]) of one sequence, for
 * every layer l, as the naive form computed them. It belongs to one prefilling sequence at a
 * time: the first whose prompt chunk comes in a step in which the owner has had none (the
 * engine feeds the longest-waiting prompt first, every step, until it is done). A row written
 * to the KV cache below n[l] (the sequence's slot reused, a position fed again) cuts n[l]
 * there. */
typedef struct prefill_cache {
    float **kvx;          /* [layers] -> [alloc[l], H*(Dn+Dv)] */
    int *n, *alloc;       /* [layers] positions kept, positions allocated */
    int layers, cap;      /* cap: positions a layer may keep under the budget */
    int seq;              /* owner, or -1 */
    unsigned long used;   /* the step in which the owner last fed a chunk */
    uint64_t reused, expanded; /* positions (summed over layers) read back, and expanded */
} prefill_cache;

struct fwd_ctx {
    const model *m;
    kv_cache *kv;
    moe_backend *moe;
    int R, S;                      /* max rows, max cached positions */
    int D, H, Dn, Dr, Dv, C, Q, E, K, V, Fmax;
    float *x, *h, *a, *ysh;        /* [R, D] residual, normed input, sublayer out, shared out */
    float *q;                      /* [R, H*(Dn+Dr)] */
    float *qlat;                   /* [R, Q] */
    float *kva;                    /* [R, C+Dr] */
    float *qg;                     /* [R, H, Dn] q_nope of the absorbed rows, compacted */
    float *qa;                     /* [R, H, C+Dr] absorbed queries [q_abs | q_pe] */
    float *olat;                   /* [R, H, C] attention-weighted latents */
    float *og;                     /* [R, H*Dv] absorbed outputs, compacted */
    float *o;                      /* [R, H*Dv] attention output before o_proj */
    float *cosv, *sinv;            /* [R, Dr/2] */
    float *g, *u;                  /* [R, Fmax] FFN scratch */
    float *rlog;                   /* [R, E] router logits */
    int *ridx;                     /* [R, K] */
    float *rw;                     /* [R, K] */
    float *scores;                 /* [threads, heads a task, S] */
    float *lat, *kvx, *keys;       /* naive form: [NB, C], [NB, H*(Dn+Dv)], [NB, H, Dn+Dr] */
    float *ost;                    /* [R, H, Dv + 2] online softmax: max, sum, acc */
    float *cat;                    /* [R, 2D] MTP input */
    int *ab;                       /* [R] absorbed rows */
    uint64_t *route_counts;        /* [n_layers * E] or NULL */
    fwd_route_fn route_fn;         /* routing observer or NULL, with its context */
    void *route_ctx;
    fwd_replay_fn replay_fn;       /* routing replay or NULL, with its context */
    void *replay_ctx;
    const fwd_row *rows;           /* the current step's rows, for the observer */
    prefill_cache pc;              /* kept expansions of a prefilling sequence */
    unsigned long step;            /* fwd_step calls so far */
    double t[FWD_T_COUNT];         /* seconds per part */
    unsigned long forks[FWD_T_COUNT]; /* the pool's fork-joins per part */
};

/* Heads a task of the absorbed attention: two tasks a thread, or one after a long context
 * (see attend_absorbed). */
static int abs_heads(int H, int long_ctx) { return DH_MAX(1, H / ((long_ctx ? 1 : 2) * nn_threads())); }

/* A layer's cache of a row past which a task a thread reads it fewer times (attend_absorbed) */
#define ABS_LONG_BYTES (2u << 20)

fwd_ctx *fwd_new(const model *m, kv_cache *kv, moe_backend *moe, int max_rows) {
    const model_config *c = &m->cfg;
    fwd_ctx *f = xcalloc(1, sizeof *f);
    f->m = m, f->kv = kv, f->moe = moe;
    f->R = max_rows;
    f->S = kv_max_seq_len(kv);
    f->D = c->hidden_size, f->H = c->num_attention_heads, f->Dn = c->qk_nope_head_dim;
    f->Dr = c->qk_rope_head_dim, f->Dv = c->v_head_dim, f->C = c->kv_lora_rank;
    f->Q = c->q_lora_rank, f->E = c->n_routed_experts, f->K = c->num_experts_per_tok;
    f->V = c->vocab_size;
    f->Fmax = DH_MAX(c->intermediate_size, DH_MAX(c->n_shared_experts, 1) * c->moe_intermediate_size);
    size_t R = (size_t)max_rows, D = (size_t)f->D, H = (size_t)f->H;
    size_t qw = H * (size_t)(f->Dn + f->Dr), row = (size_t)(f->C + f->Dr);
#define ALLOC(p, n) (p = xmalloc(xmul((n), sizeof *(p))))
    ALLOC(f->x, R * D), ALLOC(f->h, R * D), ALLOC(f->a, R * D), ALLOC(f->ysh, R * D);
    ALLOC(f->q, R * qw), ALLOC(f->qg, R * qw), ALLOC(f->qlat, R * (size_t)DH_MAX(f->Q, 1));
    ALLOC(f->kva, R * row), ALLOC(f->qa, R * H * row), ALLOC(f->olat, R * H * (size_t)f->C);
    ALLOC(f->og, R * H * (size_t)f->Dv), ALLOC(f->o, R * H * (size_t)f->Dv);
    ALLOC(f->cosv, R * (size_t)f->Dr / 2), ALLOC(f->sinv, R * (size_t)f->Dr / 2);
    ALLOC(f->g, R * (size_t)f->Fmax), ALLOC(f->u, R * (size_t)f->Fmax);
    ALLOC(f->rlog, R * (size_t)DH_MAX(f->E, 1)), ALLOC(f->ridx, R * (size_t)f->K), ALLOC(f->rw, R * (size_t)f->K);
    ALLOC(f->scores, (size_t)nn_threads() * (size_t)abs_heads(f->H, 1) * (size_t)f->S);
    ALLOC(f->lat, (size_t)NB * f->C), ALLOC(f->kvx, (size_t)NB * H * (size_t)(f->Dn + f->Dv));
    ALLOC(f->keys, (size_t)NB * H * (size_t)(f->Dn + f->Dr)), ALLOC(f->ost, R * H * (size_t)(f->Dv + 2));
    ALLOC(f->cat, R * 2 * D), ALLOC(f->ab, R);
#undef ALLOC
    int maxcols = DH_MAX(2 * f->D, DH_MAX(f->Fmax, (int)(H * (size_t)f->Dv)));
    maxcols = DH_MAX(maxcols, DH_MAX(f->C, f->Q));
    nn_reserve(DH_MAX(max_rows, NB), maxcols);
    /* q8/q4 activations of the largest multi-product: all heads' latents, or two products of h */
    nn_reserve_act(R * 2 * D);
    /* one head's rows of W_UK's and W_UV's products, quantized inside attention's tasks */
    nn_reserve_local(R * (size_t)DH_MAX(f->Dn, f->C));
    f->pc.layers = m->n_layers, f->pc.seq = -1;
    f->pc.kvx = xcalloc((size_t)m->n_layers, sizeof *f->pc.kvx);
    f->pc.n = xcalloc((size_t)m->n_layers, sizeof *f->pc.n);
    f->pc.alloc = xcalloc((size_t)m->n_layers, sizeof *f->pc.alloc);
    fwd_set_prefill_cache(f, FWD_PREFILL_CACHE_DEFAULT);
    return f;
}

/* bytes of one position's expansion in one layer */
static size_t pc_row_bytes(const fwd_ctx *f) { return (size_t)f->H * (size_t)(f->Dn + f->Dv) * sizeof(float); }

void fwd_set_prefill_cache(fwd_ctx *f, size_t bytes) {
    prefill_cache *pc = &f->pc;
    size_t per_pos = pc_row_bytes(f) * (size_t)pc->layers;
    pc->cap = (int)DH_MIN((size_t)f->S, bytes / per_pos);
    for (int l = 0; l < pc->layers; l++) {
        free(pc->kvx[l]);
        pc->kvx[l] = NULL, pc->n[l] = pc->alloc[l] = 0;
    }
    pc->seq = -1, pc->reused = pc->expanded = 0;
}

void fwd_prefill_cache_stats(const fwd_ctx *f, fwd_prefill_stats *st) {
    size_t bytes = 0;
    for (int l = 0; l < f->pc.layers; l++) bytes += (size_t)f->pc.alloc[l] * pc_row_bytes(f);
    *st = (fwd_prefill_stats){.reused = f->pc.reused, .expanded = f->pc.expanded, .bytes = bytes,
                              .cap_positions = f->pc.cap, .seq = f->pc.seq};
}

void fwd_free(fwd_ctx *f) {
    if (!f) return;
    void *bufs[] = {f->x,    f->h,    f->a,   f->ysh,  f->q,      f->qg,   f->qlat, f->kva,
                    f->qa,   f->olat, f->og,  f->o,    f->cosv,   f->sinv, f->g,    f->u,
                    f->rlog, f->ridx, f->rw,  f->scores, f->lat,  f->kvx,  f->keys, f->ost,
                    f->cat,  f->ab};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    for (int l = 0; l < f->pc.layers; l++) free(f->pc.kvx[l]);
    free(f->pc.kvx), free(f->pc.n), free(f->pc.alloc);
    free(f);
}

void fwd_set_route_counts(fwd_ctx *f, uint64_t *counts) { f->route_counts = counts; }

void fwd_set_route_hook(fwd_ctx *f, fwd_route_fn fn, void *ctx) { f->route_fn = fn, f->route_ctx = ctx; }

void fwd_set_replay(fwd_ctx *f, fwd_replay_fn fn, void *ctx) { f->replay_fn = fn, f->replay_ctx = ctx; }

void fwd_times(const fwd_ctx *f, double *seconds) { memcpy(seconds, f->t, sizeof f->t); }

void fwd_forks(const fwd_ctx *f, unsigned long *forks) { memcpy(forks, f->forks, sizeof f->forks); }

/* a part's clock: wall time and the pool's fork-joins, read at its start */
typedef struct part_clock {
    double t;
    unsigned long forks;
} part_clock;

static part_clock clock_now(void) { return (part_clock){dh_now(), tp_forks(nn_pool())}; }

/* charge what happened since c to part, and restart c */
static void clock_charge(fwd_ctx *f, int part, part_clock *c) {
    part_clock now = clock_now();
    f->t[part] += now.t - c->t;
    f->forks[part] += now.forks - c->forks;
    *c = now;
}

/* cos/sin of pos * inv_freq[j] for each row, in double then rounded */
static void rope_tables(fwd_ctx *f, const fwd_row *rows, int T) {
    int half = f->Dr / 2;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < half; j++) {
            double ang = (double)rows[t].pos * f->m->inv_freq[j];
            f->cosv[t * half + j] = (float)cos(ang);
            f->sinv[t * half + j] = (float)sin(ang);
        }
}

/* rotate adjacent pairs (x[2j], x[2j+1]) of row t */
static void rope(const fwd_ctx *f, float *x, int t) {
    const float *cs = f->cosv + (size_t)t * (f->Dr / 2), *sn = f->sinv + (size_t)t * (f->Dr / 2);
    for (int j = 0; j < f->Dr / 2; j++) {
        float a = x[2 * j], b = x[2 * j + 1];
        x[2 * j] = a * cs[j] - b * sn[j];
        x[2 * j + 1] = a * sn[j] + b * cs[j];
    }
}

/* --- absorbed attention: one task per (run of heads, chunk of absorbed rows) ---
 * A task runs all of its heads' steps for its rows: W_UK's products, the scores and the
 * weighted latents, W_UV's products; one fork-join of the pool for the whole of it, where a
 * pass per step took three (and ran the two small products on one thread). Each step's result
 * is what the separate passes computed, bit for bit: products are batch invariant (kern.h). */

typedef struct abs_job {
    fwd_ctx *f;
    const layer_weights *lw;
    const fwd_row *rows;
    int layer, nA, chunk, heads; /* absorbed rows, rows a task, heads a task */
} abs_job;

/* q_abs[h] = W_UK[h]^T q_nope[h]; qa[h] = [q_abs | q_pe]                   [n, C + Dr] */
static void abs_query(const abs_job *j, int hh, int i0, int n, int thread) {
    fwd_ctx *f = j->f;
    int H = f->H, C = f->C, Dn = f->Dn, Dr = f->Dr, qw = H * (Dn + Dr), row = C + Dr;
    wmat wuk = wt_rows(&j->lw->attn.w_uk_t, hh * C, C);
    const float *qh = f->q + (size_t)hh * (Dn + Dr);
    float *qa = f->qa + ((size_t)i0 * H + hh) * row;
    for (int i = 0; i < n; i++) {
        const float *qr = qh + (size_t)f->ab[i0 + i] * qw;
        memcpy(f->qg + ((size_t)(i0 + i) * H + hh) * Dn, qr, (size_t)Dn * sizeof(float));
        memcpy(qa + (size_t)i * H * row + C, qr + Dn, (size_t)Dr * sizeof(float));
    }
    nn_matmul_local(&(nn_mm){.y = qa, .ldy = H * row, .x = f->qg + ((size_t)i0 * H + hh) * Dn, .ldx = H * Dn, .W = &wuk, .T = n}, thread);
}

/* o_lat[h] = softmax(scores) . c_kv for the heads [h0, h1) together: the scores in tiles of up
 * to 4 heads by 4 positions, the sums in tiles of 4 heads by 64 columns (kern.h), so each vector
 * of the cache is loaded once a tile, not once a head. The same dots and the same chains of
 * fused steps, positions ascending, as a head at a time: the same bits. With a long context
 * this is most of a step: genesis-5b q4k decode after 1024 tokens went from 33.3 to 42.5 tok/s
 * (AMD EPYC Zen 4, medians of 3 alternated rounds, docs/performance.md)    [n, C] */
static void abs_latent(const abs_job *j, int h0, int h1, int i0, int n, int thread) {
    fwd_ctx *f = j->f;
    int H = f->H, C = f->C, row = C + f->Dr, nh = h1 - h0;
    size_t S = (size_t)f->S;
    float *sc = f->scores + (size_t)thread * (size_t)j->heads * S, scale = f->m->softmax_scale;
    for (int i = 0; i < n; i++) {
        const fwd_row *r = &j->rows[f->ab[i0 + i]];
        const float *qv = f->qa + ((size_t)(i0 + i) * H + h0) * row;
        // score[h][s] = (q_abs[h] . c_kv[s] + q_pe[h] . k_pe[s]) * softmax_scale   [nh, S]
        // (a cache block's rows are contiguous: a block of positions at a time)
        for (int s = 0; s <= r->pos; s += KV_BLOCK)
            nn_dot_rows(sc + s, S, qv, (size_t)row, nh, kv_row_c(f->kv, r->seq, j->layer, s), (size_t)row,
                        DH_MIN(KV_BLOCK, r->pos + 1 - s), row);
        for (int h = 0; h < nh; h++) {
            for (int s = 0; s <= r->pos; s++) sc[h * S + s] *= scale;
            nn_softmax(sc + h * S, r->pos + 1);
        }
        float *ol = f->olat + ((size_t)(i0 + i) * H + h0) * C;
        memset(ol, 0, (size_t)nh * C * sizeof *ol);
        for (int s = 0; s <= r->pos; s += KV_BLOCK)
            nn_axpy_rows(ol, (size_t)C, sc + s, S, nh, kv_row_c(f->kv, r->seq, j->layer, s), (size_t)row,
                         DH_MIN(KV_BLOCK, r->pos + 1 - s), C);
    }
}

/* o[h] = W_UV[h] o_lat[h]                                                  [n, Dv] */
static void abs_value(const abs_job *j, int hh, int i0, int n, int thread) {
    fwd_ctx *f = j->f;
    int H = f->H, C = f->C, Dv = f->Dv;
    wmat wuv = wt_rows(&j->lw->attn.w_uv, hh * Dv, Dv);
    nn_matmul_local(&(nn_mm){.y = f->og + ((size_t)i0 * H + hh) * Dv, .ldy = H * Dv,
                             .x = f->olat + ((size_t)i0 * H + hh) * C, .ldx = H * C, .W = &wuv, .T = n},
                    thread);
}

/* a task: the rows [i0, i0 + n) of a run of heads, each step for every head before the next
 * step (each head's products and sums are the same calls in any order: the same bits) */
static void abs_task(void *ctx, int task, int thread) {
    abs_job *j = ctx;
    int n_chunks = (j->nA + j->chunk - 1) / j->chunk, h0 = task / n_chunks * j->heads;
    int h1 = DH_MIN(j->f->H, h0 + j->heads);
    int i0 = task % n_chunks * j->chunk, n = DH_MIN(j->chunk, j->nA - i0);
    for (int hh = h0; hh < h1; hh++) abs_query(j, hh, i0, n, thread);
    abs_latent(j, h0, h1, i0, n, thread);
    for (int hh = h0; hh < h1; hh++) abs_value(j, hh, i0, n, thread);
}

static void attend_absorbed(fwd_ctx *f, const layer_weights *lw, const fwd_row *rows, int nA, int layer) {
    int H = f->H, Dv = f->Dv;
    /* at least 4 tasks a thread when the heads alone are fewer; else two tasks a thread, each
     * a run of heads, whose products then follow each other in one stream of W_UK^T's (and of
     * W_UV's) rows: genesis-1b q4k's pass took 14.8 us a decode layer instead of 16.7 with a
     * task a head (AMD EPYC Zen 4, medians of ~40 runs in the slow state; 21.2 against 22.0 in
     * the fast; docs/performance.md). After a long context, one task a thread: each task reads
     * a layer's cache twice (scores, sums), so a thread's two read it four times, from L3 or
     * memory once it outgrows L2. genesis-1b q4k tg64@d4096: 98.4-109.9 tok/s against
     * 89.9-94.5 (attention 5.9-6.9 ms a step against 7.2-7.7); genesis-5b q4k @d2048: attention
     * 15.4-17.2 ms against 16.4-17.8, @d1024 (2.4 MB a layer) about the same (AMD EPYC Zen 4,
     * alternated; docs/performance.md). */
    int per_head = DH_MAX(1, DH_MIN(nA, (4 * nn_threads() + H - 1) / H)), maxpos = 0;
    for (int i = 0; i < nA; i++) maxpos = DH_MAX(maxpos, rows[f->ab[i]].pos);
    int heads = abs_heads(H, (size_t)(maxpos + 1) * (size_t)(f->C + f->Dr) * sizeof(float) >= ABS_LONG_BYTES);
    abs_job j = {.f = f, .lw = lw, .rows = rows, .layer = layer, .nA = nA, .chunk = (nA + per_head - 1) / per_head,
                 .heads = heads};
    tp_run(nn_pool(), (H + heads - 1) / heads * ((nA + j.chunk - 1) / j.chunk), abs_task, &j);
    for (int i = 0; i < nA; i++)
        memcpy(f->o + (size_t)f->ab[i] * H * Dv, f->og + (size_t)i * H * Dv, (size_t)H * Dv * sizeof(float));
}

/* --- naive attention: a chunk of prompt rows of one sequence --- */

typedef struct naive_job {
    fwd_ctx *f;
    const fwd_row *rows;
    int t0, nq, b, e; /* chunk's first row and its row count; key positions [b, e) this block */
    const float *kvx; /* the block's [k_nope | v], [e - b, H*(Dn+Dv)] */
} naive_job;

#define NQ 4 /* prompt rows a task of the naive form: their scores in tiles (kern.h) */

static void naive_task(void *ctx, int task, int thread) {
    (void)thread;
    naive_job *j = ctx;
    fwd_ctx *f = j->f;
    int H = f->H, Dn = f->Dn, Dr = f->Dr, Dv = f->Dv, kw = Dn + Dr;
    /* head-major: a thread's contiguous range of tasks (threadpool.c) runs the rows of one head
     * in turn, so that head's keys and values of the block (80 KB on genesis-5b) stay in L2
     * between rows; row-major, a row's pass over every head's (1.3 MB) does not fit Zen 4's
     * 1 MiB L2. On AMD EPYC Zen 4, genesis-5b q4k pp512 1.00, 1.06 and 1.03x (alternated).
     * A task takes NQ rows of the head: their scores in one call, so each key is loaded once
     * for the NQ of them (a row's positions past its own last are computed and not used; every
     * score used is the dot it was). Tasks are independent (each its own st and acc), so the
     * order changes no bits. */
    int ng = (j->nq + NQ - 1) / NQ, ta = j->t0 + task % ng * NQ, hh = task / ng;
    int tn = DH_MIN(NQ, j->t0 + j->nq - ta), nr[NQ], nmax = 0, nmin = NB;
    for (int u = 0; u < tn; u++) { /* each row's positions in this block */
        nr[u] = DH_MIN(j->e, j->rows[ta + u].pos + 1) - j->b;
        nmax = DH_MAX(nmax, nr[u]), nmin = DH_MIN(nmin, nr[u]);
    }
    if (nmax <= 0) return;
    float sc[NQ][NB];
    // score[s] = ([q_nope | q_pe] . [k_nope[s] | k_pe[s]]) * softmax_scale  [rows, block]
    nn_dot_rows(sc[0], NB, f->q + (size_t)ta * H * kw + (size_t)hh * kw, (size_t)H * kw, tn,
                f->keys + (size_t)hh * kw, (size_t)H * kw, nmax, kw);
    const float *vals = j->kvx + (size_t)hh * (Dn + Dv) + Dn;
    size_t ldv = (size_t)H * (Dn + Dv), lds = (size_t)H * (Dv + 2);
    for (int u = 0; u < tn; u++) {
        int t = ta + u, n = nr[u];
        if (n <= 0) continue;
        float *st = f->ost + ((size_t)t * H + hh) * (Dv + 2), *acc = st + 2, *p = sc[u], mx = st[0];
        for (int i = 0; i < n; i++) {
            p[i] *= f->m->softmax_scale;
            mx = nn_max(mx, p[i]);
        }
        // online softmax: rescale what the earlier blocks summed, add this block's weights
        // (p[i] of position b + i)
        float corr = expf(st[0] - mx);
        for (int d = 0; d < Dv; d++) acc[d] *= corr;
        st[1] = nn_exp_sum(p, n, mx, st[1] * corr), st[0] = mx;
    }
    /* acc += p . v: the positions every row has in one tile of rows, then each row's own rest,
     * continuing its chains in order (positions ascending: the bits of one call a row) */
    float *acc0 = f->ost + ((size_t)ta * H + hh) * (Dv + 2) + 2;
    int shared = DH_MAX(nmin, 0);
    if (shared > 0) nn_axpy_rows(acc0, lds, sc[0], NB, tn, vals, ldv, shared, Dv);
    for (int u = 0; u < tn; u++)
        if (nr[u] > shared)
            nn_axpy_rows(acc0 + u * lds, 0, sc[u] + shared, 0, 1, vals + shared * ldv, ldv, nr[u] - shared, Dv);
}

/* Whether seq may keep its expansions in the prefill cache this step (taking it over when the
 * owner has fed no chunk in this step) */
static int pc_claim(fwd_ctx *f, int seq) {
    prefill_cache *pc = &f->pc;
    if (pc->cap <= 0) return 0;
    if (pc->seq != seq) {
        if (pc->seq >= 0 && pc->used == f->step) return 0;
        pc->seq = seq;
        for (int l = 0; l < pc->layers; l++) pc->n[l] = 0;
    }
    pc->used = f->step;
    return 1;
}

/* Room for positions [0, e) of layer l in the prefill cache: 1, or 0 past the budget or when
 * memory runs out (then the cache stops growing; the naive form expands without it) */
static int pc_room(fwd_ctx *f, int l, int e) {
    prefill_cache *pc = &f->pc;
    if (e <= pc->alloc[l]) return 1;
    if (e > pc->cap) return 0;
    int want = DH_MIN(pc->cap, DH_MAX(e, DH_MAX(2 * pc->alloc[l], 256)));
    float *p = realloc(pc->kvx[l], (size_t)want * pc_row_bytes(f));
    if (!p) {
        log_warn("prefill cache: no memory for %d positions of layer %d; expanding without it", want, l);
        pc->cap = pc->alloc[l];
        return 0;
    }
    pc->kvx[l] = p, pc->alloc[l] = want;
    return 1;
}

/* [k_nope | v] = W_UKV c_kv of seq's positions [b, e) in layer l: [e - b, H*(Dn+Dv)], from the
 * prefill cache where kept (keep: seq owns it), the rest expanded (and kept when keep) */
static const float *expand(fwd_ctx *f, const layer_weights *lw, int seq, int l, int b, int e, int keep) {
    prefill_cache *pc = &f->pc;
    size_t rl = (size_t)f->H * (size_t)(f->Dn + f->Dv);
    float *kvx = f->kvx;
    int from = b; /* first position to expand */
    if (keep && pc->n[l] >= b && pc_room(f, l, e)) {
        kvx = pc->kvx[l] + (size_t)b * rl;
        from = DH_MIN(e, pc->n[l]);
        pc->reused += (uint64_t)(from - b), pc->expanded += (uint64_t)(e - from);
        pc->n[l] = DH_MAX(pc->n[l], e);
    }
    if (from < e) {
        for (int s = from; s < e; s++)
            memcpy(f->lat + (size_t)(s - from) * f->C, kv_row_c(f->kv, seq, l, s), (size_t)f->C * sizeof(float));
        nn_matmul(kvx + (size_t)(from - b) * rl, f->lat, &lw->attn.kv_b_proj, e - from);
    }
    return kvx;
}

static void attend_naive(fwd_ctx *f, const layer_weights *lw, const fwd_row *rows, int t0, int t1, int layer) {
    int H = f->H, C = f->C, Dn = f->Dn, Dr = f->Dr, Dv = f->Dv, seq = rows[t0].seq;
    int plast = rows[t1 - 1].pos, keep = pc_claim(f, seq);
    for (int t = t0; t < t1; t++)
        for (int hh = 0; hh < H; hh++) {
            float *st = f->ost + ((size_t)t * H + hh) * (Dv + 2);
            st[0] = -INFINITY, st[1] = 0;
            memset(st + 2, 0, (size_t)Dv * sizeof(float));
        }
    for (int b = 0; b <= plast; b += NB) {
        int e = DH_MIN(b + NB, plast + 1);
        // [k_nope | v] = W_UKV c_kv for the block's positions           [e - b, H, Dn + Dv]
        const float *kvx = expand(f, lw, seq, layer, b, e, keep);
        for (int s = b; s < e; s++) {
            const float *kpe = kv_row_c(f->kv, seq, layer, s) + C;
            for (int hh = 0; hh < H; hh++) {
                float *k = f->keys + ((size_t)(s - b) * H + hh) * (Dn + Dr);
                memcpy(k, kvx + (size_t)(s - b) * H * (Dn + Dv) + (size_t)hh * (Dn + Dv), (size_t)Dn * sizeof(float));
                memcpy(k + Dn, kpe, (size_t)Dr * sizeof(float));
            }
        }
        naive_job j = {.f = f, .rows = rows, .t0 = t0, .nq = t1 - t0, .b = b, .e = e, .kvx = kvx};
        tp_run(nn_pool(), (t1 - t0 + NQ - 1) / NQ * H, naive_task, &j);
    }
    // o[h] = acc / sum                                                    [rows, H, Dv]
    for (int t = t0; t < t1; t++)
        for (int hh = 0; hh < H; hh++) {
            const float *st = f->ost + ((size_t)t * H + hh) * (Dv + 2);
            float *o = f->o + (size_t)t * H * Dv + (size_t)hh * Dv;
            for (int d = 0; d < Dv; d++) o[d] = st[2 + d] / st[1];
        }
}

/* MLA: h [T, D] (normed) -> out [T, D]; writes this step's rows into the cache */
static void attention(fwd_ctx *f, int layer, const fwd_row *rows, int T, const float *h, float *out) {
    const layer_weights *lw = &f->m->layers[layer];
    const mla_weights *w = &lw->attn;
    int H = f->H, C = f->C, Dn = f->Dn, Dr = f->Dr, qw = H * (Dn + Dr), row = C + Dr;
    float eps = f->m->cfg.rms_norm_eps;
    // q = W_Q h, or W_QB norm(W_QA h) with q LoRA                          [T, H, Dn + Dr]
    // [c_kv | k_pe] = W_DKV h (with the first query product, both reading h)  [T, C + Dr]
    nn_mm mm[2] = {{.y = f->kva, .ldy = C + Dr, .x = h, .ldx = f->D, .W = &w->kv_a_proj_with_mqa, .T = T}};
    if (f->Q > 0) {
        mm[1] = (nn_mm){.y = f->qlat, .ldy = f->Q, .x = h, .ldx = f->D, .W = &w->q_a_proj, .T = T};
        nn_matmul_multi(mm, 2);
        nn_rmsnorm(f->qlat, f->qlat, w->q_a_layernorm, T, f->Q, eps);
        nn_matmul(f->q, f->qlat, &w->q_b_proj, T);
    } else {
        mm[1] = (nn_mm){.y = f->q, .ldy = qw, .x = h, .ldx = f->D, .W = &w->q_proj, .T = T};
        nn_matmul_multi(mm, 2);
    }
    // c_kv = norm(c_kv); rope q_pe and k_pe
    for (int t = 0; t < T; t++) {
        float *kr = f->kva + (size_t)t * row;
        nn_rmsnorm(kr, kr, w->kv_a_layernorm, 1, C, eps);
        rope(f, kr + C, t);
        for (int hh = 0; hh < H; hh++) rope(f, f->q + (size_t)t * qw + (size_t)hh * (Dn + Dr) + Dn, t);
        memcpy(kv_row(f->kv, rows[t].seq, layer, rows[t].pos), kr, (size_t)row * sizeof(float));
        if (rows[t].seq == f->pc.seq && rows[t].pos < f->pc.n[layer]) f->pc.n[layer] = rows[t].pos;
    }
    // attention per row: naive chunks of prompt rows, absorbed decode rows
    int nA = 0;
    for (int t = 0; t < T;) {
        if (!(rows[t].flags & FWD_NAIVE)) {
            f->ab[nA++] = t++;
            continue;
        }
        int t1 = t + 1;
        while (t1 < T && (rows[t1].flags & FWD_NAIVE) && rows[t1].seq == rows[t].seq) t1++;
        attend_naive(f, lw, rows, t, t1, layer);
        t = t1;
    }
    if (nA) attend_absorbed(f, lw, rows, nA, layer);
    // out = W_O o                                                          [T, D]
    nn_matmul(out, f->o, &w->o_proj, T);
}

/* MoE: h [T, D] -> out [T, D]; route record into idx_out/w_out when given */
static int moe_layer(fwd_ctx *f, int layer, const float *h, int T, float *out, int *idx_out, float *w_out) {
    const moe_weights *mw = &f->m->layers[layer].moe;
    int E = f->E, K = f->K, D = f->D;
    // s = x W_gate^T; experts, weights = top-K of s + bias                 [T, E] -> [T, K]
    nn_matmul(f->rlog, h, &mw->gate, T);
    router r = router_from_config(&f->m->cfg, mw->e_score_correction_bias);
    for (int t = 0; t < T; t++) router_select(&r, f->rlog + (size_t)t * E, f->ridx + (size_t)t * K, f->rw + (size_t)t * K);
    if (f->replay_fn) f->replay_fn(f->replay_ctx, layer, f->rows, T, f->ridx, f->rw); /* replaces the choice */
    if (f->route_counts)
        for (int i = 0; i < T * K; i++) f->route_counts[(size_t)layer * E + f->ridx[i]]++;
    if (f->route_fn) f->route_fn(f->route_ctx, layer, f->rows, T, f->ridx, f->rw);
    if (idx_out) memcpy(idx_out, f->ridx, (size_t)T * K * sizeof *idx_out);
    if (w_out) memcpy(w_out, f->rw, (size_t)T * K * sizeof *w_out);
    // routed experts on the backend; the shared experts meanwhile, or in the same passes of
    // the pool when the backend runs here
    int rc;
    if (f->moe->run_with && mw->shared.gate_proj.rows) {
        experts_extra sh = {.f = &mw->shared, .y = f->ysh, .g = f->g, .u = f->u};
        rc = f->moe->run_with(f->moe, layer, h, T, f->ridx, f->rw, out, &sh);
        if (rc) return rc;
        for (size_t i = 0; i < (size_t)T * D; i++) out[i] += f->ysh[i];
        return 0;
    }
    rc = f->moe->start(f->moe, layer, h, T, f->ridx, f->rw);
    if (rc) return rc;
    if (mw->shared.gate_proj.rows) experts_ffn(&mw->shared, h, T, f->ysh, f->g, f->u);
    rc = f->moe->finish(f->moe, out);
    if (rc) return rc;
    // out = sum_k w_k expert_k(x) + shared(x)
    if (mw->shared.gate_proj.rows)
        for (size_t i = 0; i < (size_t)T * D; i++) out[i] += f->ysh[i];
    return 0;
}

/* one block: x += attn(norm(x)); x += ffn(norm(x)) */
static int block(fwd_ctx *f, int layer, const fwd_row *rows, int T, int *idx_out, float *w_out) {
    const layer_weights *lw = &f->m->layers[layer];
    size_t n = (size_t)T * f->D;
    float eps = f->m->cfg.rms_norm_eps;
    part_clock c = clock_now();
    nn_rmsnorm(f->h, f->x, lw->input_layernorm, T, f->D, eps);
    attention(f, layer, rows, T, f->h, f->a);
    for (size_t i = 0; i < n; i++) f->x[i] += f->a[i];
    clock_charge(f, FWD_T_ATTENTION, &c);
    nn_rmsnorm(f->h, f->x, lw->post_attention_layernorm, T, f->D, eps);
    if (lw->is_moe) {
        int rc = moe_layer(f, layer, f->h, T, f->a, idx_out, w_out);
        if (rc) return rc;
    } else {
        experts_ffn(&lw->mlp, f->h, T, f->a, f->g, f->u);
    }
    clock_charge(f, lw->is_moe ? FWD_T_MOE : FWD_T_DENSE, &c);
    for (size_t i = 0; i < n; i++) f->x[i] += f->a[i];
    return 0;
}

/* logits of the flagged rows: head(norm(x)) */
static void head(fwd_ctx *f, const fwd_row *rows, int T, const float *normw, const wmat *W, float *logits) {
    int n = 0, D = f->D;
    for (int t = 0; t < T; t++)
        if (rows[t].flags & FWD_LOGITS)
            nn_rmsnorm(f->h + (size_t)n++ * D, f->x + (size_t)t * D, normw, 1, D, f->m->cfg.rms_norm_eps);
    if (n && logits) nn_matmul(logits, f->h, W, n);
}

int fwd_step(fwd_ctx *f, const fwd_row *rows, int T, fwd_out *out) {
    DH_ASSERT(T > 0 && T <= f->R);
    const model *m = f->m;
    int D = f->D, L = m->cfg.num_hidden_layers, K = f->K;
    f->step++;
    // x = E[token]                                                          [T, D]
    for (int t = 0; t < T; t++) {
        DH_ASSERT(rows[t].token >= 0 && rows[t].token < f->V && rows[t].pos < f->S);
        wt_row(&m->embed_tokens, rows[t].token, f->x + (size_t)t * D);
    }
    rope_tables(f, rows, T);
    f->rows = rows;
    int moe_i = 0;
    for (int l = 0; l < L; l++) {
        int *ri = NULL;
        float *rw = NULL;
        if (m->layers[l].is_moe && out) {
            if (out->route_idx) ri = out->route_idx + (size_t)moe_i * T * K;
            if (out->route_w) rw = out->route_w + (size_t)moe_i * T * K;
        }
        moe_i += m->layers[l].is_moe;
        int rc = block(f, l, rows, T, ri, rw);
        if (rc) return rc;
        if (out && out->layer_hidden) memcpy(out->layer_hidden + (size_t)l * T * D, f->x, (size_t)T * D * sizeof(float));
    }
    if (out && out->hidden) memcpy(out->hidden, f->x, (size_t)T * D * sizeof(float));
    if (out && out->final_norm) nn_rmsnorm(out->final_norm, f->x, m->norm, T, D, m->cfg.rms_norm_eps);
    part_clock c = clock_now();
    head(f, rows, T, m->norm, &m->lm_head, out ? out->logits : NULL);
    clock_charge(f, FWD_T_HEAD, &c);
    if (f->replay_fn) f->replay_fn(f->replay_ctx, -1, rows, T, NULL, NULL);
    if (f->route_fn) f->route_fn(f->route_ctx, -1, rows, T, NULL, NULL);
    return 0;
}

int fwd_mtp(fwd_ctx *f, const fwd_row *rows, const float *hidden, int T, float *logits) {
    const model *m = f->m;
    if (!m->has_mtp) return DH_EUNSUPPORTED;
    DH_ASSERT(T > 0 && T <= f->R);
    int D = f->D, L = m->cfg.num_hidden_layers;
    const layer_weights *lw = &m->layers[L];
    float eps = m->cfg.rms_norm_eps;
    // x = W_eh [enorm(E[t_{i+1}]); hnorm(norm(h_i))]                       [T, 2D] -> [T, D]
    for (int t = 0; t < T; t++) {
        float *c = f->cat + (size_t)t * 2 * D;
        DH_ASSERT(rows[t].token >= 0 && rows[t].token < f->V);
        wt_row(&lw->embed_tokens, rows[t].token, c);
        nn_rmsnorm(c, c, lw->enorm, 1, D, eps);
        nn_rmsnorm(c + D, hidden + (size_t)t * D, m->norm, 1, D, eps);
        nn_rmsnorm(c + D, c + D, lw->hnorm, 1, D, eps);
    }
    part_clock c = clock_now();
    double before[FWD_T_COUNT];
    unsigned long forks_before[FWD_T_COUNT];
    memcpy(before, f->t, sizeof before);
    memcpy(forks_before, f->forks, sizeof forks_before);
    nn_matmul(f->x, f->cat, &lw->eh_proj, T);
    rope_tables(f, rows, T);
    f->rows = rows;
    int rc = block(f, L, rows, T, NULL, NULL);
    if (rc) return rc;
    if (f->replay_fn) f->replay_fn(f->replay_ctx, -1, rows, T, NULL, NULL);
    if (f->route_fn) f->route_fn(f->route_ctx, -1, rows, T, NULL, NULL);
    head(f, rows, T, lw->shared_head_norm, &lw->shared_head_head, logits);
    memcpy(f->t, before, sizeof before); /* the MTP block counts as MTP only */
    memcpy(f->forks, forks_before, sizeof forks_before);
    clock_charge(f, FWD_T_MTP, &c);
    return 0;
}
