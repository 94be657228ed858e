/* server.c: the HTTP server: routing, authentication, requests into the backend, tokens out
 * to the clients as text, metrics, graceful shutdown.
 *
 * Threads. libevent's evhttp runs on a thread of its own (in one process the engine keeps the
 * main thread: MPI is initialised FUNNELED and its forward pass calls MPI). The HTTP thread
 * parses, tokenizes (tok_encode is thread-safe) and submits to the backend (backend.h); the
 * backend's sink callbacks copy each event into a mutex-protected queue and wake the HTTP
 * thread with event_active. Everything else here (requests and their text state, connections,
 * counters) is touched by the HTTP thread only.
 *
 * Request state. Each request's prompt, parameters (the seed drawn here when the client gave
 * none), tokens so far and text state are a freq (request.h) owned by its srv_req: the backend
 * sends token ids, the text is made here. A stop string found here ends the response at the
 * backend's last event, after cancel(id, finished = 1).
 *
 * Lifetime of a request (libevent 2.1). An accepted request is an srv_req, found by its id,
 * that lives until the backend's last event for it (DONE or ERROR; exactly one comes). Its
 * evhttp_request is answered when that event arrives, or let go earlier when the client
 * disconnects: evhttp then detaches the request from the dying connection if we had not
 * finished it (req->evcon = NULL; it is ours to free) and calls the connection's close
 * callback, where we free it, forget it, and cancel the backend request; nothing is written
 * to it afterwards. Before the final reply the close callback
 * is removed, so that it never sees a freed srv_req. evhttp only notices a closed connection
 * while it reads: it reads (for that purpose only) while a reply is being written, so a stream
 * is watched from its first bytes; a whole (non-stream) response is watched the same way by
 * enabling reads with no read callback, as evhttp itself does, until the reply goes out.
 *
 * Shutdown. SIGTERM/SIGINT (libevent's signal events on this thread's base) close the
 * listening socket and stop the backend (grace); requests on open connections get 503. When
 * the engine has stopped, srv_finish answers whatever is left, lets the replies drain for a bounded
 * time, and ends the thread. */
#include "server.h"

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/metrics.h"
#include "core/common.h"
#include "frontend/api.h"
#include "frontend/request.h"

#define SRV_IDLE_TIMEOUT_S 60  /* reading a request, keep-alive idle, a client not reading */
#define SRV_MAX_HEADERS 65536  /* bytes of request line and headers */

enum { P_COMPLETIONS, P_CHAT, P_MODELS, P_HEALTH, P_METRICS, P_REPLAN, P_OTHER, N_PATHS };
static const char *const path_names[N_PATHS] = {"/v1/completions", "/v1/chat/completions", "/v1/models",
                                                "/health", "/metrics", "/admin/replan", "other"};
enum { SRV_EV_REPLAN = 100 }; /* an event kind beside FB_EV_*: the re-planner's answer */
#define SRV_ID_BUCKETS 1024    /* of the table of requests by id */

typedef struct srv_req { /* a request accepted into the engine or the re-planner; HTTP thread only */
    srv *s;
    struct evhttp_request *req;      /* NULL once answered or once the client went away */
    struct evhttp_connection *evcon; /* its connection while req is set */
    uint64_t id;                     /* this server's id, given to the backend (0 for a re-plan) */
    int path;                        /* P_COMPLETIONS, P_CHAT or P_REPLAN */
    char id_str[48];
    api_meta meta;
    int stream, include_usage;
    freq *fr;                        /* the request's tokens and text (NULL for a re-plan) */
    int ended;                       /* the backend was told the request is finished */
    int started;                     /* a stream: its 200 and headers went out */
    struct srv_req *prev, *next;     /* in s->inflight */
    struct srv_req *hnext;           /* in s->by_id[id % SRV_ID_BUCKETS] */
} srv_req;

typedef struct srv_event { /* a backend event, copied for the HTTP thread */
    int kind;
    uint64_t id;                     /* FB_EV_*: the request's id */
    srv_req *r;                      /* SRV_EV_REPLAN: the requester */
    int token, index, finish, code, retry_after;
    double share[CFG_N_DOMAINS];
    char *error;
    rp_result replan;                /* SRV_EV_REPLAN */
    struct srv_event *next;
} srv_event;

