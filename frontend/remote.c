/* remote.c: the remote backend: the front end's event loop, the link to rank 0, recovery.
 *
 * States. STARTING: a job was started, no hello yet. SERVING: rank 0 said hello; requests go
 * to it. RECOVERING: the job failed; a new one starts after a backoff (0 s after a job that
 * served, then 1, 2, 4 ... 10 s while launches keep failing before their hello). STOPPING:
 * ops.stop was asked; rank 0 drains and stops its workers, and the loop ends when the job has
 * ended (or grace + 15 s later, when what is left is killed).
 *
 * The request table (under mu) is what recovery needs: for each request not ended, its prompt,
 * parameters and the tokens accepted so far (TOKEN events are appended in index order; an
 * index already held is a duplicate and dropped). `sent` says whether the engine now running
 * has it; after a hello every request is resubmitted with its tokens as `generated`. The
 * engine's own failure errors (any code but DH_EINVAL, DH_EBUSY, DH_ECANCELLED) are not passed
 * on: the request stays in the table and is resumed by the next engine. A request waiting for
 * an engine longer than recovery_wait (from its submission, or from the failure for one that
 * was running) gets DH_EAGAIN.
 *
 * Job failure is noticed three ways, whichever comes first: rank 0's socket ends, the job's
 * stderr pipe ends, or waitpid (every 100 ms) says mpirun exited. The failed rank and host
 * come from rank 0's FeFailure or from the job's stderr (launch.h); the host is blamed
 * (fl_blame), which may leave it out of the next launch, and the plan file is then dropped so
 * that the smaller job makes its own plan. */
#include "remote.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/metrics.h"
#include "core/common.h"
#include "proto/felink.h"

#define FR_TICK_S 0.1          /* waitpid and the recovery deadlines */
#define FR_STOP_EXTRA_S 15.0   /* after the grace: rank 0 stops its workers and exits */
#define FR_BACKOFF_MAX_S 10.0
#define FR_RETRY_AFTER_S 5     /* what a request that waited too long is told */
#define FR_SOCK_GRACE_S 1.0    /* after rank 0's socket ends, for mpirun to exit and say why */
#define FR_SILENCE_S 20.0      /* rank 0 sends its metrics about every second, between steps: a
                                  rank 0 silent this long is stopped or stuck (its workers do
                                  not notice a stopped coordinator) */

enum { FR_STARTING, FR_SERVING, FR_RECOVERING, FR_STOPPING, FR_DONE };

typedef struct fr_req {
    uint64_t id;
    int *prompt;
    int n_prompt;
    int *tokens;            /* accepted completion tokens [n_tokens] */
    int n_tokens, cap;
    int max_tokens;
    sampler_params sampling;
    int ignore_eos;
    double t_wait;          /* since when it waits for an engine (submission or failure) */
    int sent;               /* the running engine has it */
    int resumed;            /* an earlier engine had it: a client may be reading its stream */
    int cancel;             /* 0; 1 client gone; 2 finished by the server (stop string) */
    int cancel_sent;
    struct fr_req *next;
} fr_req;

typedef struct fr_replan { uint64_t tag; void *user; struct fr_replan *next; } fr_replan;

typedef struct remote {
    fb_backend base;        /* first */
    fr_params p;
    char *socket_path, *plan_path, *placement;
    int listen_fd;
    struct event_base *ev;
    struct event *accept_ev, *wake, *tick, *err_ev, *restart_ev;
    struct bufferevent *bev;  /* rank 0's connection, or NULL */
    fel_reader *rd;
    int have_plan;          /* plan_path holds a plan of the running job's shape */
    int failing;            /* the engine reported a failure: send it nothing more */
    double last_msg;        /* when rank 0 last sent anything */
    double sock_closed;     /* when rank 0's socket ended (0: it did not): the job's end is
                               awaited a little, for mpirun's report of who failed */
    int ever_served;
    int failed_starts;      /* launches in a row that failed before their hello */
    double state_since, stop_deadline;
    fl_failure failure;     /* from rank 0's FeFailure, for the current job */
    /* shared with the HTTP thread, under mu */
    pthread_mutex_t mu;
    int state;
    fr_req *reqs;
    fr_replan *replans;
    uint64_t next_tag;
    int stop_asked, stop_sent;
    double grace;
    char *metrics;          /* the engine's last Prometheus text */
    char reason[1024];      /* why not serving */
    unsigned long long restarts, resumed, failures;
    double recovering_s, recovering_since;
} remote;

