/* engine.c: the serving loop: admission, step composition, sampling, detokenization.
 *
 * Requests move from `incoming` (filled by any thread under the lock) to `waiting` (FIFO,
 * engine thread only) to a running slot. A request is admitted when a sequence slot is free
 * and the KV cache can reserve its whole prompt + max_tokens at once: a running request
 * can then never run out of cache, so nothing is ever preempted or recomputed (the price is
 * reserving for tokens a request may not use). Admission is in arrival order: a large request
 * at the head waits for room rather than being overtaken forever.
 *
 * A step holds, in this order, one decode row for every running sequence that has finished
 * its prompt, then prompt chunks of the running sequences still prefilling, in admission
 * order, until max_batch_tokens rows. Prompt rows use the naive attention form and decode rows
 * the absorbed one, and the kernels are batch invariant, so a request's tokens do not depend
 * on what else is in the step. Sampling is keyed by the position of the token drawn (core/
 * sampler.c), not by a stream that advances per step, so the same holds for seeded sampling.
 *
 * Resume. A request given n_generated completion tokens is first "fed": its prompt as prompt
 * rows, then its given tokens as decode rows, both chunked under the step budget like a
 * prompt, the last one asking for logits. A token's row form depends on its origin only, so
 * these rows compute what the uninterrupted request computed, and the next token is drawn at
 * position n_prompt + n_generated as it would have been.
 *
 * The engine reports token ids; the text (detokenizer, stop strings) is the caller's. */
#include "engine.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/nn.h"
#include "core/threadpool.h"

typedef struct cancel_ask { /* a cancellation asked for by another thread */
    uint64_t id;
    int finished;
} cancel_ask;

typedef struct req {
    uint64_t id;
    void *user;
    int *toks;            /* [n_prompt + n_given]: the prompt, then the given completion tokens */
    int n_prompt, n_given;
    int max_tokens, ignore_eos;
    sampler *smp;
    int seq;              /* KV sequence once admitted, -1 before */
    int n_fed;            /* rows of toks computed; decoding once it reaches n_prompt + n_given */
    int n_gen;            /* completion tokens so far, the given ones included */
    int last;             /* the last completion token, fed by the next decode row */
    uint64_t domain[CFG_N_DOMAINS];
    double t_submit, t_first, t_last;
    struct req *next;
} req;

struct engine {
    const model *m;
    fwd_ctx *f;
    kv_cache *kv;
    ls_stats *stats;
    engine_params p;
    engine_emit_fn emit;
    void *ctx;
    /* shared with other threads, under mu */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    req *in_head, *in_tail;
    int n_incoming;
    cancel_ask *cancels;
    int n_cancels, cap_cancels;
    int stopping;
    int woken;            /* engine_wake since the last idle wait */
    double stop_deadline;
    engine_metrics met;
    ls_stats *snap;       /* copy of stats, refreshed each step */
    /* engine thread only */
    req *wait_head, *wait_tail;
    int n_waiting;
    req **run;            /* [max_seqs] */
    int n_run;
    fwd_row *rows;        /* [max_batch_tokens] */
    req **row_req;        /* [max_batch_tokens] */
    float *logits;        /* [max_seqs, V] */
    int *draw_row;        /* [max_seqs] the step's rows with logits */
    int *draw_tok;        /* [max_seqs] the tokens drawn for them */
    int *route;           /* [moe layers, max_batch_tokens, K] */
    int n_moe;
    engine_tick_fn tick;
    void *tick_ctx;
    double last_step_s;
};

static const double hist_le[ENGINE_HIST_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                    0.5,   1,      2.5,   5,    10,    30,   60,  INFINITY};

static void hist_init(engine_hist *h) {
    memset(h, 0, sizeof *h);
    memcpy(h->le, hist_le, sizeof hist_le);
}

static void hist_add(engine_hist *h, double v) {
    int b = 0;
    while (b < ENGINE_HIST_BUCKETS - 1 && v > h->le[b]) b++;
    h->count[b]++;
    h->n++;
    h->sum += v;
}