struct srv {
    srv_params p;
    const model_config *cfg;
    const tokenizer *tok;
    fb_backend *b;
    const char *domain_names[CFG_N_DOMAINS];
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *listener;
    struct event *wake, *tick, *sig_term, *sig_int;
    pthread_t thread;
    int thread_started, port;
    /* shared with the engine thread and the caller, under mu */
    pthread_mutex_t mu;
    srv_event *q_head, *q_tail;
    int finish_asked, finish_rc; /* srv_finish was called, with the engine's result */
    double flush_deadline;
    /* HTTP thread only */
    srv_req *inflight;
    srv_req *by_id[SRV_ID_BUCKETS]; /* the requests in the backend, by id */
    uint64_t next_id;
    int stopping;          /* no longer accepting work */
    int engine_rc;         /* the engine's result, once srv_finish has said it */
    int finished;          /* srv_finish's leftovers answered */
    int n_writing;         /* final replies still being written */
    uint64_t rng, disconnects;
    uint64_t http_counts[N_PATHS][500]; /* by path and status - 100 */
};

static const struct timeval idle_tv = {SRV_IDLE_TIMEOUT_S, 0};

/* --- replies --- */

static const char *reason_of(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

static void count_status(srv *s, int path, int status) {
    if (status >= 100 && status < 600) s->http_counts[path][status - 100]++;
}

/* one whole reply with a body of len bytes; ends the request */
static void reply(srv *s, struct evhttp_request *req, int path, int status, const char *type, const char *body,
                  size_t len) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", type);
    if (s->stopping) evhttp_add_header(h, "Connection", "close");
    struct evbuffer *b = evbuffer_new();
    DH_ASSERT(b != NULL);
    evbuffer_add(b, body, len);
    count_status(s, path, status);
    evhttp_send_reply(req, status, reason_of(status), b);
    evbuffer_free(b);
}

static void reply_json(srv *s, struct evhttp_request *req, int path, int status, char *json /* freed */) {
    reply(s, req, path, status, "application/json", json, strlen(json));
    free(json);
}

static void reply_error(srv *s, struct evhttp_request *req, int path, const api_error *err) {
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (err->status == 429) evhttp_add_header(h, "Retry-After", "1");
    if (err->retry_after > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", err->retry_after);
        evhttp_add_header(h, "Retry-After", v);
    }
    if (err->status == 401) evhttp_add_header(h, "WWW-Authenticate", "Bearer");
    reply_json(s, req, path, err->status, api_error_json(err));
}

/* The one place where DH_E* codes become HTTP statuses. */
static void error_of_code(int path, int code, const char *msg, api_error *err) {
    if (path == P_REPLAN) {
        switch (code) {
        case DH_EBUSY: api_fail(err, 409, "invalid_request_error", "replan_in_progress", NULL, "%s", msg); break;
        case DH_ECANCELLED: api_fail(err, 503, "server_error", "shutting_down", NULL, "%s", msg); break;
        default: api_fail(err, 500, "server_error", "replan_failed", NULL, "%s (%s)", msg, dh_strerror(code)); break;
        }
        return;
    }
    switch (code) {
    case DH_EINVAL: /* the backend's: the context or the KV cache */
        api_fail(err, 400, "invalid_request_error", "context_length_exceeded", "max_tokens", "%s", msg);
        break;
    case DH_EBUSY: api_fail(err, 429, "rate_limit_error", "queue_full", NULL, "%s; retry later", msg); break;
    case DH_ECANCELLED: api_fail(err, 503, "server_error", "shutting_down", NULL, "%s", msg); break;
    default: api_fail(err, 503, "server_error", "engine_failure", NULL, "%s (%s)", msg, dh_strerror(code)); break;
    }
}

static void sse_send(srv_req *r, const char *data) {
    struct evbuffer *b = evbuffer_new();
    DH_ASSERT(b != NULL);
    evbuffer_add_printf(b, "data: %s\n\n", data);
    evhttp_send_reply_chunk(r->req, b);
    evbuffer_free(b);
}

/* --- requests in flight --- */

static srv_req *req_new(srv *s, struct evhttp_request *req, int path, const api_request *ar) {
    srv_req *r = xcalloc(1, sizeof *r);
    r->s = s, r->req = req, r->evcon = evhttp_request_get_connection(req), r->path = path;
    r->stream = ar->stream, r->include_usage = ar->include_usage;
    /* ids as OpenAI's: a prefix and a random string */
    uint64_t x = s->rng += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    x ^= x >> 31;
    snprintf(r->id_str, sizeof r->id_str, "%s-%016llx", ar->kind == API_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)x);
    r->meta = (api_meta){.kind = ar->kind, .id = r->id_str, .created = (long long)time(NULL),
                         .model = s->p.served_name};
    return r;
}

static void inflight_add(srv *s, srv_req *r) {
    r->next = s->inflight;
    if (s->inflight) s->inflight->prev = r;
    s->inflight = r;
}

static void id_add(srv *s, srv_req *r) {
    srv_req **b = &s->by_id[r->id % SRV_ID_BUCKETS];
    r->hnext = *b;
    *b = r;
}

static srv_req *id_find(srv *s, uint64_t id) {
    srv_req *r = s->by_id[id % SRV_ID_BUCKETS];
    while (r && r->id != id) r = r->hnext;
    return r;
}

