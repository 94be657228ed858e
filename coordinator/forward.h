/* forward.h: the model's forward pass over a batch of rows from any sequences (fwd_ prefix).
 *
 * A step is T rows, each a token of some sequence at some position; rows of one sequence are
 * consecutive with ascending, gap-free positions that continue what the KV cache holds. So one
 * step can mix decode tokens of running sequences with chunks of new prompts. Every row's
 * result depends only on its own sequence, never on the other rows (the kernels are batch
 * invariant, attention is per row), so a request gives the same tokens alone or in a batch.
 *
 * Dims legend: T rows, D hidden, V vocab, L main layers, K experts per token. */
#ifndef DH_FORWARD_H
#define DH_FORWARD_H
#include "coordinator/kvcache.h"
#include "coordinator/moe_backend.h"
#include "core/model.h"

enum {
    FWD_NAIVE = 1,  /* attend in the naive form (prompt rows); else the absorbed form */
    FWD_LOGITS = 2, /* compute this row's logits */
};

typedef struct fwd_row {
    int seq;        /* KV cache sequence */
    int pos;        /* position in the sequence */
    int token;      /* input token id */
    unsigned flags; /* FWD_* */
} fwd_row;

typedef struct fwd_out {   /* what a step reports; every pointer may be NULL */
    float *logits;         /* [rows with FWD_LOGITS, V], in row order */
    float *hidden;         /* [T, D] last hidden state before model.norm (the MTP input) */
    float *layer_hidden;   /* [L, T, D] residual stream after each main layer */
    float *final_norm;     /* [T, D] model.norm(hidden) */
    int *route_idx;        /* [MoE layers, T, K] chosen experts, best first */
    float *route_w;        /* [MoE layers, T, K] their gate weights */
} fwd_out;

typedef struct fwd_ctx fwd_ctx; /* owned by the engine thread */

/* A forward pass over m, caching into kv (which must have m->n_layers layers of
 * C + Dr floats), running routed experts on moe, for steps of up to max_rows rows.
 * Keeps all three, which must outlive it. Allocates all step scratch now. */
fwd_ctx *fwd_new(const model *m, kv_cache *kv, moe_backend *moe, int max_rows);
void fwd_free(fwd_ctx *f); /* NULL ok */

/* One step of the main model. The caller has reserved KV positions up to each row's pos.
 * 0, or the expert backend's error (DH_ETIMEOUT, DH_EPEER: the cluster failed). */
int fwd_step(fwd_ctx *f, const fwd_row *rows, int T, fwd_out *out);

/* One step of the MTP block: row i has token t_{i+1} and position i (in the MTP block's own
 * cache), hidden [T, D] the main model's hidden state at position i (fwd_out.hidden).
 * logits [rows with FWD_LOGITS, V] (NULL to skip). DH_EUNSUPPORTED without an MTP block. */
int fwd_mtp(fwd_ctx *f, const fwd_row *rows, const float *hidden, int T, float *logits);

/* Record tokens routed per (layer, expert) into counts [n_layers * E] (kept; NULL stops). */
void fwd_set_route_counts(fwd_ctx *f, uint64_t *counts);

/* A routing observer (live trace recording): called after the router of every MoE layer
 * (model layer index `layer`, the MTP block's too) with the step's rows and their chosen
 * experts idx [T, K] and gate weights w [T, K], borrowed for the call; then once with layer
 * -1 (idx, w NULL) when the step (fwd_step or fwd_mtp) is done. It must not change anything. */
typedef void (*fwd_route_fn)(void *ctx, int layer, const fwd_row *rows, int T, const int *idx, const float *w);
void fwd_set_route_hook(fwd_ctx *f, fwd_route_fn fn, void *ctx); /* NULL fn stops */

/* A routing replay (coordinator/replay.h): called after the router of every MoE layer with
 * the step's rows and the router's choice idx [T, K], w [T, K], which it may replace (before
 * the routing counts, the observer and the experts see them); then once with layer -1 (idx, w
 * NULL) when the step is done. */
typedef void (*fwd_replay_fn)(void *ctx, int layer, const fwd_row *rows, int T, int *idx, float *w);
void fwd_set_replay(fwd_ctx *f, fwd_replay_fn fn, void *ctx); /* NULL fn stops */

/* The prefill cache (forward.c): a prompt fed in chunks keeps the keys and values its naive
 * form expanded, so later chunks read them rather than expanding every earlier position again.
 * One prefilling sequence at a time, within `bytes` (positions [0, bytes / (layers *
 * H*(Dn+Dv)*4)); default FWD_PREFILL_CACHE_DEFAULT; 0 turns it off). The same bits either way;
 * setting it frees what it held and zeroes the counts of fwd_prefill_cache_stats. */
#define FWD_PREFILL_CACHE_DEFAULT ((size_t)1 << 30)
void fwd_set_prefill_cache(fwd_ctx *f, size_t bytes);
typedef struct fwd_prefill_stats {
    uint64_t reused, expanded; /* positions read back and expanded, summed over layers */
    size_t bytes;              /* held now */
    int cap_positions;         /* positions the budget allows */
    int seq;                   /* the sequence it belongs to, or -1 */
} fwd_prefill_stats;
void fwd_prefill_cache_stats(const fwd_ctx *f, fwd_prefill_stats *st);
/* Seconds spent so far in each part of the forward pass (wall time of the engine thread). */
enum { FWD_T_ATTENTION, FWD_T_MOE, FWD_T_DENSE, FWD_T_HEAD, FWD_T_MTP, FWD_T_COUNT };
void fwd_times(const fwd_ctx *f, double *seconds /* [FWD_T_COUNT] */);
/* Fork-joins of the thread pool (tp_forks) so far in each part, counted as fwd_times times. */
void fwd_forks(const fwd_ctx *f, unsigned long *forks /* [FWD_T_COUNT] */);
#endif
