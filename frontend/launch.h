/* launch.h: the front end's supervision of the MPI job (fl_ prefix): `serve --launch`.
 *
 * The front end runs `mpirun -np N [options]` (the prefix, split on whitespace, no shell) with
 * the engine's command line appended, as its child: in a process group of its own, with
 * PR_SET_PDEATHSIG = SIGKILL so that it cannot outlive a front end that was killed, with the
 * environment inherited and its stderr through a pipe that the front end copies line by line to
 * its own (and reads for the rank and host that failed). The front end is a child subreaper:
 * ranks that mpirun leaves behind become its children, so fl_kill can end them. Open MPI gives
 * every local rank a process group of its own, so killing mpirun's group is not enough.
 *
 * With a hostfile, the front end writes the hostfile it launches with (work_dir/hostfile): a
 * host named by two failures in a row is left out, down to min_workers, and -np shrinks with
 * the slots left. A plan made for the old set of workers is then no longer passed.
 *
 * Everything here runs on one thread (the front end's main thread: PR_SET_PDEATHSIG follows the
 * thread that forked). No libevent: the caller watches fl_stderr_fd and calls fl_poll on
 * SIGCHLD. */
#ifndef DH_LAUNCH_H
#define DH_LAUNCH_H
#include <stddef.h>
#include <sys/types.h>

typedef struct fl fl;

typedef struct fl_params {
    const char *launch;          /* "mpirun -np 3 --oversubscribe": split on whitespace */
    const char *const *engine;   /* the engine's command line after the prefix, NULL-ended
                                    (its first element an absolute path; copied) */
    const char *hostfile;        /* NULL, or the hosts to launch on (read now, rewritten) */
    int min_workers;             /* hosts are left out down to this many workers (>= 1) */
    const char *work_dir;        /* an existing directory for the hostfile it writes */
} fl_params;

typedef struct fl_failure {      /* what the job's stderr said last about a failed rank */
    int rank;                    /* -1: none named */
    char host[256];              /* "" when not named */
    char reason[256];
} fl_failure;

/* Split s on whitespace into a NULL-ended array of copies: its count, *argv to free with
 * fl_argv_free. */
int fl_split(const char *s, char ***argv);
void fl_argv_free(char **argv); /* NULL ok */

/* A supervisor; NULL with err filled when the prefix or the hostfile is wrong (an empty prefix,
 * --hostfile given with a prefix that has its own hostfile or no -np, an unreadable hostfile).
 * Makes this process a child subreaper. */
fl *fl_new(const fl_params *p, char *err, size_t errsz);
/* Kill a job still running (fl_kill), free. NULL ok. */
void fl_free(fl *f);

/* Start the job, with `--placement placement` appended unless placement is NULL or a host was
 * left out since the last fl_start with that plan: 0, or DH_EIO (logged: fork, pipe or exec
 * failed; the exec's errno is reported through a pipe, so a missing mpirun is seen here). */
int fl_start(fl *f, const char *placement);
pid_t fl_pid(const fl *f);          /* mpirun's, 0 when no job runs */
int fl_stderr_fd(const fl *f);      /* the read end of the job's stderr (non-blocking), or -1 */
/* Bytes read from fl_stderr_fd: copied to stderr by whole lines, failure lines remembered. At
 * the end of the pipe call it with n = 0 to flush a last partial line. */
void fl_stderr_feed(fl *f, const char *buf, size_t n);
/* Whether the job has ended: 1 with waitpid's status in *status (may be NULL), 0 while it runs
 * (or when none was started: then 1 with status 0). Reaps orphaned ranks too. Non-blocking. */
int fl_poll(fl *f, int *status);
/* fl_poll until it is 1 or timeout_s passed (0 then). */
int fl_wait(fl *f, double timeout_s, int *status);
/* SIGKILL to mpirun's process group and to every process descended from it, then reap them
 * (at most 10 s). Does nothing when no job runs. */
void fl_kill(fl *f);

/* The last failure the job's stderr named (rank -1 when none). Cleared by fl_start. */
const fl_failure *fl_last_failure(const fl *f);
/* Blame a failure of the job on host (NULL or "": unknown): a host blamed twice in a row is
 * left out of the next launch, unless that would leave fewer than min_workers workers. 1 when
 * a host was left out, else 0. Without a hostfile: 0. */
int fl_blame(fl *f, const char *host);
int fl_workers(const fl *f);        /* workers (ranks - 1) of the next launch */
int fl_restarts(const fl *f);       /* fl_start calls after the first */
/* The argv of the last fl_start (NULL-ended), or NULL. Borrowed until the next fl_start. */
char *const *fl_argv(const fl *f);

/* Parse a line of mpirun's or rank 0's stderr that names a failed rank: "... noticed that
 * process rank 2 with PID 123 on node h1 exited on signal 9 (Killed)." and "worker rank 2 did
 * not answer within 2.0 s ...". 1 with out filled, else 0. */
int fl_parse_failure_line(const char *line, fl_failure *out);
#endif