static void req_release(srv_req *r) {
    srv *s = r->s;
    if (r->prev) r->prev->next = r->next;
    else if (s->inflight == r) s->inflight = r->next;
    if (r->next) r->next->prev = r->prev;
    if (r->id) {
        srv_req **pp = &s->by_id[r->id % SRV_ID_BUCKETS];
        while (*pp && *pp != r) pp = &(*pp)->hnext;
        if (*pp) *pp = r->hnext;
    }
    freq_free(r->fr);
    free(r);
}

static void on_reply_written(struct evhttp_request *req, void *arg) {
    (void)req;
    srv *s = arg;
    s->n_writing--;
}

/* The client went away: forget its request (freeing it if evhttp handed it to us) and cancel
 * the sequence. The srv_req lives on until the engine's last event. */
static void on_close(struct evhttp_connection *evcon, void *arg) {
    (void)evcon;
    srv_req *r = arg;
    if (r->req) {
        if (!evhttp_request_get_connection(r->req)) evhttp_request_free(r->req); /* detached: ours */
        r->req = NULL;                                                           /* else evhttp frees it */
    }
    r->evcon = NULL;
    r->s->disconnects++;
    if (r->id && !r->ended) r->s->b->ops->cancel(r->s->b, r->id, 0); /* a re-plan goes on: nobody waits */
}

/* Watch the connection of a request that waits for the engine: no read timeout meanwhile (a
 * request may queue and run for long), the close callback, and reads enabled without a read
 * callback, so that evhttp notices a close (as it does itself while it writes: a started
 * stream's reply). */
static void watch(srv_req *r) {
    struct bufferevent *bev = evhttp_connection_get_bufferevent(r->evcon);
    bufferevent_set_timeouts(bev, NULL, &idle_tv);
    evhttp_connection_set_closecb(r->evcon, on_close, r);
    bufferevent_data_cb rd, wr;
    bufferevent_event_cb ev;
    void *arg;
    bufferevent_getcb(bev, &rd, &wr, &ev, &arg);
    bufferevent_setcb(bev, NULL, wr, ev, arg);
    bufferevent_enable(bev, EV_READ);
}

/* Before the final reply: stop watching, and count the reply until it is written. Returns
 * the request, which the caller must end now. */
static struct evhttp_request *unwatch(srv_req *r) {
    struct evhttp_request *req = r->req;
    evhttp_connection_set_closecb(r->evcon, NULL, NULL);
    evhttp_connection_set_timeout_tv(r->evcon, &idle_tv);
    evhttp_request_set_on_complete_cb(req, on_reply_written, r->s);
    r->s->n_writing++;
    r->req = NULL, r->evcon = NULL;
    return req;
}

/* A stream's 200, headers and (chat) first chunk, at its first token or end: an error before
 * them (the engine refused it, or was away too long) can still be a plain HTTP status */
static void stream_start(srv *s, srv_req *r) {
    if (!r->stream || r->started) return;
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(h, "Content-Type", "text/event-stream");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    count_status(s, r->path, 200);
    evhttp_send_reply_start(r->req, 200, "OK"); /* evhttp reads from now on, to notice a close */
    r->started = 1;
    if (r->meta.kind == API_CHAT) {
        char *json = api_chunk_json(&r->meta, "", 0, 1, NULL);
        sse_send(r, json);
        free(json);
    }
}

/* text[from..to) of the request's choice as a stream chunk, if any */
static void send_text(srv_req *r, size_t from, size_t to) {
    if (to <= from || !r->stream) return;
    char *json = api_chunk_json(&r->meta, r->fr->choice.text + from, to - from, 0, NULL);
    sse_send(r, json);
    free(json);
}

/* the backend's DONE: the whole response, or the stream's last chunks */
static void finish_ok(srv *s, srv_req *r, const srv_event *ev) {
    size_t from, to;
    freq_end(r->fr, ev->finish == FB_FINISH_LENGTH, &from, &to);
    const freq_choice *c = &r->fr->choice;
    api_final f = {.finish = c->finish == FREQ_FINISH_LENGTH ? API_FINISH_LENGTH : API_FINISH_STOP,
                   .prompt_tokens = freq_prompt_tokens(r->fr), .completion_tokens = freq_completion_tokens(r->fr),
                   .domain_share = ev->share, .domain_names = s->domain_names};
    if (!r->stream) {
        char *json = api_response_json(&r->meta, c->text ? c->text : "", c->len, &f);
        reply_json(s, unwatch(r), r->path, 200, json);
        return;
    }
    stream_start(s, r);
    send_text(r, from, to);
    char *json;
    sse_send(r, json = api_chunk_json(&r->meta, "", 0, 0, &f));
    free(json);
    if (r->include_usage) {
        sse_send(r, json = api_usage_chunk_json(&r->meta, &f));
        free(json);
    }
    sse_send(r, "[DONE]");
    evhttp_send_reply_end(unwatch(r));
}

