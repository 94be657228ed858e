/* planin.c: the planning input from a trace (see planin.h).
 *
 * The steps follow the replay of docs/placement.md, so that a planner balances the very
 * steps a replay of the same sequences would judge: decode keeps B sequences in flight, the
 * k-th of the first B starting at token floor(k * T_k / B), each step taking the next token of
 * each and a finished sequence making way for the next, until a step cannot be filled;
 * prefill cuts the concatenated tokens into steps of B. A last partial step is dropped. */
#include "planin.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

void pin_free(plan_data *d) {
    if (!d) return;
    free(d->mask), free(d->weight), free(d->load), free(d->dom_load);
    free(d->step_first), free(d->step_tok);
    free(d);
}

int pin_parse_mix(const trace *t, const char *s, double *share) {
    for (int d = 0; d < t->n_domains; d++) share[d] = 0;
    const char *q = s;
    while (*q) {
        const char *eq = strchr(q, '=');
        size_t len = eq ? (size_t)(eq - q) : strlen(q);
        int dom = -1;
        for (int d = 0; d < t->n_domains && eq; d++)
            if (strlen(t->domain_names[d]) == len && !strncmp(t->domain_names[d], q, len)) dom = d;
        if (dom < 0) {
            log_error("--domain-mix: '%.*s' is not a domain of this trace (want NAME=SHARE,...)", (int)len, q);
            return DH_EINVAL;
        }
        char *end;
        errno = 0;
        double v = strtod(eq + 1, &end);
        if (end == eq + 1 || errno || !(v >= 0) || v > 1e12 || (*end && *end != ',')) {
            log_error("--domain-mix: the share of '%s' is not a number >= 0", t->domain_names[dom]);
            return DH_EINVAL;
        }
        share[dom] = v;
        q = *end ? end + 1 : end;
    }
    return 0;
}

/* Decode steps: B sequences in flight, staggered start; appends to d's step arrays. */
static void decode_steps(plan_data *d, const int *first, const int *len, int n_seq, int B, size_t *cap) {
    if (n_seq < B) return;
    int *seq = xmalloc((size_t)B * sizeof *seq), *pos = xmalloc((size_t)B * sizeof *pos), next = B;
    for (int k = 0; k < B; k++) seq[k] = k, pos[k] = (int)((long long)k * len[k] / B);
    for (;;) {
        int ok = 1;
        for (int k = 0; k < B && ok; k++)
            while (ok && pos[k] >= len[seq[k]]) {
                if (next >= n_seq) ok = 0;
                else seq[k] = next++, pos[k] = 0;
            }
        if (!ok) break;
        if ((size_t)d->step_first[d->n_steps] + B > *cap) {
            *cap = 2 * *cap + B;
            d->step_tok = xrealloc(d->step_tok, *cap * sizeof *d->step_tok);
        }
        int *out = d->step_tok + d->step_first[d->n_steps];
        for (int k = 0; k < B; k++) out[k] = first[seq[k]] + pos[k]++;
        d->n_steps++;
        d->step_first = xrealloc(d->step_first, ((size_t)d->n_steps + 1) * sizeof *d->step_first);
        d->step_first[d->n_steps] = d->step_first[d->n_steps - 1] + B;
    }
    free(seq), free(pos);
}

/* The counts and masks of the selected tokens, in replay order. */
static void fill_tokens(plan_data *d, const trace *t, const int *order, int n_sel, const double *w_dom) {
    int L = d->n_layers, E = d->n_experts, K = d->top_k, N = d->n_tokens, n = 0;
    for (int i = 0; i < n_sel; i++) {
        const trace_seq *sq = &t->seqs[order[i]];
        for (int j = 0; j < sq->n_tokens; j++, n++) {
            size_t tok = sq->first + (size_t)j;
            d->weight[n] = (float)w_dom[sq->domain];
            for (int l = 0; l < L; l++) {
                uint64_t m = 0;
                for (int k = 0; k < K; k++) {
                    int e = t->ids[(tok * L + l) * K + k];
                    if (e < 0) continue; /* a layer this token was not recorded in */
                    DH_ASSERT(e < E);
                    m |= (uint64_t)1 << e;
                    d->load[(size_t)l * E + e] += w_dom[sq->domain];
                    d->dom_load[((size_t)sq->domain * L + l) * E + e] += 1;
                }
                d->mask[(size_t)l * N + n] = m;
            }
        }
    }
}

