/* worker.h: an expert worker rank of the cluster (worker_ prefix). */
#ifndef DH_WORKER_H
#define DH_WORKER_H
#include <stddef.h>

typedef struct worker_opts {
    const char *model_dir;
    int weights;      /* -1: stored values; else a dh_dtype for the hosted experts */
    int mmap;         /* compute on the file's pages, not a copy (model_params.copy off) */
} worker_opts;

/* Run this rank as a worker: say hello to the coordinator, load the experts the placement
 * plan gives it, then serve MoE requests until the coordinator shuts the cluster down.
 * The thread pool (nn_init) must be started. Returns the process exit code: 0 after a
 * shutdown, 1 when start-up failed on any rank (the reason is logged on every rank). */
int worker_main(const worker_opts *o);

/* This rank's hello, a packed darkhorse.Hello: protocol and darkhorse version, host, cores,
 * memory, threads, kernels, the identity of the checkpoint at model_dir (only its config and
 * tensor index are read) and, when measure, the expert rate of this rank's pool (about 0.1 s);
 * or the error that keeps this rank from serving. The thread pool (nn_init) must be started.
 * Returns *len bytes, malloc'd (the caller frees them). */
unsigned char *worker_hello_pack(const char *model_dir, int measure, size_t *len);

/* Measured GFLOP/s of an expert-shaped product [16, F] x [D, F]^T on this rank's pool. */
double worker_expert_gflops(int D, int F);
#endif