/* --- the table --- */

static fr_req *find(remote *r, uint64_t id, fr_req ***link) {
    for (fr_req **p = &r->reqs; *p; p = &(*p)->next)
        if ((*p)->id == id) {
            if (link) *link = p;
            return *p;
        }
    return NULL;
}

static void req_free(fr_req *q) {
    free(q->prompt);
    free(q->tokens);
    free(q);
}

static void deliver_error(remote *r, uint64_t id, int code, const char *msg) {
    fb_event ev = {.kind = FB_EV_ERROR, .id = id, .code = code, .error = msg,
                   .retry_after = code == DH_EAGAIN ? FR_RETRY_AFTER_S : 0};
    r->base.sink.event(r->base.sink.ctx, &ev);
}

/* --- ops (HTTP thread) --- */

static int op_submit(fb_backend *b, const fb_request *q, char *err, size_t errsz) {
    remote *r = (remote *)b;
    fr_req *x = xcalloc(1, sizeof *x);
    x->id = q->id, x->n_prompt = q->n_prompt, x->max_tokens = q->max_tokens, x->sampling = q->sampling;
    x->ignore_eos = q->ignore_eos, x->t_wait = dh_now();
    x->prompt = xmalloc((size_t)DH_MAX(q->n_prompt, 1) * sizeof *x->prompt);
    memcpy(x->prompt, q->prompt, (size_t)q->n_prompt * sizeof *x->prompt);
    x->cap = DH_MAX(q->n_generated, 16);
    x->tokens = xmalloc((size_t)x->cap * sizeof *x->tokens);
    if (q->n_generated) memcpy(x->tokens, q->generated, (size_t)q->n_generated * sizeof *x->tokens);
    x->n_tokens = q->n_generated;
    pthread_mutex_lock(&r->mu);
    int stopping = r->stop_asked;
    if (!stopping) x->next = r->reqs, r->reqs = x;
    pthread_mutex_unlock(&r->mu);
    if (stopping) {
        req_free(x);
        snprintf(err, errsz, "the server is stopping");
        return DH_ECANCELLED;
    }
    event_active(r->wake, EV_READ, 0);
    return 0;
}

static void op_cancel(fb_backend *b, uint64_t id, int finished) {
    remote *r = (remote *)b;
    pthread_mutex_lock(&r->mu);
    fr_req *q = find(r, id, NULL);
    if (q && !q->cancel) q->cancel = finished ? 2 : 1;
    pthread_mutex_unlock(&r->mu);
    event_active(r->wake, EV_READ, 0);
}

static void op_stop(fb_backend *b, double grace_s) {
    remote *r = (remote *)b;
    pthread_mutex_lock(&r->mu);
    if (r->stop_asked) grace_s = 0; /* a second stop ends the grace at once */
    r->stop_asked++, r->stop_sent = 0, r->grace = grace_s;
    pthread_mutex_unlock(&r->mu);
    event_active(r->wake, EV_READ, 0);
}

