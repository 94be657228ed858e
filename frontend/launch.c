/* launch.c: the MPI job as the front end's child: start, watch, kill, and the hosts it runs on.
 *
 * Start. The argv is built before fork (nothing but async-signal-safe calls in the child): the
 * prefix, with `--hostfile work_dir/hostfile` after its first word when the front end manages
 * the hosts and -np set to the ranks the hosts left can take, then the engine's command line,
 * then `--placement FILE` (the plan in use when the last job failed). The child puts itself in
 * a new process group, asks for SIGKILL when its parent dies, checks that the parent did not
 * die before that (getppid), restores the signal mask and dispositions the front end changed
 * (SIGPIPE ignored would be inherited through exec), takes /dev/null as stdin (mpirun forwards
 * stdin to rank 0) and the pipe as stderr, and execs. A second pipe, close-on-exec, carries
 * exec's errno back: the parent reads 0 bytes when exec succeeded.
 *
 * Kill. Open MPI gives each local rank its own process group, so kill(-pgid) reaches mpirun
 * only. fl_kill snapshots the processes descended from mpirun (/proc/<pid>/stat's ppid), kills
 * mpirun's group, then each descendant and its group, and reaps; the front end being a child
 * subreaper (PR_SET_CHILD_SUBREAPER), a rank orphaned by mpirun's death becomes its child, and
 * is killed and reaped too. Ranks on other hosts end with their orted, which ends when mpirun's
 * connection goes.
 *
 * Failures. mpirun's stderr carries rank 0's log and mpirun's own reports; the lines that name
 * a failed rank (and maybe its host) are remembered, so that the front end can log who failed
 * and leave out a host that keeps failing. */
#define _XOPEN_SOURCE 700 /* getpgid */
#include "launch.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"

#define FL_KILL_WAIT_S 10.0
#define FL_MAX_PROCS 4096 /* processes of one job on this host that fl_kill can track */

typedef struct fl_host {
    char *line;    /* the hostfile line, as written back */
    char *name;    /* its first word */
    int slots;     /* slots=N, else 1 */
    int streak;    /* failures blamed on it in a row */
    int left_out;
} fl_host;

struct fl {
    char **prefix;         /* the split --launch */
    int n_prefix;
    int np_at;             /* index in prefix of -np's value; -1 when absent */
    long np;               /* its value */
    char **engine;         /* copied, NULL-ended */
    int n_engine;
    fl_host *hosts;        /* the hostfile's hosts, or NULL */
    int n_hosts;
    char hostfile[4096];   /* the one written for the launch */
    int min_workers;
    int stale_plan;        /* a host was left out: the last plan no longer fits */
    char **argv;           /* of the last start */
    pid_t pid;             /* mpirun, 0 when none runs */
    int err_fd;            /* read end of its stderr, -1 */
    char *line;            /* a partial stderr line */
    size_t line_len, line_cap;
    fl_failure fail;
    int starts;
    char (*rank_host)[64];  /* [n_rank_host] the host of each rank, from rank 0's start-up lines */
    int n_rank_host;
};

/* --- argv --- */

int fl_split(const char *s, char ***argv) {
    int n = 0, cap = 8;
    char **v = xmalloc((size_t)cap * sizeof *v);
    while (*s) {
        while (*s && isspace((unsigned char)*s)) s++;
        if (!*s) break;
        const char *b = s;
        while (*s && !isspace((unsigned char)*s)) s++;
        if (n + 2 > cap) v = xrealloc(v, (size_t)(cap *= 2) * sizeof *v);
        v[n] = xmalloc((size_t)(s - b) + 1);
        memcpy(v[n], b, (size_t)(s - b));
        v[n++][s - b] = '\0';
    }
    v[n] = NULL;
    *argv = v;
    return n;
}

void fl_argv_free(char **argv) {
    if (!argv) return;
    for (char **p = argv; *p; p++) free(*p);
    free(argv);
}

static int is_np(const char *a) {
    return !strcmp(a, "-np") || !strcmp(a, "--np") || !strcmp(a, "-n") || !strcmp(a, "--n") || !strcmp(a, "-c");
}

static int has_hostfile(char **v) {
    for (; *v; v++)
        if (!strcmp(*v, "--hostfile") || !strcmp(*v, "-hostfile") || !strcmp(*v, "--machinefile") ||
            !strcmp(*v, "-machinefile") || !strcmp(*v, "--host") || !strcmp(*v, "-host") || !strcmp(*v, "-H"))
            return 1;
    return 0;
}

