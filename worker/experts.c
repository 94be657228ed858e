/* experts.c: grouped SwiGLU over the hosted experts.
 *
 * A batch arrives as (token, expert, weight) triples. Tokens are grouped by expert (counting
 * sort, so each group keeps token order), each expert's rows are gathered and run through its
 * three products as [n_e, D] matrices on the thread pool, and the outputs are scattered back
 * to their (token, slot). The weighted sum per token then runs in ascending expert index, as
 * DeepSeek's reference accumulates, so the in-process backend and a worker hosting every
 * expert add in the same order. Scratch is sized at creation for max_rows tokens; a step
 * allocates nothing. */
#include "experts.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/nn.h"

struct experts_host {
    const model *m;
    int max_rows, D, F, E, K;
    float *xe;      /* [max_rows, D] gathered rows of one expert */
    float *g, *u;   /* [max_rows, F] */
    float *ye;      /* [max_rows, D] */
    float *slots;   /* [max_rows * K, D] output per (token, slot) */
    int *count;     /* [E + 1] */
    int *order;     /* [max_rows * K] (token * K + slot), grouped by expert */
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
    size_t R = (size_t)max_rows;
    h->xe = xmalloc(xmul(R * h->D, sizeof(float)));
    h->ye = xmalloc(xmul(R * h->D, sizeof(float)));
    h->g = xmalloc(xmul(R * h->F, sizeof(float)));
    h->u = xmalloc(xmul(R * h->F, sizeof(float)));
    h->slots = xmalloc(xmul(R * h->K * h->D, sizeof(float)));
    h->count = xmalloc((size_t)(h->E + 1) * sizeof *h->count);
    h->order = xmalloc(R * h->K * sizeof *h->order);
    nn_reserve(max_rows, DH_MAX(h->D, h->F));
    return h;
}

void experts_free(experts_host *h) {
    if (!h) return;
    free(h->xe), free(h->ye), free(h->g), free(h->u), free(h->slots), free(h->count), free(h->order);
    free(h);
}

void experts_ffn(const ffn_weights *f, const float *x, int T, float *y, float *g, float *u) {
    // g, u = W_gate x, W_up x                                  [T, F]
    nn_matmul(g, x, &f->gate_proj, T);
    nn_matmul(u, x, &f->up_proj, T);
    // g = silu(g) * u; y = W_down g                            [T, D]
    nn_swiglu(g, u, (size_t)T * f->gate_proj.rows);
    nn_matmul(y, g, &f->down_proj, T);
}

int experts_run(experts_host *h, int layer, const float *x, int T, const int *idx, const float *w,
                int K, float *out) {
    DH_ASSERT(T <= h->max_rows && K <= h->K && layer >= 0 && layer < h->m->n_layers);
    const moe_weights *moe = &h->m->layers[layer].moe;
    int D = h->D, E = h->E;
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
    // per expert: gather, SwiGLU as one product over its tokens, scatter to slots
    for (int e = 0; e < E; e++) {
        int n = h->count[e + 1] - h->count[e];
        if (n == 0) continue;
        const ffn_weights *f = &moe->experts[e];
        if (!f->gate_proj.rows) {
            log_error("layer %d: expert %d was chosen but is not loaded on this rank", layer, e);
            return DH_EINVAL;
        }
        const int *ord = h->order + h->count[e];
        for (int i = 0; i < n; i++) memcpy(h->xe + (size_t)i * D, x + (size_t)(ord[i] / K) * D, (size_t)D * sizeof(float));
        experts_ffn(f, h->xe, n, h->ye, h->g, h->u);
        for (int i = 0; i < n; i++) memcpy(h->slots + (size_t)ord[i] * D, h->ye + (size_t)i * D, (size_t)D * sizeof(float));
    }
    // out[t] = sum_k w[t,k] * slot[t,k], in ascending expert index
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
            nn_axpy(o, w[(size_t)t * K + best], h->slots + ((size_t)t * K + best) * D, D);
        }
    }
    return 0;
}
