/* place_tool.c: the numbers scripts/plot-placement.py draws, besides `darkhorse simulate`:
 *   place_tool loads TRACE HALF
 *       one line per (domain, layer, expert): name layer expert count, on the sequences HALF
 *   place_tool steps TRACE PLAN W HALF decode|prefill B LAYER smart|turns
 *       one line per replayed step of trace layer LAYER (a plan over the trace's own layers):
 *       the (token, expert) pairs of ranks 1..W under the replica choice, as simulate counts them */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "proto/tracefile.h"
#include "sched/dispatch.h"
#include "sched/planin.h"

static int loads(const trace *t, trace_half h) {
    plan_data *d = pin_from_trace(t, h, NULL, 1);
    if (!d) return 1;
    int L = d->n_layers, E = d->n_experts;
    for (int k = 0; k < d->n_domains; k++)
        for (int l = 0; l < L; l++)
            for (int e = 0; e < E; e++)
                printf("%s %d %d %.0f\n", t->domain_names[k], l, e, d->dom_load[((size_t)k * L + l) * E + e]);
    pin_free(d);
    return 0;
}

static int steps(const trace *t, char **argv) {
    int W = atoi(argv[4]), B = atoi(argv[7]), lt = atoi(argv[8]), L = t->n_layers, K = t->top_k;
    trace_half h;
    disp_rule rule;
    if (trace_parse_half(argv[5], &h) || disp_parse_rule(argv[9], &rule) || lt < 0 || lt >= L || B < 1) return 2;
    uint8_t *all = xmalloc((size_t)L);
    memset(all, 1, (size_t)L);
    place_plan *p = place_load(argv[3], L, t->n_experts, W, all);
    plan_data *d = p ? pin_from_trace(t, h, NULL, B) : NULL;
    if (!d) return place_free(p), free(all), 1;
    // token n of the replay order is token tok[n] of the trace
    int *order = xmalloc(((size_t)t->n_seqs + 1) * sizeof *order), n_sel = trace_select(t, h, order), n = 0;
    size_t *tok = xmalloc((size_t)d->n_tokens * sizeof *tok);
    for (int i = 0; i < n_sel; i++)
        for (int j = 0; j < t->seqs[order[i]].n_tokens; j++) tok[n++] = t->seqs[order[i]].first + (size_t)j;
    int prefill = !strcmp(argv[6], "prefill"), s0 = prefill ? d->n_decode : 0, s1 = prefill ? d->n_steps : d->n_decode;
    int *idx = xmalloc((size_t)B * K * sizeof *idx), *wk = xmalloc((size_t)B * K * sizeof *wk);
    double *ld = xmalloc(((size_t)W + 1) * sizeof *ld);
    disp_state *ds = disp_new(rule, L, t->n_experts, W);
    for (int s = s0; s < s1; s++) {
        for (int b = 0; b < B; b++)
            for (int k = 0; k < K; k++) idx[b * K + k] = t->ids[(tok[d->step_tok[d->step_first[s] + b]] * L + lt) * K + k];
        disp_assign(ds, p, lt, idx, B, K, wk);
        memset(ld, 0, ((size_t)W + 1) * sizeof *ld);
        for (int i = 0; i < B * K; i++)
            if (wk[i] > 0) ld[wk[i]]++;
        for (int w = 1; w <= W; w++) printf("%.0f%c", ld[w], w == W ? '\n' : ' ');
    }
    disp_free(ds), free(idx), free(wk), free(ld), free(order), free(tok), free(all);
    pin_free(d), place_free(p);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "loads")) {
        trace *t = tf_read(argv[2]);
        trace_half h;
        int rc = !t || trace_parse_half(argv[3], &h) ? 1 : loads(t, h);
        trace_free(t);
        return rc;
    }
    if (argc == 10 && !strcmp(argv[1], "steps")) {
        trace *t = tf_read(argv[2]);
        int rc = t ? steps(t, argv) : 1;
        trace_free(t);
        return rc;
    }
    fprintf(stderr, "usage: place_tool loads TRACE HALF | steps TRACE PLAN W HALF decode|prefill B LAYER smart|turns\n");
    return 2;
}
