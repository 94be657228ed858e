/* experts.c: grouped SwiGLU over the hosted experts (used by worker ranks and by the
 * coordinator's in-process backend alike; see experts.h).
 *
 * A batch arrives as (token, expert, weight) triples. Tokens are grouped by expert (counting
 * sort, so each group keeps token order) and gathered, and every expert runs its three
 * products as [n_e, D] matrices: the gate and up products of all the chosen experts in one
 * pass of the thread pool (each task applying SwiGLU to the rows it computed, so the
 * activation runs on every thread: prefill of genesis-1b q8 1.06-1.20x faster than with it on
 * the caller after the pass), the down products in another, so that the work of a layer is split
 * across threads by output rows, not by expert (a decode step has only K experts of one row
 * each). The weighted sum per token then runs in ascending expert index, as DeepSeek's
 * reference accumulates, so the in-process backend and a worker hosting every expert add in
 * the same order. The coordinator's shared experts can join the two passes (experts_run_with):
 * their products are batch invariant, so sharing a pass changes no bit, and a MoE layer then
 * costs two fork-joins of the pool instead of four. Scratch is sized at creation for max_rows
 * tokens; a step allocates nothing. */
#include "experts.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/nn.h"

struct experts_host {
    const model *m;
    int max_rows, D, F, E, K;
    float *xe;      /* [max_rows * K, D] rows of every chosen (token, expert), grouped by expert */
    float *g, *u;   /* [max_rows * K, F] */
    float *ye;      /* [max_rows * K, D] expert outputs, same order */
    int *count;     /* [E + 1] */
    int *order;     /* [max_rows * K] (token * K + slot), grouped by expert */
    int *pos;       /* [max_rows * K] inverse: row of (token * K + slot) in ye */
    nn_mm *mm;      /* [2 * E + 2] products of one pass */
};

experts_host *experts_new(const model *m, int max_rows) {
    const model_config *c = &m->cfg;
    experts_host *h = xcalloc(1, sizeof *h);
    h->m = m;
    h->max_rows = max_rows;
    h->D = c->hidden_size;
    h->F = c->moe_intermediate_size;
    h->E = c->n_routed_experts;
    h->K = c->num_experts_per_tok;
    size_t RK = (size_t)max_rows * h->K;
    h->xe = xmalloc(xmul(RK * h->D, sizeof(float)));
    h->ye = xmalloc(xmul(RK * h->D, sizeof(float)));
    h->g = xmalloc(xmul(RK * h->F, sizeof(float)));
    h->u = xmalloc(xmul(RK * h->F, sizeof(float)));
    h->count = xmalloc((size_t)(h->E + 1) * sizeof *h->count);
    h->order = xmalloc(RK * sizeof *h->order);
    h->pos = xmalloc(RK * sizeof *h->pos);
    h->mm = xmalloc(((size_t)2 * DH_MAX(h->E, 1) + 2) * sizeof *h->mm);
    int Fsh = DH_MAX(c->n_shared_experts, 1) * h->F; /* experts_run_with's extra FFN */
    nn_reserve(max_rows, DH_MAX(DH_MAX(h->D, h->F), Fsh));
    /* gate and up of every expert and of the extra FFN at once */
    nn_reserve_act(2 * (RK * (size_t)DH_MAX(h->D, h->F) + (size_t)max_rows * DH_MAX(h->D, Fsh)));
    return h;
}

void experts_free(experts_host *h) {
    if (!h) return;
    free(h->xe), free(h->ye), free(h->g), free(h->u), free(h->count), free(h->order), free(h->pos), free(h->mm);
    free(h);
}

void experts_ffn(const ffn_weights *f, const float *x, int T, float *y, float *g, float *u) {
    int D = f->gate_proj.cols, F = f->gate_proj.rows;
    // g = silu(W_gate x) * W_up x (one pass of the pool)       [T, F]
    nn_matmul_multi(&(nn_mm){g, F, x, D, &f->gate_proj, T, &f->up_proj, u}, 1);
    // y = W_down g                                             [T, D]
    nn_matmul(y, g, &f->down_proj, T);
}

int experts_run(experts_host *h, int layer, const float *x, int T, const int *idx, const float *w,
                int K, float *out) {
    return experts_run_with(h, layer, x, T, idx, w, K, out, NULL);
}