/* --- hosts --- */

static int read_hostfile(fl *f, const char *path, char *err, size_t errsz) {
    FILE *in = fopen(path, "r");
    if (!in) {
        snprintf(err, errsz, "%s: cannot read the hostfile (%s)", path, strerror(errno));
        return DH_EIO;
    }
    char buf[4096];
    int lineno = 0, rc = 0;
    while (fgets(buf, sizeof buf, in)) {
        lineno++;
        buf[strcspn(buf, "\r\n")] = '\0';
        char *p = buf;
        while (isspace((unsigned char)*p)) p++;
        if (!*p || *p == '#') continue;
        fl_host h = {.line = xstrdup(p), .slots = 1};
        size_t nl = strcspn(p, " \t#");
        h.name = xmalloc(nl + 1);
        memcpy(h.name, p, nl);
        h.name[nl] = '\0';
        const char *s = strstr(p, "slots=");
        if (s && (s == p || isspace((unsigned char)s[-1]))) {
            char *end;
            long v = strtol(s + 6, &end, 10);
            if (end == s + 6 || v < 1 || v > 1 << 20) {
                snprintf(err, errsz, "%s:%d: slots wants a positive integer", path, lineno);
                free(h.line), free(h.name);
                rc = DH_EFORMAT;
                break;
            }
            h.slots = (int)v;
        }
        f->hosts = xrealloc(f->hosts, (size_t)(f->n_hosts + 1) * sizeof *f->hosts);
        f->hosts[f->n_hosts++] = h;
    }
    fclose(in);
    if (!rc && !f->n_hosts) {
        snprintf(err, errsz, "%s: no host in the hostfile", path);
        rc = DH_EFORMAT;
    }
    return rc;
}

/* ranks the next launch runs: -np, or fewer when hosts were left out */
static long ranks_of(const fl *f, int skip /* a host to count as left out too, or -1 */) {
    if (!f->hosts) return f->np;
    long slots = 0;
    int out = 0;
    for (int i = 0; i < f->n_hosts; i++) {
        if (f->hosts[i].left_out || i == skip) out = 1;
        else slots += f->hosts[i].slots;
    }
    return out ? DH_MIN(f->np, slots) : f->np;
}

static int write_hostfile(fl *f) {
    FILE *o = fopen(f->hostfile, "w");
    if (!o) {
        log_error("%s: cannot write the hostfile (%s)", f->hostfile, strerror(errno));
        return DH_EIO;
    }
    fprintf(o, "# written by darkhorse serve --hostfile: the hosts of this launch\n");
    for (int i = 0; i < f->n_hosts; i++)
        if (!f->hosts[i].left_out) fprintf(o, "%s\n", f->hosts[i].line);
    if (fclose(o) != 0) {
        log_error("%s: cannot write the hostfile (%s)", f->hostfile, strerror(errno));
        return DH_EIO;
    }
    return 0;
}

/* --- life cycle --- */

fl *fl_new(const fl_params *p, char *err, size_t errsz) {
    fl *f = xcalloc(1, sizeof *f);
    f->pid = 0, f->err_fd = -1, f->np_at = -1, f->fail.rank = -1;
    f->min_workers = DH_MAX(p->min_workers, 1);
    f->n_prefix = fl_split(p->launch ? p->launch : "", &f->prefix);
    while (p->engine[f->n_engine]) f->n_engine++;
    f->engine = xcalloc((size_t)f->n_engine + 1, sizeof *f->engine);
    for (int i = 0; i < f->n_engine; i++) f->engine[i] = xstrdup(p->engine[i]);
    for (int i = 1; i + 1 < f->n_prefix && f->np_at < 0; i++) {
        char *end;
        long v = strtol(f->prefix[i + 1], &end, 10);
        if (is_np(f->prefix[i]) && *end == '\0' && end != f->prefix[i + 1] && v >= 1) f->np_at = i + 1, f->np = v;
    }
    if (!f->n_prefix) {
        snprintf(err, errsz, "--launch: give the launcher's command, e.g. \"mpirun -np 3\"");
        goto fail;
    }
    if (p->hostfile) {
        if (has_hostfile(f->prefix)) {
            snprintf(err, errsz, "--hostfile is given to serve: the --launch prefix must not name hosts itself");
            goto fail;
        }
        if (f->np_at < 0) {
            snprintf(err, errsz, "--hostfile needs the number of ranks in the --launch prefix (-np N)");
            goto fail;
        }
        if (read_hostfile(f, p->hostfile, err, errsz)) goto fail;
        snprintf(f->hostfile, sizeof f->hostfile, "%s/hostfile", p->work_dir ? p->work_dir : ".");
    }
    if (f->np_at >= 0 && f->np - 1 < f->min_workers) {
        snprintf(err, errsz, "--launch starts %ld ranks: %ld workers, fewer than --min-workers %d", f->np, f->np - 1,
                 f->min_workers);
        goto fail;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) log_warn("cannot become a child subreaper (%s)", strerror(errno));
    return f;
fail:
    fl_free(f);
    return NULL;
}