static int op_replan(fb_backend *b, void *user) {
    remote *r = (remote *)b;
    pthread_mutex_lock(&r->mu);
    int rc = DH_ECANCELLED;
    if (r->state == FR_SERVING && !r->stop_asked) {
        rc = r->replans ? DH_EBUSY : 0;
        if (!rc) {
            fr_replan *x = xcalloc(1, sizeof *x);
            x->tag = ++r->next_tag, x->user = user;
            x->next = r->replans, r->replans = x;
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (!rc) event_active(r->wake, EV_READ, 0);
    return rc;
}

static void op_metrics(fb_backend *b, struct evbuffer *out) {
    remote *r = (remote *)b;
    pthread_mutex_lock(&r->mu);
    double rec = r->recovering_s + (r->state == FR_SERVING || r->state == FR_DONE ? 0 : dh_now() - r->recovering_since);
    if (!r->ever_served) rec = r->recovering_s;
    cmetrics_gauge(out, "darkhorse_engine_up", "1 while an MPI job serves the front end", r->state == FR_SERVING);
    cmetrics_counter(out, "darkhorse_engine_restarts_total", "launches of the MPI job after the first", r->restarts);
    cmetrics_counter(out, "darkhorse_engine_failures_total", "MPI jobs that failed (lost rank, died, no hello)",
                     r->failures);
    cmetrics_counter(out, "darkhorse_requests_resumed_total",
                     "requests resubmitted to a new job with their tokens so far", r->resumed);
    cmetrics_family(out, "darkhorse_recovering_seconds_total", "counter",
                    "time without a serving job after a failure, the recovery in progress included");
    evbuffer_add_printf(out, "darkhorse_recovering_seconds_total %.6f\n", rec);
    if (r->state == FR_SERVING && r->metrics) evbuffer_add(out, r->metrics, strlen(r->metrics));
    pthread_mutex_unlock(&r->mu);
}

int fr_health(fb_backend *b, char *reason, size_t cap) {
    remote *r = (remote *)b;
    pthread_mutex_lock(&r->mu);
    int degraded = r->state != FR_SERVING;
    if (degraded) snprintf(reason, cap, "%s", r->reason);
    pthread_mutex_unlock(&r->mu);
    return degraded;
}

static const fb_ops remote_ops = {op_submit, op_cancel, op_stop, op_replan, op_metrics, fr_health};

/* --- sending (loop thread) --- */

static void send_msg(remote *r, const Darkhorse__FeMsg *m) {
    if (!r->bev) return;
    size_t n;
    unsigned char *f = fel_frame(m, &n);
    bufferevent_write(r->bev, f, n);
    free(f);
}

static void send_submit(remote *r, const fr_req *q) {
    Darkhorse__FeSubmit s = DARKHORSE__FE_SUBMIT__INIT;
    s.id = q->id, s.n_prompt = (size_t)q->n_prompt, s.prompt = q->prompt;
    s.n_generated = (size_t)q->n_tokens, s.generated = q->n_tokens ? q->tokens : NULL;
    s.max_tokens = q->max_tokens, s.temperature = q->sampling.temperature, s.top_p = q->sampling.top_p;
    s.top_k = q->sampling.top_k, s.seed = q->sampling.seed, s.ignore_eos = q->ignore_eos;
    s.admitted = q->resumed; /* the new engine queues it whatever its queue limit */
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_SUBMIT, m.submit = &s;
    send_msg(r, &m);
}

static void send_cancel(remote *r, uint64_t id, int finished) {
    Darkhorse__FeCancel c = DARKHORSE__FE_CANCEL__INIT;
    c.id = id, c.finished = finished;
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_CANCEL, m.cancel = &c;
    send_msg(r, &m);
}

typedef struct ended { uint64_t id; int kind, code, n_prompt, n_tokens; struct ended *next; } ended;

/* Under mu: what the running engine does not have yet goes to it; cancelled requests that it
 * never had end here (their events collected into *out, delivered after unlocking). */
static void flush_locked(remote *r, ended **out) {
    for (fr_req **p = &r->reqs; *p;) {
        fr_req *q = *p;
        if (q->cancel && !q->sent) { /* no engine has it: its last event is ours to give */
            ended *e = xcalloc(1, sizeof *e);
            e->id = q->id, e->kind = q->cancel == 2 ? FB_EV_DONE : FB_EV_ERROR, e->code = DH_ECANCELLED;
            e->n_prompt = q->n_prompt, e->n_tokens = q->n_tokens;
            e->next = *out, *out = e;
            *p = q->next;
            req_free(q);
            continue;
        }
        if (!q->sent && q->n_tokens >= q->max_tokens) { /* all there: its DONE was lost with the job */
            ended *e = xcalloc(1, sizeof *e);
            e->id = q->id, e->kind = FB_EV_DONE, e->code = FB_FINISH_LENGTH;
            e->n_prompt = q->n_prompt, e->n_tokens = q->n_tokens;
            e->next = *out, *out = e;
            *p = q->next;
            req_free(q);
            continue;
        }
        if (r->state == FR_SERVING && !r->failing) {
            if (!q->sent) send_submit(r, q), q->sent = 1;
            if (q->cancel && !q->cancel_sent) send_cancel(r, q->id, q->cancel == 2), q->cancel_sent = 1;
        }
        p = &q->next;
    }
    if (r->state == FR_SERVING && !r->failing)
        for (fr_replan *x = r->replans; x; x = x->next)
            if (x->tag > 0 && !(x->tag & (1ULL << 63))) {
                Darkhorse__FeReplan ask = DARKHORSE__FE_REPLAN__INIT;
                ask.tag = x->tag;
                Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
                m.body_case = DARKHORSE__FE_MSG__BODY_REPLAN, m.replan = &ask;
                send_msg(r, &m);
                x->tag |= 1ULL << 63; /* sent */
            }
}

static void deliver_ended(remote *r, ended *e) {
    while (e) {
        ended *n = e->next;
        if (e->kind == FB_EV_DONE) {
            fb_event ev = {.kind = FB_EV_DONE, .id = e->id, .finish = e->code == FB_FINISH_LENGTH ? FB_FINISH_LENGTH
                                                                                                 : FB_FINISH_STOP,
                           .prompt_tokens = e->n_prompt,
                           .completion_tokens = e->n_tokens};
            r->base.sink.event(r->base.sink.ctx, &ev);
        } else {
            deliver_error(r, e->id, e->code, e->code == DH_EAGAIN
                                                 ? "the cluster is recovering from a failure: retry later"
                                                 : e->code == DH_ECANCELLED ? "cancelled" : "the server stopped");
        }
        free(e);
        e = n;
    }
}

static void flush(remote *r) {
    ended *e = NULL;
    pthread_mutex_lock(&r->mu);
    flush_locked(r, &e);
    pthread_mutex_unlock(&r->mu);
    deliver_ended(r, e);
}

/* every request still in the table ends with code (the server stops, or nobody came back) */
static void fail_all(remote *r, int code) {
    ended *e = NULL;
    pthread_mutex_lock(&r->mu);
    while (r->reqs) {
        fr_req *q = r->reqs;
        ended *x = xcalloc(1, sizeof *x);
        x->id = q->id, x->kind = q->cancel == 2 ? FB_EV_DONE : FB_EV_ERROR;
        x->code = q->cancel == 1 ? DH_ECANCELLED : code;
        x->n_prompt = q->n_prompt, x->n_tokens = q->n_tokens;
        x->next = e, e = x;
        r->reqs = q->next;
        req_free(q);
    }
    fr_replan *asked = r->replans;
    r->replans = NULL;
    pthread_mutex_unlock(&r->mu);
    deliver_ended(r, e);
    while (asked) {
        fr_replan *n = asked->next;
        rp_result res = {.code = DH_ECANCELLED};
        snprintf(res.reason, sizeof res.reason, "the cluster's job ended before the re-plan was answered");
        if (r->base.sink.replan_done) r->base.sink.replan_done(r->base.sink.ctx, asked->user, &res);
        free(asked);
        asked = n;
    }
}

/* --- messages from rank 0 (loop thread) --- */

static void on_event_msg(remote *r, const Darkhorse__FeEvent *m) {
    pthread_mutex_lock(&r->mu);
    fr_req **link;
    fr_req *q = find(r, m->id, &link);
    int pass = q != NULL;
    if (q && m->kind == FB_EV_TOKEN) {
        if (m->index == q->n_tokens) {
            if (q->n_tokens == q->cap) q->tokens = xrealloc(q->tokens, (size_t)(q->cap *= 2) * sizeof *q->tokens);
            q->tokens[q->n_tokens++] = m->token;
        } else {
            if (m->index > q->n_tokens)
                log_error("request %llu: token %d arrived after %d: a gap (a bug)", (unsigned long long)m->id,
                          m->index, q->n_tokens);
            pass = 0; /* a duplicate: the server has it */
        }
    } else if (q && m->kind == FB_EV_ERROR && m->code != DH_EINVAL && m->code != DH_EBUSY &&
               !(m->code == DH_ECANCELLED && (q->cancel || r->stop_asked))) {
        pass = 0; /* the engine failed under it: the next engine resumes it */
        q->sent = 0, q->cancel_sent = 0, q->t_wait = dh_now();
        r->failing = 1;
    } else if (q) {
        *link = q->next; /* its last event */
        req_free(q);
    }
    pthread_mutex_unlock(&r->mu);
    if (!pass) return;
    fb_event ev = {.kind = m->kind, .id = m->id, .token = m->token, .index = m->index, .finish = m->finish,
                   .prompt_tokens = m->prompt_tokens, .completion_tokens = m->completion_tokens, .code = m->code,
                   .error = m->error};
    for (size_t d = 0; d < m->n_domain_share && d < CFG_N_DOMAINS; d++) ev.domain_share[d] = m->domain_share[d];
    r->base.sink.event(r->base.sink.ctx, &ev);
}

static void write_plan(remote *r, const char *text) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", r->plan_path);
    FILE *f = fopen(tmp, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0 || rename(tmp, r->plan_path) != 0) {
        log_error("%s: cannot write the plan in use (%s): a relaunch will make a new one", r->plan_path,
                  strerror(errno));
        r->have_plan = 0;
        return;
    }
    r->have_plan = 1;
}

static void on_hello(remote *r, const Darkhorse__FeHello *h) {
    if (h->protocol_version != FEL_PROTOCOL_VERSION) {
        log_error("rank 0 speaks front end protocol %u, this front end %d: is it the same darkhorse binary?",
                  h->protocol_version, FEL_PROTOCOL_VERSION);
        return;
    }
    double now = dh_now();
    pthread_mutex_lock(&r->mu);
    int resumed = 0;
    for (fr_req *q = r->reqs; q; q = q->next) {
        if (q->sent || q->n_tokens) resumed++, q->resumed = 1;
        q->sent = 0, q->cancel_sent = 0;
    }
    double took = now - r->recovering_since;
    int again = r->ever_served;
    if (again) r->recovering_s += took, r->resumed += (unsigned long long)resumed;
    r->state = FR_SERVING;
    r->ever_served = 1;
    r->failing = 0;
    r->reason[0] = '\0';
    r->last_msg = now;
    pthread_mutex_unlock(&r->mu);
    if (again)
        log_info("the cluster serves again (rank 0 pid %d on %s, %d workers) %.2f s after the failure; %d requests "
                 "resumed",
                 h->pid, h->host, h->workers, took, resumed);
    else
        log_info("the cluster serves: rank 0 pid %d on %s, %d workers", h->pid, h->host, h->workers);
    r->failed_starts = 0;
    flush(r);
}

static void on_replan_done(remote *r, const Darkhorse__FeReplanDone *d) {
    pthread_mutex_lock(&r->mu);
    fr_replan *x = NULL;
    for (fr_replan **p = &r->replans; *p; p = &(*p)->next)
        if (((*p)->tag & ~(1ULL << 63)) == d->tag) {
            x = *p;
            *p = x->next;
            break;
        }
    pthread_mutex_unlock(&r->mu);
    if (!x) return;
    rp_result res = {.code = d->code, .generation = d->generation, .moved = d->moved,
                     .imbalance_before = d->imbalance_before, .imbalance_after = d->imbalance_after,
                     .seconds = d->seconds};
    snprintf(res.reason, sizeof res.reason, "%s", d->reason);
    if (r->base.sink.replan_done) r->base.sink.replan_done(r->base.sink.ctx, x->user, &res);
    free(x);
}

static int on_msg(void *ctx, const Darkhorse__FeMsg *m) {
    remote *r = ctx;
    switch (m->body_case) {
    case DARKHORSE__FE_MSG__BODY_HELLO: on_hello(r, m->hello); break;
    case DARKHORSE__FE_MSG__BODY_EVENT: on_event_msg(r, m->event); break;
    case DARKHORSE__FE_MSG__BODY_PLAN: write_plan(r, m->plan->text); break;
    case DARKHORSE__FE_MSG__BODY_METRICS:
        pthread_mutex_lock(&r->mu);
        free(r->metrics);
        r->metrics = xstrdup(m->metrics->text);
        pthread_mutex_unlock(&r->mu);
        break;
    case DARKHORSE__FE_MSG__BODY_FAILURE:
        r->failure.rank = m->failure->rank;
        snprintf(r->failure.host, sizeof r->failure.host, "%s", m->failure->host);
        snprintf(r->failure.reason, sizeof r->failure.reason, "%s", m->failure->reason);
        break;
    case DARKHORSE__FE_MSG__BODY_REPLAN_DONE: on_replan_done(r, m->replan_done); break;
    default: log_warn("front end link: message %d is not one the front end takes: ignored", (int)m->body_case); break;
    }
    return 0;
}

/* --- the job's life --- */

static void start_job(remote *r);

static void set_state(remote *r, int st, const char *why) {
    pthread_mutex_lock(&r->mu);
    r->state = st;
    if (why) snprintf(r->reason, sizeof r->reason, "%s", why);
    pthread_mutex_unlock(&r->mu);
}

static void drop_connection(remote *r) {
    if (r->bev) bufferevent_free(r->bev);
    r->bev = NULL;
    fel_reader_free(r->rd);
    r->rd = NULL;
}

static void job_gone(remote *r, const char *how) {
    drop_connection(r);
    r->sock_closed = 0;
    if (r->err_ev) event_free(r->err_ev), r->err_ev = NULL;
    pthread_mutex_lock(&r->mu);
    int st = r->state;
    pthread_mutex_unlock(&r->mu);
    if (st == FR_RECOVERING) return; /* this job's end was seen already */
    if (st == FR_STOPPING || st == FR_DONE) {
        fl_kill(r->p.job); /* what is left of it */
        fail_all(r, DH_ECANCELLED);
        set_state(r, FR_DONE, "stopped");
        event_base_loopbreak(r->ev);
        return;
    }
    /* a failure: kill what is left (which reads the rest of its stderr), say who, start again */
    fl_kill(r->p.job);
    fl_failure f = r->failure; /* rank 0's FeFailure, which names no rank today ... */
    const fl_failure *lf = fl_last_failure(r->p.job);
    if (f.rank < 0 && lf->rank >= 0) f = *lf; /* ... so the job's stderr says who */
    else if (!*f.host && lf->rank == f.rank) snprintf(f.host, sizeof f.host, "%s", lf->host);
    char why[1024];
    if (f.rank >= 0)
        snprintf(why, sizeof why, "recovering: rank %d%s%s failed (%s)", f.rank, *f.host ? " on host " : "", f.host,
                 *f.reason ? f.reason : how);
    else
        snprintf(why, sizeof why, "recovering: the MPI job failed (%s)", how);
    log_warn("%s: restarting the job", why + 12);
    if (fl_blame(r->p.job, f.host)) {
        unlink(r->plan_path);
        r->have_plan = 0;
    }
    pthread_mutex_lock(&r->mu);
    if (st == FR_SERVING) {
        r->recovering_since = dh_now();
        for (fr_req *q = r->reqs; q; q = q->next) {
            if (q->sent) q->t_wait = r->recovering_since; /* it waits from the failure */
            q->sent = 0, q->cancel_sent = 0;
        }
    }
    r->failures++;
    r->state = FR_RECOVERING;
    snprintf(r->reason, sizeof r->reason, "%s", why);
    pthread_mutex_unlock(&r->mu);
    if (!r->ever_served) r->failed_starts++;
    else if (st == FR_STARTING) r->failed_starts++;
    double backoff = r->failed_starts ? DH_MIN(FR_BACKOFF_MAX_S, (double)(1 << DH_MIN(r->failed_starts - 1, 4))) : 0;
    if (!r->ever_served) { /* the first launch never served: a restart would not mend it */
        log_error("the first launch of the job failed before it served; see its messages above");
        fail_all(r, DH_ECANCELLED);
        set_state(r, FR_DONE, "the job could not start");
        event_base_loopbreak(r->ev);
        return;
    }
    struct timeval tv = {(time_t)backoff, (suseconds_t)((backoff - (double)(time_t)backoff) * 1e6)};
    evtimer_add(r->restart_ev, &tv);
}

static void on_sock(struct bufferevent *bev, void *arg) {
    remote *r = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n;
    while ((n = evbuffer_get_length(in)) > 0) {
        unsigned char buf[65536];
        int k = evbuffer_remove(in, buf, DH_MIN(n, sizeof buf));
        if (k <= 0) break;
        fel_reader_feed(r->rd, buf, (size_t)k);
    }
    r->last_msg = dh_now();
    if (fel_reader_drain(r->rd, on_msg, r)) job_gone(r, "rank 0 sent a malformed message");
}

static void on_sock_event(struct bufferevent *bev, short what, void *arg) {
    (void)bev;
    remote *r = arg;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))) return;
    drop_connection(r); /* the tick ends the job once mpirun has said who failed, or soon after */
    pthread_mutex_lock(&r->mu);
    r->failing = 1;
    pthread_mutex_unlock(&r->mu);
    r->sock_closed = dh_now();
}