int experts_run_with(experts_host *h, int layer, const float *x, int T, const int *idx, const float *w, int K,
                     float *out, const experts_extra *extra) {
    DH_ASSERT(T <= h->max_rows && K <= h->K && layer >= 0 && layer < h->m->n_layers);
    const moe_weights *moe = &h->m->layers[layer].moe;
    int D = h->D, F = h->F, E = h->E;
    // group (token, slot) pairs by expert, keeping token order
    memset(h->count, 0, (size_t)(E + 1) * sizeof *h->count);
    for (int i = 0; i < T * K; i++)
        if (idx[i] >= 0) {
            DH_ASSERT(idx[i] < E);
            h->count[idx[i] + 1]++;
        }
    for (int e = 0; e < E; e++) h->count[e + 1] += h->count[e];
    for (int i = 0; i < T * K; i++)
        if (idx[i] >= 0) h->order[h->count[idx[i]]++] = i;
    for (int e = E; e > 0; e--) h->count[e] = h->count[e - 1]; /* back to starts */
    h->count[0] = 0;
    for (int i = 0; i < h->count[E]; i++) h->pos[h->order[i]] = i;
    // every chosen expert's SwiGLU, each one product over its tokens (gathered into xe); gate
    // and up of all the experts in one pass of the pool, then the downs in another
    int n = 0;
    for (int e = 0; e < E; e++) {
        int ne = h->count[e + 1] - h->count[e];
        if (ne == 0) continue;
        const ffn_weights *f = &moe->experts[e];
        if (!f->gate_proj.rows) {
            log_error("layer %d: expert %d was chosen but is not loaded on this rank", layer, e);
            return DH_EINVAL;
        }
        size_t r0 = (size_t)h->count[e];
        /* An expert with one row reads it where it is, in x: in decode every chosen expert and
         * the extra FFN then read the same row, and nn_matmul_multi quantizes it once for all
         * of them instead of once each (the same bits: each row is quantized on its own). */
        const float *xr = x + (size_t)(h->order[r0] / K) * D;
        if (ne > 1) {
            for (int i = 0; i < ne; i++)
                memcpy(h->xe + (r0 + i) * D, x + (size_t)(h->order[r0 + i] / K) * D, (size_t)D * sizeof(float));
            xr = h->xe + r0 * D;
        }
        h->mm[n++] = (nn_mm){h->g + r0 * F, F, xr, D, &f->gate_proj, ne, &f->up_proj, h->u + r0 * F};
    }
    const ffn_weights *xf = extra ? extra->f : NULL;
    int Fx = xf ? xf->gate_proj.rows : 0;
    if (xf) {
        DH_ASSERT(xf->gate_proj.cols == D);
        h->mm[n++] = (nn_mm){extra->g, Fx, x, D, &xf->gate_proj, T, &xf->up_proj, extra->u};
    }
    nn_matmul_multi(h->mm, n);
    n = 0;
    for (int e = 0; e < E; e++) {
        int ne = h->count[e + 1] - h->count[e];
        if (ne == 0) continue;
        size_t r0 = (size_t)h->count[e];
        h->mm[n++] = (nn_mm){h->ye + r0 * D, D, h->g + r0 * F, F, &moe->experts[e].down_proj, ne, NULL, NULL};
    }
    if (xf) h->mm[n++] = (nn_mm){extra->y, D, extra->g, Fx, &xf->down_proj, T, NULL, NULL};
    nn_matmul_multi(h->mm, n);
    // out[t] = sum_k w[t,k] * expert_k(x[t]), in ascending expert index
    for (int t = 0; t < T; t++) {
        float *o = out + (size_t)t * D;
        memset(o, 0, (size_t)D * sizeof *o);
        const int *it = idx + (size_t)t * K;
        int done = 0;
        for (int k = 0; k < K; k++) done |= (it[k] < 0) << k;
        for (;;) {
            int best = -1;
            for (int k = 0; k < K; k++)
                if (!(done >> k & 1) && (best < 0 || it[k] < it[best])) best = k;
            if (best < 0) break;
            done |= 1 << best;
            nn_axpy(o, w[(size_t)t * K + best], h->ye + (size_t)h->pos[t * K + best] * D, D);
        }
    }
    return 0;
}