plan_data *pin_from_trace(const trace *t, trace_half h, const double *share, int batch) {
    int L = t->n_layers, E = t->n_experts, D = t->n_domains > 0 ? t->n_domains : 1;
    if (E > 64) {
        log_error("placement from a trace: %d experts a layer, at most 64 are supported", E);
        return NULL;
    }
    int *order = xmalloc(((size_t)t->n_seqs + 1) * sizeof *order);
    int n_sel = trace_select(t, h, order);
    int *first = xmalloc(((size_t)n_sel + 1) * sizeof *first), *len = xmalloc(((size_t)n_sel + 1) * sizeof *len);
    double *dom_tok = xcalloc((size_t)D, sizeof *dom_tok), *w_dom = xcalloc((size_t)D, sizeof *w_dom);
    long long N = 0;
    for (int i = 0; i < n_sel; i++) {
        first[i] = (int)N, len[i] = t->seqs[order[i]].n_tokens;
        N += len[i];
        dom_tok[t->seqs[order[i]].domain] += len[i];
    }
    // token weight: the domain's planned share over its share of the tokens
    double sum_share = 0;
    for (int d = 0; d < D; d++) sum_share += share ? share[d] * (dom_tok[d] > 0) : dom_tok[d];
    for (int d = 0; d < D && sum_share > 0; d++)
        if (dom_tok[d] > 0) w_dom[d] = (share ? share[d] : dom_tok[d]) / sum_share * (double)N / dom_tok[d];
    plan_data *d = NULL;
    if (N == 0 || N > INT32_MAX || !(sum_share > 0)) {
        log_error("placement from a trace: the %s sequences hold %lld tokens%s", trace_half_name(h), N,
                  N ? " but every domain with tokens has share 0" : "");
        goto out;
    }
    d = xcalloc(1, sizeof *d);
    d->n_layers = L, d->n_experts = E, d->top_k = t->top_k, d->n_domains = D, d->n_tokens = (int)N;
    d->batch = batch;
    d->mask = xmalloc((size_t)L * N * sizeof *d->mask);
    d->weight = xmalloc((size_t)N * sizeof *d->weight);
    d->load = xcalloc((size_t)L * E, sizeof *d->load);
    d->dom_load = xcalloc((size_t)D * L * E, sizeof *d->dom_load);
    fill_tokens(d, t, order, n_sel, w_dom);
    // steps: decode, then prefill
    size_t cap = (size_t)N + 1;
    d->step_first = xcalloc(1, sizeof *d->step_first);
    d->step_tok = xmalloc(cap * sizeof *d->step_tok);
    decode_steps(d, first, len, n_sel, batch, &cap);
    d->n_decode = d->n_steps;
    int n_pre = (int)(N / batch), base = d->step_first[d->n_steps];
    if ((size_t)base + (size_t)n_pre * batch > cap) d->step_tok = xrealloc(d->step_tok, ((size_t)base + (size_t)n_pre * batch) * sizeof *d->step_tok);
    d->step_first = xrealloc(d->step_first, ((size_t)d->n_steps + n_pre + 1) * sizeof *d->step_first);
    for (int s = 0; s < n_pre; s++) {
        for (int b = 0; b < batch; b++) d->step_tok[base + s * batch + b] = s * batch + b;
        d->step_first[d->n_steps + s + 1] = base + (s + 1) * batch;
    }
    d->n_steps += n_pre;
out:
    free(order), free(first), free(len), free(dom_tok), free(w_dom);
    return d;
}
