/* simulate.c: the trace replay (see simulate.h and docs/placement.md).
 *
 * A step is a list of B token indices into the trace, made by a cursor over the selected
 * sequences (prefill) or by B slots (decode). For each MoE layer j of the plan, the step's
 * [B, K] expert ids of trace layer floor(j * L / M) go through disp_assign() with the plan, as
 * in the coordinator; the (token, slot) -> worker answer gives:
 *   load[w]   pairs of worker w            -> imbalance max(load) / mean(load)
 *   fan-out   distinct workers of a token  -> mean over (token, layer)
 *   rows[w]   tokens with a slot on w      -> bytes as moe_mpi.c packs them: request
 *             rows * (K * 8 + D * wire), ids int32 and weights f32 per slot; reply rows * D * wire
 *   time      max over w of 2 * latency + (request + reply) * 8 / bandwidth
 *             + load[w] * 6 * D * F / rate[w]
 * The time model is a star: each worker has its own link to the coordinator, and the
 * exchange waits for the slowest worker (moe_mpi.c's finish waits for every reply). 6 * D * F
 * is the SwiGLU's flops per (token, expert): three [D, F] products of 2 flops a term, the rate
 * moe_mpi.c's deadline assumes.
 *
 * The coordinator and the host (docs/cluster.md), when coord_ms or ranks_per_host is set: a
 * step is the coordinator's own work (coord_ms, measured at one core: attention, the dense
 * layer, the head) plus, per MoE layer, the router (2 * D * E flops a token) and the exchange
 * from dispatch to combine, which also holds the shared experts the coordinator computes while
 * the workers work (6 * D * Fs flops a token): exchange = max(slowest worker, shared). With R
 * ranks on one host of C cores, during the exchange every rank is runnable (the workers
 * compute, the coordinator computes the shared experts), so a worker computes at min(1, C / R)
 * of a core and the shared experts run at Tc * min(1, C / (Tc + R - 1)) cores (Tc: the
 * coordinator's threads). Outside it (the coordinator's own work and the router) the workers
 * wait for the next request, and a waiting rank sleeps between polls (docs/cluster.md, "Waiting
 * ranks do not spin"), so the coordinator has min(Tc, C) cores. Without a host, workers at one
 * core and the coordinator at Tc cores. With coord_link_gbps, the coordinator's own link carries all
 * the requests (and, the other way, all the replies): the exchange takes at least 2 * latency
 * + max(requests, replies) * 8 / its bandwidth. With mem_gbs, a worker also reads the weights
 * of each distinct expert it uses in a (layer, step) (expert_bytes each: small batches are
 * bound by this, not by flops), at the host's bandwidth shared by its R - 1 workers (the
 * coordinator's shared experts read theirs at the same share). Entries with id -1 (a layer a live trace did not record) are skipped, and a
 * (layer, step) with no pairs at all counts in neither imbalance, fan-out, bytes nor time. */
#include "simulate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

sim_params sim_default_params(void) {
    return (sim_params){.batch = 64, .mode = SIM_DECODE, .half = TRACE_SEQS_ALL, .dispatch = DISP_SMART,
                        .wire_bytes = 4, .link_gbps = SIM_DEFAULT_LINK_GBPS, .link_us = SIM_DEFAULT_LINK_US};
}

double sim_quantile(double *v, size_t n, double q) {
    if (n == 0) return 0;
    qsort(v, n, sizeof *v, dh_cmp_double);
    double h = q * (double)(n - 1);
    size_t lo = (size_t)floor(h);
    if (lo + 1 >= n) return v[n - 1];
    return v[lo] + (h - (double)lo) * (v[lo + 1] - v[lo]);
}

/* The step maker: B token indices per step. */
typedef struct stepper {
    const trace *t;
    const int *order;   /* selected sequences, replay order */
    int n_order;
    int B;
    sim_mode mode;
    int next;           /* prefill: the sequence of order[] being cut; decode: the next to start */
    int off;            /* prefill: the next token of order[next] */
    int *slot_seq;      /* [B] decode: sequence of each slot */
    int *slot_off;      /* [B] decode: next token of each slot */
} stepper;

static void stepper_init(stepper *s, const trace *t, const int *order, int n, int B, sim_mode mode) {
    *s = (stepper){.t = t, .order = order, .n_order = n, .B = B, .mode = mode};
    s->slot_seq = xcalloc((size_t)B, sizeof *s->slot_seq);
    s->slot_off = xcalloc((size_t)B, sizeof *s->slot_off);
    if (mode == SIM_DECODE) {
        for (int k = 0; k < B; k++) {
            s->slot_seq[k] = k < n ? order[k] : -1;
            if (k < n) s->slot_off[k] = (int)((long long)k * t->seqs[order[k]].n_tokens / B);
        }
        s->next = DH_MIN(B, n);
    }
}