/* an error for a request in flight: its status, or in a started stream an error event then
 * the end */
static void finish_error(srv *s, srv_req *r, const api_error *err) {
    if (!r->started) {
        reply_error(s, unwatch(r), r->path, err);
        return;
    }
    char *json = api_error_json(err);
    sse_send(r, json);
    free(json);
    evhttp_send_reply_end(unwatch(r));
}

/* the re-planner's answer to POST /admin/replan: 200 with the plan's generation and moves
 * (a reason when nothing moved), or the error that kept the old plan */
static void replan_answer(srv *s, srv_req *r, const rp_result *res) {
    if (!r->req) return; /* the client went away */
    if (res->code) {
        api_error err;
        error_of_code(r->path, res->code, res->reason, &err);
        reply_error(s, unwatch(r), r->path, &err);
        return;
    }
    json_t *o = json_pack("{s:I, s:i, s:f, s:f, s:f}", "generation", (json_int_t)res->generation, "moved", res->moved,
                          "imbalance_before", res->imbalance_before, "imbalance_after", res->imbalance_after,
                          "seconds", res->seconds);
    DH_ASSERT(o != NULL);
    if (!res->moved) json_object_set_new(o, "reason", json_string(res->reason));
    char *json = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    DH_ASSERT(json != NULL);
    reply_json(s, unwatch(r), r->path, 200, json);
}

/* a TOKEN: its text into the request's state, new text out to a stream; a stop string ends
 * the backend request (the response ends at its DONE) */
static void on_token(srv *s, srv_req *r, const srv_event *ev) {
    size_t from, to;
    int rc = freq_token(r->fr, ev->token, ev->index, &from, &to);
    if (rc < 0) {
        log_error("request %s: the backend sent token index %d, expected %d: ending it", r->id_str, ev->index,
                  r->fr->choice.n_tokens);
        if (!r->ended) s->b->ops->cancel(s->b, r->id, 0), r->ended = 1;
        return;
    }
    if (rc == 0) send_text(r, from, to);
    if (r->fr->choice.finish == FREQ_FINISH_STOP && !r->ended) {
        s->b->ops->cancel(s->b, r->id, 1);
        r->ended = 1;
    }
}

static void on_event(srv *s, srv_event *ev) {
    if (ev->kind == SRV_EV_REPLAN) {
        replan_answer(s, ev->r, &ev->replan);
        req_release(ev->r);
        return;
    }
    srv_req *r = id_find(s, ev->id);
    if (!r) return; /* answered by srv_finish already */
    if (ev->kind == FB_EV_TOKEN) {
        if (r->req) stream_start(s, r), on_token(s, r, ev);
        return;
    }
    if (r->req && ev->kind == FB_EV_DONE) {
        finish_ok(s, r, ev);
    } else if (r->req) {
        api_error err;
        if (ev->retry_after > 0) {
            api_fail(&err, 503, "server_error", "engine_unavailable", NULL, "%s", ev->error);
            err.retry_after = ev->retry_after;
        } else {
            error_of_code(r->path, ev->code, ev->error, &err);
        }
        if (ev->code != DH_ECANCELLED) log_warn("request %s failed: %s", r->id_str, ev->error);
        finish_error(s, r, &err);
    }
    req_release(r);
}

static void event_free_(srv_event *ev) {
    free(ev->error);
    free(ev);
}

static void queue_event(srv *s, srv_event *x) {
    pthread_mutex_lock(&s->mu);
    if (s->q_tail) s->q_tail->next = x;
    else s->q_head = x;
    s->q_tail = x;
    pthread_mutex_unlock(&s->mu);
    event_active(s->wake, EV_READ, 0);
}

static void sink_replan_done(void *ctx, void *user, const rp_result *res) {
    srv_event *x = xcalloc(1, sizeof *x);
    x->kind = SRV_EV_REPLAN, x->r = user, x->replan = *res;
    queue_event(ctx, x);
}

static void sink_event(void *ctx, const fb_event *ev) {
    srv *s = ctx;
    srv_event *x = xcalloc(1, sizeof *x);
    x->kind = ev->kind, x->id = ev->id, x->token = ev->token, x->index = ev->index, x->finish = ev->finish;
    if (ev->kind == FB_EV_DONE) memcpy(x->share, ev->domain_share, sizeof x->share);
    if (ev->kind == FB_EV_ERROR) {
        x->code = ev->code, x->retry_after = ev->retry_after;
        x->error = xstrdup(ev->error ? ev->error : "the request failed");
    }
    queue_event(s, x);
}

