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
#endif