static void on_accept(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    remote *r = arg;
    int c = accept(fd, NULL, NULL);
    if (c < 0) return;
    if (r->bev) { /* one rank 0 at a time */
        log_warn("a second connection to the engine socket: refused");
        close(c);
        return;
    }
    evutil_make_socket_nonblocking(c);
    r->bev = bufferevent_socket_new(r->ev, c, BEV_OPT_CLOSE_ON_FREE);
    r->rd = fel_reader_new();
    bufferevent_setcb(r->bev, on_sock, NULL, on_sock_event, r);
    bufferevent_enable(r->bev, EV_READ);
}

static void on_job_stderr(evutil_socket_t fd, short what, void *arg) {
    (void)what;
    remote *r = arg;
    char buf[8192];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
        fl_stderr_feed(r->p.job, buf, (size_t)n);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        event_free(r->err_ev), r->err_ev = NULL; /* the job's end is seen by waitpid */
    }
}

static void start_job(remote *r) {
    r->failure = (fl_failure){.rank = -1};
    const char *plan = r->have_plan ? r->plan_path : r->placement;
    int rc = fl_start(r->p.job, plan);
    pthread_mutex_lock(&r->mu);
    if (r->ever_served || r->failed_starts) r->restarts++;
    pthread_mutex_unlock(&r->mu);
    if (rc) {
        job_gone(r, "the launcher could not be run");
        return;
    }
    if (r->placement && plan == r->placement) r->placement = NULL; /* the user's plan: the first launch */
    r->state_since = dh_now();
    pthread_mutex_lock(&r->mu);
    if (r->state != FR_STOPPING) r->state = FR_STARTING;
    if (!r->ever_served) snprintf(r->reason, sizeof r->reason, "starting: the MPI job is loading the model");
    pthread_mutex_unlock(&r->mu);
    r->err_ev = event_new(r->ev, fl_stderr_fd(r->p.job), EV_READ | EV_PERSIST, on_job_stderr, r);
    event_add(r->err_ev, NULL);
}

