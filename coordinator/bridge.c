/* bridge.c: rank 0's socket to the front end: one reader thread, serialised writers.
 *
 * Rank 0's main thread runs the engine (MPI is FUNNELED), so the socket is read on a thread of
 * the bridge's own: blocking reads into a fel_reader, each complete FeMsg dispatched to the ops
 * (which queue work for the engine: engine_submit and friends are thread-safe). Writes come
 * from the engine thread (events, metrics, plans) and the reader thread (a refused submit's
 * error), under one mutex, as whole frames with blocking send(2): the front end reads all the
 * time, and when it is gone the send fails (MSG_NOSIGNAL: EPIPE, not SIGPIPE) and the bridge
 * marks the link dead, so that the engine never blocks on a dead peer.
 *
 * Why blocking I/O and not libevent here: rank 0 has exactly one peer and one stream; a thread
 * with read(2) is the whole event loop, and the engine thread must not run a loop of its own. */
#include "bridge.h"

#include <errno.h>
#include <event2/buffer.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "coordinator/cluster.h"
#include "coordinator/engine.h"
#include "coordinator/metrics.h"
#include "coordinator/replan.h"
#include "core/common.h"
#include "proto/felink.h"
#include "sched/placement.h"

struct br {
    int fd;
    br_ops ops;
    void *ctx;
    pthread_t thread;
    int started;
    pthread_mutex_t mu;  /* guards the writes and the two flags */
    int dead;            /* a write or the reader saw the link end */
    int closing;         /* br_close: the end is ours, not the front end's */
};

br *br_open(const char *path, const br_ops *ops, void *ctx) {
    int fd = fel_connect(path);
    if (fd < 0) return NULL;
    br *b = xcalloc(1, sizeof *b);
    b->fd = fd, b->ops = *ops, b->ctx = ctx;
    pthread_mutex_init(&b->mu, NULL);
    return b;
}

static int dispatch(void *arg, const Darkhorse__FeMsg *m) {
    br *b = arg;
    switch (m->body_case) {
    case DARKHORSE__FE_MSG__BODY_SUBMIT: b->ops.submit(b->ctx, m->submit); break;
    case DARKHORSE__FE_MSG__BODY_CANCEL: b->ops.cancel(b->ctx, m->cancel->id, m->cancel->finished); break;
    case DARKHORSE__FE_MSG__BODY_STOP: b->ops.stop(b->ctx, m->stop->grace_seconds); break;
    case DARKHORSE__FE_MSG__BODY_REPLAN: b->ops.replan(b->ctx, m->replan->tag); break;
    default: log_warn("front end link: message %d is not one rank 0 takes: ignored", (int)m->body_case); break;
    }
    return 0;
}

static void *reader_main(void *arg) {
    br *b = arg;
    fel_reader *r = fel_reader_new();
    while (fel_read_fd(r, b->fd) == 0 && fel_reader_drain(r, dispatch, b) == 0) {}
    fel_reader_free(r);
    pthread_mutex_lock(&b->mu);
    int ours = b->closing;
    b->dead = 1;
    pthread_mutex_unlock(&b->mu);
    if (!ours) {
        log_warn("the front end's socket closed: stopping");
        b->ops.lost(b->ctx);
    }
    return NULL;
}

int br_start(br *b) {
    if (pthread_create(&b->thread, NULL, reader_main, b) != 0) {
        log_error("cannot start the front end link's thread");
        return DH_EIO;
    }
    b->started = 1;
    return 0;
}

