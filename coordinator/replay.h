/* replay.h: routing replay, `--routing-replay FILE [--replay-order turns|domain]` (rpl_ prefix).
 *
 * The forward pass still runs the router of every MoE layer; the replay then replaces its
 * choice (experts and gate weights) with a recorded trace's, so that the cluster meets real
 * routing skew with a random-weight model. Owned by the engine thread. Never on by default. */
#ifndef DH_REPLAY_H
#define DH_REPLAY_H
#include "coordinator/forward.h"
#include "core/model.h"

typedef enum { RPL_TURNS = 0, RPL_DOMAIN = 1 } rpl_order;
/* "turns" or "domain": 0, or -1. */
int rpl_parse_order(const char *s, rpl_order *o);
const char *rpl_order_name(rpl_order o);

typedef struct rpl rpl;

/* Read the trace at path for replay on m (kept; it must outlive the replay). NULL with a
 * message naming the file when it cannot be read, when an expert id is not below m's E, or
 * when it has fewer experts per token than m's K. */
rpl *rpl_open(const char *path, const model *m, rpl_order order);
/* The forward pass's replay hook (fwd_replay_fn); ctx is the rpl. */
void rpl_route(void *ctx, int layer, const fwd_row *rows, int T, int *idx, float *w);
/* Sequences of the run so far, trace sequences taken so far. */
void rpl_counts(const rpl *r, long *run_seqs, long *trace_seqs);
void rpl_free(rpl *r); /* NULL ok */
#endif
