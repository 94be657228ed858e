/* moe_local.c: the in-process expert backend: the experts run on this rank's thread pool,
 * all of them, during finish (start only records the batch). */
#include <stdlib.h>

#include "coordinator/moe_backend.h"
#include "core/common.h"
#include "core/experts.h"

typedef struct moe_local {
    moe_backend base;   /* first: the backend pointer is the struct pointer */
    experts_host *host;
    int K;
    int layer, T;
    const float *x, *w;
    const int *idx;
} moe_local;

static int local_start(moe_backend *b, int layer, const float *x, int T, const int *idx, const float *w) {
    moe_local *l = (moe_local *)b;
    l->layer = layer, l->x = x, l->T = T, l->idx = idx, l->w = w;
    return 0;
}

static int local_finish(moe_backend *b, float *out) {
    moe_local *l = (moe_local *)b;
    return experts_run(l->host, l->layer, l->x, l->T, l->idx, l->w, l->K, out);
}

static int local_run_with(moe_backend *b, int layer, const float *x, int T, const int *idx, const float *w,
                          float *out, const experts_extra *extra) {
    moe_local *l = (moe_local *)b;
    return experts_run_with(l->host, layer, x, T, idx, w, l->K, out, extra);
}

static void local_destroy(moe_backend *b) {
    moe_local *l = (moe_local *)b;
    experts_free(l->host);
    free(l);
}

moe_backend *moe_local_new(const model *m, int max_rows) {
    moe_local *l = xcalloc(1, sizeof *l);
    l->base = (moe_backend){.name = "local", .start = local_start, .finish = local_finish,
                            .run_with = local_run_with, .destroy = local_destroy};
    l->host = experts_new(m, max_rows);
    l->K = m->cfg.num_experts_per_tok;
    return &l->base;
}

void moe_free(moe_backend *b) {
    if (b) b->destroy(b);
}
