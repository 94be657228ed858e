/* worker.c: the expert worker's life: hello, plan, load, then serve the MoE exchange.
 *
 * Start-up mirrors coordinator/cluster.c step for step: every rank contributes a Hello to a
 * gather at rank 0 (protocol version, model identity, capabilities, or the error that keeps
 * this rank from serving); rank 0 broadcasts a Verdict, so that a mismatch stops every rank
 * with the same message instead of hanging; then the PlacementPlan; each worker maps only the
 * experts the plan gives it and reports Ready (resident memory, mapped bytes); a second
 * Verdict starts the service.
 *
 * Serving: wait (sleeping) for the next operation's header, then run it. A MoE operation
 * brings, for each token, the K expert slots that this worker hosts (-1 elsewhere), the gate
 * weights and the activations; the worker runs each hosted expert once over its tokens
 * (experts_run), tells the coordinator it is done (status message) and returns one vector per
 * token. Buffers grow to the largest batch seen and are reused.
 *
 * A live re-plan (exchange.h: PREPARE, COMMIT, CANCEL) moves only what changes. On PREPARE the
 * worker receives the new plan and starts a helper thread, at nice 19, that loads the experts
 * it gains, and only those, from this host's copy of the checkpoint into a load of their own
 * (a "part": model_load with the gained experts' mask, so a checkpoint replaced on disk since
 * start-up is noticed by its identity), converting them on that thread when --weights asks.
 * Those computed as stored the load copies into memory of the part's own, as the start-up load
 * does (docs/performance.md), or with --mmap the helper touches every page of them; either 4 MiB
 * at a time with a 1 ms pause between, so that serving goes on and the first layer after the
 * switch takes no page faults. The experts it keeps are not mapped again:
 * their views, pages and page-table entries stay as they are. Serving the old plan goes on
 * meanwhile on this thread, which alone calls MPI (FUNNELED); while a helper runs, the wait for
 * the next operation wakes every few milliseconds to see whether it is done, and sends the
 * coordinator its Ready (or the error) as soon as it is. COMMIT, between two operations, edits
 * the serving model's expert views in place (three matrix views copied per expert, so no MoE
 * layer sees both plans): the gained ones point into the new part, the lost ones are cleared.
 * The lost experts' memory is given back after the switch on a thread of its own (munmap,
 * converted copies freed; at the default priority, see drop_main), and a part none of whose experts serve any more is freed
 * whole.
 * A worker that gains nothing starts no helper and answers Ready at once (only the fault hooks
 * below make it go through the helper). CANCEL drops the new part. Each expert in use belongs
 * to one part: parts[0] is the start-up
 * load (whose views are the ones served), then one part per re-plan that gained experts.
 *
 * Test hooks, read at each PREPARE (never set them in production): DH_FAULT_MAP_FAIL=R makes
 * rank R load its new plan from a path that does not exist, so that its mapping fails through
 * the real error path and the coordinator must cancel the switch; DH_FAULT_MAP_DELAY=S makes
 * every worker wait S seconds before mapping, as a slow disk would. */
#define _GNU_SOURCE /* gettid */
#include "worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"
#include "core/model.h"
#include "core/nn.h"
#include "core/version.h"
#include "darkhorse.pb-c.h"
#include "proto/exchange.h"
#include "proto/messages.h"
#include "core/experts.h"

#define TOUCH_CHUNK (4u << 20)      /* bytes touched between two pauses of the helper */
#define TOUCH_PAUSE_NS 1000000L     /* the pause: the helper takes at most about half a core */

enum { PREP_NONE, PREP_MAPPING, PREP_READY, PREP_FAILED };

typedef struct prep {           /* a re-plan being prepared */
    int state;                  /* PREP_*: main thread only */
    int64_t attempt;            /* PREPARE's step */
    pthread_t thread;
    int thread_live;            /* started, not joined */
    atomic_int done;            /* the helper has finished (its outputs below are final) */
    atomic_int cancel;          /* the main thread no longer wants the result */
    /* the helper's inputs */
    int rank, weights, n_layers;
    int copy;                   /* give the gained experts memory of their own (not --mmap) */
    const char *dir;            /* the checkpoint (or the fault hook's missing path) */
    uint64_t identity;          /* the serving model's config_hash: the part must have it too */
    double delay_s;             /* DH_FAULT_MAP_DELAY */
    uint8_t *host;              /* [n_layers * E] the new plan's experts here */
    uint8_t *gain;              /* [n_layers * E] those of them not hosted now */
    /* its outputs */
    model *m;                   /* the part: the gained experts, copied (or mapped and touched);
                                   NULL on failure or when cancelled */
    char err[512];
    double seconds;
    uint32_t hosted, gained;
    /* the Ready in flight to the coordinator */
    unsigned char *ready_buf;
    MPI_Request ready_req;
    int ready_live;
} prep;

