/* server.h: the OpenAI-compatible HTTP server over a backend (srv_ prefix).
 *
 * libevent's evhttp on a thread of its own serves POST /v1/completions and
 * /v1/chat/completions (whole or as server-sent events), GET /v1/models, /health and /metrics
 * (Prometheus text), and POST /admin/replan. Requests go to a backend (backend.h: the engine
 * in this process, or rank 0 of an MPI job over a socket), which answers with token ids; each
 * request's text state lives here (request.h). SIGTERM and SIGINT stop the server gracefully:
 * no new connections, the backend is stopped with the shutdown grace (the requests in flight
 * finish within it or fail with a clear error), and the caller, once the engine has stopped,
 * calls srv_finish. The caller must ignore SIGPIPE (a client that went away must not kill the
 * process on the next write). */
#ifndef DH_SERVER_H
#define DH_SERVER_H
#include <stddef.h>

#include "core/config.h"
#include "core/tokenizer.h"
#include "frontend/backend.h"

typedef struct srv srv;

typedef struct srv_params {
    const char *host;         /* address to bind: an IPv4 or IPv6 literal or a name */
    int port;                 /* 0: an ephemeral port (see srv_port) */
    const char *api_key;      /* NULL or "": the /v1/ endpoints are open; else Bearer KEY */
    const char *served_name;  /* the model name given in every response */
    size_t max_body;          /* request bodies beyond this many bytes get 413 */
    int max_context;          /* prompt + max_tokens at most (the engine's max_context) */
    double shutdown_grace;    /* seconds requests in flight may run on after SIGTERM/SIGINT */
    int workers;              /* worker ranks (0: one process), for darkhorse_model_info */
    const char *routing_replay; /* the --routing-replay trace, or NULL (off) */
    const char *replay_order;   /* its order, "turns" or "domain" */
} srv_params;

/* A server for a model of config cfg (its vocabulary size, EOS and domain names) and tokenizer
 * tok, generating with backend b (all three borrowed: they must outlive it; the server sets
 * b's sink). Strings of p are copied. Nothing is bound yet. NULL never. */
srv *srv_new(const srv_params *p, const model_config *cfg, const tokenizer *tok, fb_backend *b);
/* Bind host:port, log "listening on http://HOST:PORT" on stderr, take SIGTERM and SIGINT, and
 * start the HTTP thread. 0, or DH_EIO with a logged error (address in use, bad host). */
int srv_start(srv *s);
int srv_port(const srv *s); /* the bound port, after srv_start */
/* After the engine has stopped with engine_rc (engine_run's result; 0 when it stopped as
 * asked): requests still without an answer get one (503),
 * responses are written out for at most flush_s seconds, and the HTTP thread ends. New
 * requests meanwhile get 503. Call once, from the thread that ran srv_start. */
void srv_finish(srv *s, int engine_rc, double flush_s);
void srv_free(srv *s); /* after srv_finish, or when srv_start failed; NULL ok */
#endif
