/* replay.c: routing replay from a trace (see replay.h, docs/cluster.md).
 *
 * Order: the run's sequences take the trace's sequences one after another from one list:
 * with RPL_TURNS, in turn across the domains (trace_select: the first of each domain, then
 * the second of each, ...); with RPL_DOMAIN, all of the first domain, then all of the second,
 * in the trace's domain order, file order within a domain (a traffic shift). The list wraps
 * around. A run sequence that outlives its trace sequence continues with the next trace
 * sequence of the list not yet taken, so the run keeps meeting fresh routing.
 *
 * Sequences: the forward pass knows KV slots, not requests, and slots are reused. As in
 * trace_rec.c, a slot's rows start a new run sequence when the slot is new, or at the first
 * main step where its first row's position is not past the sequence's start (a new request
 * starts at 0) or skips ahead of what the slot holds. A position at or below the last one seen
 * (a speculative draft verified again) replays the same trace token: the trace token of a row
 * depends only on its (sequence, position). MTP rows look up their position in their slot's
 * sequence and never start one; a row no trace token covers keeps the router's choice.
 *
 * Layers: model MoE layer j of M (the MTP block last) takes trace layer floor(j * L / M)
 * (trace_layer_for, as the simulator). Experts: a trace with K_t > K experts per token keeps
 * the K heaviest, ties to the earlier one in the record. Weights: the trace's weights of the
 * kept experts stand for the router's scores s: w = s / sum(s kept) * routed_scaling_factor
 * with norm_topk_prob, else s * routed_scaling_factor. A trace recorded live from a model with
 * norm_topk_prob therefore replays its own weights (up to rounding).
 *
 * Cost: a step allocates nothing, except when a slot number is higher than any before or a
 * sequence outlives more trace sequences than any before (its chain grows). */
#include "replay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "proto/tracefile.h"

typedef struct link {  /* from run offset `off` on, a sequence replays list entry `li` */
    long off;
    int li;
} link;

typedef struct slot_state {
    int known;
    uint64_t stamp;   /* the step that last decided this slot's sequence, plus 1 */
    int start_pos;    /* position of the sequence's first row: run offset 0 */
    int next_pos;     /* one past the highest main position seen */
    link *chain;      /* [n_chain] ascending off */
    int n_chain, cap;
} slot_state;

struct rpl {
    const model *m;
    trace *t;
    char path[1024];
    rpl_order order;
    int *list, n_list;  /* trace sequence indices in replay order */
    long cursor;        /* list entries taken so far */
    int K, Kt, mtp_layer;
    int *tlayer;        /* [m->n_layers] trace layer of a model layer, -1 dense */
    slot_state *slots;
    int n_slots;
    long n_run;
    uint64_t step;
    int warned_uncovered;
};

int rpl_parse_order(const char *s, rpl_order *o) {
    if (!strcmp(s, "turns")) return *o = RPL_TURNS, 0;
    if (!strcmp(s, "domain")) return *o = RPL_DOMAIN, 0;
    return -1;
}

const char *rpl_order_name(rpl_order o) { return o == RPL_DOMAIN ? "domain" : "turns"; }

/* ids below E everywhere, and at least K per token: 0, or -1 with a message */
static int check_trace(const char *path, const trace *t, int E, int K) {
    if (t->top_k < K) {
        log_error("%s: the trace has %d experts per token, the model needs %d", path, t->top_k, K);
        return -1;
    }
    for (int s = 0; s < t->n_seqs; s++) {
        const trace_seq *q = &t->seqs[s];
        for (int i = 0; i < q->n_tokens; i++)
            for (int l = 0; l < t->n_layers; l++)
                for (int k = 0; k < t->top_k; k++) {
                    int e = t->ids[((q->first + (size_t)i) * t->n_layers + l) * t->top_k + k];
                    if (e >= E) {
                        log_error("%s: sequence %lld, position %d, trace layer %d: expert %d, but the model has %d "
                                  "routed experts (ids 0..%d)", path, (long long)q->id, q->start_pos + i, l, e, E,
                                  E - 1);
                        return -1;
                    }
                }
    }
    return 0;
}

/* the replay list: turns across domains, or domain after domain */
static int make_list(const trace *t, rpl_order order, int *list) {
    if (order == RPL_TURNS) return trace_select(t, TRACE_SEQS_ALL, list);
    int n = 0;
    for (int d = 0; d < DH_MAX(t->n_domains, 1); d++)
        for (int s = 0; s < t->n_seqs; s++)
            if (t->seqs[s].domain == d) list[n++] = s;
    return n;
}