engine *engine_new(const model *m, fwd_ctx *f, kv_cache *kv, ls_stats *stats, const engine_params *p,
                   engine_emit_fn emit, void *ctx) {
    engine *e = xcalloc(1, sizeof *e);
    e->m = m, e->f = f, e->kv = kv, e->stats = stats, e->p = *p, e->emit = emit, e->ctx = ctx;
    DH_ASSERT(p->max_seqs > 0 && p->max_batch_tokens >= p->max_seqs);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->wake, NULL);
    e->run = xcalloc((size_t)p->max_seqs, sizeof *e->run);
    e->rows = xmalloc((size_t)p->max_batch_tokens * sizeof *e->rows);
    e->row_req = xmalloc((size_t)p->max_batch_tokens * sizeof *e->row_req);
    e->logits = xmalloc(xmul((size_t)p->max_seqs * m->cfg.vocab_size, sizeof *e->logits));
    e->draw_row = xmalloc((size_t)p->max_seqs * sizeof *e->draw_row);
    e->draw_tok = xmalloc((size_t)p->max_seqs * sizeof *e->draw_tok);
    for (int l = 0; l < m->cfg.num_hidden_layers; l++) e->n_moe += m->layers[l].is_moe;
    e->route = xmalloc(xmul((size_t)DH_MAX(e->n_moe, 1) * p->max_batch_tokens * m->cfg.num_experts_per_tok, sizeof(int)));
    hist_init(&e->met.ttft), hist_init(&e->met.tpot), hist_init(&e->met.step);
    e->met.kv_total_tokens = kv_total_tokens(kv);
    e->snap = ls_new(stats->n_layers, stats->n_experts, stats->n_workers);
    return e;
}

static void req_free(req *r) {
    if (!r) return;
    free(r->toks);
    sampler_free(r->smp);
    free(r);
}

void engine_free(engine *e) {
    if (!e) return;
    for (req *r = e->in_head, *n; r; r = n) n = r->next, req_free(r);
    for (req *r = e->wait_head, *n; r; r = n) n = r->next, req_free(r);
    for (int i = 0; i < e->n_run; i++) req_free(e->run[i]);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->wake);
    free(e->cancels), free(e->run), free(e->rows), free(e->row_req), free(e->logits), free(e->route);
    free(e->draw_row), free(e->draw_tok);
    ls_free(e->snap);
    free(e);
}

