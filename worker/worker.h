/* worker.h: an expert worker rank of the cluster (worker_ prefix). */
#ifndef DH_WORKER_H
#define DH_WORKER_H

typedef struct worker_opts {
    const char *model_dir;
    int weights;      /* -1: stored values; else a dh_dtype for the hosted experts */
} worker_opts;

/* Run this rank as a worker: say hello to the coordinator, load the experts the placement
 * plan gives it, then serve MoE requests until the coordinator shuts the cluster down.
 * The thread pool (nn_init) must be started. Returns the process exit code: 0 after a
 * shutdown, 1 when start-up failed on any rank (the reason is logged on every rank). */
int worker_main(const worker_opts *o);

/* Measured GFLOP/s of an expert-shaped product [16, F] x [D, F]^T on this rank's pool. */
double worker_expert_gflops(int D, int F);
#endif
