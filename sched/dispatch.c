/* dispatch.c: the replica choice (see dispatch.h).
 *
 * DISP_SMART takes a token's slots in two passes: first the experts with one worker, which
 * fix the workers this token visits anyway; then each replicated expert goes to a replica on
 * a visited worker (the least loaded of them in this step, if several), else to the least
 * loaded replica in this step. Loads count (token, expert) pairs of this layer's step; ties go
 * to the lower rank. Rows are taken in their order in the step, so the choice is a pure
 * function of the step and the plan. */
#include "dispatch.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

struct disp_state {
    disp_rule rule;
    int n_layers, n_experts, n_workers;
    uint32_t *turn;     /* [n_layers * E] DISP_TURNS counters */
    int *load;          /* [W + 1] pairs per worker in the current step */
    unsigned char *seen;/* [W + 1] workers the current token visits */
};

int disp_parse_rule(const char *s, disp_rule *r) {
    if (!strcmp(s, "smart")) return *r = DISP_SMART, 0;
    if (!strcmp(s, "turns")) return *r = DISP_TURNS, 0;
    return -1;
}

const char *disp_rule_name(disp_rule r) { return r == DISP_TURNS ? "turns" : "smart"; }

disp_state *disp_new(disp_rule rule, int n_layers, int n_experts, int n_workers) {
    disp_state *d = xcalloc(1, sizeof *d);
    d->rule = rule;
    d->n_layers = n_layers, d->n_experts = n_experts, d->n_workers = n_workers;
    d->turn = xcalloc((size_t)n_layers * n_experts, sizeof *d->turn);
    d->load = xcalloc((size_t)n_workers + 1, sizeof *d->load);
    d->seen = xcalloc((size_t)n_workers + 1, 1);
    return d;
}

void disp_free(disp_state *d) {
    if (!d) return;
    free(d->turn), free(d->load), free(d->seen);
    free(d);
}

/* The replica of ws[n] with the least load this step, among those with seen[w] == want_seen
 * when want_seen >= 0; -1 if none qualifies. */
static int least_loaded(const disp_state *d, const int *ws, int n, int want_seen) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        int w = ws[i];
        if (want_seen >= 0 && d->seen[w] != want_seen) continue;
        if (best < 0 || d->load[w] < d->load[best]) best = w;
    }
    return best;
}

void disp_assign(disp_state *d, const place_plan *p, int layer, const int *idx, int T, int K,
                 int *worker) {
    DH_ASSERT(layer >= 0 && layer < d->n_layers && p->n_workers <= d->n_workers);
    memset(d->load, 0, ((size_t)d->n_workers + 1) * sizeof *d->load);
    for (int t = 0; t < T; t++) {
        const int *ti = idx + (size_t)t * K;
        int *tw = worker + (size_t)t * K;
        memset(d->seen, 0, (size_t)d->n_workers + 1);
        for (int k = 0; k < K; k++) { /* pass 1: experts with one worker, and DISP_TURNS */
            tw[k] = -1;
            if (ti[k] < 0) continue;
            int n;
            const int *ws = place_get(p, layer, ti[k], &n);
            DH_ASSERT(n > 0);
            if (n == 1) tw[k] = ws[0];
            else if (d->rule == DISP_TURNS)
                tw[k] = ws[d->turn[(size_t)layer * d->n_experts + ti[k]]++ % (uint32_t)n];
            else continue;
            d->seen[tw[k]] = 1;
            d->load[tw[k]]++;
        }
        if (d->rule == DISP_TURNS) continue;
        for (int k = 0; k < K; k++) { /* pass 2: replicated experts, DISP_SMART */
            if (ti[k] < 0 || tw[k] >= 0) continue;
            int n;
            const int *ws = place_get(p, layer, ti[k], &n);
            int w = least_loaded(d, ws, n, 1);
            if (w < 0) w = least_loaded(d, ws, n, -1);
            tw[k] = w;
            d->seen[w] = 1;
            d->load[w]++;
        }
    }
}
