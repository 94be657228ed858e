/* threadpool.c: the fork-join pool behind every large product.
 *
 * Workers sleep on a condition variable between jobs and, after a job, spin for a short
 * while before sleeping again: decode issues dozens of products per token, and a wake-up
 * through the kernel costs more than the work of some of them. The spin is short (about 50
 * microseconds, yielding) so that ranks sharing the cores of one machine under mpirun do not
 * steal each other's time. The outputs of tasks are disjoint, so the result is the same
 * whichever thread runs a task.
 *
 * Each thread has a range of the job's tasks, a contiguous share in order, in an atomic word
 * of its own, [job id | end | next task], and claims from its front by compare-and-swap. A
 * product's tasks are runs of its rows in order, so a thread reads one contiguous stream
 * through its share, which the hardware prefetcher follows, instead of jumping over the
 * other thread's last task at every claim (each jump a cold start: with one shared word, the
 * decode stages of genesis-1b q8 took 8-32% longer on Zen 5, docs/performance.md). A thread whose range is empty
 * steals the back half of the fullest other range (the last task alone when one is left),
 * and takes the rest of it as its own range.
 *
 * A job is over when all its tasks have *finished*, not when every worker has checked in: a
 * worker that the scheduler has not run yet claims nothing, so the caller steals its range
 * and goes on without waiting for it. On a machine with more runnable threads than cores this
 * is what a fork-join costs most (bench_kern --forkjoin: tens to hundreds of microseconds a
 * join when the caller waited for a worker that had not been scheduled). A late worker's
 * claim fails (the words name another job), and the job (fn, ctx, n_tasks) it would read
 * cannot change while it holds an unfinished task of it: the caller writes the next job only
 * after every task of this one has finished. */
#include "threadpool.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "common.h"

/* a claim word: job id in the top bits, then the range's end, then its next task */
#define TASK_BITS 18
#define MAX_TASKS ((1 << TASK_BITS) - 1)
#define TASK_MASK ((uint64_t)MAX_TASKS)
#define CLAIM(id, end, next) ((uint64_t)(id) << (2 * TASK_BITS) | (uint64_t)(end) << TASK_BITS | (uint64_t)(next))
#define CLAIM_ID(c) ((c) >> (2 * TASK_BITS))
#define CLAIM_END(c) ((int)((c) >> TASK_BITS & TASK_MASK))
#define CLAIM_NEXT(c) ((int)((c)&TASK_MASK))

#define SPIN_S 50e-6 /* how long a thread spins (yielding) before it sleeps */

/* a thread's range of the current job, on a cache line of its own */
typedef struct tp_range {
    _Atomic uint64_t claim; /* CLAIM(job id, end, next task) */
    char pad[64 - sizeof(uint64_t)];
} tp_range;

struct tp_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake;      /* workers wait here for a new job */
    pthread_cond_t done;      /* the caller waits here for the job's last task */
    atomic_int quit;
    tp_fn fn;                 /* the current job, written before its claim word is published */
    void *ctx;
    int n_tasks;
    tp_range *ranges;         /* [n_threads] */
    atomic_int finished;      /* tasks of the current job that have finished */
    uint64_t job;             /* the current job's id; the caller thread's */
    unsigned long forks;      /* tp_run calls that went to the workers; the caller thread's */
};

/* The next task of job `id` for `thread`: the front of its own range, else the back half of
 * the fullest other range (the rest of which becomes its own); -1 when none is left. */
static int claim_task(tp_pool *p, uint64_t id, int thread) {
    _Atomic uint64_t *mine = &p->ranges[thread].claim;
    for (;;) {
        uint64_t c = atomic_load(mine);
        while (CLAIM_ID(c) == id && CLAIM_NEXT(c) < CLAIM_END(c))
            if (atomic_compare_exchange_weak(mine, &c, c + 1)) return CLAIM_NEXT(c); /* else c reloaded */
        int victim = -1, most = 0;
        for (int k = 1; k < p->n_threads; k++) {
            int r = (thread + k) % p->n_threads;
            uint64_t v = atomic_load(&p->ranges[r].claim);
            if (CLAIM_ID(v) == id && CLAIM_END(v) - CLAIM_NEXT(v) > most) victim = r, most = CLAIM_END(v) - CLAIM_NEXT(v);
        }
        if (victim < 0) return -1;
        _Atomic uint64_t *vw = &p->ranges[victim].claim;
        uint64_t v = atomic_load(vw);
        int next = CLAIM_NEXT(v), end = CLAIM_END(v), mid = next + (end - next) / 2;
        if (CLAIM_ID(v) != id || next >= end || !atomic_compare_exchange_strong(vw, &v, CLAIM(id, mid, next)))
            continue; /* the victim or another thief moved first: look again */
        /* tasks [mid, end) are this thread's now; the others in `mine` are taken (it was
         * empty, and no other thread writes an empty range) */
        if (end - mid > 1) atomic_store(mine, CLAIM(id, end, mid + 1));
        return mid;
    }
}

