/* dispatch.h: which replica of a replicated expert takes a token (disp_ prefix).
 *
 * A plan may host an expert on several workers. For each (token, chosen expert) the
 * coordinator (coordinator/moe_mpi.c) and the simulator (sched/simulate.c) ask this module which of
 * them computes it, so that both make the same choice. Two rules:
 *   DISP_TURNS  one counter per (layer, expert), moved on by every token sent to that expert and
 *               kept across steps: its replicas take its tokens in turn.
 *   DISP_SMART  per token: a replica on a worker this token already visits in this layer, else
 *               the least loaded replica in this step; the rows are taken in their order in the
 *               step, after every pair whose expert has one worker (docs/placement.md).
 * Knows no MPI: plain numbers in, worker ranks out. */
#ifndef DH_DISPATCH_H
#define DH_DISPATCH_H
#include <stdint.h>

#include "sched/placement.h"

typedef enum { DISP_SMART = 0, DISP_TURNS = 1 } disp_rule;
/* "smart" or "turns": 0, or -1. */
int disp_parse_rule(const char *s, disp_rule *r);
const char *disp_rule_name(disp_rule r);

typedef struct disp_state disp_state; /* owned by the thread that dispatches */

/* State for plans of n_layers x n_experts over n_workers workers (the turn counters, a
 * step's per-worker loads). */
disp_state *disp_new(disp_rule rule, int n_layers, int n_experts, int n_workers);
void disp_free(disp_state *d); /* NULL ok */

/* Weigh "least loaded" by worker speeds cap[W] (ranks 1..W; NULL: equal), as
 * --worker-capacity weighs the plan. The array is copied. */
void disp_set_capacity(disp_state *d, const double *cap);

/* Assign one layer's step: T tokens with K chosen experts each, idx [T, K] (entries < 0 are
 * skipped). worker[T, K] receives the chosen rank (1..W) of each (token, slot), -1 for skipped
 * entries. A single-worker expert always goes to its worker. */
void disp_assign(disp_state *d, const place_plan *p, int layer, const int *idx, int T, int K,
                 int *worker);
#endif
