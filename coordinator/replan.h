/* replan.h: live re-placement of the experts while serving (rp_ prefix).
 *
 * Owned by the engine thread, which calls rp_tick at every step boundary (engine_set_tick):
 * it keeps a window of the routing of the last steps, and when a re-plan is asked for (by
 * another thread through rp_request, or every N steps) it computes a new plan from that window,
 * bounds its moves, has the workers map it while they serve and switches at a step boundary
 * (cluster_replan_*). The answer goes back through a callback on the engine thread. */
#ifndef DH_REPLAN_H
#define DH_REPLAN_H
#include <stdint.h>

#include "coordinator/cluster.h"

typedef struct rp rp;

typedef struct rp_params {
    int window;        /* steps of routing the new plan is made from */
    int every;         /* re-plan by itself every this many steps; 0: only when asked */
    int max_moves;     /* (layer, expert) placements one re-plan may add; < 0: no bound */
    double min_gain;   /* switch only when the imbalance falls by at least this share */
} rp_params;

rp_params rp_default_params(void); /* window 256, every 0, max_moves -1, min_gain 0.01 */

typedef struct rp_result {
    int code;                  /* 0; DH_EPEER or DH_ETIMEOUT: a worker could not map the plan (the
                                  old one stays); DH_ECANCELLED: the server stopped first;
                                  DH_EINVAL: no plan could be made */
    uint64_t generation;       /* the plan in use afterwards */
    int moved;                 /* placements added (0: nothing worth moving) */
    double imbalance_before;   /* of the window's load under the old plan (migrate.h) */
    double imbalance_after;    /* ... under the new one (the old one's when nothing moved) */
    double seconds;            /* from the request to the answer */
    char reason[600];          /* why nothing moved, or what failed; "" when it moved */
} rp_result;

/* Called on the engine thread with the result of a re-plan asked for by rp_request; user is
 * the requester's, given back. */
typedef void (*rp_done_fn)(void *ctx, void *user, const rp_result *r);

typedef struct rp_metrics {    /* for /metrics */
    uint64_t generation;
    uint64_t applied, unchanged, failed; /* re-plans by outcome */
    uint64_t moves;            /* placements added in all */
    int last_moved;
    double imbalance_before, imbalance_after; /* of the last re-plan that computed a plan */
    double step_ratio;         /* the longest step during the last switch / the median before */
    int running;               /* a re-plan is in progress */
    char last_error[600];      /* of the last failed re-plan; "" if none failed */
} rp_metrics;

/* A re-planner for the cluster c (kept; it must outlive it), answering through done(ctx, ...). */
rp *rp_new(cluster *c, const rp_params *p, rp_done_fn done, void *ctx);
/* On the engine thread after engine_run: a re-plan in progress is cancelled (nothing is sent to
 * the workers when cluster_failed) and its requester answered DH_ECANCELLED. NULL ok. */
void rp_free(rp *r, int cluster_failed);

/* Thread-safe. Ask for a re-plan: 0 (the answer comes through done, with user), or DH_EBUSY
 * when one is already asked for or running. The caller then wakes the engine (engine_wake). */
int rp_request(rp *r, void *user);
/* The engine's tick (engine_tick_fn, ctx = the re-planner). */
void rp_tick(void *ctx, uint64_t steps, double step_s);
/* Thread-safe. A copy of the counters. */
void rp_get_metrics(rp *r, rp_metrics *out);
#endif