/* --- endpoints --- */

static void stop_accepting(srv *s) {
    if (s->listener) evhttp_del_accept_socket(s->http, s->listener);
    s->listener = NULL;
    s->stopping = 1;
}

static int authorized(const srv *s, struct evhttp_request *req, api_error *err) {
    const char *key = s->p.api_key;
    if (!key || !*key) return 1;
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h) {
        api_fail(err, 401, "invalid_request_error", "invalid_api_key", NULL,
                 "no API key: send the header 'Authorization: Bearer KEY'");
        return 0;
    }
    if (strncasecmp(h, "Bearer ", 7) != 0) {
        api_fail(err, 401, "invalid_request_error", "invalid_api_key", NULL,
                 "the Authorization header must be 'Bearer KEY'");
        return 0;
    }
    for (h += 7; *h == ' ';) h++;
    size_t n = strlen(key), m = strlen(h);
    unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)(key[i] ^ (i < m ? h[i] : 0)); /* no early exit */
    if (diff) api_fail(err, 401, "invalid_request_error", "invalid_api_key", NULL, "incorrect API key");
    return !diff;
}

/* the prompt's token ids: given, or the text tokenized; each below the model's vocabulary */
static int prompt_ids(srv *s, const api_request *ar, int **ids, int *n, api_error *err) {
    const char *what = ar->kind == API_CHAT ? "messages" : "prompt";
    *ids = NULL;
    if (ar->prompt_ids) {
        *ids = xmalloc(xmul((size_t)DH_MAX(ar->n_prompt_ids, 1), sizeof **ids));
        memcpy(*ids, ar->prompt_ids, (size_t)ar->n_prompt_ids * sizeof **ids);
        *n = ar->n_prompt_ids;
        return 0;
    }
    /* a prompt too long for the context by its bytes alone is refused before it is tokenized,
     * so that a large body does not hold up this thread (every stream's events) */
    size_t mb = tok_max_token_bytes(s->tok), least = mb ? (ar->prompt_len + mb - 1) / mb : 0;
    if (least > (size_t)s->p.max_context)
        return api_fail(err, 400, "invalid_request_error", "context_length_exceeded", what,
                        "the %s (%zu bytes, so at least %zu tokens) exceeds the context limit of %d tokens", what,
                        ar->prompt_len, least, s->p.max_context);
    size_t len = 0, off = 0;
    int rc = tok_encode(s->tok, ar->prompt, ar->prompt_len, ids, &len, &off);
    if (rc == DH_EINVAL)
        return api_fail(err, 400, "invalid_request_error", "invalid_value", what,
                        "the %s is not valid UTF-8 (byte %zu) or longer than 2 GB", what, off);
    if (rc)
        return api_fail(err, 400, "invalid_request_error", "invalid_value", what,
                        "the tokenizer cannot encode this %s (%s)", what, dh_strerror(rc));
    rc = 0;
    if (len > (size_t)s->p.max_context)
        rc = api_fail(err, 400, "invalid_request_error", "context_length_exceeded", what,
                      "the %s (%zu tokens) exceeds the context limit of %d tokens", what, len, s->p.max_context);
    for (size_t i = 0; i < len && !rc; i++)
        if ((*ids)[i] >= s->cfg->vocab_size)
            rc = api_fail(err, 400, "invalid_request_error", "invalid_value", what,
                          "the %s encodes to token id %d, beyond the model's vocabulary of %d", what, (*ids)[i],
                          s->cfg->vocab_size);
    if (rc) {
        free(*ids);
        *ids = NULL;
        return rc;
    }
    *n = (int)len;
    return 0;
}