typedef struct part {           /* a load whose experts serve (see the top of this file) */
    model *m;
    int uses;                   /* experts of it in use */
} part;

typedef struct drop_item {      /* a lost expert, to give back after the switch */
    model *from;                /* the part that loaded it */
    int layer, e;
    ffn_weights view;           /* its views, as they were served */
} drop_item;

typedef struct drop_job {       /* what the drop thread gives back (it frees the job too) */
    drop_item *items;           /* [n_items] */
    int n_items;
    model **gone;               /* [n_gone] parts freed whole afterwards */
    int n_gone;
} drop_job;

typedef struct wstate {
    const worker_opts *o;
    int rank, size;
    model *m;                   /* the start-up load: its expert views are the plan in use */
    uint8_t *host;              /* [n_layers * E] the experts m's views serve */
    part *parts;                /* [n_parts] parts[0].m is m */
    int n_parts;
    model **owner;              /* [n_layers * E] the part holding each expert in use, or NULL */
    experts_host *h;
    prep pr;
    pthread_t drop_thread;      /* gives back memory the worker no longer serves */
    int drop_live;
    int cap;                    /* rows the buffers hold */
    unsigned char *in;          /* payload */
    size_t in_cap;
    float *x, *out;             /* [cap, D] */
    uint16_t *wire;             /* [cap, D] bf16 replies */
    /* counters for LoadReport */
    uint64_t tokens, pairs, bytes_in, bytes_out;
    double compute_s;
    FILE *log;                  /* the exchange log (xchg_log_open), or NULL */
} wstate;

static void mem_info(uint64_t *total, uint64_t *avail) {
    FILE *f = fopen("/proc/meminfo", "r");
    *total = *avail = 0;
    if (!f) return;
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) *total = kb * 1024;
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) *avail = kb * 1024;
    }
    fclose(f);
}

double worker_expert_gflops(int D, int F) {
    int T = 16;
    float *w = xmalloc((size_t)F * D * sizeof *w), *x = xmalloc((size_t)T * D * sizeof *x);
    float *y = xmalloc((size_t)T * F * sizeof *y);
    for (size_t i = 0; i < (size_t)F * D; i++) w[i] = (float)(i % 7) * 0.01f;
    for (size_t i = 0; i < (size_t)T * D; i++) x[i] = (float)(i % 5) * 0.1f;
    wmat W = wt_f32(w, F, D);
    nn_reserve(T, D);
    /* the best of five windows of 20 ms: a busy neighbour only ever slows a window down */
    double best = 0;
    for (int win = 0; win < 5; win++) {
        int reps = 0;
        double t0 = dh_now(), dt;
        do {
            nn_matmul(y, x, &W, T);
            reps++;
            dt = dh_now() - t0;
        } while (dt < 0.02 && reps < 1000);
        best = DH_MAX(best, 2.0 * T * F * D * reps / dt / 1e9);
    }
    free(w), free(x), free(y);
    return best;
}

unsigned char *worker_hello_pack(const char *model_dir, int measure, size_t *len) {
    Darkhorse__Hello h = DARKHORSE__HELLO__INIT;
    char host[256] = "?", err[512] = "";
    gethostname(host, sizeof host);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    h.protocol_version = XCHG_PROTOCOL;
    h.version = DH_VERSION;
    h.rank = xchg_rank();
    h.hostname = host;
    h.cores = cores > 0 ? (int32_t)cores : 0;
    mem_info(&h.mem_total_bytes, &h.mem_available_bytes);
    h.threads = nn_threads();
    h.kernels = (char *)nn_kernels()->name;
    model_params p = model_default_params();
    p.dense = 0, p.experts = 0;
    model *meta = model_load(model_dir, &p);
    if (meta) {
        h.model_hash = meta->config_hash;
        if (measure) h.expert_gflops = worker_expert_gflops(meta->cfg.hidden_size, meta->cfg.moe_intermediate_size);
    } else {
        snprintf(err, sizeof err, "cannot load the checkpoint %s on host %s (see that rank's log)", model_dir, host);
        h.error_code = DH_ENOTFOUND;
        h.error = err;
    }
    model_free(meta);
    *len = darkhorse__hello__get_packed_size(&h);
    unsigned char *buf = xmalloc(*len + 1);
    darkhorse__hello__pack(&h, buf);
    return buf;
}

