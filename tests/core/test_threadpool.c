/* test_threadpool.c: the fork-join pool: every task of a job runs exactly once, the join waits
 * for all of them, jobs larger than one claim word are split, and fork-joins are counted. */
#include <CUnit/CUnit.h>
#include <stdatomic.h>
#include <stdlib.h>

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
    {"a job larger than a claim word runs each task once", test_a_job_larger_than_a_claim_word_runs_each_task_once},
    {"forks count the jobs that went to the workers", test_forks_count_jobs_that_went_to_the_workers},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo threadpool_suite = {"threadpool", NULL, NULL, NULL, NULL, threadpool_tests};
