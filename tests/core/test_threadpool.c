/* test_threadpool.c: the fork-join pool: every task of a job runs exactly once, the join waits
 * for all of them, a thread whose range is done steals from a slow one, jobs larger than one
 * claim word are split, and fork-joins are counted. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "core/threadpool.h"

typedef struct count_job {
    atomic_int *count; /* [n] runs of each task */
    int threads;
    atomic_int bad_thread;
} count_job;

static void count_task(void *ctx, int task, int thread) {
    count_job *j = ctx;
    if (thread < 0 || thread >= j->threads) atomic_fetch_add(&j->bad_thread, 1);
    atomic_fetch_add(&j->count[task], 1);
}

/* n tasks of one job on p; the number of tasks that did not run exactly once */
static int run_counted(tp_pool *p, int n) {
    count_job j = {.count = calloc((size_t)n, sizeof(atomic_int)), .threads = tp_threads(p)};
    atomic_init(&j.bad_thread, 0);
    tp_run(p, n, count_task, &j);
    int bad = atomic_load(&j.bad_thread); /* read right after the join: no task may be running */
    for (int i = 0; i < n; i++) bad += atomic_load(&j.count[i]) != 1;
    free(j.count);
    return bad;
}

static void test_every_task_of_every_job_runs_once(void) {
    tp_pool *p = tp_new(3); /* more threads than some machines have cores: workers arrive late */
    int bad = 0;
    for (int job = 0; job < 3000; job++) bad += run_counted(p, 2 + job % 61);
    CU_ASSERT_EQUAL(bad, 0);
    tp_free(p);
}

static void test_every_task_runs_once_with_more_threads_than_tasks(void) {
    tp_pool *p = tp_new(5); /* ranges of no task, and workers arriving late */
    int bad = 0;
    for (int job = 0; job < 2000; job++) bad += run_counted(p, 2 + job % 7);
    CU_ASSERT_EQUAL(bad, 0);
    tp_free(p);
}

typedef struct slow_job {
    int n;
    atomic_int ran_by[20]; /* thread + 1 */
} slow_job;

/* the caller's range (the first half) is slow, the worker's is not */
static void slow_task(void *ctx, int task, int thread) {
    slow_job *j = ctx;
    if (task < j->n / 2) nanosleep(&(struct timespec){0, 2000000}, NULL);
    atomic_store(&j->ran_by[task], thread + 1);
}

static void test_a_thread_done_with_its_range_steals_from_a_slow_one(void) {
    tp_pool *p = tp_new(2);
    slow_job j = {.n = 20};
    for (int i = 0; i < j.n; i++) atomic_init(&j.ran_by[i], 0);
    tp_run(p, j.n, slow_task, &j);
    int stolen = 0, unrun = 0;
    for (int i = 0; i < j.n; i++) {
        unrun += atomic_load(&j.ran_by[i]) == 0;
        stolen += i < j.n / 2 && atomic_load(&j.ran_by[i]) == 2;
    }
    CU_ASSERT_EQUAL(unrun, 0);
    /* 10 tasks of 2 ms on the caller's side: the worker, done with its own in microseconds,
     * takes some of them from the back */
    CU_ASSERT(stolen > 0);
    tp_free(p);
}

static void test_round_trip_between_the_threads(void) {
    tp_pool *one = tp_new(1);
    double worst = 0;
    CU_ASSERT(isnan(tp_round_trip_ns(one, 10, &worst)) && isnan(worst)); /* no other thread */
    tp_free(one);
    tp_pool *p = tp_new(2);
    /* the worker answers unless the scheduler keeps it off a core for 50 ms: three tries */
    double rt = NAN;
    for (int i = 0; i < 3 && isnan(rt); i++) rt = tp_round_trip_ns(p, 20, &worst);
    CU_ASSERT(isfinite(rt) && rt > 0 && worst == rt); /* one worker: its figure is both */
    /* the pool still runs jobs after it */
    CU_ASSERT_EQUAL(run_counted(p, 37), 0);
    tp_free(p);
}

static void test_a_job_larger_than_a_claim_word_runs_each_task_once(void) {
    tp_pool *p = tp_new(2);
    CU_ASSERT_EQUAL(run_counted(p, 600001), 0); /* 2^18 - 1 tasks a claim word */
    tp_free(p);
}

static void test_forks_count_jobs_that_went_to_the_workers(void) {
    tp_pool *p = tp_new(2), *one = tp_new(1);
    for (int i = 0; i < 5; i++) run_counted(p, 4);
    for (int i = 0; i < 3; i++) run_counted(p, 1); /* one task: on the caller */
    for (int i = 0; i < 4; i++) run_counted(one, 4);
    CU_ASSERT_EQUAL(tp_forks(p), 5);
    CU_ASSERT_EQUAL(tp_forks(one), 0);
    CU_ASSERT_EQUAL(tp_forks(NULL), 0);
    tp_free(p);
    tp_free(one);
}

static CU_TestInfo threadpool_tests[] = {
    {"every task of every job runs once", test_every_task_of_every_job_runs_once},
    {"every task runs once with more threads than tasks", test_every_task_runs_once_with_more_threads_than_tasks},
    {"a thread done with its range steals from a slow one", test_a_thread_done_with_its_range_steals_from_a_slow_one},
    {"a job larger than a claim word runs each task once", test_a_job_larger_than_a_claim_word_runs_each_task_once},
    {"forks count the jobs that went to the workers", test_forks_count_jobs_that_went_to_the_workers},
    {"round trip between the threads", test_round_trip_between_the_threads},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo threadpool_suite = {"threadpool", NULL, NULL, NULL, NULL, threadpool_tests};