static int send_hello(wstate *s) {
    size_t len;
    unsigned char *buf = worker_hello_pack(s->o->model_dir, 1, &len);
    int rc = xchg_gather(buf, (int)len, NULL, NULL, 0);
    free(buf);
    return rc;
}

/* Receive a Verdict: 0 to go on, 1 to stop (the reason logged). */
static int recv_verdict(void) {
    char *buf = NULL;
    int len = 0;
    xchg_bcast(&buf, &len, 0);
    Darkhorse__Verdict *v = darkhorse__verdict__unpack(NULL, (size_t)len, (const uint8_t *)buf);
    free(buf);
    int stop = !v || !v->ok;
    if (stop) log_error("the cluster cannot start: %s", v ? v->error : "malformed verdict");
    darkhorse__verdict__free_unpacked(v, NULL);
    return stop;
}

/* The experts plan gives this rank: [n_layers * E] flags (malloc'd), *count of them. */
static uint8_t *host_mask(const place_plan *plan, int rank, uint32_t *count) {
    uint8_t *host = xcalloc((size_t)plan->n_layers * plan->n_experts + 1, 1);
    *count = 0;
    for (int l = 0; l < plan->n_layers; l++)
        for (int e = 0; e < plan->n_experts; e++) {
            int k;
            const int *ws = place_get(plan, l, e, &k);
            for (int i = 0; i < k; i++)
                if (ws[i] == rank) host[(size_t)l * plan->n_experts + e] = 1, ++*count;
        }
    return host;
}

/* The plan that follows a PREPARE or the start-up verdict: received by every rank. NULL
 * (logged) when malformed. */
static place_plan *recv_plan(void) {
    char *buf = NULL;
    int len = 0;
    xchg_bcast(&buf, &len, 0);
    place_plan *plan = msg_plan_unpack((const unsigned char *)buf, (size_t)len);
    free(buf);
    return plan;
}

/* Receive the start-up plan, load the experts it gives this rank, report Ready. */
static int apply_plan(wstate *s) {
    place_plan *plan = recv_plan();
    Darkhorse__Ready r = DARKHORSE__READY__INIT;
    char err[512] = "";
    r.rank = s->rank;
    if (plan) {
        s->host = host_mask(plan, s->rank, &r.experts_hosted);
        model_params p = model_default_params();
        p.dense = 0, p.host = s->host, p.weights = s->o->weights, p.copy = !s->o->mmap;
        s->m = model_load(s->o->model_dir, &p);
        if (s->m && s->m->n_layers != plan->n_layers) {
            snprintf(err, sizeof err, "rank %d: the plan has %d layers, the model %d", s->rank, plan->n_layers,
                     s->m->n_layers);
            model_free(s->m);
            s->m = NULL;
        }
        if (!s->m && !*err) snprintf(err, sizeof err, "rank %d could not load its experts (see its log)", s->rank);
        if (s->m) {
            size_t n = (size_t)plan->n_layers * plan->n_experts;
            s->owner = xcalloc(n + 1, sizeof *s->owner);
            for (size_t i = 0; i < n; i++) s->owner[i] = s->host[i] ? s->m : NULL;
            s->parts = xmalloc(sizeof *s->parts);
            s->parts[0] = (part){s->m, (int)r.experts_hosted};
            s->n_parts = 1;
        }
        place_free(plan);
    } else {
        snprintf(err, sizeof err, "rank %d received a malformed placement plan", s->rank);
    }
    if (*err) r.error_code = DH_EFORMAT, r.error = err;
    r.rss_bytes = dh_rss_bytes();
    r.mapped_bytes = s->m ? model_weight_bytes(s->m) : 0;
    size_t plen = darkhorse__ready__get_packed_size(&r);
    unsigned char *pb = xmalloc(plen + 1);
    darkhorse__ready__pack(&r, pb);
    xchg_gather(pb, (int)plen, NULL, NULL, 0);
    free(pb);
    return *err ? DH_EFORMAT : 0;
}

/* --- live re-plan --- */

static void nap_ns(long ns) {
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&ts, NULL);
}

/* Read one byte of every page of the part's experts (the gained ones), TOUCH_CHUNK bytes between
 * two pauses, so that the first layer after the switch takes no page faults. Stops early when
 * cancelled. */
