/* remote.h: the backend over rank 0 of an MPI job that the front end runs (fr_ prefix):
 * `serve --launch`, and the recovery when that job fails.
 *
 * The front end listens on a Unix socket, starts the job (launch.h) and waits for rank 0's
 * hello; the server's requests then go to rank 0 (proto/felink.h) and its token ids come back.
 * The backend keeps, for every request not yet ended, its prompt, parameters (with the seed)
 * and the tokens generated so far. When the job fails (rank 0's socket ends, mpirun exits, or
 * the job does not say hello in time), it kills what is left of the job, starts it again with
 * the plan in use (--placement FILE, the last plan rank 0 reported) and resubmits every
 * unfinished request with prompt + generated-so-far: the engine goes on with the next token,
 * drawn as the uninterrupted request would have drawn it. Requests that wait longer than
 * --recovery-wait for an engine fail with DH_EAGAIN (503 with Retry-After).
 *
 * Threads. fr_run runs the front end's event loop (libevent) on the caller's thread: the
 * socket, the job's stderr, timers; every sink call comes from there. The backend's ops (the
 * server's HTTP thread) only change the request table under a mutex and wake the loop. */
#ifndef DH_REMOTE_H
#define DH_REMOTE_H
#include <stddef.h>

#include "frontend/backend.h"
#include "frontend/launch.h"

typedef struct fr_params {
    fl *job;                  /* the job's supervisor (kept; the caller frees it after) */
    const char *socket_path;  /* where rank 0 connects (the engine's --engine-socket) */
    const char *plan_path;    /* where the plan in use is written for a relaunch */
    const char *placement;    /* the user's --placement for the first launch, or NULL */
    double recovery_wait;     /* seconds a request may wait for an engine */
    double start_timeout;     /* seconds a launch may take to say hello */
} fr_params;

/* NULL (logged) when the socket cannot be made. */
fb_backend *fr_new(const fr_params *p);
void fr_free(fb_backend *b); /* after fr_run; NULL ok */
/* Start the job and run until the backend was stopped (ops.stop) and the job has ended, or
 * until the first launch fails before it ever said hello (then DH_EIO: a wrong command line or
 * model, which a restart would not mend). 0 after a stop. */
int fr_run(fb_backend *b);
/* Thread-safe (fb_ops.health). 0 while an engine serves; else 1 with why in reason
 * ("recovering: rank 2 on host h1 failed (...)", "starting: ..."). */
int fr_health(fb_backend *b, char *reason, size_t cap);
#endif
