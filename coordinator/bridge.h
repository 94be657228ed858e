/* bridge.h: rank 0's end of the link to the front end (br_ prefix): `serve --engine-socket`.
 *
 * Under `serve --launch`, the front end listens on a Unix socket and starts the MPI job; rank 0
 * connects to it, says hello, and from then on runs what the front end submits and sends back
 * token ids (proto/felink.h, darkhorse.proto's Fe* messages). A thread of the bridge reads the
 * socket and calls the ops below; the sends are thread-safe (the engine thread sends events,
 * the tick sends metrics and plans). When the front end goes away (the socket ends or breaks),
 * ops.lost is called once: rank 0 then stops its engine, since nobody is left to answer. */
#ifndef DH_BRIDGE_H
#define DH_BRIDGE_H
#include <stddef.h>
#include <stdint.h>

#include "darkhorse.pb-c.h"

typedef struct br br;

typedef struct br_ops {          /* called on the bridge's reader thread, one at a time */
    void (*submit)(void *ctx, const Darkhorse__FeSubmit *m); /* m valid during the call */
    void (*cancel)(void *ctx, uint64_t id, int finished);
    void (*stop)(void *ctx, double grace_s);
    void (*replan)(void *ctx, uint64_t tag);
    void (*lost)(void *ctx);     /* the front end is gone; no op is called after it */
} br_ops;

/* Connect to the front end's socket at path: NULL (logged) if it cannot. ops and ctx are kept. */
br *br_open(const char *path, const br_ops *ops, void *ctx);
/* Start reading, after the hello: 0 or DH_EIO. */
int br_start(br *b);
/* Shut the socket, join the reader thread, free. NULL ok. ops.lost is not called. */
void br_close(br *b);

/* Thread-safe sends: 0, or DH_EIO once the front end is gone (then every later send is a no-op
 * returning DH_EIO, and ops.lost is called by the reader). */
int br_send_hello(br *b, int workers, int max_context);
int br_send_token(br *b, uint64_t id, int token, int index);
int br_send_done(br *b, uint64_t id, int finish, int prompt_tokens, int completion_tokens,
                 const double *domain_share, int n_share);
int br_send_error(br *b, uint64_t id, int code, const char *error);
int br_send_plan(br *b, const char *text, uint64_t generation);
int br_send_metrics(br *b, const char *text);
int br_send_failure(br *b, int rank, const char *host, int code, const char *reason);
int br_send_replan_done(br *b, uint64_t tag, int code, uint64_t generation, int moved, double imbalance_before,
                        double imbalance_after, double seconds, const char *reason);

/* --- rank 0's engine behind the link (`serve --engine-socket PATH`) ---
 *
 * The glue between the link and an engine: the front end's submits, cancels, stop and
 * re-plans go to the engine and the re-planner; the engine's events go back as they are (the
 * front end decides which errors are failures to recover from); the tick sends the engine's
 * metrics about every second and the plan in use whenever its generation changes. Use:
 * br_engine_open, engine_new(..., br_engine_emit, g), rp_new(..., br_engine_replan_done, g),
 * br_engine_attach, engine_set_tick(e, br_engine_tick, g), br_engine_start, engine_run, then
 * br_engine_failed when engine_run failed, and br_engine_close after the re-planner is freed. */
typedef struct br_engine br_engine;
struct engine;
struct engine_event;
struct rp;
struct rp_result;
struct cmetrics;
struct cluster;
br_engine *br_engine_open(const char *path); /* NULL (logged) when the front end is not there */
/* e, replan (NULL: one process), cm and cl (NULL: one process) are kept until br_engine_close */
void br_engine_attach(br_engine *g, struct engine *e, struct rp *replan, struct cmetrics *cm,
                      struct cluster *cl);
void br_engine_emit(void *ctx, const struct engine_event *ev);                   /* engine_emit_fn */
void br_engine_replan_done(void *ctx, void *user, const struct rp_result *r);    /* rp_done_fn */
void br_engine_tick(void *ctx, uint64_t steps, double step_s);                   /* engine_tick_fn */
/* Say hello (workers, max_context) and the plan, start reading: 0 or DH_EIO. */
int br_engine_start(br_engine *g, int max_context);
/* engine_run failed with code: tell the front end before the job ends. */
void br_engine_failed(br_engine *g, int code);
void br_engine_close(br_engine *g); /* NULL ok */
#endif
