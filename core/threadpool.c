/* threadpool.c: the fork-join pool behind every large product.
 *
 * Workers sleep on a condition variable between jobs and, after a job, spin for a short
 * while before sleeping again: decode issues dozens of products per token, and a wake-up
 * through the kernel costs more than the work of some of them. The spin is short (about 50
 * microseconds, yielding) so that ranks sharing the cores of one machine under mpirun do not
 * steal each other's time. The outputs of tasks are disjoint, so the result is the same
 * whichever thread runs a task.
 *
 * Tasks are claimed from one atomic word, [job id | number of tasks | next task], by
 * compare-and-swap, and a job is over when all its tasks have *finished*, not when every
 * worker has checked in: a worker that the scheduler has not run yet claims nothing, so the
 * caller runs every task itself and goes on without waiting for it. On a machine with more
 * runnable threads than cores this is what a fork-join costs most (bench_kern --forkjoin:
 * tens to hundreds of microseconds a join when the caller waited for a worker that had not
 * been scheduled). A late worker's claim fails (the word names another job), and the job
 * (fn, ctx) it would read cannot change while it holds an unfinished task of it: the caller
 * writes the next job only after every task of this one has finished. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

/* the claim word: job id in the top bits, then the number of tasks, then the next task */
#define TASK_BITS 18
#define MAX_TASKS ((1 << TASK_BITS) - 1)
#define TASK_MASK ((uint64_t)MAX_TASKS)
#define CLAIM(id, n, next) ((uint64_t)(id) << (2 * TASK_BITS) | (uint64_t)(n) << TASK_BITS | (uint64_t)(next))
#define CLAIM_ID(c) ((c) >> (2 * TASK_BITS))
#define CLAIM_N(c) ((int)((c) >> TASK_BITS & TASK_MASK))
#define CLAIM_NEXT(c) ((int)((c)&TASK_MASK))

#define SPIN_S 50e-6 /* how long a thread spins (yielding) before it sleeps */

struct tp_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;      /* workers wait here for a new job */
    pthread_cond_t done;      /* the caller waits here for the job's last task */
    atomic_int quit;
    tp_fn fn;                 /* the current job, written before its claim word is published */
    void *ctx;
    _Atomic uint64_t claim;   /* CLAIM(job id, tasks, next task) */
    atomic_int finished;      /* tasks of the current job that have finished */
    uint64_t job;             /* the current job's id; the caller thread's */
    unsigned long forks;      /* tp_run calls that went to the workers; the caller thread's */
};

/* Claim and run tasks of job `id` until none is left; 1 if this thread finished its last. */
static int run_tasks(tp_pool *p, uint64_t id, int thread) {
    int last = 0;
    uint64_t c = atomic_load(&p->claim);
    for (;;) {
        if (CLAIM_ID(c) != id || CLAIM_NEXT(c) >= CLAIM_N(c)) return last;
        if (!atomic_compare_exchange_weak(&p->claim, &c, c + 1)) continue; /* c reloaded */
        p->fn(p->ctx, CLAIM_NEXT(c), thread);
        last = atomic_fetch_add(&p->finished, 1) + 1 == CLAIM_N(c);
        c = atomic_load(&p->claim);
    }
}

typedef struct worker_arg {
    tp_pool *pool;
    int thread;
} worker_arg;

static void *worker_main(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    tp_pool *p = wa.pool;
    uint64_t seen = 0;
    for (;;) {
        /* spin briefly for the next job, then sleep */
        double t0 = dh_now();
        while (CLAIM_ID(atomic_load(&p->claim)) == seen && !atomic_load(&p->quit) && dh_now() - t0 < SPIN_S)
            sched_yield();
        pthread_mutex_lock(&p->mu);
        while (CLAIM_ID(atomic_load(&p->claim)) == seen && !atomic_load(&p->quit)) pthread_cond_wait(&p->wake, &p->mu);
        pthread_mutex_unlock(&p->mu);
        if (atomic_load(&p->quit)) return NULL;
        seen = CLAIM_ID(atomic_load(&p->claim));
        if (run_tasks(p, seen, wa.thread)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

tp_pool *tp_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    tp_pool *p = xcalloc(1, sizeof *p);
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->quit, 0);
    atomic_init(&p->claim, CLAIM(0, 0, 0));
    atomic_init(&p->finished, 0);
    p->threads = xcalloc((size_t)n_threads, sizeof *p->threads);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = xmalloc(sizeof *wa);
        wa->pool = p;
        wa->thread = i;
        int rc = pthread_create(&p->threads[i], NULL, worker_main, wa);
        DH_ASSERT(rc == 0);
    }
    return p;
}

void tp_free(tp_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

int tp_threads(const tp_pool *p) { return p ? p->n_threads : 1; }

unsigned long tp_forks(const tp_pool *p) { return p ? p->forks : 0; }

/* more tasks than a claim word holds: successive jobs over slices of them */
typedef struct slice_job {
    tp_fn fn;
    void *ctx;
    int base;
} slice_job;

static void slice_task(void *ctx, int task, int thread) {
    slice_job *s = ctx;
    s->fn(s->ctx, s->base + task, thread);
}

void tp_run(tp_pool *p, int n_tasks, tp_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i, 0);
        return;
    }
    if (n_tasks > MAX_TASKS) {
        for (int b = 0; b < n_tasks; b += MAX_TASKS) {
            slice_job s = {fn, ctx, b};
            tp_run(p, DH_MIN(MAX_TASKS, n_tasks - b), slice_task, &s);
        }
        return;
    }
    p->forks++;
    /* publish the job: every task of the last one has finished, so no thread reads fn/ctx */
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->finished, 0);
    p->job = (p->job + 1) & ((UINT64_C(1) << (64 - 2 * TASK_BITS)) - 1);
    if (p->job == 0) p->job = 1; /* 0 is the id the workers start having seen */
    atomic_store(&p->claim, CLAIM(p->job, n_tasks, 0));
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, p->job, 0);
    /* wait for the tasks the workers claimed: spin a little, then sleep */
    double t0 = dh_now();
    while (atomic_load(&p->finished) < n_tasks && dh_now() - t0 < SPIN_S) sched_yield();
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->finished) < n_tasks) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