static void touch_experts(prep *p) {
    const model *m = p->m;
    int E = m->cfg.n_routed_experts;
    size_t since = 0;
    volatile unsigned char sink = 0;
    for (int l = 0; l < m->n_layers; l++) {
        if (!m->layers[l].is_moe) continue;
        for (int e = 0; e < E; e++) {
            const ffn_weights *f = &m->layers[l].moe.experts[e];
            const wmat *ws[3] = {&f->gate_proj, &f->up_proj, &f->down_proj};
            for (int k = 0; k < 3 && f->gate_proj.rows; k++) {
                const unsigned char *b = (const unsigned char *)ws[k]->p.bf16;
                size_t bytes = wt_bytes(ws[k]->dtype, (size_t)ws[k]->rows, (size_t)ws[k]->cols);
                for (size_t off = 0; b && off < bytes; off += 4096) {
                    sink ^= b[off];
                    if ((since += 4096) < TOUCH_CHUNK) continue;
                    since = 0;
                    if (atomic_load(&p->cancel)) return;
                    nap_ns(TOUCH_PAUSE_NS);
                }
            }
        }
    }
    (void)sink;
}

/* The load's pause (model_params.pause) between two chunks it copies: stop when cancelled */
static int pause_unless_cancelled(void *ctx) {
    prep *p = ctx;
    if (atomic_load(&p->cancel)) return 1;
    nap_ns(TOUCH_PAUSE_NS);
    return 0;
}

/* The helper thread: load the gained experts into a part of their own, touch them, say done.
 * It touches nothing of the serving model. No MPI here. */
static void *prep_main(void *arg) {
    prep *p = arg;
    double t0 = dh_now();
    setpriority(PRIO_PROCESS, (id_t)gettid(), 19); /* serving first; a failure only costs speed */
    for (double until = t0 + p->delay_s; dh_now() < until && !atomic_load(&p->cancel);) nap_ns(10000000L);
    model_params mp = model_default_params();
    mp.dense = 0, mp.host = p->gain, mp.weights = p->weights, mp.own_thread = 1;
    mp.copy = p->copy, mp.pause = pause_unless_cancelled, mp.pause_ctx = p;
    p->m = atomic_load(&p->cancel) ? NULL : model_load(p->dir, &mp);
    const char *wrong = !p->m ? NULL
                        : p->m->n_layers != p->n_layers ? "has another number of layers than the plan"
                        : p->m->config_hash != p->identity ? "is no longer the checkpoint this rank serves"
                        : NULL;
    if (wrong) {
        snprintf(p->err, sizeof p->err, "rank %d: the checkpoint at %.300s %s (its identity or layers changed "
                 "since start-up)", p->rank, p->dir, wrong);
        model_free(p->m);
        p->m = NULL;
    } else if (!p->m && !atomic_load(&p->cancel)) {
        snprintf(p->err, sizeof p->err, "rank %d could not map the %u experts its new plan adds from %.300s (see "
                 "that rank's log)", p->rank, p->gained, p->dir);
    }
    if (p->m && !p->copy) touch_experts(p);
    p->seconds = dh_now() - t0;
    atomic_store(&p->done, 1);
    return NULL;
}

/* At the default priority, unlike the helper: munmap holds this process's address-space lock,
 * and a thread at nice 19 starved on a loaded machine while holding it would stall any page
 * fault or mapping of the serving thread behind it; the drop is a few milliseconds of work. */
static void *drop_main(void *arg) {
    drop_job *j = arg;
    for (int i = 0; i < j->n_items; i++) model_release_expert(j->items[i].from, j->items[i].layer, j->items[i].e,
                                                              &j->items[i].view);
    for (int i = 0; i < j->n_gone; i++) model_free(j->gone[i]);
    free(j->items), free(j->gone), free(j);
    return NULL;
}

/* Wait for the last drop (it takes milliseconds, and runs long before the next re-plan): the
 * parts it gives back from must not be loaded into or measured meanwhile. */
static void join_drop(wstate *s) {
    if (s->drop_live) pthread_join(s->drop_thread, NULL);
    s->drop_live = 0;
}

/* Give back what job lists on a thread of its own, so that the next layer does not wait for the
 * munmaps (or here, if no thread can be started). Takes job. */
static void drop_start(wstate *s, drop_job *j) {
    join_drop(s);
    s->drop_live = pthread_create(&s->drop_thread, NULL, drop_main, j) == 0;
    if (!s->drop_live) drop_main(j);
}