void fl_free(fl *f) {
    if (!f) return;
    fl_kill(f);
    fl_argv_free(f->prefix);
    fl_argv_free(f->engine);
    fl_argv_free(f->argv);
    for (int i = 0; i < f->n_hosts; i++) free(f->hosts[i].line), free(f->hosts[i].name);
    free(f->hosts);
    free(f->line);
    free(f->rank_host);
    free(f);
}

static char **build_argv(fl *f, const char *placement) {
    int n = 0, cap = f->n_prefix + f->n_engine + 8;
    char **v = xcalloc((size_t)cap, sizeof *v);
    v[n++] = xstrdup(f->prefix[0]);
    if (f->hosts) v[n++] = xstrdup("--hostfile"), v[n++] = xstrdup(f->hostfile);
    for (int i = 1; i < f->n_prefix; i++) {
        if (i == f->np_at) {
            char b[32];
            snprintf(b, sizeof b, "%ld", ranks_of(f, -1));
            v[n++] = xstrdup(b);
        } else {
            v[n++] = xstrdup(f->prefix[i]);
        }
    }
    for (int i = 0; i < f->n_engine; i++) v[n++] = xstrdup(f->engine[i]);
    if (placement && !f->stale_plan) v[n++] = xstrdup("--placement"), v[n++] = xstrdup(placement);
    v[n] = NULL;
    return v;
}

static void cloexec(int fd) { fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC); }

/* the child, between fork and exec: async-signal-safe calls only */
static _Noreturn void child(char **argv, pid_t parent, int null_fd, int err_w, int exec_w) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != parent) _exit(127); /* the front end died before the line above */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    int sigs[] = {SIGPIPE, SIGTERM, SIGINT, SIGCHLD, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &dfl, NULL);
    if (null_fd >= 0) dup2(null_fd, 0);
    if (err_w >= 0) dup2(err_w, 2);
    execvp(argv[0], argv);
    int e = errno;
    ssize_t w = write(exec_w, &e, sizeof e);
    (void)w;
    _exit(127);
}

int fl_start(fl *f, const char *placement) {
    DH_ASSERT(f->pid == 0);
    if (f->hosts && write_hostfile(f)) return DH_EIO;
    if (placement && f->stale_plan) log_info("a host was left out: the job makes a new plan for the workers left");
    fl_argv_free(f->argv);
    f->argv = build_argv(f, placement);
    f->fail = (fl_failure){.rank = -1};
    int errp[2], execp[2];
    if (pipe(errp) != 0) {
        log_error("cannot make a pipe for the job's stderr (%s)", strerror(errno));
        return DH_EIO;
    }
    if (pipe(execp) != 0) {
        log_error("cannot make a pipe (%s)", strerror(errno));
        close(errp[0]), close(errp[1]);
        return DH_EIO;
    }
    cloexec(errp[0]), cloexec(errp[1]), cloexec(execp[0]), cloexec(execp[1]);
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) child(f->argv, parent, null_fd, errp[1], execp[1]);
    if (null_fd >= 0) close(null_fd);
    close(errp[1]), close(execp[1]);
    if (pid < 0) {
        log_error("cannot fork to start %s (%s)", f->argv[0], strerror(errno));
        close(errp[0]), close(execp[0]);
        return DH_EIO;
    }
    setpgid(pid, pid); /* the child does it too: whichever runs first */
    int e = 0;
    ssize_t r;
    while ((r = read(execp[0], &e, sizeof e)) < 0 && errno == EINTR) {}
    close(execp[0]);
    if (r == (ssize_t)sizeof e) {
        log_error("cannot run %s: %s", f->argv[0], strerror(e));
        close(errp[0]);
        waitpid(pid, NULL, 0);
        return DH_EIO;
    }
    fcntl(errp[0], F_SETFL, fcntl(errp[0], F_GETFL) | O_NONBLOCK);
    f->pid = pid, f->err_fd = errp[0];
    f->starts++;
    f->stale_plan = 0;
    return 0;
}

