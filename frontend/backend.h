/* backend.h: what the HTTP server generates with (fb_ prefix): an engine behind a small vtable.
 *
 * Two implementations: the local one (backend_local.c: the engine and the re-planner in this
 * process, `darkhorse serve` without --launch) and the remote one (the engine in rank 0 of an
 * MPI job, over a Unix socket: `serve --launch`). The server never knows which.
 *
 * Ids. The server gives every request its own id (> 0, never reused by that server, so also
 * unique across engine restarts); the backend speaks of the request by it in every event, and
 * takes it in cancel. submit answers at once and never waits for the engine: a remote backend
 * queues the request and returns 0; what goes wrong later (the engine refuses it, the engine is
 * lost) comes as an ERROR event. A local backend may also refuse at once with a DH_E* code
 * (then no event ever comes for that id).
 *
 * Events. Per accepted request: TOKEN events in index order (index 0, 1, ...; after a resume
 * from n_generated tokens, the first is index n_generated; a backend that restarts its engine
 * resubmits and goes on the same way), then exactly one last event, DONE or ERROR. After
 * cancel(id, finished = 1) the last event is DONE with FB_FINISH_STOP (or the DONE/ERROR that
 * was already on its way); after cancel(id, 0) it is ERROR DH_ECANCELLED (or the one already
 * on its way). TOKEN events may still arrive after a cancel, before the last event.
 *
 * Streams. The server starts a stream (200, headers) at the request's first TOKEN or its DONE:
 * an ERROR before that gets a plain HTTP status, as a whole response does (so a request that
 * waited for an engine being restarted can get 503 with Retry-After: fb_event.retry_after); an
 * ERROR after that ends the stream with an error event.
 *
 * Threads. submit, cancel, stop, replan, metrics and health are called on the server's HTTP
 * thread only, after fb_set_sink. The sink's callbacks may be called on any thread (the engine
 * thread for the local backend, the socket thread for a remote one), never two at once for
 * the same backend, and may be called before submit has returned; they must only copy the
 * event and hand it over (the server queues it to its HTTP thread). Pointers in an event are
 * valid during the callback only.
 *
 * Resume. A backend that loses its engine and starts another resubmits each unfinished request
 * itself, from its copy of what submit gave it plus the tokens it has delivered so far (as
 * `generated`, with the same seed); the engine then sends the next indices only, so the server
 * sees one stream with no duplicate and no gap (request.h ignores a repeated index anyway).
 *
 * Ownership. The backend is created by the caller (cmd_serve.c, or the front end process) and
 * freed by it after the server; the server borrows it. Requests are copied by submit.
 *
 * Shutdown. On the first SIGTERM/SIGINT the server stops accepting and calls stop(grace), once.
 * Whoever runs the engine tells the server when it has stopped by srv_finish (server.h); the
 * server then answers what is still open with 503. */
#ifndef DH_BACKEND_H
#define DH_BACKEND_H
#include <stddef.h>
#include <stdint.h>

#include "coordinator/replan.h"
#include "core/config.h"
#include "core/sampler.h"

struct evbuffer;

typedef struct fb_request {       /* borrowed for the call to submit */
    uint64_t id;                  /* the server's id, > 0 */
    const int *prompt;            /* [n_prompt] token ids, fed as prompt rows */
    int n_prompt;
    const int *generated;         /* [n_generated] completion tokens already accepted (resume),
                                     fed as decode rows and not reported again; NULL if none */
    int n_generated;
    int max_tokens;               /* of the whole completion, generated included */
    sampler_params sampling;      /* the seed is always set, and kept across resumes */
    int ignore_eos;
} fb_request;

enum { FB_EV_TOKEN = 1, FB_EV_DONE = 2, FB_EV_ERROR = 3 };
enum { FB_FINISH_EOS = 1, FB_FINISH_LENGTH = 2, FB_FINISH_STOP = 3 };