int engine_submit(engine *e, const engine_request *q, char *err, size_t errsz) {
    int need = q->n_prompt + q->max_tokens, V = e->m->cfg.vocab_size;
    if (q->id == 0 || q->n_prompt < 1 || q->max_tokens < 1 || q->n_generated < 0 || (q->n_generated && !q->generated)) {
        snprintf(err, errsz, "the id must be > 0, the prompt and max_tokens each at least 1 token, n_generated >= 0");
        return DH_EINVAL;
    }
    if (q->n_generated >= q->max_tokens) {
        snprintf(err, errsz, "nothing left to generate: %d tokens generated of max_tokens %d", q->n_generated,
                 q->max_tokens);
        return DH_EINVAL;
    }
    if (need > e->p.max_context) {
        snprintf(err, errsz, "the prompt (%d tokens) plus max_tokens (%d) exceeds the context limit of %d tokens",
                 q->n_prompt, q->max_tokens, e->p.max_context);
        return DH_EINVAL;
    }
    if ((size_t)need > kv_total_tokens(e->kv)) {
        snprintf(err, errsz, "the prompt (%d tokens) plus max_tokens (%d) exceeds the KV cache of %zu tokens",
                 q->n_prompt, q->max_tokens, kv_total_tokens(e->kv));
        return DH_EINVAL;
    }
    for (int i = 0; i < q->n_prompt + q->n_generated; i++) {
        int t = i < q->n_prompt ? q->prompt[i] : q->generated[i - q->n_prompt];
        if (t < 0 || t >= V) {
            snprintf(err, errsz, "%s token %d is %d, outside the vocabulary of %d", i < q->n_prompt ? "prompt" : "generated",
                     i < q->n_prompt ? i : i - q->n_prompt, t, V);
            return DH_EINVAL;
        }
    }
    req *r = xcalloc(1, sizeof *r);
    r->id = q->id, r->user = q->user;
    r->toks = xmalloc((size_t)(q->n_prompt + q->n_generated) * sizeof *r->toks);
    memcpy(r->toks, q->prompt, (size_t)q->n_prompt * sizeof *r->toks);
    if (q->n_generated) memcpy(r->toks + q->n_prompt, q->generated, (size_t)q->n_generated * sizeof *r->toks);
    r->n_prompt = q->n_prompt, r->n_given = r->n_gen = q->n_generated;
    r->max_tokens = q->max_tokens, r->ignore_eos = q->ignore_eos;
    if (r->n_given) r->last = r->toks[q->n_prompt + r->n_given - 1];
    r->smp = sampler_new(V, q->sampling);
    r->seq = -1;
    r->t_submit = dh_now();
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (e->stopping) {
        snprintf(err, errsz, "the server is shutting down");
        rc = DH_ECANCELLED;
    } else if (!q->admitted && e->n_incoming + e->met.waiting >= e->p.max_queue) {
        snprintf(err, errsz, "the queue is full (%d requests waiting)", e->p.max_queue);
        rc = DH_EBUSY;
    } else {
        if (e->in_tail) e->in_tail->next = r;
        else e->in_head = r;
        e->in_tail = r;
        e->n_incoming++;
        pthread_cond_signal(&e->wake);
    }
    pthread_mutex_unlock(&e->mu);
    if (rc) req_free(r);
    return rc;
}

