/* threadpool.h: a fork-join pool started once (tp_ prefix); the caller thread works too. */
#ifndef DH_THREADPOOL_H
#define DH_THREADPOOL_H

typedef struct tp_pool tp_pool;
/* Run task `task` on thread `thread` (0 is the caller, up to tp_threads - 1): tasks of one
 * tp_run write disjoint outputs, so results do not depend on which thread runs which task;
 * `thread` only selects per-thread scratch. */
typedef void (*tp_fn)(void *ctx, int task, int thread);

/* A pool of n_threads (the caller counts as one: n_threads - 1 are started). NULL never. */
tp_pool *tp_new(int n_threads);
void tp_free(tp_pool *p); /* tp_free(NULL) does nothing */
int tp_threads(const tp_pool *p);
/* Runs fn(ctx, i, thread) for every i in [0, n_tasks), returns when all are done. Not
 * reentrant: one caller thread at a time (the engine thread). */
void tp_run(tp_pool *p, int n_tasks, tp_fn fn, void *ctx);
/* tp_run calls so far that went to the pool's threads: one fork-join each (a wake-up of the
 * workers and a wait for the last of them). Calls with one task or one thread, which run on
 * the caller alone, are not counted. Read it from the caller thread. */
unsigned long tp_forks(const tp_pool *p);
/* How long a cache line takes to go from the caller thread to a worker and back (ns): each
 * worker in turn answers `rounds` pings a batch (a batch stops early after 2 ms), 5 batches,
 * and its figure is its median batch.
 * Returns the median over the workers and sets *worst (if given) to the slowest; NAN when the
 * pool has one thread or no worker came to its task within 50 ms. On the AMD EPYC Zen 4 VM of
 * docs/performance.md it is about 66 ns while the two vCPUs share a CCD and about 324 ns while
 * they are on two, and every fork-join and every activation one thread writes and the other
 * reads pays it. Runs on the caller thread, between tp_run calls. */
double tp_round_trip_ns(tp_pool *p, int rounds, double *worst);
#endif