pid_t fl_pid(const fl *f) { return f->pid; }
int fl_stderr_fd(const fl *f) { return f->err_fd; }
const fl_failure *fl_last_failure(const fl *f) { return &f->fail; }
int fl_workers(const fl *f) { return f->np_at >= 0 ? (int)ranks_of(f, -1) - 1 : -1; }
int fl_restarts(const fl *f) { return DH_MAX(f->starts - 1, 0); }
char *const *fl_argv(const fl *f) { return f->argv; }

/* --- the job's stderr --- */

int fl_parse_failure_line(const char *line, fl_failure *out) {
    const char *p;
    int rank, sig;
    char host[256];
    if ((p = strstr(line, "noticed that process rank ")) &&
        sscanf(p, "noticed that process rank %d with PID %*d on node %255s exited on signal %d", &rank, host,
               &sig) == 3) {
        *out = (fl_failure){.rank = rank};
        snprintf(out->host, sizeof out->host, "%s", host);
        snprintf(out->reason, sizeof out->reason, "exited on signal %d (%s)", sig, strsignal(sig));
        return 1;
    }
    if ((p = strstr(line, "worker rank ")) && sscanf(p, "worker rank %d did not answer", &rank) == 1) {
        *out = (fl_failure){.rank = rank};
        snprintf(out->reason, sizeof out->reason, "did not answer within its --worker-timeout");
        return 1;
    }
    return 0;
}

/* "rank 2 on h1: darkhorse 0.1.0, ...", rank 0's line for each worker at start-up */
static void note_rank_host(fl *f, const char *line) {
    const char *p = strstr(line, ": rank ");
    int rank;
    char host[64];
    if (!p || sscanf(p, ": rank %d on %63[^: ]: darkhorse", &rank, host) != 2 || rank < 0 || rank > 1 << 20) return;
    if (rank >= f->n_rank_host) {
        f->rank_host = xrealloc(f->rank_host, (size_t)(rank + 1) * sizeof *f->rank_host);
        for (int i = f->n_rank_host; i <= rank; i++) f->rank_host[i][0] = '\0';
        f->n_rank_host = rank + 1;
    }
    snprintf(f->rank_host[rank], sizeof f->rank_host[rank], "%s", host);
}

static void take_line(fl *f, const char *s, size_t n) {
    fprintf(stderr, "%.*s\n", (int)n, s);
    char buf[1024];
    snprintf(buf, sizeof buf, "%.*s", (int)DH_MIN(n, sizeof buf - 1), s);
    note_rank_host(f, buf);
    fl_failure x;
    if (!fl_parse_failure_line(buf, &x)) return;
    if (x.rank >= 0 && !*x.host && x.rank < f->n_rank_host) snprintf(x.host, sizeof x.host, "%s", f->rank_host[x.rank]);
    if (f->fail.rank < 0) f->fail = x; /* the first rank named is the one that failed ... */
    else if (x.rank == f->fail.rank && !*f->fail.host) /* ... a later line may add its host */
        snprintf(f->fail.host, sizeof f->fail.host, "%s", x.host);
}

void fl_stderr_feed(fl *f, const char *buf, size_t n) {
    if (n == 0) {
        if (f->line_len) take_line(f, f->line, f->line_len);
        f->line_len = 0;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            take_line(f, f->line ? f->line : "", f->line_len);
            f->line_len = 0;
        } else if (f->line_len < 65536) { /* a longer line is cut */
            xappend(&f->line, &f->line_len, &f->line_cap, buf + i, 1);
        }
    }
}

/* --- waiting and killing --- */

static void drain_stderr(fl *f) {
    if (f->err_fd < 0) return;
    char b[4096];
    ssize_t n;
    while ((n = read(f->err_fd, b, sizeof b)) > 0) fl_stderr_feed(f, b, (size_t)n);
}

static void job_ended(fl *f) {
    drain_stderr(f);
    fl_stderr_feed(f, NULL, 0);
    if (f->err_fd >= 0) close(f->err_fd);
    f->err_fd = -1;
    f->pid = 0;
}

