/* migrate.h: how far a live cluster moves toward a new plan (mig_ prefix).
 *
 * A running cluster re-plans from a window of observed routing: the planner gives an ideal
 * plan, but every (layer, expert) that a worker gains must be mapped from its checkpoint while
 * it serves, so one re-plan moves only the few experts that gain the most. Plain numbers in, a
 * plan out; no MPI, no engine (the family of placement.h). The planner's own `--from PLAN
 * --max-moves M` may replace this with a search of its own. */
#ifndef DH_MIGRATE_H
#define DH_MIGRATE_H
#include "sched/placement.h"

/* Imbalance of the load under plan p: sum over layers of the busiest worker's load / capacity,
 * divided by the sum over layers of (the layer's load / the total capacity). 1 = every MoE
 * layer perfectly even; 1.2 = the layers wait 20% longer than even ones would. Each layer
 * counts apart because every MoE layer waits for its slowest worker. load [n_layers * E]
 * (NULL: uniform), capacity [W] (NULL: equal). 1 when there is no load at all. */
double mig_imbalance(const place_plan *p, const double *load, const double *capacity);


/* A plan between old and ideal (same sizes, both hosting every expert of the MoE layers). The
 * ideal plan's workers are first renamed per layer to share the most experts with old's (only
 * among workers of equal capacity), since a planner's numbering is arbitrary. Then it starts
 * from old and takes, one (layer, expert) at a time, ideal's workers for the entry that
 * lowers its layer's busiest load / capacity the most (then the sum of squares, which breaks
 * ties when several workers share the maximum), per placement added, while max_moves placements
 * are not used up (< 0: no bound) and some entry still improves its layer. Entries keep a
 * non-empty worker set, so every expert stays hosted. *moved (may be NULL): placements added.
 * load and capacity as for mig_imbalance. A new plan (algo "migrated"), the caller's to free. */
place_plan *mig_limit(const place_plan *old, const place_plan *ideal, const double *load,
                      const double *capacity, int max_moves, int *moved);
#endif
