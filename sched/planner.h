/* planner.h: plans from a routing trace (planner_ prefix): every algorithm of `darkhorse
 * place`, and the migration-aware re-plan that the live cluster calls.
 *
 * Algorithms: contiguous, round-robin, balanced (placement.h, on the trace's loads), eplb
 * (eplb.h) and affinity (affinity.h; the default). docs/placement.md compares them. */
#ifndef DH_PLANNER_H
#define DH_PLANNER_H
#include <stdint.h>

#include "sched/affinity.h"
#include "sched/planin.h"
#include "sched/placement.h"

#define PLANNER_DEFAULT_ALGO "affinity"

typedef struct planner_params {
    const char *algo;        /* NULL: PLANNER_DEFAULT_ALGO */
    int n_workers;           /* W */
    int slots;               /* copies per worker and layer at most; 0: ceil(E / W) */
    const double *capacity;  /* [W] or NULL */
    int n_layers;            /* layers of the plan (the model's, MTP included); 0: the trace's */
    const uint8_t *is_moe;   /* [n_layers], or NULL: the trace's own layers, all MoE */
    const int *trace_layer;  /* [n_layers]: the trace layer each MoE layer takes (or NULL) */
    aff_params aff;          /* affinity's knobs (n_workers, slots, capacity are set from above) */
} planner_params;

/* Defaults: the default algorithm, the trace's own layers, affinity's default knobs. */
planner_params planner_default_params(int n_workers);

/* Names of the algorithms, NULL-terminated. */
extern const char *const planner_algos[];

/* A plan of every MoE layer from d. NULL with a message for an unknown algorithm or a plan
 * that cannot fit (W > E, W * slots < E). */
place_plan *planner_compute(const plan_data *d, const planner_params *pp);

/* Re-plan from `from` (a valid plan of the same shape) with at most max_moves placements
 * added to a worker (a move into a free slot costs 1, a swap 2), taking the move with the
 * largest gain in affinity's objective across all layers each time, until none gains or the
 * budget is spent. *made receives the placements added. NULL with a message on bad input. */
place_plan *planner_migrate(const plan_data *d, const planner_params *pp, const place_plan *from,
                            int max_moves, int *made);
#endif