/* Free a whole part (a prepared plan never used) after the switch machinery is done with it. */
static void drop_model(wstate *s, model *m) {
    if (!m) return;
    drop_job *j = xcalloc(1, sizeof *j);
    j->gone = xmalloc(sizeof *j->gone);
    j->gone[j->n_gone++] = m;
    drop_start(s, j);
}

/* Bytes of weights mapped or converted by this rank now: the parts in use and a prepared one. */
static uint64_t mapped_bytes(const wstate *s) {
    uint64_t b = s->pr.m ? model_weight_bytes(s->pr.m) : 0;
    for (int i = 0; i < s->n_parts; i++) b += model_weight_bytes(s->parts[i].m);
    return b;
}

/* The Ready for a PREPARE, sent without waiting (the buffer lives until the send completes). */
static void send_prep_ready(wstate *s, int code, const char *err) {
    prep *p = &s->pr;
    Darkhorse__Ready r = DARKHORSE__READY__INIT;
    r.rank = s->rank;
    r.attempt = (uint64_t)p->attempt;
    r.experts_hosted = p->hosted;
    r.experts_gained = p->gained;
    r.map_seconds = p->seconds;
    r.rss_bytes = dh_rss_bytes();
    r.mapped_bytes = mapped_bytes(s);
    if (code) r.error_code = code, r.error = (char *)err;
    if (p->ready_live) xchg_wait(&p->ready_req, 1, 0); /* the previous one: long delivered */
    free(p->ready_buf);
    size_t len = darkhorse__ready__get_packed_size(&r);
    p->ready_buf = xmalloc(len + 1);
    darkhorse__ready__pack(&r, p->ready_buf);
    MPI_Isend(p->ready_buf, (int)len, MPI_BYTE, 0, XCHG_TAG_READY, MPI_COMM_WORLD, &p->ready_req);
    p->ready_live = 1;
}

/* After the helper finished: join it, and report (or, when cancelled, drop what it mapped). */
static void poll_prep(wstate *s) {
    prep *p = &s->pr;
    if (p->ready_live) {
        int flag = 0;
        MPI_Test(&p->ready_req, &flag, MPI_STATUS_IGNORE);
        p->ready_live = !flag;
    }
    if (p->state != PREP_MAPPING || !atomic_load(&p->done)) return;
    pthread_join(p->thread, NULL);
    p->thread_live = 0;
    if (atomic_load(&p->cancel)) {
        drop_model(s, p->m);
        p->m = NULL;
        p->state = PREP_NONE;
        send_prep_ready(s, DH_ECANCELLED, "cancelled by the coordinator");
        return;
    }
    p->state = p->m ? PREP_READY : PREP_FAILED;
    if (p->m)
        log_info("plan attempt %lld mapped: %u experts, %u of them new (only those mapped), in %.2f s; %llu bytes "
                 "of them in memory of their own (copied or converted)%s", (long long)p->attempt, p->hosted, p->gained,
                 p->seconds, (unsigned long long)p->m->owned_bytes,
                 p->copy ? "" : " (--mmap: the rest compute on the file's pages)");
    else
        log_error("%s", p->err);
    send_prep_ready(s, p->m ? 0 : DH_EIO, p->err);
}

/* Wait until the helper is done, however long it takes (a cancelled one stops soon). */
static void join_prep(wstate *s) {
    while (s->pr.state == PREP_MAPPING) {
        atomic_store(&s->pr.cancel, 1);
        poll_prep(s);
        if (s->pr.state == PREP_MAPPING) nap_ns(1000000L);
    }
}

