/* moe_backend.h: where the routed experts run: in this process, or on MPI workers (moe_).
 *
 * The coordinator routes a layer's tokens, calls start (which may return before the experts
 * are done, so that the shared experts can run meanwhile), then finish, which waits and
 * writes out[t] = sum_k w[t,k] * expert_{idx[t,k]}(x[t]). x must stay valid until finish. */
#ifndef DH_MOE_BACKEND_H
#define DH_MOE_BACKEND_H
#include "core/experts.h"
#include "core/model.h"

typedef struct moe_backend moe_backend;
struct moe_backend {
    const char *name; /* "local", "mpi" */
    /* x [T, D], idx/w [T, K] (best first). 0 or a DH_E* code (logged). */
    int (*start)(moe_backend *b, int layer, const float *x, int T, const int *idx, const float *w);
    /* out [T, D]. 0, or DH_ETIMEOUT / DH_EPEER when a worker failed (logged, naming it). */
    int (*finish)(moe_backend *b, float *out);
    /* Optional (NULL: start, then the shared FFN, then finish): start and finish in one call,
     * with the shared experts' FFN `extra` over the same x computed in the same passes of the
     * pool (experts_run_with); for a backend that runs the experts in this process. */
    int (*run_with)(moe_backend *b, int layer, const float *x, int T, const int *idx, const float *w, float *out,
                    const experts_extra *extra);
    void (*destroy)(moe_backend *b);
};

/* Every routed expert of m, run in this process; batches up to max_rows tokens. Keeps m. */
moe_backend *moe_local_new(const model *m, int max_rows);
void moe_free(moe_backend *b); /* NULL ok */
#endif
