/* trace.c: the in-memory routing trace (see trace.h): allocation, halves, layer mapping. */
#include "trace.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

trace *trace_new(int n_layers, int n_experts, int top_k, int n_seqs, size_t n_tokens) {
    DH_ASSERT(n_layers > 0 && n_experts > 0 && top_k > 0 && n_seqs >= 0);
    trace *t = xcalloc(1, sizeof *t);
    t->n_layers = n_layers, t->n_experts = n_experts, t->top_k = top_k;
    t->n_seqs = n_seqs, t->n_tokens = n_tokens;
    t->seqs = xcalloc(n_seqs ? (size_t)n_seqs : 1, sizeof *t->seqs);
    size_t n = n_tokens * (size_t)n_layers * (size_t)top_k;
    t->ids = xcalloc(n ? n : 1, sizeof *t->ids);
    t->weights = xcalloc(n ? n : 1, sizeof *t->weights);
    return t;
}

void trace_free(trace *t) {
    if (!t) return;
    free(t->seqs), free(t->ids), free(t->weights);
    free(t);
}

int trace_parse_half(const char *s, trace_half *h) {
    if (!strcmp(s, "all")) return *h = TRACE_SEQS_ALL, 0;
    if (!strcmp(s, "first-half")) return *h = TRACE_SEQS_FIRST_HALF, 0;
    if (!strcmp(s, "second-half")) return *h = TRACE_SEQS_SECOND_HALF, 0;
    return -1;
}

const char *trace_half_name(trace_half h) {
    return h == TRACE_SEQS_FIRST_HALF ? "first-half" : h == TRACE_SEQS_SECOND_HALF ? "second-half" : "all";
}

int trace_select(const trace *t, trace_half h, int *order) {
    int D = t->n_domains > 0 ? t->n_domains : 1;
    /* per domain: its sequences in file order, and the range of them this half takes */
    int *count = xcalloc((size_t)D, sizeof *count), *lo = xcalloc((size_t)D, sizeof *lo);
    int *hi = xcalloc((size_t)D, sizeof *hi), *next = xcalloc((size_t)D, sizeof *next);
    int *members = xcalloc(t->n_seqs ? (size_t)t->n_seqs : 1, sizeof *members);
    int *start = xcalloc((size_t)D + 1, sizeof *start);
    for (int i = 0; i < t->n_seqs; i++) {
        int d = t->seqs[i].domain;
        DH_ASSERT(d >= 0 && d < D);
        count[d]++;
    }
    for (int d = 0; d < D; d++) start[d + 1] = start[d] + count[d];
    for (int i = 0; i < t->n_seqs; i++) members[start[t->seqs[i].domain] + next[t->seqs[i].domain]++] = i;
    for (int d = 0; d < D; d++) {
        int half = count[d] / 2;
        lo[d] = h == TRACE_SEQS_SECOND_HALF ? half : 0;
        hi[d] = h == TRACE_SEQS_FIRST_HALF ? half : count[d];
    }
    int n = 0;
    for (int r = 0;; r++) { /* round r takes the r-th selected sequence of each domain */
        int any = 0;
        for (int d = 0; d < D; d++)
            if (lo[d] + r < hi[d]) order[n++] = members[start[d] + lo[d] + r], any = 1;
        if (!any) break;
    }
    free(count), free(lo), free(hi), free(next), free(members), free(start);
    return n;
}

int trace_layer_for(int j, int M, int L) {
    DH_ASSERT(M > 0 && j >= 0 && j < M);
    return (int)((long long)j * L / M);
}

void trace_keep_heaviest(const int16_t *ids, const float *weights, int Kt, int K, int *idx, float *w) {
    unsigned char used[64] = {0};
    DH_ASSERT(K <= Kt && Kt <= 64);
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int i = 0; i < Kt; i++)
            if (!used[i] && (best < 0 || weights[i] > weights[best])) best = i;
        used[best] = 1;
        idx[k] = ids[best];
        if (w) w[k] = weights[best];
    }
}