int fl_poll(fl *f, int *status) {
    if (!f->pid) {
        if (status) *status = 0;
        return 1;
    }
    int st, ended = 0;
    pid_t r;
    while ((r = waitpid(-1, &st, WNOHANG)) > 0) /* mpirun, and ranks orphaned to us */
        if (r == f->pid) {
            ended = 1;
            if (status) *status = st;
        }
    if (!ended && r < 0 && errno == ECHILD) { /* reaped elsewhere: it is gone all the same */
        ended = 1;
        if (status) *status = 0;
    }
    if (ended) job_ended(f);
    return ended;
}

int fl_wait(fl *f, double timeout_s, int *status) {
    double end = dh_now() + timeout_s;
    for (;;) {
        if (fl_poll(f, status)) return 1;
        if (dh_now() >= end) return 0;
        drain_stderr(f);
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* pid and ppid of every process, from /proc/<pid>/stat; n of them */
static int list_procs(pid_t *pid, pid_t *ppid, int cap) {
    DIR *d = opendir("/proc");
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while (n < cap && (e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *in = fopen(path, "r");
        if (!in) continue;
        size_t k = fread(buf, 1, sizeof buf - 1, in);
        fclose(in);
        buf[k] = '\0';
        const char *c = strrchr(buf, ')'); /* the command may hold spaces and parentheses */
        int pp;
        if (c && sscanf(c + 1, " %*c %d", &pp) == 1) pid[n] = (pid_t)atoi(e->d_name), ppid[n++] = (pid_t)pp;
    }
    closedir(d);
    return n;
}

/* SIGKILL to every process descended from root (root excluded), and to their own groups */
static int kill_descendants(pid_t root) {
    static pid_t pid[FL_MAX_PROCS], ppid[FL_MAX_PROCS];
    int n = list_procs(pid, ppid, FL_MAX_PROCS), killed = 0;
    pid_t set[FL_MAX_PROCS];
    int ns = 0;
    set[ns++] = root;
    for (int grew = 1; grew;) { /* the closure of "child of a member" */
        grew = 0;
        for (int i = 0; i < n; i++) {
            int in = 0, parent = 0;
            for (int j = 0; j < ns && !(in && parent); j++) in |= set[j] == pid[i], parent |= set[j] == ppid[i];
            if (parent && !in && ns < FL_MAX_PROCS) set[ns++] = pid[i], grew = 1;
        }
    }
    pid_t own = getpgrp();
    for (int j = 1; j < ns; j++) {
        if (getpgid(set[j]) == set[j] && set[j] != own) kill(-set[j], SIGKILL);
        kill(set[j], SIGKILL);
        killed++;
    }
    return killed;
}

void fl_kill(fl *f) {
    if (!f->pid) return;
    kill_descendants(f->pid);
    kill(-f->pid, SIGKILL);
    kill(f->pid, SIGKILL);
    double end = dh_now() + FL_KILL_WAIT_S;
    pid_t me = getpid();
    while (dh_now() < end) {
        int st;
        pid_t r;
        while ((r = waitpid(-1, &st, WNOHANG)) > 0)
            if (r == f->pid) job_ended(f);
        if (r < 0 && errno == ECHILD) break; /* nothing of the job is left to reap */
        kill_descendants(me);                /* ranks orphaned to us since */
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (f->pid) {
        log_warn("mpirun (pid %ld) was not reaped within %.0f s of SIGKILL", (long)f->pid, FL_KILL_WAIT_S);
        job_ended(f);
    }
}

int fl_blame(fl *f, const char *host) {
    if (!f->hosts || !host || !*host) return 0;
    int h = -1;
    for (int i = 0; i < f->n_hosts; i++)
        if (!strcmp(f->hosts[i].name, host) && !f->hosts[i].left_out) h = i;
    if (h < 0) return 0; /* not one of ours: the streaks stand */
    for (int i = 0; i < f->n_hosts; i++)
        if (i != h) f->hosts[i].streak = 0;
    if (++f->hosts[h].streak < 2) return 0;
    long ranks = ranks_of(f, h);
    if (ranks - 1 < f->min_workers) {
        log_warn("host %s failed twice in a row, but leaving it out would leave %ld workers (--min-workers %d): kept",
                 host, ranks - 1, f->min_workers);
        return 0;
    }
    f->hosts[h].left_out = 1;
    f->stale_plan = 1;
    log_warn("host %s failed twice in a row: left out; the next launch has %ld workers", host, ranks - 1);
    return 1;
}