void engine_cancel(engine *e, uint64_t id, int finished) {
    pthread_mutex_lock(&e->mu);
    if (e->n_cancels == e->cap_cancels) {
        e->cap_cancels = e->cap_cancels ? 2 * e->cap_cancels : 64;
        e->cancels = xrealloc(e->cancels, (size_t)e->cap_cancels * sizeof *e->cancels);
    }
    e->cancels[e->n_cancels++] = (cancel_ask){id, finished};
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

void engine_stop(engine *e, double grace_s) {
    pthread_mutex_lock(&e->mu);
    if (!e->stopping) {
        e->stopping = 1;
        e->stop_deadline = dh_now() + grace_s;
    } else {
        e->stop_deadline = DH_MIN(e->stop_deadline, dh_now()); /* asked twice: no more grace */
    }
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

void engine_set_tick(engine *e, engine_tick_fn tick, void *ctx) {
    e->tick = tick, e->tick_ctx = ctx;
}

void engine_wake(engine *e) {
    pthread_mutex_lock(&e->mu);
    e->woken = 1;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->mu);
}

void engine_get_metrics(engine *e, engine_metrics *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->met;
    pthread_mutex_unlock(&e->mu);
}

static void stats_copy(ls_stats *dst, const ls_stats *src) {
    DH_ASSERT(dst->n_layers == src->n_layers && dst->n_experts == src->n_experts && dst->n_workers == src->n_workers);
    memcpy(dst->routed, src->routed, (size_t)src->n_layers * DH_MAX(src->n_experts, 1) * sizeof *dst->routed);
    memcpy(dst->workers, src->workers, ((size_t)src->n_workers + 1) * sizeof *dst->workers);
    dst->exchange_s = src->exchange_s, dst->wait_s = src->wait_s, dst->slowest_s = src->slowest_s;
    dst->steps = src->steps;
}

void engine_get_stats(engine *e, ls_stats *out) {
    pthread_mutex_lock(&e->mu);
    stats_copy(out, e->snap);
    pthread_mutex_unlock(&e->mu);
}

/* --- events --- */

static void count(engine *e, uint64_t *counter) {
    pthread_mutex_lock(&e->mu);
    (*counter)++;
    pthread_mutex_unlock(&e->mu);
}

static void emit_error(engine *e, req *r, int code, const char *msg) {
    engine_event ev = {.kind = ENGINE_EV_ERROR, .id = r->id, .user = r->user, .code = code, .error = msg};
    e->emit(e->ctx, &ev);
}

/* end a request: its DONE event (the caller closes its sequence) */
static void finish(engine *e, req *r, int reason) {
    double share[CFG_N_DOMAINS] = {0}, tot = 0;
    for (int d = 0; d < CFG_N_DOMAINS; d++) tot += (double)r->domain[d];
    for (int d = 0; d < CFG_N_DOMAINS && tot > 0; d++) share[d] = (double)r->domain[d] / tot;
    engine_event ev = {.kind = ENGINE_EV_DONE, .id = r->id, .user = r->user, .finish = reason,
                       .prompt_tokens = r->n_prompt, .completion_tokens = r->n_gen, .domain_share = share};
    e->emit(e->ctx, &ev);
    pthread_mutex_lock(&e->mu);
    if (reason == ENGINE_FINISH_LENGTH) e->met.finished_length++;
    else e->met.finished_stop++;
    pthread_mutex_unlock(&e->mu);
}

/* A new token for r: report it, or end r at the end-of-sentence token or max_tokens. 1 if r
 * is finished (its DONE sent), else 0. */
static int on_token(engine *e, req *r, int tok) {
    double now = dh_now();
    pthread_mutex_lock(&e->mu);
    if (r->n_gen == r->n_given) {
        r->t_first = now;
        hist_add(&e->met.ttft, now - r->t_submit);
    } else {
        hist_add(&e->met.tpot, now - r->t_last);
    }
    e->met.generated_tokens++;
    pthread_mutex_unlock(&e->mu);
    r->t_last = now;
    if (tok == e->m->cfg.eos_token_id && !r->ignore_eos) { /* not part of the completion */
        finish(e, r, ENGINE_FINISH_EOS);
        return 1;
    }
    engine_event ev = {.kind = ENGINE_EV_TOKEN, .id = r->id, .user = r->user, .token = tok, .index = r->n_gen};
    e->emit(e->ctx, &ev);
    r->last = tok;
    if (++r->n_gen >= r->max_tokens) {
        finish(e, r, ENGINE_FINISH_LENGTH);
        return 1;
    }
    return 0;
}

/* --- sampling --- */

typedef struct draw_job {
    engine *e;
    int V, n;
} draw_job;

/* the token of the i-th row with logits: at its position after the prompt and the completion so
 * far (on_token has not yet counted this step's) */
static void draw_task(void *ctx, int i, int thread) {
    (void)thread;
    draw_job *j = ctx;
    engine *e = j->e;
    req *r = e->row_req[e->draw_row[i]];
    e->draw_tok[i] = sampler_sample(r->smp, e->logits + (size_t)i * j->V, 0, r->n_prompt + r->n_gen, SAMPLER_TOKEN);
}

/* --- scheduling --- */

static void drop_running(engine *e, int i) {
    req *r = e->run[i];
    if (r->seq >= 0) kv_seq_close(e->kv, r->seq);
    req_free(r);
    e->run[i] = e->run[--e->n_run];
}

/* the last event of a cancelled request: DONE (STOP) when the caller saw its end, else ERROR */
static void end_cancelled(engine *e, req *r, int finished) {
    if (finished) {
        finish(e, r, ENGINE_FINISH_STOP);
        return;
    }
    emit_error(e, r, DH_ECANCELLED, "cancelled");
    count(e, &e->met.cancelled);
}

/* take new requests and cancellations from other threads; apply cancellations */
static void intake(engine *e) {
    pthread_mutex_lock(&e->mu);
    req *in = e->in_head;
    int n_in = e->n_incoming;
    e->in_head = e->in_tail = NULL;
    e->n_incoming = 0;
    cancel_ask *cancels = e->cancels;
    int n_cancels = e->n_cancels;
    e->cancels = NULL;
    e->n_cancels = e->cap_cancels = 0;
    pthread_mutex_unlock(&e->mu);
    if (in) {
        if (e->wait_tail) e->wait_tail->next = in;
        else e->wait_head = in;
        while (in->next) in = in->next;
        e->wait_tail = in;
        e->n_waiting += n_in;
    }
    for (int c = 0; c < n_cancels; c++) {
        for (int i = 0; i < e->n_run; i++)
            if (e->run[i]->id == cancels[c].id) {
                end_cancelled(e, e->run[i], cancels[c].finished);
                drop_running(e, i);
                break;
            }
        for (req **pp = &e->wait_head, *prev = NULL; *pp; prev = *pp, pp = &(*pp)->next)
            if ((*pp)->id == cancels[c].id) {
                req *r = *pp;
                *pp = r->next;
                if (e->wait_tail == r) e->wait_tail = prev;
                e->n_waiting--;
                end_cancelled(e, r, cancels[c].finished);
                req_free(r);
                break;
            }
    }
    free(cancels);
}

static void admit(engine *e) {
    while (e->wait_head && e->n_run < e->p.max_seqs) {
        req *r = e->wait_head;
        int seq = kv_seq_open(e->kv);
        if (seq < 0) break;
        if (kv_seq_reserve(e->kv, seq, r->n_prompt + r->max_tokens) != 0) {
            kv_seq_close(e->kv, seq);
            break; /* wait for running requests to free blocks */
        }
        r->seq = seq;
        e->wait_head = r->next;
        if (!e->wait_head) e->wait_tail = NULL;
        r->next = NULL;
        e->n_waiting--;
        e->run[e->n_run++] = r;
        pthread_mutex_lock(&e->mu);
        e->met.prompt_tokens += (uint64_t)r->n_prompt;
        e->met.resumed_tokens += (uint64_t)r->n_given;
        pthread_mutex_unlock(&e->mu);
    }
}

/* The rows of the next step: decode rows, then chunks of what requests still have to feed
 * (prompt rows in the naive form, a resumed request's given tokens in the absorbed one) */
static int compose(engine *e) {
    int T = 0;
    for (int i = 0; i < e->n_run; i++) {
        req *r = e->run[i];
        if (r->n_fed < r->n_prompt + r->n_given) continue;
        e->row_req[T] = r;
        e->rows[T++] = (fwd_row){r->seq, r->n_prompt + r->n_gen - 1, r->last, FWD_LOGITS};
    }
    for (int i = 0; i < e->n_run && T < e->p.max_batch_tokens; i++) {
        req *r = e->run[i];
        int end = r->n_prompt + r->n_given, n = DH_MIN(end - r->n_fed, e->p.max_batch_tokens - T);
        for (int j = 0; j < n; j++) {
            int pos = r->n_fed + j;
            e->row_req[T] = r;
            e->rows[T++] = (fwd_row){r->seq, pos, r->toks[pos],
                                     (pos < r->n_prompt ? FWD_NAIVE : 0u) | (pos == end - 1 ? FWD_LOGITS : 0u)};
        }
        r->n_fed += DH_MAX(n, 0);
    }
    return T;
}

/* every request in flight fails with msg */
static void fail_all(engine *e, int code, const char *msg) {
    while (e->n_run) {
        emit_error(e, e->run[0], code, msg);
        count(e, &e->met.failed);
        drop_running(e, 0);
    }
    while (e->wait_head) {
        req *r = e->wait_head;
        e->wait_head = r->next;
        emit_error(e, r, code, msg);
        count(e, &e->met.failed);
        req_free(r);
    }
    e->wait_tail = NULL;
    e->n_waiting = 0;
}

static void attribute_domains(engine *e, int T) {
    int K = e->m->cfg.num_experts_per_tok;
    for (int l = 0; l < e->n_moe; l++)
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k++)
                e->row_req[t]->domain[e->m->cfg.expert_domains[e->route[((size_t)l * T + t) * K + k]]]++;
}

