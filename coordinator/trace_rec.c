/* trace_rec.c: live routing trace recording (see trace_rec.h, docs/placement.md).
 *
 * During a step the observer copies each MoE layer's choices into [R, M, K] buffers sized at
 * open; when the step ends it writes one record holding the layers seen (all main MoE layers
 * for fwd_step, the MTP layer alone for fwd_mtp), with one part per sequence of the step. A
 * step allocates nothing unless a record is larger than every one before it (the writer's
 * scratch grows) or a KV sequence slot number is higher than any before.
 *
 * Sequences: the forward pass knows KV slots, not requests, and slots are reused. A slot's
 * rows start a new trace sequence (ids 0, 1, ... in order of first appearance) when the slot
 * is new or its first row's position does not continue the slot's last one (a new request
 * starts at 0). Its domain is attributed once, at its first step: the domain whose experts
 * (the model's expert_domains) the sequence's rows chose most over all MoE layers of that step,
 * ties to the lower id. Under serve that first step holds the prompt (or its first chunk of
 * up to --max-batch-tokens), so a request is labelled by what its prompt routed to; this is
 * the engine's own per-request domain count at that point. MTP rows continue the sequence of
 * their slot and never start one. */
#include "trace_rec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "proto/tracefile.h"

typedef struct slot_state {
    int known;
    int64_t id;       /* trace sequence id */
    int domain;
    int next_pos;     /* position its next main row must have to continue it */
} slot_state;

struct trec {
    const model *m;
    tf_writer *w;
    char path[1024];
    int R, M, K, mtp_j;  /* rows, MoE layers (MTP last), K, the MTP block's trace layer or -1 */
    int *layer_j;        /* [m->n_layers] trace layer of a model layer, -1 dense */
    int *ids;            /* [R, M, K] this step's choices */
    float *wt;
    int *pids;           /* [R, M, K] packed for the record */
    float *pw;
    unsigned char *seen; /* [M] layers seen this step */
    int *layers;         /* [M] their list */
    tf_part *parts;      /* [R] */
    slot_state *slots;   /* [n_slots] by KV sequence */
    int n_slots;
    int64_t n_seqs;
    uint64_t step;
    int failed, warned_mtp;
};

trec *trec_open(const char *path, const model *m, int max_rows) {
    const model_config *c = &m->cfg;
    int M = model_moe_layers(m);
    if (M == 0) {
        log_error("%s: the model has no MoE layers: no routing to record", path);
        return NULL;
    }
    trace hdr = {.n_layers = M, .n_experts = c->n_routed_experts, .top_k = c->num_experts_per_tok,
                 .hidden_size = c->hidden_size, .ffn_size = c->moe_intermediate_size, .n_domains = CFG_N_DOMAINS};
    const char *base = strrchr(m->dir, '/') && strrchr(m->dir, '/')[1] ? strrchr(m->dir, '/') + 1 : m->dir;
    snprintf(hdr.source, sizeof hdr.source, "live:%.100s", base);
    for (int d = 0; d < CFG_N_DOMAINS; d++) snprintf(hdr.domain_names[d], TRACE_NAME_MAX, "%s", c->domain_names[d]);
    tf_writer *w = tf_writer_open(path, &hdr);
    if (!w) return NULL;
    trec *r = xcalloc(1, sizeof *r);
    r->m = m, r->w = w, r->R = max_rows, r->M = M, r->K = c->num_experts_per_tok, r->mtp_j = -1;
    snprintf(r->path, sizeof r->path, "%.1000s", path);
    r->layer_j = xmalloc((size_t)m->n_layers * sizeof *r->layer_j);
    for (int l = 0, j = 0; l < m->n_layers; l++) {
        r->layer_j[l] = m->layers[l].is_moe ? j++ : -1;
        if (m->has_mtp && l == c->num_hidden_layers) r->mtp_j = r->layer_j[l];
    }
    size_t n = (size_t)max_rows * M * r->K;
    r->ids = xmalloc(n * sizeof *r->ids), r->wt = xmalloc(n * sizeof *r->wt);
    r->pids = xmalloc(n * sizeof *r->pids), r->pw = xmalloc(n * sizeof *r->pw);
    r->seen = xcalloc((size_t)M, 1), r->layers = xmalloc((size_t)M * sizeof *r->layers);
    r->parts = xmalloc((size_t)max_rows * sizeof *r->parts);
    log_info("%s: recording the routing of %d MoE layers", path, M);
    return r;
}