/* PREPARE: receive the plan, start mapping what it adds in the background. */
static void prepare(wstate *s, int64_t attempt) {
    prep *p = &s->pr;
    place_plan *plan = recv_plan();
    join_prep(s); /* a cancelled one still running: it answered its own attempt */
    if (p->state == PREP_READY) drop_model(s, p->m); /* prepared, never committed nor cancelled */
    join_drop(s);
    free(p->host), free(p->gain);
    p->host = p->gain = NULL, p->m = NULL, p->err[0] = 0, p->seconds = 0, p->hosted = p->gained = 0;
    p->attempt = attempt;
    p->state = PREP_FAILED;
    if (!plan || plan->n_layers != s->m->n_layers || plan->n_experts != s->m->cfg.n_routed_experts) {
        snprintf(p->err, sizeof p->err, "rank %d received a %s placement plan", s->rank,
                 plan ? "wrongly sized" : "malformed");
        place_free(plan);
        send_prep_ready(s, DH_EFORMAT, p->err);
        return;
    }
    size_t n = (size_t)plan->n_layers * plan->n_experts;
    p->host = host_mask(plan, s->rank, &p->hosted);
    p->gain = xcalloc(n + 1, 1);
    for (size_t i = 0; i < n; i++) {
        p->gain[i] = p->host[i] && !s->host[i];
        p->gained += p->gain[i];
    }
    p->rank = s->rank, p->weights = s->o->weights, p->copy = !s->o->mmap, p->n_layers = plan->n_layers, p->dir = s->o->model_dir;
    p->identity = s->m->config_hash;
    place_free(plan);
    const char *fail = getenv("DH_FAULT_MAP_FAIL"), *delay = getenv("DH_FAULT_MAP_DELAY");
    if (fail && atoi(fail) == s->rank) {
        p->dir = "/nonexistent/DH_FAULT_MAP_FAIL";
        log_warn("test hook DH_FAULT_MAP_FAIL=%s: mapping the new plan from %s", fail, p->dir);
    }
    p->delay_s = delay ? atof(delay) : 0;
    if (p->gained == 0 && strcmp(p->dir, s->o->model_dir) == 0 && p->delay_s <= 0) {
        /* nothing to map: ready at once (a helper at nice 19 may wait long for a core to start) */
        p->state = PREP_READY;
        log_info("plan attempt %lld: %u experts, none new: ready at once", (long long)attempt, p->hosted);
        send_prep_ready(s, 0, "");
        return;
    }
    atomic_store(&p->done, 0);
    atomic_store(&p->cancel, 0);
    if (pthread_create(&p->thread, NULL, prep_main, p) != 0) {
        snprintf(p->err, sizeof p->err, "rank %d cannot start a thread to map its new plan", s->rank);
        send_prep_ready(s, DH_EIO, p->err);
        return;
    }
    p->thread_live = 1;
    p->state = PREP_MAPPING;
    log_info("plan attempt %lld: %u experts, mapping the %u new ones while serving", (long long)attempt, p->hosted,
             p->gained);
}

/* The part holding m in s->parts, which has it. */
static part *part_of(wstate *s, const model *m) {
    for (int i = 0; i < s->n_parts; i++)
        if (s->parts[i].m == m) return &s->parts[i];
    DH_ASSERT(0);
    return NULL;
}

/* COMMIT: the prepared plan from this operation on. The serving views change in place (the
 * gained experts from the new part, the lost ones cleared); the lost ones' memory, and parts
 * left with nothing in use, are given back on the drop thread. */
static void commit(wstate *s, int64_t attempt) {
    prep *p = &s->pr;
    if (p->state != PREP_READY || p->attempt != attempt) {
        log_error("the coordinator committed plan attempt %lld, but this rank has %s attempt %lld ready",
                  (long long)attempt, p->state == PREP_READY ? "only" : "no", (long long)p->attempt);
        xchg_abort(1);
    }
    int E = s->m->cfg.n_routed_experts;
    size_t n = (size_t)s->m->n_layers * E;
    drop_job *j = xcalloc(1, sizeof *j);
    j->items = xmalloc((n + 1) * sizeof *j->items);
    j->gone = xmalloc(((size_t)s->n_parts + 2) * sizeof *j->gone);
    if (p->m) { /* NULL when nothing was gained */
        s->parts = xrealloc(s->parts, ((size_t)s->n_parts + 1) * sizeof *s->parts);
        s->parts[s->n_parts++] = (part){p->m, 0};
    }
    for (size_t i = 0; i < n; i++) {
        ffn_weights *v = &s->m->layers[i / (size_t)E].moe.experts[i % (size_t)E];
        if (s->host[i] && !p->host[i]) { /* lost */
            j->items[j->n_items++] = (drop_item){s->owner[i], (int)(i / (size_t)E), (int)(i % (size_t)E), *v};
            part_of(s, s->owner[i])->uses--;
            memset(v, 0, sizeof *v);
            s->owner[i] = NULL;
        } else if (p->gain[i]) { /* p->m is the last part */
            *v = p->m->layers[i / (size_t)E].moe.experts[i % (size_t)E];
            s->owner[i] = p->m;
            s->parts[s->n_parts - 1].uses++;
        }
    }
    for (int i = 1; i < s->n_parts;) /* parts[0] holds the views: it stays */
        if (s->parts[i].uses == 0) j->gone[j->n_gone++] = s->parts[i].m, s->parts[i] = s->parts[--s->n_parts];
        else i++;
    uint8_t *h = s->host;
    s->host = p->host, p->host = h;
    p->m = NULL;
    p->state = PREP_NONE;
    log_info("plan attempt %lld in use: %u experts (%u gained, %d given back after the switch)", (long long)attempt,
             p->hosted, p->gained, j->n_items);
    drop_start(s, j);
}