/* POST /v1/completions and /v1/chat/completions */
static void handle_generate(srv *s, struct evhttp_request *req, int path) {
    api_kind kind = path == P_CHAT ? API_CHAT : API_COMPLETION;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
    api_limits lim = {.max_context = s->p.max_context, .vocab_size = s->cfg->vocab_size};
    api_request ar;
    api_error err;
    int *ids = NULL, n_ids = 0, max_tokens;
    if (api_parse_request(kind, body, len, &lim, &ar, &err) != 0) goto fail;
    if (prompt_ids(s, &ar, &ids, &n_ids, &err) != 0) goto fail_ar;
    if ((max_tokens = api_resolve_max_tokens(&ar, n_ids, s->p.max_context, &err)) < 0) goto fail_ids;
    srv_req *r = req_new(s, req, path, &ar);
    /* the seed is fixed here, once: a resubmitted request draws with the same one */
    freq_params fp = {.prompt = ids, .n_prompt = n_ids, .max_tokens = max_tokens,
                      .sampling = {.temperature = ar.temperature, .top_p = ar.top_p, .top_k = ar.top_k,
                                   .seed = ar.has_seed ? ar.seed : sampler_random_seed() ^ s->rng},
                      .ignore_eos = ar.ignore_eos, .stop = (const char *const *)ar.stop, .n_stop = ar.n_stop,
                      .eos_token_id = s->cfg->eos_token_id};
    r->fr = freq_new(&fp, s->tok);
    r->id = s->next_id++;
    fb_request q = {.id = r->id, .prompt = ids, .n_prompt = n_ids, .max_tokens = max_tokens,
                    .sampling = fp.sampling, .ignore_eos = ar.ignore_eos};
    char msg[256] = "";
    int rc = s->b->ops->submit(s->b, &q, msg, sizeof msg);
    if (rc < 0) {
        error_of_code(path, rc, msg, &err);
        freq_free(r->fr);
        free(r);
        goto fail_ids;
    }
    // accepted: the backend's events come through the queue, on this thread, after this handler
    inflight_add(s, r);
    id_add(s, r);
    watch(r);
    free(ids);
    api_request_free(&ar);
    return;
fail_ids:
    free(ids);
fail_ar:
    api_request_free(&ar);
fail:
    reply_error(s, req, path, &err);
}

/* POST /admin/replan: only with an API key; handed to the re-planner on the engine thread,
 * answered when it has answered (srv_replan_done) */
static void handle_replan(srv *s, struct evhttp_request *req) {
    int path = P_REPLAN;
    api_error err;
    if (!s->p.api_key) {
        api_fail(&err, 403, "invalid_request_error", "admin_disabled", NULL,
                 "POST /admin/replan needs the server to have an API key (--api-key KEY or DARKHORSE_API_KEY): "
                 "without one, anybody who can reach this port could move the experts");
    } else if (!authorized(s, req, &err)) {
    } else if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        api_fail(&err, 405, "invalid_request_error", "method_not_allowed", NULL, "/admin/replan takes POST");
    } else if (s->stopping) {
        api_fail(&err, 503, "server_error", "shutting_down", NULL, "the server is shutting down");
    } else {
        srv_req *r = xcalloc(1, sizeof *r);
        r->s = s, r->req = req, r->evcon = evhttp_request_get_connection(req), r->path = path;
        int rc = s->b->ops->replan(s->b, r);
        if (rc == 0) {
            inflight_add(s, r);
            watch(r);
            return;
        }
        free(r);
        if (rc == DH_EUNSUPPORTED)
            api_fail(&err, 400, "invalid_request_error", "not_a_cluster", NULL,
                     "this server runs every expert in its own process (not under mpirun): there is nothing to "
                     "re-place");
        else if (rc == DH_EBUSY)
            error_of_code(path, rc, "another re-plan is in progress; ask again when it has answered", &err);
        else
            error_of_code(path, rc, "the engine is not available", &err);
    }
    reply_error(s, req, path, &err);
}

/* GET /health: 200 ok; 503 degraded (the backend says why), stopping or failed */
static void handle_health(srv *s, struct evhttp_request *req) {
    char reason[512] = "";
    int degraded = !s->stopping && s->b->ops->health && s->b->ops->health(s->b, reason, sizeof reason);
    const char *state = degraded ? "degraded" : !s->stopping ? "ok" : s->engine_rc ? "failed" : "stopping";
    json_t *o = json_pack("{s:s}", "status", state);
    DH_ASSERT(o != NULL);
    if (degraded) json_object_set_new(o, "reason", json_string(reason));
    char *json = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    DH_ASSERT(json != NULL);
    reply_json(s, req, P_HEALTH, s->stopping || degraded ? 503 : 200, json);
}

static void metrics_text(srv *s, struct evbuffer *b);

static int path_of(const char *p) {
    for (int i = 0; i < P_OTHER; i++)
        if (strcmp(p, path_names[i]) == 0) return i;
    return P_OTHER;
}