static void on_restart(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    remote *r = arg;
    pthread_mutex_lock(&r->mu);
    int st = r->state;
    pthread_mutex_unlock(&r->mu);
    if (st == FR_RECOVERING) start_job(r);
}

/* the stop asked by the server: rank 0 drains within the grace and ends the job */
static void handle_stop(remote *r) {
    pthread_mutex_lock(&r->mu);
    int asked = r->stop_asked && !r->stop_sent, st = r->state;
    double grace = r->grace;
    r->stop_sent = 1;
    if (asked && st != FR_DONE) {
        r->state = FR_STOPPING;
        snprintf(r->reason, sizeof r->reason, "stopping");
    }
    pthread_mutex_unlock(&r->mu);
    if (!asked || st == FR_DONE) return;
    if (st == FR_SERVING || r->bev) {
        Darkhorse__FeStop s = DARKHORSE__FE_STOP__INIT;
        s.grace_seconds = grace;
        Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
        m.body_case = DARKHORSE__FE_MSG__BODY_STOP, m.stop = &s;
        send_msg(r, &m);
        r->stop_deadline = dh_now() + grace + FR_STOP_EXTRA_S;
        log_info("stopping: rank 0 drains for up to %.1f s, then stops the workers", grace);
    } else { /* no engine to drain */
        evtimer_del(r->restart_ev);
        job_gone(r, "stopped");
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    remote *r = arg;
    handle_stop(r);
    flush(r);
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    remote *r = arg;
    int status;
    if (fl_pid(r->p.job) && fl_poll(r->p.job, &status)) {
        char how[128];
        if (WIFSIGNALED(status)) snprintf(how, sizeof how, "mpirun ended by signal %d", WTERMSIG(status));
        else snprintf(how, sizeof how, "mpirun exited with status %d", WEXITSTATUS(status));
        job_gone(r, how);
        return;
    }
    double now = dh_now();
    pthread_mutex_lock(&r->mu);
    int st = r->state;
    pthread_mutex_unlock(&r->mu);
    if (r->sock_closed > 0 && (now - r->sock_closed > FR_SOCK_GRACE_S || !fl_pid(r->p.job))) {
        job_gone(r, "rank 0's socket closed");
        return;
    }
    if (st == FR_STOPPING && r->stop_deadline > 0 && now > r->stop_deadline) {
        log_warn("the job did not end within the grace + %.0f s: killing it", FR_STOP_EXTRA_S);
        job_gone(r, "stop deadline");
        return;
    }
    if (st == FR_SERVING && r->bev && now - r->last_msg > FR_SILENCE_S) {
        job_gone(r, "rank 0 sent nothing for 20 s");
        return;
    }
    if (st == FR_STARTING && now - r->state_since > r->p.start_timeout) {
        job_gone(r, "no hello from rank 0 within the start timeout");
        return;
    }
    if (st == FR_SERVING || st == FR_DONE) return;
    /* requests waiting too long for an engine */
    ended *e = NULL;
    pthread_mutex_lock(&r->mu);
    for (fr_req **p = &r->reqs; *p;) {
        fr_req *q = *p;
        if (!q->sent && now - q->t_wait > r->p.recovery_wait && st != FR_STOPPING) {
            ended *x = xcalloc(1, sizeof *x);
            x->id = q->id, x->kind = q->cancel == 2 ? FB_EV_DONE : FB_EV_ERROR;
            x->code = q->cancel == 1 ? DH_ECANCELLED : DH_EAGAIN, x->n_prompt = q->n_prompt, x->n_tokens = q->n_tokens;
            x->next = e, e = x;
            *p = q->next;
            req_free(q);
            continue;
        }
        p = &q->next;
    }
    pthread_mutex_unlock(&r->mu);
    deliver_ended(r, e);
}

/* --- life cycle --- */

fb_backend *fr_new(const fr_params *p) {
    int fd = fel_listen(p->socket_path);
    if (fd < 0) return NULL;
    remote *r = xcalloc(1, sizeof *r);
    r->base.ops = &remote_ops;
    r->p = *p;
    r->socket_path = xstrdup(p->socket_path), r->plan_path = xstrdup(p->plan_path);
    r->placement = p->placement ? xstrdup(p->placement) : NULL;
    r->p.socket_path = r->socket_path, r->p.plan_path = r->plan_path, r->p.placement = NULL;
    r->listen_fd = fd;
    r->failure.rank = -1;
    pthread_mutex_init(&r->mu, NULL);
    r->state = FR_STARTING;
    snprintf(r->reason, sizeof r->reason, "starting: the MPI job is loading the model");
    r->ev = event_base_new();
    DH_ASSERT(r->ev != NULL);
    evutil_make_socket_nonblocking(fd);
    r->accept_ev = event_new(r->ev, fd, EV_READ | EV_PERSIST, on_accept, r);
    r->wake = event_new(r->ev, -1, 0, on_wake, r);
    r->tick = event_new(r->ev, -1, EV_PERSIST, on_tick, r);
    r->restart_ev = evtimer_new(r->ev, on_restart, r);
    DH_ASSERT(r->accept_ev && r->wake && r->tick && r->restart_ev);
    return &r->base;
}

int fr_run(fb_backend *b) {
    remote *r = (remote *)b;
    event_add(r->accept_ev, NULL);
    struct timeval tv = {0, (suseconds_t)(FR_TICK_S * 1e6)};
    event_add(r->tick, &tv);
    start_job(r);
    handle_stop(r); /* a stop asked before the loop ran */
    event_base_loop(r->ev, EVLOOP_NO_EXIT_ON_EMPTY);
    pthread_mutex_lock(&r->mu);
    int ok = r->ever_served;
    pthread_mutex_unlock(&r->mu);
    return ok ? 0 : DH_EIO;
}

void fr_free(fb_backend *b) {
    if (!b) return;
    remote *r = (remote *)b;
    drop_connection(r);
    if (r->err_ev) event_free(r->err_ev);
    event_free(r->accept_ev);
    event_free(r->wake);
    event_free(r->tick);
    event_free(r->restart_ev);
    event_base_free(r->ev);
    close(r->listen_fd);
    unlink(r->socket_path);
    while (r->reqs) {
        fr_req *q = r->reqs;
        r->reqs = q->next;
        req_free(q);
    }
    while (r->replans) {
        fr_replan *x = r->replans;
        r->replans = x->next;
        free(x);
    }
    free(r->metrics);
    free(r->socket_path);
    free(r->plan_path);
    free(r->placement);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
