/* backend_local.c: the backend over an engine in this process (`darkhorse serve` without
 * --launch). submit, cancel and stop go straight to the engine (thread-safe calls); the
 * engine's events, on the engine thread, become fb_events for the sink; a re-plan goes to the
 * re-planner, which answers on the engine thread; metrics are rendered from the engine's and
 * the re-planner's counters. The server's ids are the engine's ids. The re-planner and the
 * metrics renderer are read under a mutex, so that the caller can take the re-planner away
 * (fb_local_attach) while the HTTP thread serves /metrics or /admin/replan. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/engine.h"
#include "coordinator/metrics.h"
#include "core/common.h"
#include "frontend/backend.h"

_Static_assert((int)FB_EV_TOKEN == (int)ENGINE_EV_TOKEN && (int)FB_EV_DONE == (int)ENGINE_EV_DONE &&
                   (int)FB_EV_ERROR == (int)ENGINE_EV_ERROR,
               "the event kinds are passed through");

typedef struct local {
    fb_backend base;       /* first: a local * is an fb_backend * */
    engine *e;
    pthread_mutex_t mu;    /* over replan and cm */
    rp *replan;            /* NULL: not a cluster */
    cmetrics *cm;
} local;

static int local_submit(fb_backend *b, const fb_request *r, char *err, size_t errsz) {
    local *l = (local *)b;
    engine_request q = {.id = r->id, .prompt = r->prompt, .n_prompt = r->n_prompt, .generated = r->generated,
                        .n_generated = r->n_generated, .max_tokens = r->max_tokens, .sampling = r->sampling,
                        .ignore_eos = r->ignore_eos};
    return engine_submit(l->e, &q, err, errsz);
}

static void local_cancel(fb_backend *b, uint64_t id, int finished) {
    engine_cancel(((local *)b)->e, id, finished);
}

static void local_stop(fb_backend *b, double grace_s) {
    engine_stop(((local *)b)->e, grace_s);
}

static int local_replan(fb_backend *b, void *user) {
    local *l = (local *)b;
    pthread_mutex_lock(&l->mu);
    int rc = l->replan ? rp_request(l->replan, user) : DH_EUNSUPPORTED;
    pthread_mutex_unlock(&l->mu);
    if (rc == 0) engine_wake(l->e);
    return rc;
}

static void local_metrics(fb_backend *b, struct evbuffer *out) {
    local *l = (local *)b;
    pthread_mutex_lock(&l->mu);
    if (l->cm) cmetrics_render(l->cm, l->replan, out);
    pthread_mutex_unlock(&l->mu);
}

static const fb_ops local_ops = {local_submit, local_cancel, local_stop, local_replan, local_metrics, NULL};

fb_backend *fb_local_new(void) {
    local *l = xcalloc(1, sizeof *l);
    l->base.ops = &local_ops;
    pthread_mutex_init(&l->mu, NULL);
    return &l->base;
}

void fb_local_attach(fb_backend *b, engine *e, rp *replan, cmetrics *cm) {
    local *l = (local *)b;
    pthread_mutex_lock(&l->mu);
    l->e = e, l->replan = replan, l->cm = cm;
    pthread_mutex_unlock(&l->mu);
}

void fb_local_free(fb_backend *b) {
    if (!b) return;
    pthread_mutex_destroy(&((local *)b)->mu);
    free(b); /* the base is the first member */
}

void fb_local_emit(void *ctx, const engine_event *ev) {
    fb_backend *b = ctx;
    fb_event x = {.kind = ev->kind, .id = ev->id, .token = ev->token, .index = ev->index, .code = ev->code,
                  .error = ev->error};
    if (ev->kind == ENGINE_EV_DONE) {
        x.finish = ev->finish == ENGINE_FINISH_EOS ? FB_FINISH_EOS
                 : ev->finish == ENGINE_FINISH_LENGTH ? FB_FINISH_LENGTH : FB_FINISH_STOP;
        x.prompt_tokens = ev->prompt_tokens, x.completion_tokens = ev->completion_tokens;
        memcpy(x.domain_share, ev->domain_share, sizeof x.domain_share);
    }
    b->sink.event(b->sink.ctx, &x);
}

void fb_local_replan_done(void *ctx, void *user, const rp_result *r) {
    fb_backend *b = ctx;
    b->sink.replan_done(b->sink.ctx, user, r);
}