static void on_request(struct evhttp_request *req, void *arg) {
    srv *s = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *p = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!p) p = "";
    int path = path_of(p), post = path == P_COMPLETIONS || path == P_CHAT;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    api_error err;
    if (path == P_REPLAN) {
        handle_replan(s, req);
    } else if (strncmp(p, "/v1/", 4) == 0 && !authorized(s, req, &err)) {
        reply_error(s, req, path, &err);
    } else if (path == P_OTHER) {
        api_fail(&err, 404, "invalid_request_error", "not_found", NULL, "no such endpoint: %.200s", p);
        reply_error(s, req, path, &err);
    } else if (cmd != (post ? EVHTTP_REQ_POST : EVHTTP_REQ_GET)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", post ? "POST" : "GET");
        api_fail(&err, 405, "invalid_request_error", "method_not_allowed", NULL, "%s takes %s", p,
                 post ? "POST" : "GET");
        reply_error(s, req, path, &err);
    } else if (path == P_HEALTH) {
        handle_health(s, req);
    } else if (path == P_MODELS) {
        reply_json(s, req, path, 200, api_models_json(s->p.served_name, (long long)time(NULL)));
    } else if (path == P_METRICS) {
        struct evbuffer *b = evbuffer_new();
        DH_ASSERT(b != NULL);
        metrics_text(s, b);
        size_t n = evbuffer_get_length(b);
        reply(s, req, path, 200, "text/plain; version=0.0.4; charset=utf-8", (const char *)evbuffer_pullup(b, -1), n);
        evbuffer_free(b);
    } else if (s->stopping) {
        api_fail(&err, 503, "server_error", s->engine_rc ? "engine_failure" : "shutting_down", NULL,
                 s->engine_rc ? "the cluster failed; the server is stopping" : "the server is shutting down");
        reply_error(s, req, path, &err);
    } else {
        handle_generate(s, req, path);
    }
}

/* --- metrics (Prometheus text format 0.0.4) --- */

static void metrics_http(srv *s, struct evbuffer *b) {
    cmetrics_family(b, "darkhorse_http_requests_total", "counter", "HTTP responses by path and status");
    for (int p = 0; p < N_PATHS; p++)
        for (int c = 0; c < 500; c++)
            if (s->http_counts[p][c])
                evbuffer_add_printf(b, "darkhorse_http_requests_total{path=\"%s\",code=\"%d\"} %llu\n", path_names[p],
                                    c + 100, (unsigned long long)s->http_counts[p][c]);
    cmetrics_counter(b, "darkhorse_client_disconnects_total", "requests whose client went away before the answer",
                     s->disconnects);
}

static void metrics_text(srv *s, struct evbuffer *b) {
    char lv[256];
    cmetrics_label(lv, sizeof lv, s->p.served_name);
    cmetrics_family(b, "darkhorse_model_info", "gauge", "the served model");
    evbuffer_add_printf(b, "darkhorse_model_info{model=\"%s\",context=\"%d\",workers=\"%d\"} 1\n", lv,
                        s->p.max_context, s->p.workers);
    cmetrics_family(b, "darkhorse_routing_replay", "gauge", "1: the experts come from a routing trace, not the router");
    if (s->p.routing_replay) {
        cmetrics_label(lv, sizeof lv, s->p.routing_replay);
        evbuffer_add_printf(b, "darkhorse_routing_replay{file=\"%s\",order=\"%s\"} 1\n", lv, s->p.replay_order);
    } else {
        evbuffer_add_printf(b, "darkhorse_routing_replay 0\n");
    }
    metrics_http(s, b);
    s->b->ops->metrics(s->b, b);
}

/* --- the HTTP thread --- */

