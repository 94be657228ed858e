/* test_launch.c: the supervisor of the MPI job, with real processes. A shell script stands in
 * for mpirun: it records the argv it got and starts children, one of them in a process group
 * of its own (as Open MPI starts each local rank). fl_kill must end them all; the child must
 * die with its parent (PR_SET_PDEATHSIG); a missing launcher is an error at start; the exit
 * status and the failed rank and host come back; hosts that fail twice in a row are left out
 * down to --min-workers, with -np and the hostfile rewritten and the old plan dropped. */
#define _XOPEN_SOURCE 700
#include <CUnit/CUnit.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"
#include "frontend/launch.h"
#include "tests/runner.h"

static char g_dir[256];

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* a script at dir/name with body; its path in out */
static void script(const char *name, const char *body, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s", g_dir, name);
    FILE *f = fopen(out, "w");
    CU_ASSERT_FATAL(f != NULL);
    fprintf(f, "#!/bin/sh\n%s", body);
    fclose(f);
    chmod(out, 0755);
}

/* the pids the script wrote to dir/pids, one per line, once both are there (at most 5 s) */
static int read_pids(pid_t *p, int want) {
    char path[4200];
    snprintf(path, sizeof path, "%s/pids", g_dir);
    for (int tries = 0; tries < 500; tries++) {
        FILE *f = fopen(path, "r");
        int n = 0;
        long v;
        if (f) {
            while (n < want && fscanf(f, "%ld", &v) == 1) p[n++] = (pid_t)v;
            fclose(f);
        }
        if (n == want) return n;
        sleep_ms(10);
    }
    return 0;
}

static int gone(pid_t p) { return kill(p, 0) != 0 && errno == ESRCH; }

static const char *engine_argv[] = {"/abs/darkhorse", "serve", "--engine-socket", "/tmp/x.sock", NULL};

static fl *make(const char *launch, const char *hostfile, int min_workers) {
    fl_params p = {.launch = launch, .engine = engine_argv, .hostfile = hostfile, .min_workers = min_workers,
                   .work_dir = g_dir};
    char err[512] = "";
    fl *f = fl_new(&p, err, sizeof err);
    if (!f) fprintf(stderr, "fl_new: %s\n", err);
    return f;
}

static void test_launch_splits_on_whitespace_without_a_shell(void) {
    char **v;
    int n = fl_split("  mpirun -np 3\t--oversubscribe  'a b' ", &v);
    CU_ASSERT_EQUAL_FATAL(n, 6);
    CU_ASSERT_STRING_EQUAL(v[0], "mpirun");
    CU_ASSERT_STRING_EQUAL(v[2], "3");
    CU_ASSERT_STRING_EQUAL(v[3], "--oversubscribe");
    CU_ASSERT_STRING_EQUAL(v[4], "'a"); /* no quoting: words are what whitespace makes */
    CU_ASSERT_STRING_EQUAL(v[5], "b'");
    CU_ASSERT_PTR_NULL(v[6]);
    fl_argv_free(v);
    CU_ASSERT_EQUAL(fl_split("   ", &v), 0);
    fl_argv_free(v);
}

static void test_launch_kill_ends_children_in_their_own_process_groups(void) {
    char s[4200], body[8600];
    snprintf(body, sizeof body,
             "echo \"$@\" > %s/argv\nsleep 100 & echo $! > %s/pids.tmp\nsetsid sleep 100 & echo $! >> %s/pids.tmp\n"
             "mv %s/pids.tmp %s/pids\nwait\n",
             g_dir, g_dir, g_dir, g_dir, g_dir);
    script("fake-mpirun", body, s, sizeof s);
    char launch[4300];
    snprintf(launch, sizeof launch, "%s -np 3 --oversubscribe", s);
    fl *f = make(launch, NULL, 1);
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_EQUAL_FATAL(fl_start(f, "/plans/p1"), 0);
    pid_t pids[2];
    CU_ASSERT_EQUAL_FATAL(read_pids(pids, 2), 2);
    CU_ASSERT_EQUAL(getpgid(fl_pid(f)), fl_pid(f));  /* the job leads a group of its own */
    for (int i = 0; i < 200 && getpgid(pids[1]) != pids[1]; i++) sleep_ms(10); /* setsid runs after fork */
    CU_ASSERT_EQUAL(getpgid(pids[1]), pids[1]);      /* and so does the setsid child */
    CU_ASSERT_EQUAL(fl_poll(f, NULL), 0);
    char path[4200], got[512] = "";
    snprintf(path, sizeof path, "%s/argv", g_dir);
    FILE *in = fopen(path, "r");
    CU_ASSERT_FATAL(in != NULL);
    CU_ASSERT_PTR_NOT_NULL(fgets(got, sizeof got, in));
    fclose(in);
    CU_ASSERT_STRING_EQUAL(got, "-np 3 --oversubscribe /abs/darkhorse serve --engine-socket /tmp/x.sock "
                                "--placement /plans/p1\n");
    double t0 = dh_now();
    fl_kill(f);
    CU_ASSERT(dh_now() - t0 < 5);
    CU_ASSERT_EQUAL(fl_pid(f), 0);
    for (int i = 0; i < 2; i++) {
        CU_ASSERT(gone(pids[i]));
        if (!gone(pids[i])) kill(pids[i], SIGKILL);
    }
    CU_ASSERT_EQUAL(fl_restarts(f), 0);
    fl_free(f);
    snprintf(path, sizeof path, "%s/pids", g_dir);
    unlink(path);
}