static void stepper_free(stepper *s) { free(s->slot_seq), free(s->slot_off); }

/* The next step's B token indices into tok[]: 1, or 0 when it cannot be filled. */
static int next_step(stepper *s, size_t *tok) {
    const trace *t = s->t;
    if (s->mode == SIM_PREFILL) {
        for (int i = 0; i < s->B; i++) {
            while (s->next < s->n_order && s->off >= t->seqs[s->order[s->next]].n_tokens) s->next++, s->off = 0;
            if (s->next >= s->n_order) return 0;
            tok[i] = t->seqs[s->order[s->next]].first + (size_t)s->off++;
        }
        return 1;
    }
    for (int k = 0; k < s->B; k++) { /* replace finished sequences first: the step must be whole */
        while (s->slot_seq[k] >= 0 && s->slot_off[k] >= t->seqs[s->slot_seq[k]].n_tokens) {
            s->slot_seq[k] = s->next < s->n_order ? s->order[s->next++] : -1;
            s->slot_off[k] = 0;
        }
        if (s->slot_seq[k] < 0) return 0;
    }
    for (int k = 0; k < s->B; k++) tok[k] = t->seqs[s->slot_seq[k]].first + (size_t)s->slot_off[k]++;
    return 1;
}

/* Scratch and running sums of one replay. */
typedef struct sim_run_state {
    int W, K, B;
    int *idx, *wk;        /* [B, K] */
    int *load, *rows;     /* [W + 1] */
    int *touched;         /* [W + 1] distinct experts of each worker this (layer, step) */
    uint8_t *used;        /* [W + 1, E] */
    int E;
    double touched_sum;
    uint64_t touched_n;
    double *imb;          /* imbalance of every (layer, step) */
    size_t n_imb, cap_imb;
    double fan_sum;
    uint64_t fan_n;
    double bytes;
    double compute_s;     /* the slowest worker's compute (no link terms), summed over (layer, step) */
} sim_run_state;

/* One (layer, step): assign, count, and return the predicted exchange seconds. */
static double layer_step(sim_run_state *st, disp_state *d, const place_plan *p, int pl, const sim_params *sp,
                         sim_result *r) {
    int W = st->W, K = st->K, B = st->B;
    disp_assign(d, p, pl, st->idx, B, K, st->wk);
    memset(st->load, 0, (size_t)(W + 1) * sizeof *st->load);
    memset(st->rows, 0, (size_t)(W + 1) * sizeof *st->rows);
    memset(st->touched, 0, (size_t)(W + 1) * sizeof *st->touched);
    memset(st->used, 0, (size_t)(W + 1) * st->E);
    uint64_t pairs = 0;
    for (int t = 0; t < B; t++) {
        const int *tw = st->wk + (size_t)t * K;
        int distinct = 0;
        for (int k = 0; k < K; k++) {
            if (tw[k] < 0) continue;
            st->load[tw[k]]++, pairs++;
            uint8_t *u = &st->used[(size_t)tw[k] * st->E + st->idx[t * K + k]];
            if (!*u) *u = 1, st->touched[tw[k]]++;
            int first = 1;
            for (int k2 = 0; k2 < k; k2++) first &= tw[k2] != tw[k];
            if (first) st->rows[tw[k]]++, distinct++;
        }
        if (distinct) st->fan_sum += distinct, st->fan_n++;
    }
    if (pairs) {
        int mx = 0;
        for (int w = 1; w <= W; w++) mx = DH_MAX(mx, st->load[w]);
        if (st->n_imb == st->cap_imb)
            st->imb = xrealloc(st->imb, (st->cap_imb = 2 * st->cap_imb + 256) * sizeof *st->imb);
        st->imb[st->n_imb++] = mx / ((double)pairs / W);
    }
    if (!pairs) return 0; /* a layer the trace did not record (-1): no exchange at all */
    for (int w = 1; w <= W; w++) st->touched_sum += st->touched[w];
    st->touched_n++;
    double bw = sim_read_gbs(sp) * 1e9;
    double worst = 0, worst_c = 0, act = (double)sp->wire_bytes * sp->hidden_size, all_req = 0, all_rep = 0;
    double fw = sp->ranks_per_host > 0 ? DH_MIN(1.0, (double)sp->cores_per_host / sp->ranks_per_host) : 1.0;
    for (int w = 1; w <= W; w++) {
        double req = st->rows[w] * (K * 8.0 + act), rep = st->rows[w] * act;
        double rate = (sp->worker_gflops ? sp->worker_gflops[w - 1] : SIM_DEFAULT_GFLOPS) * 1e9;
        double c = st->load[w] * 6.0 * sp->hidden_size * sp->ffn_size / (rate * fw) +
                   (bw > 0 ? st->touched[w] * sp->expert_bytes / bw : 0);
        double s = 2 * sp->link_us * 1e-6 + (req + rep) * 8 / (sp->link_gbps * 1e9) + c;
        worst = DH_MAX(worst, s), worst_c = DH_MAX(worst_c, c);
        sim_worker *sw = &r->workers[w];
        sw->pairs += (uint64_t)st->load[w], sw->rows += (uint64_t)st->rows[w];
        sw->bytes_in += (uint64_t)req, sw->bytes_out += (uint64_t)rep, sw->busy_s += s;
        st->bytes += req + rep, all_req += req, all_rep += rep;
    }
    st->compute_s += worst_c;
    /* the coordinator's link carries every request out and every reply in (full duplex) */
    if (sp->coord_link_gbps > 0)
        worst = DH_MAX(worst, 2 * sp->link_us * 1e-6 + DH_MAX(all_req, all_rep) * 8 / (sp->coord_link_gbps * 1e9));
    return worst;
}

