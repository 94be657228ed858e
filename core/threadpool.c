/* threadpool.c: the fork-join pool behind every large product.
 *
 * Workers sleep on a condition variable between jobs and, after a job, spin for a short
 * while before sleeping again: decode issues a few hundred small products per token, and a
 * wake-up through the kernel costs more than the work of some of them. The spin is short
 * (about 50 microseconds) so that ranks sharing the cores of one machine under mpirun do not
 * steal each other's time. Tasks are claimed from an atomic counter, so a slow thread does
 * not hold the others back; the outputs of tasks are disjoint, so the result is the same
 * whichever thread runs a task. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "common.h"

struct tp_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake; /* workers wait here for a new generation */
    pthread_cond_t done; /* the caller waits here for the workers */
    unsigned long generation; /* bumped for each job, under mu */
    int quit;
    /* the current job; written under mu before generation is bumped */
    tp_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next;     /* next task to claim */
    atomic_int active;   /* workers still inside the current job */
    atomic_ulong gen_pub; /* generation, readable without the lock for spinning */
    unsigned long forks;  /* tp_run calls that woke the workers; the caller thread's */
};

static void run_tasks(tp_pool *p, int thread) {
    for (;;) {
        int i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n_tasks) break;
        p->fn(p->ctx, i, thread);
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
    unsigned long seen = 0;
    for (;;) {
        /* spin briefly for the next job, then sleep */
        double t0 = dh_now();
        while (atomic_load(&p->gen_pub) == seen && dh_now() - t0 < 50e-6) sched_yield();
        pthread_mutex_lock(&p->mu);
        while (p->generation == seen && !p->quit) pthread_cond_wait(&p->wake, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_tasks(p, wa.thread);
        if (atomic_fetch_sub(&p->active, 1) == 1) {
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
    p->quit = 1;
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

void tp_run(tp_pool *p, int n_tasks, tp_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i, 0);
        return;
    }
    p->forks++;
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    atomic_store(&p->active, p->n_threads - 1);
    p->generation++;
    atomic_store(&p->gen_pub, p->generation);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    /* wait for the workers: spin a little, then sleep */
    double t0 = dh_now();
    while (atomic_load(&p->active) > 0 && dh_now() - t0 < 50e-6) sched_yield();
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->active) > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
