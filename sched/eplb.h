/* eplb.h: DeepSeek's expert-parallelism load balancer, global policy (eplb_ prefix).
 *
 * Follows deepseek-ai/EPLB eplb.py (rebalance_experts with one group and one node): give the
 * R = W * slots - E redundant slots one at a time to the expert with the highest load per
 * replica, then pack the E + R replicas into W workers of `slots` each, heaviest first (load
 * per replica), each to the worker with the least load (over its capacity) that has room. */
#ifndef DH_EPLB_H
#define DH_EPLB_H
#include "sched/placement.h"

/* Replica counts: cnt[E] (>= 1, summing to n_phys >= E) from load[E]. Ties go to the lower
 * expert id, as argmax does in eplb.py. */
void eplb_replicate(const double *load, int E, int n_phys, int *cnt);

/* Pack n items of weight w[n] into W packs of `per_pack` items each (n == W * per_pack):
 * pack[n] receives 0..W-1. Heaviest first (ties: lower index), each to the pack with the least
 * weight / cap (cap[W] or NULL: equal; ties: lower pack) among those with room. */
void eplb_pack(const double *w, int n, int W, int per_pack, const double *cap, int *pack);

/* Layer l of p by EPLB from load[E] (NULL: uniform), W workers of `slots` (W * slots >= E).
 * EPLB's packing may put two replicas of one expert on one worker: they are merged into
 * one, and the slot stays empty. Returns how many such merges happened. */
int eplb_layer(place_plan *p, int l, const double *load, int E, int W, int slots, const double *cap);
#endif