/* The coordinator's cores while it computes (see the top): during the exchange (busy), or
 * while the workers wait for it. */
static double coord_cores(const sim_params *sp, int busy) {
    int R = sp->ranks_per_host, C = sp->cores_per_host;
    int Tc = sp->coord_threads > 0 ? sp->coord_threads : R > 0 ? C : 1;
    if (R <= 0) return Tc;
    if (!busy) return DH_MIN(Tc, C); /* the waiting ranks sleep */
    return Tc * DH_MIN(1.0, (double)C / (Tc + R - 1));
}

/* Seconds of the router and the shared experts of one layer of B tokens on the coordinator. */
static void coord_layer(const sim_params *sp, int B, int E, double *router_s, double *shared_s) {
    double rate = (sp->coord_gflops > 0 ? sp->coord_gflops : sp->worker_gflops ? sp->worker_gflops[0]
                                                                                : SIM_DEFAULT_GFLOPS) * 1e9;
    *router_s = B * 2.0 * sp->hidden_size * E / (rate * coord_cores(sp, 0));
    *shared_s = B * 6.0 * sp->hidden_size * sp->shared_ffn / (rate * coord_cores(sp, 1));
    if (sp->mem_gbs > 0 && sp->ffn_size > 0) /* the shared pathway is Fs / F experts' weights */
        *shared_s += (double)sp->shared_ffn / sp->ffn_size * sp->expert_bytes / (sim_read_gbs(sp) * 1e9);
}

double sim_read_gbs(const sim_params *sp) {
    if (!(sp->mem_gbs > 0)) return 0;
    return sp->ranks_per_host > 1 ? sp->mem_gbs / (sp->ranks_per_host - 1) : sp->mem_gbs;
}