/* The domain whose experts rows [a, b) chose most over the n layers listed. */
static int attribute(const trec *r, int a, int b, int n) {
    uint64_t count[CFG_N_DOMAINS] = {0};
    for (int t = a; t < b; t++)
        for (int i = 0; i < n; i++)
            for (int k = 0; k < r->K; k++)
                count[r->m->cfg.expert_domains[r->ids[((size_t)t * r->M + r->layers[i]) * r->K + k]]]++;
    int best = 0;
    for (int d = 1; d < CFG_N_DOMAINS; d++)
        if (count[d] > count[best]) best = d;
    return best;
}

/* The trace sequence of the rows [a, b) of KV slot s: 0 and parts[] filled, or -1 to skip. */
static int sequence_of(trec *r, const fwd_row *rows, int a, int b, int mtp_only, tf_part *part, int n_layers) {
    int s = rows[a].seq;
    if (s >= r->n_slots) {
        int n = DH_MAX(s + 1, 2 * r->n_slots);
        r->slots = xrealloc(r->slots, (size_t)n * sizeof *r->slots);
        memset(r->slots + r->n_slots, 0, (size_t)(n - r->n_slots) * sizeof *r->slots);
        r->n_slots = n;
    }
    slot_state *st = &r->slots[s];
    if (mtp_only) {
        if (!st->known) {
            if (!r->warned_mtp++)
                log_warn("%s: MTP rows of a sequence never seen by the main model: not recorded", r->path);
            return -1;
        }
    } else {
        if (!st->known || rows[a].pos != st->next_pos)
            *st = (slot_state){.known = 1, .id = r->n_seqs++, .domain = attribute(r, a, b, n_layers)};
        st->next_pos = rows[b - 1].pos + 1;
    }
    *part = (tf_part){.seq_id = st->id, .domain = st->domain, .start_pos = rows[a].pos, .n_tokens = b - a};
    return 0;
}

/* End of a step: one record of the layers seen. */
static void flush_step(trec *r, const fwd_row *rows, int T) {
    int n = 0, K = r->K;
    for (int j = 0; j < r->M; j++)
        if (r->seen[j]) r->layers[n++] = j, r->seen[j] = 0;
    if (n == 0 || r->failed) return;
    int mtp_only = n == 1 && r->layers[0] == r->mtp_j, n_parts = 0;
    size_t out = 0;
    for (int a = 0, b; a < T; a = b) {
        for (b = a + 1; b < T && rows[b].seq == rows[a].seq; b++) {}
        if (sequence_of(r, rows, a, b, mtp_only, &r->parts[n_parts], n) != 0) continue;
        n_parts++;
        for (int t = a; t < b; t++)
            for (int i = 0; i < n; i++, out += (size_t)K) {
                size_t src = ((size_t)t * r->M + r->layers[i]) * K;
                memcpy(r->pids + out, r->ids + src, (size_t)K * sizeof *r->pids);
                memcpy(r->pw + out, r->wt + src, (size_t)K * sizeof *r->pw);
            }
    }
    if (n_parts && tf_writer_add(r->w, r->step, n == r->M ? NULL : r->layers, n, r->parts, n_parts, r->pids, r->pw))
        r->failed = 1; /* logged by the writer; the run goes on without recording */
    r->step++;
}

void trec_route(void *ctx, int layer, const fwd_row *rows, int T, const int *idx, const float *w) {
    trec *r = ctx;
    DH_ASSERT(T <= r->R);
    if (layer < 0) {
        flush_step(r, rows, T);
        return;
    }
    int j = r->layer_j[layer], K = r->K;
    if (j < 0) return;
    r->seen[j] = 1;
    for (int t = 0; t < T; t++) {
        memcpy(r->ids + ((size_t)t * r->M + j) * K, idx + (size_t)t * K, (size_t)K * sizeof *idx);
        memcpy(r->wt + ((size_t)t * r->M + j) * K, w + (size_t)t * K, (size_t)K * sizeof *w);
    }
}

int trec_close(trec *r) {
    if (!r) return 0;
    int rc = tf_writer_close(r->w);
    if (r->failed) rc = DH_EIO;
    if (rc == 0) log_info("%s: %lld sequences, %llu steps recorded", r->path, (long long)r->n_seqs,
                          (unsigned long long)r->step);
    else log_error("%s: the routing trace is incomplete (a write failed)", r->path);
    free(r->layer_j), free(r->ids), free(r->wt), free(r->pids), free(r->pw), free(r->seen), free(r->layers);
    free(r->parts), free(r->slots);
    free(r);
    return rc;
}
