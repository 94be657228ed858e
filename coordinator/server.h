/* server.h: the OpenAI-compatible HTTP server over the engine (srv_ prefix).
 *
 * libevent's evhttp on a thread of its own serves POST /v1/completions and
 * /v1/chat/completions (whole or as server-sent events), GET /v1/models, /health and /metrics
 * (Prometheus text), and in a cluster POST /admin/replan. The engine runs on the caller's thread (engine_run): requests go to it by
 * engine_submit, its events come back through srv_emit and a queue to the HTTP thread, which
 * writes the responses. SIGTERM and SIGINT stop the server gracefully: no new connections, the
 * requests in flight finish within the shutdown grace or fail with a clear error, and
 * engine_run returns. The caller must ignore SIGPIPE (a client that went away must not kill the
 * process on the next write). */
#ifndef DH_SERVER_H
#define DH_SERVER_H
#include <stddef.h>

#include "coordinator/engine.h"
#include "coordinator/replan.h"
#include "core/model.h"
#include "core/tokenizer.h"

typedef struct srv srv;

typedef struct srv_params {
    const char *host;         /* address to bind: an IPv4 or IPv6 literal or a name */
    int port;                 /* 0: an ephemeral port (see srv_port) */
    const char *api_key;      /* NULL or "": the /v1/ endpoints are open; else Bearer KEY */
    const char *served_name;  /* the model name given in every response */
    size_t max_body;          /* request bodies beyond this many bytes get 413 */
    int max_context;          /* prompt + max_tokens at most (the engine's max_context) */
    double shutdown_grace;    /* seconds requests in flight may run on after SIGTERM/SIGINT */
    int stat_layers, stat_experts, stat_workers; /* sizes of the engine's ls_stats */
    const char *routing_replay; /* the --routing-replay trace, or NULL (off) */
    const char *replay_order;   /* its order, "turns" or "domain" */
} srv_params;

/* A server for model m (its vocabulary size and domain names) and tokenizer tok, both kept and
 * borrowed: they must outlive it. Strings of p are copied. Nothing is bound yet. NULL never. */
srv *srv_new(const srv_params *p, const model *m, const tokenizer *tok);
/* The engine's emit callback (engine_emit_fn) with ctx = the server: copies the event to the
 * HTTP thread. Called on the engine thread. */
void srv_emit(void *ctx, const engine_event *ev);
/* Serve POST /admin/replan with r (kept; it must outlive the server). Before srv_start; without
 * it the endpoint says that this server is not a cluster. */
void srv_set_replan(srv *s, rp *r);
/* The re-planner's answer (rp_done_fn, ctx = the server, user = the request): copied to the
 * HTTP thread, which answers the request. Called on the engine thread. */
void srv_replan_done(void *ctx, void *user, const rp_result *r);
/* Bind host:port, log "listening on http://HOST:PORT" on stderr, take SIGTERM and SIGINT, and
 * start the HTTP thread, which submits to e (kept; it must outlive the server). 0, or DH_EIO
 * with a logged error (address in use, bad host). */
int srv_start(srv *s, engine *e);
int srv_port(const srv *s); /* the bound port, after srv_start */
/* After engine_run has returned engine_rc: requests still without an answer get one (503),
 * responses are written out for at most flush_s seconds, and the HTTP thread ends. New
 * requests meanwhile get 503. Call once, from the thread that ran srv_start. */
void srv_finish(srv *s, int engine_rc, double flush_s);
void srv_free(srv *s); /* after srv_finish, or when srv_start failed; NULL ok */
#endif