static void test_launch_child_dies_with_its_parent(void) {
    char s[4200], body[8600];
    snprintf(body, sizeof body, "echo $$ > %s/pids.tmp\necho $$ >> %s/pids.tmp\nmv %s/pids.tmp %s/pids\nexec sleep 100\n",
             g_dir, g_dir, g_dir, g_dir);
    script("fake-mpirun2", body, s, sizeof s);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); /* the orphaned job comes to this process */
    pid_t helper = fork();
    CU_ASSERT_FATAL(helper >= 0);
    if (helper == 0) { /* a front end that starts the job and is then killed */
        fl *f = make(s, NULL, 1);
        if (!f || fl_start(f, NULL)) _exit(1);
        pid_t p[2];
        read_pids(p, 2);
        kill(getpid(), SIGKILL);
    }
    pid_t job[2];
    CU_ASSERT_EQUAL_FATAL(read_pids(job, 2), 2);
    int st;
    CU_ASSERT_EQUAL(waitpid(helper, &st, 0), helper);
    pid_t r = 0;
    for (int i = 0; i < 500 && r == 0; i++, sleep_ms(10)) r = waitpid(job[0], &st, WNOHANG);
    CU_ASSERT_EQUAL(r, job[0]);
    CU_ASSERT(r == job[0] && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    if (r != job[0]) kill(job[0], SIGKILL);
    char path[4200];
    snprintf(path, sizeof path, "%s/pids", g_dir);
    unlink(path);
}

static void test_launch_missing_launcher_fails_at_start(void) {
    fl *f = make("/nonexistent/mpirun -np 3", NULL, 1);
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_EQUAL(fl_start(f, NULL), DH_EIO);
    CU_ASSERT_EQUAL(fl_pid(f), 0);
    fl_free(f);
    char err[256];
    fl_params p = {.launch = "  ", .engine = engine_argv};
    CU_ASSERT_PTR_NULL(fl_new(&p, err, sizeof err));
    p.launch = "mpirun -np 2", p.min_workers = 2; /* 1 worker */
    CU_ASSERT_PTR_NULL(fl_new(&p, err, sizeof err));
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "--min-workers"));
}

static void test_launch_reports_status_and_the_failed_rank(void) {
    char s[4200];
    script("fake-mpirun3",
           "echo '[rank 0] info: cluster.c:73: rank 1 on hostB: darkhorse 0.1.0, 1 threads' >&2\n"
           "echo '[rank 0] info: cluster.c:73: rank 2 on hostA: darkhorse 0.1.0, 1 threads' >&2\n"
           "echo 'worker rank 2 did not answer within 2.0 s at layer 3 (exchange 9, 4 tokens)' >&2\n"
           "printf 'mpirun noticed that process rank 2 with PID 0 on node hostA exited on signal 9 (Killed).' >&2\n"
           "exit 3\n",
           s, sizeof s);
    fl *f = make(s, NULL, 1);
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_EQUAL_FATAL(fl_start(f, NULL), 0);
    int st = -1;
    CU_ASSERT_EQUAL(fl_wait(f, 10, &st), 1);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 3);
    const fl_failure *x = fl_last_failure(f);
    CU_ASSERT_EQUAL(x->rank, 2);
    CU_ASSERT_STRING_EQUAL(x->host, "hostA"); /* from the start-up line of rank 2 */
    CU_ASSERT_PTR_NOT_NULL(strstr(x->reason, "did not answer")); /* the first report wins */
    CU_ASSERT_EQUAL(fl_start(f, NULL), 0); /* a restart clears the failure */
    CU_ASSERT_EQUAL(fl_last_failure(f)->rank, -1);
    CU_ASSERT_EQUAL(fl_restarts(f), 1);
    CU_ASSERT_EQUAL(fl_wait(f, 10, &st), 1);
    fl_free(f);
    fl_failure y;
    CU_ASSERT_EQUAL(fl_parse_failure_line("[h:1] loaded 3 layers", &y), 0);
}