void br_close(br *b) {
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->closing = 1;
    pthread_mutex_unlock(&b->mu);
    shutdown(b->fd, SHUT_RDWR);
    if (b->started) pthread_join(b->thread, NULL);
    close(b->fd);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static int send_msg(br *b, Darkhorse__FeMsg *m) {
    pthread_mutex_lock(&b->mu);
    int rc = DH_EIO;
    if (!b->dead) {
        rc = fel_send(b->fd, m);
        if (rc) b->dead = 1;
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

int br_send_hello(br *b, int workers, int max_context) {
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    Darkhorse__FeHello h = DARKHORSE__FE_HELLO__INIT;
    h.protocol_version = FEL_PROTOCOL_VERSION, h.workers = workers, h.max_context = max_context;
    h.pid = (int32_t)getpid(), h.host = host;
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_HELLO, m.hello = &h;
    return send_msg(b, &m);
}

int br_send_token(br *b, uint64_t id, int token, int index) {
    Darkhorse__FeEvent e = DARKHORSE__FE_EVENT__INIT;
    e.id = id, e.kind = 1, e.token = token, e.index = index;
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_EVENT, m.event = &e;
    return send_msg(b, &m);
}

int br_send_done(br *b, uint64_t id, int finish, int prompt_tokens, int completion_tokens,
                 const double *domain_share, int n_share) {
    Darkhorse__FeEvent e = DARKHORSE__FE_EVENT__INIT;
    e.id = id, e.kind = 2, e.finish = finish, e.prompt_tokens = prompt_tokens;
    e.completion_tokens = completion_tokens;
    e.n_domain_share = domain_share ? (size_t)n_share : 0, e.domain_share = (double *)domain_share;
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_EVENT, m.event = &e;
    return send_msg(b, &m);
}

int br_send_error(br *b, uint64_t id, int code, const char *error) {
    Darkhorse__FeEvent e = DARKHORSE__FE_EVENT__INIT;
    e.id = id, e.kind = 3, e.code = code, e.error = (char *)(error ? error : "");
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_EVENT, m.event = &e;
    return send_msg(b, &m);
}

int br_send_plan(br *b, const char *text, uint64_t generation) {
    Darkhorse__FePlan p = DARKHORSE__FE_PLAN__INIT;
    p.text = (char *)text, p.generation = generation;
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_PLAN, m.plan = &p;
    return send_msg(b, &m);
}

int br_send_metrics(br *b, const char *text) {
    Darkhorse__FeMetrics x = DARKHORSE__FE_METRICS__INIT;
    x.text = (char *)text;
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_METRICS, m.metrics = &x;
    return send_msg(b, &m);
}

int br_send_failure(br *b, int rank, const char *host, int code, const char *reason) {
    Darkhorse__FeFailure f = DARKHORSE__FE_FAILURE__INIT;
    f.rank = rank, f.host = (char *)(host ? host : ""), f.code = code, f.reason = (char *)(reason ? reason : "");
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_FAILURE, m.failure = &f;
    return send_msg(b, &m);
}

int br_send_replan_done(br *b, uint64_t tag, int code, uint64_t generation, int moved, double imbalance_before,
                        double imbalance_after, double seconds, const char *reason) {
    Darkhorse__FeReplanDone d = DARKHORSE__FE_REPLAN_DONE__INIT;
    d.tag = tag, d.code = code, d.generation = generation, d.moved = moved;
    d.imbalance_before = imbalance_before, d.imbalance_after = imbalance_after, d.seconds = seconds;
    d.reason = (char *)(reason ? reason : "");
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_REPLAN_DONE, m.replan_done = &d;
    return send_msg(b, &m);
}

/* --- rank 0's engine behind the link --- */

#define BR_METRICS_EVERY_S 1.0

struct br_engine {
    br *link;
    engine *e;
    rp *replan;
    cmetrics *cm;
    cluster *cl;
    double last_metrics;
    uint64_t plan_sent;    /* the generation of the plan last sent; 0 none */
};

static void g_submit(void *ctx, const Darkhorse__FeSubmit *m) {
    br_engine *g = ctx;
    engine_request q = {.id = m->id, .prompt = m->prompt, .n_prompt = (int)m->n_prompt,
                        .generated = m->n_generated ? m->generated : NULL, .n_generated = (int)m->n_generated,
                        .max_tokens = m->max_tokens, .ignore_eos = m->ignore_eos, .admitted = m->admitted,
                        .sampling = {.temperature = m->temperature, .top_p = m->top_p, .top_k = m->top_k,
                                     .seed = m->seed}};
    char err[512] = "";
    int rc = engine_submit(g->e, &q, err, sizeof err);
    if (rc) br_send_error(g->link, m->id, rc, err);
}

static void g_cancel(void *ctx, uint64_t id, int finished) { engine_cancel(((br_engine *)ctx)->e, id, finished); }
static void g_stop(void *ctx, double grace_s) { engine_stop(((br_engine *)ctx)->e, grace_s); }

static void g_replan(void *ctx, uint64_t tag) {
    br_engine *g = ctx;
    int rc = g->replan ? rp_request(g->replan, (void *)(uintptr_t)tag) : DH_EUNSUPPORTED;
    if (rc == 0) engine_wake(g->e);
    else br_send_replan_done(g->link, tag, rc, 0, 0, 0, 0, 0, rc == DH_EBUSY ? "a re-plan is in progress"
                                                                                 : "not a cluster");
}

static void g_lost(void *ctx) {
    br_engine *g = ctx;
    engine_stop(g->e, 0);
    engine_stop(g->e, 0); /* the second call ends the grace: nobody is left to answer */
}

static const br_ops engine_ops = {g_submit, g_cancel, g_stop, g_replan, g_lost};

br_engine *br_engine_open(const char *path) {
    br_engine *g = xcalloc(1, sizeof *g);
    g->link = br_open(path, &engine_ops, g);
    if (!g->link) {
        free(g);
        return NULL;
    }
    return g;
}

void br_engine_attach(br_engine *g, engine *e, rp *replan, cmetrics *cm, cluster *cl) {
    g->e = e, g->replan = replan, g->cm = cm, g->cl = cl;
}

void br_engine_emit(void *ctx, const engine_event *ev) {
    br_engine *g = ctx;
    switch (ev->kind) {
    case ENGINE_EV_TOKEN: br_send_token(g->link, ev->id, ev->token, ev->index); break;
    case ENGINE_EV_DONE:
        br_send_done(g->link, ev->id, ev->finish, ev->prompt_tokens, ev->completion_tokens, ev->domain_share,
                     CFG_N_DOMAINS);
        break;
    default: br_send_error(g->link, ev->id, ev->code, ev->error); break;
    }
}

void br_engine_replan_done(void *ctx, void *user, const rp_result *r) {
    br_engine *g = ctx;
    br_send_replan_done(g->link, (uint64_t)(uintptr_t)user, r->code, r->generation, r->moved, r->imbalance_before,
                        r->imbalance_after, r->seconds, r->reason);
}

static void send_plan(br_engine *g) {
    if (!g->cl || !g->cl->plan || g->cl->generation == g->plan_sent) return;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return;
    int rc = place_write(g->cl->plan, f);
    fclose(f);
    if (rc == 0 && br_send_plan(g->link, text, g->cl->generation) == 0) g->plan_sent = g->cl->generation;
    free(text);
}

static void send_metrics(br_engine *g) {
    struct evbuffer *b = evbuffer_new();
    DH_ASSERT(b != NULL);
    cmetrics_render(g->cm, g->replan, b);
    evbuffer_add(b, "", 1);
    br_send_metrics(g->link, (const char *)evbuffer_pullup(b, -1));
    evbuffer_free(b);
}

void br_engine_tick(void *ctx, uint64_t steps, double step_s) {
    br_engine *g = ctx;
    if (g->replan) rp_tick(g->replan, steps, step_s);
    double now = dh_now();
    if (g->cm && now - g->last_metrics >= BR_METRICS_EVERY_S) {
        g->last_metrics = now;
        send_metrics(g);
    }
    send_plan(g);
}

int br_engine_start(br_engine *g, int max_context) {
    int rc = br_send_hello(g->link, g->cl ? g->cl->n_workers : 0, max_context);
    send_plan(g);
    if (g->cm) send_metrics(g), g->last_metrics = dh_now();
    return rc ? rc : br_start(g->link);
}

void br_engine_failed(br_engine *g, int code) {
    br_send_failure(g->link, -1, "", code, dh_strerror(code));
}

void br_engine_close(br_engine *g) {
    if (!g) return;
    br_close(g->link);
    free(g);
}