static void check_drained(srv *s) {
    pthread_mutex_lock(&s->mu);
    double deadline = s->flush_deadline;
    pthread_mutex_unlock(&s->mu);
    if (s->n_writing <= 0 || dh_now() >= deadline) {
        if (s->n_writing > 0)
            log_warn("%d replies were still being written when the flush time ran out", s->n_writing);
        event_base_loopbreak(s->base);
    } else {
        struct timeval tv = {0, 20000};
        evtimer_add(s->tick, &tv);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    check_drained(arg);
}

/* srv_finish's part on this thread: what is still in flight will get no event any more */
static void answer_leftovers(srv *s) {
    stop_accepting(s);
    while (s->inflight) {
        srv_req *r = s->inflight;
        if (r->req) {
            api_error err;
            error_of_code(r->path, s->engine_rc ? s->engine_rc : DH_ECANCELLED,
                          s->engine_rc ? "the cluster failed" : "the server stopped before this request ran", &err);
            finish_error(s, r, &err);
        }
        req_release(r);
    }
    s->finished = 1;
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    srv *s = arg;
    pthread_mutex_lock(&s->mu);
    srv_event *ev = s->q_head;
    s->q_head = s->q_tail = NULL;
    int finish = s->finish_asked, rc = s->finish_rc;
    pthread_mutex_unlock(&s->mu);
    while (ev) {
        srv_event *next = ev->next;
        on_event(s, ev);
        event_free_(ev);
        ev = next;
    }
    if (finish && !s->finished) {
        s->engine_rc = rc;
        answer_leftovers(s);
        check_drained(s);
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg) {
    (void)what;
    srv *s = arg;
    if (s->stopping) {
        log_info("%s again: already stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        return;
    }
    log_info("%s: stopping; requests in flight have %.1f s to finish", sig == SIGTERM ? "SIGTERM" : "SIGINT",
             s->p.shutdown_grace);
    stop_accepting(s);
    s->b->ops->stop(s->b, s->p.shutdown_grace);
}

static void *http_main(void *arg) {
    srv *s = arg;
    event_base_loop(s->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

/* --- life cycle --- */

static void use_pthreads(void) {
    int rc = evthread_use_pthreads();
    DH_ASSERT(rc == 0);
}

srv *srv_new(const srv_params *p, const model_config *cfg, const tokenizer *tok, fb_backend *b) {
    srv *s = xcalloc(1, sizeof *s);
    s->p = *p;
    s->p.host = xstrdup(p->host);
    s->p.api_key = p->api_key && *p->api_key ? xstrdup(p->api_key) : NULL;
    s->p.served_name = xstrdup(p->served_name);
    s->cfg = cfg, s->tok = tok, s->b = b;
    for (int d = 0; d < CFG_N_DOMAINS; d++) s->domain_names[d] = cfg->domain_names[d];
    s->next_id = 1;
    fb_set_sink(b, &(fb_sink){.event = sink_event, .replan_done = sink_replan_done, .ctx = s});
    pthread_mutex_init(&s->mu, NULL);
    s->rng = sampler_random_seed();
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, use_pthreads); /* before any base is made */
    s->base = event_base_new();
    DH_ASSERT(s->base != NULL);
    s->wake = event_new(s->base, -1, 0, on_wake, s);
    s->tick = evtimer_new(s->base, on_tick, s);
    s->http = evhttp_new(s->base);
    DH_ASSERT(s->wake && s->tick && s->http);
    evhttp_set_gencb(s->http, on_request, s);
    evhttp_set_max_body_size(s->http, (ev_ssize_t)p->max_body);
    evhttp_set_max_headers_size(s->http, SRV_MAX_HEADERS);
    evhttp_set_timeout_tv(s->http, &idle_tv);
    evhttp_set_flags(s->http, EVHTTP_SERVER_LINGERING_CLOSE); /* read an oversized body, then say 413 */
    return s;
}

static int bound_port(struct evhttp_bound_socket *h) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(evhttp_bound_socket_get_fd(h), (struct sockaddr *)&ss, &len) != 0) return -1;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

int srv_start(srv *s) {
    if (s->p.port < 0 || s->p.port > 65535 ||
        !(s->listener = evhttp_bind_socket_with_handle(s->http, s->p.host, (ev_uint16_t)s->p.port))) {
        log_error("cannot listen on %s port %d (address in use, or not an address of this machine?)", s->p.host,
                  s->p.port);
        return DH_EIO;
    }
    s->port = bound_port(s->listener);
    s->sig_term = evsignal_new(s->base, SIGTERM, on_signal, s);
    s->sig_int = evsignal_new(s->base, SIGINT, on_signal, s);
    DH_ASSERT(s->sig_term && s->sig_int);
    evsignal_add(s->sig_term, NULL);
    evsignal_add(s->sig_int, NULL);
    int v6 = strchr(s->p.host, ':') != NULL;
    log_info("listening on http://%s%s%s:%d (model \"%s\", context %d tokens%s; pid %ld)", v6 ? "[" : "",
             s->p.host, v6 ? "]" : "", s->port, s->p.served_name, s->p.max_context,
             s->p.api_key ? ", API key required" : "", (long)getpid());
    if (pthread_create(&s->thread, NULL, http_main, s) != 0) {
        log_error("cannot start the HTTP thread");
        return DH_EIO;
    }
    s->thread_started = 1;
    return 0;
}

int srv_port(const srv *s) { return s->port; }


void srv_finish(srv *s, int engine_rc, double flush_s) {
    if (!s->thread_started) return;
    pthread_mutex_lock(&s->mu);
    s->finish_asked = 1;
    s->finish_rc = engine_rc;
    s->flush_deadline = dh_now() + flush_s;
    pthread_mutex_unlock(&s->mu);
    event_active(s->wake, EV_READ, 0);
    pthread_join(s->thread, NULL);
    s->thread_started = 0;
}

void srv_free(srv *s) {
    if (!s) return;
    DH_ASSERT(!s->thread_started);
    while (s->inflight) { /* only when srv_finish never ran */
        if (s->inflight->evcon) evhttp_connection_set_closecb(s->inflight->evcon, NULL, NULL);
        req_release(s->inflight);
    }
    for (srv_event *ev = s->q_head, *n; ev; ev = n) n = ev->next, event_free_(ev);
    if (s->sig_term) event_free(s->sig_term);
    if (s->sig_int) event_free(s->sig_int);
    evhttp_free(s->http); /* closes the connections still open */
    event_free(s->wake);
    event_free(s->tick);
    event_base_free(s->base);
    pthread_mutex_destroy(&s->mu);
    free((char *)s->p.host);
    free((char *)s->p.api_key);
    free((char *)s->p.served_name);
    free(s);
}
