/* experts.h: the routed experts a rank hosts, run over a batch of tokens (experts_ prefix).
 *
 * The expert math lives in core/ because both sides of the wire run it: a worker rank over its
 * share of the plan, and the coordinator in process (coordinator/moe_local.c) and for the
 * shared experts. coordinator/ and worker/ meet only through proto/.
 *
 * Dims legend: T tokens, D hidden, K chosen experts per token, F expert FFN width. */
#ifndef DH_EXPERTS_H
#define DH_EXPERTS_H
#include "core/model.h"

typedef struct experts_host experts_host; /* owned by the thread that runs the experts */

/* Host the experts of m (those its views hold, read at every run: a worker edits them at a
 * re-plan between two runs) for batches of up to max_rows tokens. Keeps m, which must outlive
 * it. */
experts_host *experts_new(const model *m, int max_rows);
void experts_free(experts_host *h);        /* NULL ok */

/* out[t] = sum over k of w[t,k] * expert_{idx[t,k]}(x[t]) for MoE layer `layer`, summed in
 * ascending expert index; entries with idx < 0 are skipped (not hosted here). x [T, D],
 * idx and w [T, K], out [T, D]. Each expert runs once over all of its tokens as one product.
 * 0, or DH_EINVAL when a chosen expert is not loaded (a plan mismatch; logged). */
int experts_run(experts_host *h, int layer, const float *x, int T, const int *idx, const float *w,
                int K, float *out);

/* An FFN over all T rows run in the same passes of the pool as the routed experts (the shared
 * experts, on the coordinator): y [T, D] = experts_ffn(f, x), scratch g, u [T, f's F]. */
typedef struct experts_extra {
    const ffn_weights *f;
    float *y, *g, *u;
} experts_extra;

/* experts_run, and with it extra (NULL: none) over the same x: two passes of the pool in all
 * where experts_run and experts_ffn took four. Each result is bit for bit what those two give. */
int experts_run_with(experts_host *h, int layer, const float *x, int T, const int *idx, const float *w, int K,
                     float *out, const experts_extra *extra);

/* y[T, D] = down(silu(gate(x)) * up(x)) with scratch g, u of [T, F] each. */
void experts_ffn(const ffn_weights *f, const float *x, int T, float *y, float *g, float *u);
#endif