/* CANCEL: drop the prepared plan (a helper still mapping stops soon and answers then). */
static void cancel(wstate *s, int64_t attempt) {
    prep *p = &s->pr;
    if (p->attempt != attempt) return;
    if (p->state == PREP_MAPPING) atomic_store(&p->cancel, 1);
    if (p->state == PREP_READY) drop_model(s, p->m), p->m = NULL;
    if (p->state != PREP_MAPPING) p->state = PREP_NONE;
    log_info("plan attempt %lld cancelled by the coordinator", (long long)attempt);
}

/* The next operation's header: while a helper runs, look every 5 ms whether it is done. */
static void wait_header(wstate *s, MPI_Request *req) {
    poll_prep(s);
    while (s->pr.state == PREP_MAPPING || s->pr.ready_live) {
        if (xchg_wait(req, 1, dh_now() + 0.005) == 0) return;
        poll_prep(s);
    }
    xchg_wait_idle(req);
}

/* At shutdown: a helper still running stops and is joined, and nothing more is sent (the
 * coordinator no longer listens; a Ready it never took is cancelled). The parts are the
 * caller's to free. */
static void prep_free(wstate *s) {
    prep *p = &s->pr;
    if (p->thread_live) {
        atomic_store(&p->cancel, 1);
        pthread_join(p->thread, NULL);
        p->thread_live = 0;
    }
    if (p->ready_live) {
        int flag = 0;
        MPI_Test(&p->ready_req, &flag, MPI_STATUS_IGNORE);
        if (!flag) MPI_Cancel(&p->ready_req);
        if (!flag) MPI_Wait(&p->ready_req, MPI_STATUS_IGNORE);
    }
    free(p->ready_buf);
    model_free(p->m);
    free(p->host), free(p->gain);
    join_drop(s);
}

static void grow(wstate *s, int n, size_t bytes) {
    if (bytes > s->in_cap) {
        free(s->in);
        s->in = xmalloc(bytes);
        s->in_cap = bytes;
    }
    if (n <= s->cap) return;
    int D = s->m->cfg.hidden_size;
    experts_free(s->h);
    free(s->x), free(s->out), free(s->wire);
    s->cap = n;
    s->h = experts_new(s->m, n);
    s->x = xmalloc(xmul((size_t)n * D, sizeof *s->x));
    s->out = xmalloc(xmul((size_t)n * D, sizeof *s->out));
    s->wire = xmalloc(xmul((size_t)n * D, sizeof *s->wire));
}

