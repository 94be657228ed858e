/* affinity.h: placing the experts of one layer so that a token visits few workers and every
 * step stays balanced (aff_ prefix).
 *
 * One layer's plan is a set of copies (expert, worker), at least one per expert, at most
 * `slots` per worker. The search lowers
 *     J = fan-out + lambda * imbalance
 * over the planning tokens and steps of a plan_data (planin.h): fan-out is the mean number
 * of workers a token visits (a replicated expert costs nothing when one of its workers is
 * visited anyway, as DISP_SMART chooses); imbalance is the mean over steps of the busiest
 * worker's load over the mean, where an expert with one copy loads its worker and the load of
 * replicated experts is a pool that the replica choice spreads. Moves are swaps of two copies
 * between workers and moves of a copy into a free slot. */
#ifndef DH_AFFINITY_H
#define DH_AFFINITY_H
#include <stdint.h>

#include "sched/planin.h"
#include "sched/placement.h"

typedef struct aff_params {
    int n_workers;          /* W (at most 64) */
    int slots;              /* copies per worker at most; W * slots >= E */
    const double *capacity; /* [W] relative speeds, or NULL: equal */
    double lambda;          /* weight of the imbalance term (fan-out is about 1..W) */
    double decode_share;    /* the imbalance term: this share decode steps, the rest prefill */
    int hub;                /* replica counts: 0 EPLB's rule (highest load per replica), 1 the
                               hottest experts on every worker first */
    int max_tokens;         /* tokens sampled for the fan-out term (evenly spaced) */
    int max_steps;          /* steps sampled for the imbalance term */
    int max_passes;         /* local-search passes over all moves */
} aff_params;

aff_params aff_default_params(void);

typedef struct aff_state aff_state; /* one layer's search; single-threaded */

/* The search state for trace layer lt of d. Starts from plan layer pl of `from` when given
 * (copies as they are), else from the replica counts of p->hub and a heaviest-first packing.
 * NULL with a message if the plan cannot fit (W * slots < E). */
aff_state *aff_new(const plan_data *d, int lt, const aff_params *p, const place_plan *from, int pl);
void aff_free(aff_state *a); /* NULL ok */
/* The objective J of the current copies. */
double aff_objective(const aff_state *a);
/* Local search until no move lowers J or max_passes: returns the passes made. */
int aff_search(aff_state *a);
/* The best single move's gain (J before - after, > 0 if it helps) and its cost in added
 * placements (1 for a move into a free slot, 2 for a swap); 0 gain if no move helps. */
double aff_best_move(aff_state *a, int *cost);
/* Make the move aff_best_move last found. */
void aff_apply_best(aff_state *a);
/* Write the copies into plan layer pl. */
void aff_write(const aff_state *a, place_plan *p, int pl);
#endif