/* Claim and run tasks of job `id` until none is left; 1 if this thread finished its last. */
static int run_tasks(tp_pool *p, uint64_t id, int thread) {
    for (;;) {
        int task = claim_task(p, id, thread);
        if (task < 0) return 0;
        int n = p->n_tasks; /* job `id`'s: it cannot end while this thread holds a task of it */
        p->fn(p->ctx, task, thread);
        if (atomic_fetch_add(&p->finished, 1) + 1 == n) return 1;
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
        _Atomic uint64_t *mine = &p->ranges[wa.thread].claim; /* published after the caller's */
        double t0 = dh_now();
        while (CLAIM_ID(atomic_load(mine)) == seen && !atomic_load(&p->quit) && dh_now() - t0 < SPIN_S)
            sched_yield();
        pthread_mutex_lock(&p->mu);
        while (CLAIM_ID(atomic_load(mine)) == seen && !atomic_load(&p->quit)) pthread_cond_wait(&p->wake, &p->mu);
        pthread_mutex_unlock(&p->mu);
        if (atomic_load(&p->quit)) return NULL;
        seen = CLAIM_ID(atomic_load(mine));
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
    p->ranges = aligned_alloc(64, (size_t)n_threads * sizeof *p->ranges);
    DH_ASSERT(p->ranges);
    for (int i = 0; i < n_threads; i++) atomic_init(&p->ranges[i].claim, CLAIM(0, 0, 0));
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
    free(p->ranges);
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
    p->n_tasks = n_tasks;
    /* thread r's share is tasks [n r / threads, n (r + 1) / threads); the caller's first, so
     * that a worker, which starts when its own is published, finds every range published */
    for (int r = 0; r < p->n_threads; r++)
        atomic_store(&p->ranges[r].claim, CLAIM(p->job, (int64_t)n_tasks * (r + 1) / p->n_threads,
                                                 (int64_t)n_tasks * r / p->n_threads));
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

/* --- the round trip between the caller and each worker (tp_round_trip_ns) --- */

typedef struct rt_line {
    _Alignas(64) atomic_int ball; /* odd: the caller's ping; the next even number: the reply; -1: over */
    atomic_int ready;             /* the worker is in its task */
    char pad[64 - 2 * sizeof(atomic_int)];
} rt_line;

typedef struct rt_job {
    rt_line *lines; /* [n_threads], each worker's on a cache line of its own */
    int n_threads, rounds;
    double *ns; /* [n_threads]: each worker's median batch; NAN if it did not come */
} rt_job;

/* Task k is thread k's: the workers answer pings, the caller (task 0) pings each in turn. Unlike
 * other jobs this one depends on which thread runs a task, so a task run by another thread (a
 * steal) does nothing, and the caller does not wait more than 50 ms for a worker that the
 * scheduler has not run. */
static void rt_task(void *ctx, int task, int thread) {
    rt_job *j = ctx;
    if (task != thread) return;
    if (thread > 0) {
        rt_line *l = &j->lines[thread];
        atomic_store(&l->ready, 1);
        for (;;) {
            int b = atomic_load(&l->ball);
            if (b < 0) return;
            if (b & 1) atomic_store(&l->ball, b + 1);
        }
    }
    for (int k = 1; k < j->n_threads; k++) {
        rt_line *l = &j->lines[k];
        double t0 = dh_now();
        while (!atomic_load(&l->ready) && dh_now() - t0 < 50e-3) {
        }
        if (!atomic_load(&l->ready)) { /* never came: if it comes later, it finds the job over */
            atomic_store(&l->ball, -1);
            continue;
        }
        /* a batch ends at the first reply that comes after 2 ms: when the two threads share a
         * core (ranks sharing a machine under mpirun), each round waits for the scheduler, and
         * the figure says so anyway (a plain round is far shorter than 4096 spins) */
        double batch[5];
        int b = 0;
        for (int s = 0; s < 5; s++) {
            double t = dh_now();
            int i = 0, late = 0;
            while (i < j->rounds && !late) {
                atomic_store(&l->ball, b + 1);
                /* the clock is read only every 4096 spins, so a quick answer is not slowed */
                for (unsigned spins = 1; atomic_load(&l->ball) != b + 2; spins++)
                    if (spins % 4096 == 0 && dh_now() - t > 2e-3) late = 1;
                b += 2, i++;
            }
            batch[s] = (dh_now() - t) / i * 1e9;
        }
        atomic_store(&l->ball, -1);
        qsort(batch, 5, sizeof batch[0], dh_cmp_double);
        j->ns[k] = batch[2];
    }
}

double tp_round_trip_ns(tp_pool *p, int rounds, double *worst) {
    if (worst) *worst = NAN;
    if (!p || p->n_threads < 2 || rounds < 1) return NAN;
    int n = p->n_threads;
    rt_job j = {.lines = aligned_alloc(64, (size_t)n * sizeof(rt_line)), .n_threads = n, .rounds = rounds,
                .ns = xmalloc((size_t)n * sizeof(double))};
    DH_ASSERT(j.lines);
    for (int k = 0; k < n; k++) {
        atomic_init(&j.lines[k].ball, 0);
        atomic_init(&j.lines[k].ready, 0);
        j.ns[k] = NAN;
    }
    tp_run(p, n, rt_task, &j);
    /* the measured workers' figures, sorted */
    int m = 0;
    for (int k = 1; k < n; k++)
        if (!isnan(j.ns[k])) j.ns[m++] = j.ns[k];
    qsort(j.ns, (size_t)m, sizeof j.ns[0], dh_cmp_double);
    double med = m ? j.ns[m / 2] : NAN;
    if (worst && m) *worst = j.ns[m - 1];
    free(j.lines);
    free(j.ns);
    return med;
}