static void serve_moe(wstate *s, const xchg_header *hd) {
    int n = hd->n_tokens, K = hd->top_k, D = s->m->cfg.hidden_size, P = s->size;
    size_t act = hd->wire == XCHG_WIRE_BF16 ? 2 : 4;
    size_t want = (size_t)n * K * 8 + (size_t)n * D * act;
    if ((size_t)hd->bytes != want || (size_t)hd->reply_bytes != (size_t)n * D * act) {
        log_error("layer %d: a MoE request of %lld bytes for %d tokens does not match the protocol", hd->layer,
                  (long long)hd->bytes, n);
        xchg_abort(1);
    }
    double t_header = dh_now();
    grow(s, DH_MAX(n, 1), want + 1);
    int *sc = xcalloc((size_t)P * 4, sizeof *sc), *sd = sc + P, *rcnt = sc + 2 * P, *rd = sc + 3 * P;
    rcnt[0] = (int)hd->bytes;
    MPI_Request req;
    MPI_Ialltoallv(NULL, sc, sd, MPI_BYTE, s->in, rcnt, rd, MPI_BYTE, MPI_COMM_WORLD, &req);
    xchg_wait(&req, 1, 0);
    double t_request = dh_now();
    const int32_t *ids = (const int32_t *)s->in;
    const float *w = (const float *)(ids + (size_t)n * K);
    const void *xa = w + (size_t)n * K;
    if (hd->wire == XCHG_WIRE_BF16)
        for (size_t i = 0; i < (size_t)n * D; i++) s->x[i] = wt_bf16_to_f32(((const uint16_t *)xa)[i]);
    else
        memcpy(s->x, xa, (size_t)n * D * sizeof(float));
    double t0 = dh_now();
    int rc = n ? experts_run(s->h, hd->layer, s->x, n, ids, w, K, s->out) : 0;
    xchg_status st = {.rank = s->rank, .n_tokens = n, .error = rc, .compute_s = dh_now() - t0};
    for (int i = 0; i < n * K; i++) st.n_pairs += ids[i] >= 0;
    if (rc) memset(s->out, 0, (size_t)n * D * sizeof(float));
    MPI_Request sreq;
    MPI_Isend(&st, sizeof st, MPI_BYTE, 0, XCHG_TAG_STATUS, MPI_COMM_WORLD, &sreq);
    const void *reply = s->out;
    if (hd->wire == XCHG_WIRE_BF16) {
        for (size_t i = 0; i < (size_t)n * D; i++) s->wire[i] = wt_f32_to_bf16(s->out[i]);
        reply = s->wire;
    }
    memset(sc, 0, (size_t)P * 4 * sizeof *sc);
    sc[0] = (int)hd->reply_bytes;
    MPI_Ialltoallv(reply, sc, sd, MPI_BYTE, NULL, rcnt, rd, MPI_BYTE, MPI_COMM_WORLD, &req);
    xchg_wait(&req, 1, 0);
    xchg_wait(&sreq, 1, 0);
    if (s->log)
        fprintf(s->log, "%lld\t%d\t%d\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\n", (long long)hd->step, hd->layer, n, t_header,
                t_request, t0, t0 + st.compute_s, dh_now());
    free(sc);
    s->tokens += (uint64_t)n;
    s->pairs += (uint64_t)st.n_pairs;
    s->bytes_in += (uint64_t)hd->bytes;
    s->bytes_out += (uint64_t)hd->reply_bytes;
    s->compute_s += st.compute_s;
}

static void send_report(wstate *s) {
    Darkhorse__LoadReport r = DARKHORSE__LOAD_REPORT__INIT;
    r.rank = s->rank, r.tokens = s->tokens, r.expert_tokens = s->pairs, r.compute_seconds = s->compute_s;
    r.bytes_in = s->bytes_in, r.bytes_out = s->bytes_out, r.rss_bytes = dh_rss_bytes();
    size_t len = darkhorse__load_report__get_packed_size(&r);
    unsigned char *buf = xmalloc(len + 1);
    darkhorse__load_report__pack(&r, buf);
    xchg_gather(buf, (int)len, NULL, NULL, 0);
    free(buf);
}

int worker_main(const worker_opts *o) {
    wstate s = {.o = o, .rank = xchg_rank(), .size = xchg_size()};
    // start-up: hello, verdict, plan, ready, verdict
    send_hello(&s);
    if (recv_verdict()) return 1;
    apply_plan(&s);
    if (recv_verdict()) {
        model_free(s.m);
        free(s.host), free(s.parts), free(s.owner);
        return 1;
    }
    int *counts = xcalloc(4 * (size_t)s.size, sizeof *counts);
    s.log = xchg_log_open(s.rank);
    for (int running = 1; running;) {
        MPI_Request req;
        xchg_header header, *hd = &header;
        xchg_iheader(NULL, hd, counts, &req);
        wait_header(&s, &req);
        switch (hd->op) {
        case XCHG_OP_MOE: serve_moe(&s, hd); break;
        case XCHG_OP_PREPARE: prepare(&s, hd->step); break;
        case XCHG_OP_COMMIT: commit(&s, hd->step); break;
        case XCHG_OP_CANCEL: cancel(&s, hd->step); break;
        case XCHG_OP_REPORT: send_report(&s); break;
        case XCHG_OP_SHUTDOWN: running = 0; break;
        default:
            log_error("unknown operation %d from the coordinator", hd->op);
            xchg_abort(1);
        }
    }
    free(counts);
    if (s.log) fclose(s.log);
    prep_free(&s);
    experts_free(s.h);
    free(s.in), free(s.x), free(s.out), free(s.wire);
    for (int i = 0; i < s.n_parts; i++) model_free(s.parts[i].m); /* parts[0] is s.m */
    free(s.parts), free(s.owner);
    free(s.host);
    return 0;
}
