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
 * token. Buffers grow to the largest batch seen and are reused. */
#include "worker.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "core/model.h"
#include "core/nn.h"
#include "core/version.h"
#include "darkhorse.pb-c.h"
#include "proto/exchange.h"
#include "proto/messages.h"
#include "core/experts.h"

typedef struct wstate {
    const worker_opts *o;
    int rank, size;
    model *m;
    experts_host *h;
    int cap;                    /* rows the buffers hold */
    unsigned char *in;          /* payload */
    size_t in_cap;
    float *x, *out;             /* [cap, D] */
    uint16_t *wire;             /* [cap, D] bf16 replies */
    /* counters for LoadReport */
    uint64_t tokens, pairs, bytes_in, bytes_out;
    double compute_s;
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

/* Receive a plan, load the experts it gives this rank, report Ready. */
static int apply_plan(wstate *s) {
    char *buf = NULL;
    int len = 0;
    xchg_bcast(&buf, &len, 0);
    place_plan *plan = msg_plan_unpack((const unsigned char *)buf, (size_t)len);
    free(buf);
    Darkhorse__Ready r = DARKHORSE__READY__INIT;
    char err[512] = "";
    r.rank = s->rank;
    if (plan) {
        size_t n = (size_t)plan->n_layers * plan->n_experts;
        uint8_t *host = xcalloc(n, 1);
        for (int l = 0; l < plan->n_layers; l++)
            for (int e = 0; e < plan->n_experts; e++) {
                int k;
                const int *ws = place_get(plan, l, e, &k);
                for (int i = 0; i < k; i++)
                    if (ws[i] == s->rank) host[(size_t)l * plan->n_experts + e] = 1, r.experts_hosted++;
            }
        model_params p = model_default_params();
        p.dense = 0, p.host = host, p.weights = s->o->weights;
        experts_free(s->h);
        s->h = NULL, s->cap = 0;
        model_free(s->m);
        s->m = model_load(s->o->model_dir, &p);
        if (s->m && s->m->n_layers != plan->n_layers) {
            snprintf(err, sizeof err, "rank %d: the plan has %d layers, the model %d", s->rank, plan->n_layers,
                     s->m->n_layers);
            model_free(s->m);
            s->m = NULL;
        }
        if (!s->m && !*err) snprintf(err, sizeof err, "rank %d could not load its experts (see its log)", s->rank);
        free(host);
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
    grow(s, DH_MAX(n, 1), want + 1);
    int *sc = xcalloc((size_t)P * 4, sizeof *sc), *sd = sc + P, *rcnt = sc + 2 * P, *rd = sc + 3 * P;
    rcnt[0] = (int)hd->bytes;
    MPI_Request req;
    MPI_Ialltoallv(NULL, sc, sd, MPI_BYTE, s->in, rcnt, rd, MPI_BYTE, MPI_COMM_WORLD, &req);
    xchg_wait(&req, 1, 0);
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
        return 1;
    }
    int *counts = xcalloc(4 * (size_t)s.size, sizeof *counts);
    for (int running = 1; running;) {
        MPI_Request req;
        xchg_header header, *hd = &header;
        xchg_iheader(NULL, hd, counts, &req);
        xchg_wait_idle(&req);
        switch (hd->op) {
        case XCHG_OP_MOE: serve_moe(&s, hd); break;
        case XCHG_OP_PLAN:
            if (apply_plan(&s) != 0) log_error("could not apply the new placement plan");
            break;
        case XCHG_OP_REPORT: send_report(&s); break;
        case XCHG_OP_SHUTDOWN: running = 0; break;
        default:
            log_error("unknown operation %d from the coordinator", hd->op);
            xchg_abort(1);
        }
    }
    free(counts);
    experts_free(s.h);
    free(s.in), free(s.x), free(s.out), free(s.wire);
    model_free(s.m);
    return 0;
}