static void test_launch_leaves_out_a_host_failing_twice_down_to_min_workers(void) {
    char hf[4200], s[4200], body[4400];
    snprintf(hf, sizeof hf, "%s/hosts.in", g_dir);
    FILE *o = fopen(hf, "w");
    CU_ASSERT_FATAL(o != NULL);
    fprintf(o, "# pool\nhostA slots=2\nhostB slots=2 max_slots=4\n\nhostC\n");
    fclose(o);
    snprintf(body, sizeof body, "echo \"$@\" > %s/argv\n", g_dir);
    script("fake-mpirun4", body, s, sizeof s);
    char launch[4300];
    snprintf(launch, sizeof launch, "%s -np 5 --oversubscribe", s);
    fl *f = make(launch, hf, 2);
    CU_ASSERT_FATAL(f != NULL);
    CU_ASSERT_EQUAL(fl_workers(f), 4);
    CU_ASSERT_EQUAL(fl_blame(f, "hostB"), 0);
    CU_ASSERT_EQUAL(fl_blame(f, "hostC"), 0);   /* not in a row any more */
    CU_ASSERT_EQUAL(fl_blame(f, "hostB"), 0);
    CU_ASSERT_EQUAL(fl_blame(f, "unknown"), 0); /* a host not in the file changes nothing */
    CU_ASSERT_EQUAL(fl_blame(f, "hostB"), 1);   /* twice in a row: out; 3 slots left */
    CU_ASSERT_EQUAL(fl_workers(f), 2);
    CU_ASSERT_EQUAL(fl_blame(f, "hostC"), 0);
    CU_ASSERT_EQUAL(fl_blame(f, "hostC"), 0);   /* 2 slots would leave 1 worker < 2: kept */
    CU_ASSERT_EQUAL(fl_workers(f), 2);
    CU_ASSERT_EQUAL_FATAL(fl_start(f, "/plans/old"), 0);
    int st;
    CU_ASSERT_EQUAL(fl_wait(f, 10, &st), 1);
    char path[4200], got[1024] = "";
    snprintf(path, sizeof path, "%s/argv", g_dir);
    FILE *in = fopen(path, "r");
    CU_ASSERT_FATAL(in != NULL);
    CU_ASSERT_PTR_NOT_NULL(fgets(got, sizeof got, in));
    fclose(in);
    char want[2048];
    snprintf(want, sizeof want, "--hostfile %s/hostfile -np 3 --oversubscribe /abs/darkhorse serve --engine-socket "
                                "/tmp/x.sock\n", g_dir); /* no --placement: the plan was for 4 workers */
    CU_ASSERT_STRING_EQUAL(got, want);
    size_t len;
    snprintf(path, sizeof path, "%s/hostfile", g_dir);
    char *hosts = dh_test_read_file(path, &len);
    CU_ASSERT_FATAL(hosts != NULL);
    CU_ASSERT_PTR_NOT_NULL(strstr(hosts, "\nhostA slots=2\nhostC\n"));
    CU_ASSERT_PTR_NULL(strstr(hosts, "hostB"));
    free(hosts);
    CU_ASSERT_EQUAL_FATAL(fl_start(f, "/plans/new"), 0); /* a plan the new job reported: passed */
    snprintf(path, sizeof path, "%s/argv", g_dir);
    CU_ASSERT_EQUAL(fl_wait(f, 10, &st), 1);
    in = fopen(path, "r");
    CU_ASSERT_FATAL(in != NULL);
    CU_ASSERT_PTR_NOT_NULL(fgets(got, sizeof got, in));
    fclose(in);
    CU_ASSERT_PTR_NOT_NULL(strstr(got, "--placement /plans/new"));
    fl_free(f);
    char err[256];
    fl_params p = {.launch = "mpirun --hostfile h -np 3", .engine = engine_argv, .hostfile = hf, .work_dir = g_dir};
    CU_ASSERT_PTR_NULL(fl_new(&p, err, sizeof err)); /* two sources of hosts */
    p.launch = "mpirun --oversubscribe";
    CU_ASSERT_PTR_NULL(fl_new(&p, err, sizeof err)); /* no -np to shrink */
}

static int launch_init(void) {
    snprintf(g_dir, sizeof g_dir, "%s", dh_test_tmpdir());
    return 0;
}

static CU_TestInfo launch_tests[] = {
    {"splits on whitespace without a shell", test_launch_splits_on_whitespace_without_a_shell},
    {"kill ends children in their own process groups", test_launch_kill_ends_children_in_their_own_process_groups},
    {"the child dies with its parent", test_launch_child_dies_with_its_parent},
    {"a missing launcher fails at start", test_launch_missing_launcher_fails_at_start},
    {"reports the status and the failed rank", test_launch_reports_status_and_the_failed_rank},
    {"leaves out a host failing twice, down to min workers",
     test_launch_leaves_out_a_host_failing_twice_down_to_min_workers},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo launch_suite = {"launch", launch_init, NULL, NULL, NULL, launch_tests};