static void publish(engine *e, double step_s) {
    double share[CFG_N_DOMAINS];
    ls_domain_share(e->stats, &e->m->cfg, share);
    pthread_mutex_lock(&e->mu);
    e->met.waiting = e->n_waiting;
    e->met.running = e->n_run;
    e->met.kv_used_tokens = kv_total_tokens(e->kv) - kv_free_tokens(e->kv);
    fwd_prefill_stats pst;
    fwd_prefill_cache_stats(e->f, &pst);
    e->met.prefill_cache_bytes = pst.bytes, e->met.prefill_cache_reused = pst.reused;
    if (step_s >= 0) {
        e->met.steps++;
        hist_add(&e->met.step, step_s);
    }
    memcpy(e->met.domain_share, share, sizeof share);
    stats_copy(e->snap, e->stats);
    pthread_mutex_unlock(&e->mu);
}

int engine_run(engine *e) {
    int V = e->m->cfg.vocab_size;
    for (;;) {
        /* stopping is read before intake: whatever was submitted before the stop is taken now */
        pthread_mutex_lock(&e->mu);
        int stopping = e->stopping;
        double deadline = e->stop_deadline;
        pthread_mutex_unlock(&e->mu);
        intake(e);
        if (stopping) {
            while (e->wait_head) { /* not started: refuse */
                req *r = e->wait_head;
                e->wait_head = r->next;
                emit_error(e, r, DH_ECANCELLED, "the server is shutting down");
                count(e, &e->met.failed);
                req_free(r);
            }
            e->wait_tail = NULL, e->n_waiting = 0;
            if (dh_now() > deadline && e->n_run) {
                log_warn("the shutdown grace ran out: failing %d request%s still running", e->n_run,
                         e->n_run == 1 ? "" : "s");
                fail_all(e, DH_ECANCELLED, "the server is shutting down and this request did not finish "
                                           "within the shutdown grace (--shutdown-grace)");
            }
            if (e->n_run == 0) {
                publish(e, -1);
                return 0;
            }
        }
        admit(e);
        publish(e, -1);
        if (e->tick) e->tick(e->tick_ctx, e->met.steps, e->last_step_s); /* only this thread writes steps */
        if (e->n_run == 0) {
            pthread_mutex_lock(&e->mu);
            if (!e->in_head && !e->n_cancels && !e->stopping && !e->woken) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 100 * 1000000L;
                if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
                pthread_cond_timedwait(&e->wake, &e->mu, &ts);
            }
            e->woken = 0;
            pthread_mutex_unlock(&e->mu);
            continue;
        }
        // one step
        int T = compose(e);
        double t0 = dh_now();
        fwd_out out = {.logits = e->logits, .route_idx = e->route};
        int rc = fwd_step(e->f, e->rows, T, &out);
        if (rc) {
            fail_all(e, rc, "the cluster failed during this request (a worker was lost or stopped answering)");
            publish(e, -1);
            return rc;
        }
        attribute_domains(e, T);
        // draw every row with logits, on the pool's threads (a request has at most one such row
        // a step, its own sampler and counter-based draws), then take the tokens in row order
        draw_job dj = {.e = e, .V = V, .n = 0};
        for (int t = 0; t < T; t++)
            if (e->rows[t].flags & FWD_LOGITS) e->draw_row[dj.n++] = t;
        tp_run(nn_pool(), dj.n, draw_task, &dj);
        for (int d = 0; d < dj.n; d++) {
            req *r = e->row_req[e->draw_row[d]];
            if (on_token(e, r, e->draw_tok[d])) {
                for (int i = 0; i < e->n_run; i++)
                    if (e->run[i] == r) {
                        drop_running(e, i);
                        break;
                    }
            }
        }
        e->last_step_s = dh_now() - t0;
        publish(e, e->last_step_s);
    }
}
