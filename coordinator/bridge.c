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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/common.h"
#include "proto/felink.h"

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