int sim_run(const trace *t, const place_plan *p, const sim_params *sp, sim_result *r) {
    memset(r, 0, sizeof *r);
    int Kt = t->top_k, K = sp->top_k > 0 && sp->top_k < Kt ? sp->top_k : Kt;
    int W = p->n_workers, B = sp->batch, L = t->n_layers, M = 0;
    if (p->n_experts != t->n_experts || B < 1 || W < 1) {
        log_error("simulate: the plan is for %d experts and the trace has %d (batch %d, %d workers)", p->n_experts,
                  t->n_experts, B, W);
        return DH_EINVAL;
    }
    int *moe = xmalloc((size_t)p->n_layers * sizeof *moe); /* plan layer of MoE layer j */
    for (int l = 0; l < p->n_layers; l++)
        if (!sp->is_moe || sp->is_moe[l]) moe[M++] = l;
    if (M == 0) {
        log_error("simulate: the plan has no MoE layers");
        free(moe);
        return DH_EINVAL;
    }
    r->n_workers = W;
    r->workers = xcalloc((size_t)W + 1, sizeof *r->workers);
    for (int j = 0; j < M; j++)
        for (int e = 0; e < p->n_experts; e++) {
            int n;
            const int *ws = place_get(p, moe[j], e, &n);
            for (int i = 0; i < n; i++) r->workers[ws[i]].hosted++;
        }
    int *order = xmalloc((size_t)DH_MAX(t->n_seqs, 1) * sizeof *order);
    int n_order = trace_select(t, sp->half, order);
    stepper s;
    stepper_init(&s, t, order, n_order, B, sp->mode);
    sim_run_state st = {.W = W, .K = K, .B = B};
    st.idx = xmalloc((size_t)B * K * sizeof *st.idx), st.wk = xmalloc((size_t)B * K * sizeof *st.wk);
    st.load = xmalloc((size_t)(W + 1) * sizeof *st.load), st.rows = xmalloc((size_t)(W + 1) * sizeof *st.rows);
    st.touched = xmalloc((size_t)(W + 1) * sizeof *st.touched), st.E = p->n_experts;
    st.used = xmalloc((size_t)(W + 1) * (size_t)p->n_experts);
    size_t *tok = xmalloc((size_t)B * sizeof *tok);
    disp_state *d = disp_new(sp->dispatch, p->n_layers, p->n_experts, W);
    double time_sum = 0, xchg_sum = 0, coord_sum = 0, router_s, shared_s;
    router_s = shared_s = 0;
    if (sp->coord_ms > 0 || sp->ranks_per_host > 0 || sp->shared_ffn > 0) /* the coordinator's model is on */
        coord_layer(sp, B, t->n_experts, &router_s, &shared_s);
    int run = M - (sp->skip_last && M > 1);
    while (next_step(&s, tok)) {
        double step_s = 0, coord_s = sp->coord_ms * 1e-3 / coord_cores(sp, 0);
        for (int j = 0; j < run; j++) {
            int l = trace_layer_for(j, M, L);
            for (int i = 0; i < B; i++) {
                size_t o = (tok[i] * L + l) * Kt;
                if (K == Kt)
                    for (int k = 0; k < K; k++) st.idx[i * K + k] = t->ids[o + k];
                else
                    trace_keep_heaviest(t->ids + o, t->weights + o, Kt, K, st.idx + i * K, NULL);
            }
            double x = layer_step(&st, d, p, moe[j], sp, r);
            if (x > 0 || shared_s > 0) x = DH_MAX(x, shared_s), coord_s += router_s;
            step_s += x;
        }
        xchg_sum += step_s, coord_sum += coord_s;
        time_sum += step_s + coord_s;
        r->steps++;
    }
    r->tokens = r->steps * B;
    double sum = 0;
    for (size_t i = 0; i < st.n_imb; i++) sum += st.imb[i];
    r->imbalance_mean = st.n_imb ? sum / (double)st.n_imb : 0;
    r->imbalance_p99 = sim_quantile(st.imb, st.n_imb, 0.99);
    r->fanout_mean = st.fan_n ? st.fan_sum / (double)st.fan_n : 0;
    r->bytes_per_token = r->tokens ? st.bytes / (double)r->tokens : 0;
    r->step_ms_mean = r->steps ? time_sum * 1e3 / (double)r->steps : 0;
    r->exchange_ms_mean = r->steps ? xchg_sum * 1e3 / (double)r->steps : 0;
    r->coord_ms_mean = r->steps ? coord_sum * 1e3 / (double)r->steps : 0;
    r->worker_compute_ms_mean = r->steps ? st.compute_s * 1e3 / (double)r->steps : 0;
    r->touched_mean = st.touched_n ? st.touched_sum / (double)st.touched_n : 0;
    disp_free(d);
    stepper_free(&s);
    free(st.idx), free(st.wk), free(st.load), free(st.rows), free(st.imb), free(st.touched), free(st.used);
    free(tok), free(order), free(moe);
    return 0;
}

void sim_result_free(sim_result *r) {
    free(r->workers);
    r->workers = NULL;
}

void sim_print_workers(const sim_result *r, FILE *f) {
    uint64_t total = 0;
    for (int w = 1; w <= r->n_workers; w++) total += r->workers[w].pairs;
    fprintf(f, "worker  experts  expert-tok  share   rows      MB-in    MB-out   busy-ms/step\n");
    for (int w = 1; w <= r->n_workers; w++) {
        const sim_worker *sw = &r->workers[w];
        fprintf(f, "%6d  %7d  %10llu  %5.3f  %9llu  %8.1f  %8.1f  %8.3f\n", w, sw->hosted,
                (unsigned long long)sw->pairs, total ? (double)sw->pairs / (double)total : 0.0,
                (unsigned long long)sw->rows, sw->bytes_in / 1e6, sw->bytes_out / 1e6,
                r->steps ? sw->busy_s * 1e3 / (double)r->steps : 0.0);
    }
}
