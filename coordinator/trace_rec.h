/* trace_rec.h: live routing trace recording, `--trace-out FILE` (trec_ prefix).
 *
 * The recorder observes the forward pass (fwd_set_route_hook) and appends one record per
 * engine step to a trace file (proto/tracefile.h): every MoE layer of the model, the MTP
 * block's last, as the trace's layers 0..M-1. Owned by the engine thread. */
#ifndef DH_TRACE_REC_H
#define DH_TRACE_REC_H
#include "coordinator/forward.h"
#include "core/model.h"

typedef struct trec trec;

/* Create path and write the trace header from m (dims, the model's ten domain names), for
 * steps of up to max_rows rows. Keeps m, which must outlive it. NULL with a message. */
trec *trec_open(const char *path, const model *m, int max_rows);
/* The forward pass's routing observer (fwd_route_fn); ctx is the trec. */
void trec_route(void *ctx, int layer, const fwd_row *rows, int T, const int *idx, const float *w);
/* Flush and close: 0, or DH_EIO if a write failed (logged). NULL ok. */
int trec_close(trec *r);
#endif