rpl *rpl_open(const char *path, const model *m, rpl_order order) {
    const model_config *c = &m->cfg;
    int M = model_moe_layers(m);
    if (M == 0) {
        log_error("%s: the model has no MoE layers: no routing to replay", path);
        return NULL;
    }
    trace *t = tf_read(path);
    if (!t) return NULL;
    if (check_trace(path, t, c->n_routed_experts, c->num_experts_per_tok)) {
        trace_free(t);
        return NULL;
    }
    rpl *r = xcalloc(1, sizeof *r);
    r->m = m, r->t = t, r->order = order, r->K = c->num_experts_per_tok, r->Kt = t->top_k;
    r->mtp_layer = m->has_mtp ? c->num_hidden_layers : -1;
    snprintf(r->path, sizeof r->path, "%.1000s", path);
    r->list = xmalloc((size_t)DH_MAX(t->n_seqs, 1) * sizeof *r->list);
    r->n_list = make_list(t, order, r->list);
    if (r->n_list == 0) {
        log_error("%s: the trace has no sequences to replay", path);
        rpl_free(r);
        return NULL;
    }
    r->tlayer = xmalloc((size_t)m->n_layers * sizeof *r->tlayer);
    for (int l = 0, j = 0; l < m->n_layers; l++)
        r->tlayer[l] = m->layers[l].is_moe ? trace_layer_for(j++, M, t->n_layers) : -1;
    log_warn("routing replay is ON: every MoE layer's experts come from %s (%d sequences, %zu tokens, "
             "order %s), not from the router", path, t->n_seqs, t->n_tokens, rpl_order_name(order));
    return r;
}

static slot_state *slot_of(rpl *r, int s) {
    if (s >= r->n_slots) {
        int n = DH_MAX(s + 1, 2 * r->n_slots);
        r->slots = xrealloc(r->slots, (size_t)n * sizeof *r->slots);
        memset(r->slots + r->n_slots, 0, (size_t)(n - r->n_slots) * sizeof *r->slots);
        r->n_slots = n;
    }
    return &r->slots[s];
}

/* append the next list entry to st's chain, from run offset off */
static void take_next(rpl *r, slot_state *st, long off) {
    if (st->n_chain == st->cap) {
        st->cap = DH_MAX(4, 2 * st->cap);
        st->chain = xrealloc(st->chain, (size_t)st->cap * sizeof *st->chain);
    }
    st->chain[st->n_chain++] = (link){.off = off, .li = (int)(r->cursor++ % r->n_list)};
}

/* the trace token (index into t's token arrays) of run offset off of st, or -1;
 * extends the chain when grow */
static long token_at(rpl *r, slot_state *st, long off, int grow) {
    if (off < 0 || st->n_chain == 0) return -1;
    int i = st->n_chain - 1;
    while (i > 0 && st->chain[i].off > off) i--;
    for (;;) {
        const trace_seq *q = &r->t->seqs[r->list[st->chain[i].li]];
        long in = off - st->chain[i].off;
        if (in < q->n_tokens) return (long)q->first + in;
        if (!grow || i != st->n_chain - 1) return -1;
        take_next(r, st, st->chain[i].off + q->n_tokens);
        i++;
    }
}

/* the K heaviest of the Kt recorded (ties to the earlier), renormalised as the config says */
static void choose(const rpl *r, const int16_t *ids, const float *wt, int *idx, float *w) {
    const model_config *c = &r->m->cfg;
    trace_keep_heaviest(ids, wt, r->Kt, r->K, idx, w);
    float sum = 0;
    for (int k = 0; k < r->K; k++) sum += w[k];
    for (int k = 0; k < r->K; k++) {
        float s = c->norm_topk_prob ? (sum > 0 ? w[k] / sum : 1.0f / r->K) : w[k];
        w[k] = s * c->routed_scaling_factor;
    }
}

/* rows [a, b) of one slot in a main step: start or continue its run sequence */
static void decide(rpl *r, slot_state *st, const fwd_row *rows, int a, int b) {
    if (st->stamp == r->step + 1) return;
    st->stamp = r->step + 1;
    int p = rows[a].pos;
    if (!st->known || p <= st->start_pos || p > st->next_pos) {
        st->known = 1, st->start_pos = p, st->next_pos = p, st->n_chain = 0;
        r->n_run++;
        take_next(r, st, 0);
    }
    st->next_pos = DH_MAX(st->next_pos, rows[b - 1].pos + 1);
}

void rpl_route(void *ctx, int layer, const fwd_row *rows, int T, int *idx, float *w) {
    rpl *r = ctx;
    if (layer < 0) {
        r->step++;
        return;
    }
    int tl = r->tlayer[layer], L = r->t->n_layers, mtp = layer == r->mtp_layer;
    if (tl < 0) return;
    for (int a = 0, b; a < T; a = b) {
        for (b = a + 1; b < T && rows[b].seq == rows[a].seq; b++) {}
        slot_state *st = slot_of(r, rows[a].seq);
        if (!mtp) decide(r, st, rows, a, b);
        for (int t = a; t < b; t++) {
            long tok = st->known ? token_at(r, st, (long)rows[t].pos - st->start_pos, !mtp) : -1;
            size_t o = tok < 0 ? 0 : ((size_t)tok * L + tl) * r->Kt;
            if (tok < 0 || r->t->ids[o] < 0) { /* uncovered, or the layer was not recorded */
                if (!r->warned_uncovered++)
                    log_warn("%s: a row without a recorded trace token keeps the router's choice", r->path);
                continue;
            }
            choose(r, r->t->ids + o, r->t->weights + o, idx + (size_t)t * r->K, w + (size_t)t * r->K);
        }
    }
}

void rpl_counts(const rpl *r, long *run_seqs, long *trace_seqs) { *run_seqs = r->n_run, *trace_seqs = r->cursor; }

void rpl_free(rpl *r) {
    if (!r) return;
    for (int s = 0; s < r->n_slots; s++) free(r->slots[s].chain);
    free(r->slots), free(r->tlayer), free(r->list);
    trace_free(r->t);
    free(r);
}