typedef struct fb_event {
    int kind;                     /* FB_EV_* */
    uint64_t id;                  /* the request's fb_request.id */
    int token, index;             /* TOKEN: the id and its index in the completion */
    int finish;                   /* DONE: FB_FINISH_* */
    int prompt_tokens;            /* DONE: as the engine counted them */
    int completion_tokens;        /* DONE */
    double domain_share[CFG_N_DOMAINS]; /* DONE: share of the request's routed choices */
    int code;                     /* ERROR: DH_E* (DH_EINVAL refused, DH_EBUSY queue full,
                                     DH_ECANCELLED cancelled or stopping, other: engine failure) */
    const char *error;            /* ERROR: the message for the client */
    int retry_after;              /* ERROR: > 0 when the engine is away (recovering): the client
                                     gets 503 engine_unavailable with Retry-After: this many s */
} fb_event;

typedef struct fb_sink {          /* where a backend delivers; see Threads above */
    void (*event)(void *ctx, const fb_event *ev);
    /* the answer to replan(user): rp_result as coordinator/replan.h says */
    void (*replan_done)(void *ctx, void *user, const rp_result *r);
    void *ctx;
} fb_sink;

typedef struct fb_backend fb_backend;

typedef struct fb_ops {
    /* Queue r: 0 (its events follow), or DH_EBUSY / DH_EINVAL / DH_ECANCELLED with err filled
     * (a backend that cannot tell at once returns 0 and sends an ERROR event instead). */
    int (*submit)(fb_backend *b, const fb_request *r, char *err, size_t errsz);
    /* End request id: finished = 1 when the server saw its end (a stop string), 0 when the
     * client went away. Unknown or ended ids are ignored. */
    void (*cancel)(fb_backend *b, uint64_t id, int finished);
    /* Stop admitting; requests in flight may finish within grace_s seconds, then fail. */
    void (*stop)(fb_backend *b, double grace_s);
    /* Ask for a live re-placement of the experts: 0 (the answer comes through
     * sink.replan_done with user), DH_EBUSY (one is in progress), DH_EUNSUPPORTED (not a
     * cluster: nothing to re-place), or DH_ECANCELLED (the engine is not there). */
    int (*replan)(fb_backend *b, void *user);
    /* Append the engine side's Prometheus families (coordinator/metrics.h) to out: the
     * current ones (local), or the last text the engine sent (remote); nothing while there is
     * no engine. */
    void (*metrics)(fb_backend *b, struct evbuffer *out);
    /* For GET /health while the server is not stopping: 0 when serving; 1 when degraded (the
     * engine is away, being restarted), with why in reason[cap] (the server answers 503
     * {"status": "degraded", "reason": ...}). NULL: always serving. */
    int (*health)(fb_backend *b, char *reason, size_t cap);
} fb_ops;

struct fb_backend {               /* the base of every implementation (its first member) */
    const fb_ops *ops;
    fb_sink sink;                 /* set by fb_set_sink */
};

/* The server sets where events go, before any other call. */
static inline void fb_set_sink(fb_backend *b, const fb_sink *s) { b->sink = *s; }

/* --- the local backend (backend_local.c) --- */

typedef struct engine engine;
typedef struct cmetrics cmetrics;
/* A backend over an engine in this process. The engine must be made with fb_local_emit and the
 * backend as its emit callback, the re-planner with fb_local_replan_done. NULL never. */
fb_backend *fb_local_new(void);
/* Before the server starts: the engine, the re-planner (NULL: not a cluster) and the metrics
 * renderer, all kept (they must outlive the backend, or the next attach). Thread-safe: attach
 * again with replan NULL before freeing the re-planner. */
void fb_local_attach(fb_backend *b, engine *e, rp *replan, cmetrics *cm);
void fb_local_free(fb_backend *b); /* NULL ok */
/* engine_emit_fn (ctx = the backend): the engine's event to the sink, on the engine thread */
struct engine_event;
void fb_local_emit(void *ctx, const struct engine_event *ev);
/* rp_done_fn (ctx = the backend) */
void fb_local_replan_done(void *ctx, void *user, const rp_result *r);
#endif
