/* dispatch.c: the replica choice (see dispatch.h).
 *
 * DISP_SMART works in two passes over the step. First every (token, expert) whose expert has
 * one worker is counted: those pairs go where they must, and they fix the workers each token
 * visits anyway. Then, row by row in their order in the step, each replicated expert of the
 * token goes to a replica on a worker the token visits (the least loaded of them, if
 * several), else to the least loaded replica. "Loaded" is the step's (token, expert) pairs on
 * the worker so far over its capacity (equal unless disp_set_capacity), and "so far" already
 * holds every single-worker pair of the whole step: counting them first is what lets a
 * replica fill the workers that the step leaves light, instead of those that merely look
 * light because their rows come later. Ties go to the lower rank. The choice is a pure
 * function of the step, the plan and the capacities. */
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
    double *cap;        /* [W + 1] relative speeds, 1 unless set */
};

int disp_parse_rule(const char *s, disp_rule *r) {
    if (!strcmp(s, "smart")) return *r = DISP_SMART, 0;
    if (!strcmp(s, "turns")) return *r = DISP_TURNS, 0;
    return -1;
}

const char *disp_rule_name(disp_rule r) { return r == DISP_TURNS ? "turns" : "smart"; }

void disp_set_capacity(disp_state *d, const double *cap) {
    for (int w = 1; w <= d->n_workers; w++) d->cap[w] = cap && cap[w - 1] > 0 ? cap[w - 1] : 1.0;
}

disp_state *disp_new(disp_rule rule, int n_layers, int n_experts, int n_workers) {
    disp_state *d = xcalloc(1, sizeof *d);
    d->rule = rule;
    d->n_layers = n_layers, d->n_experts = n_experts, d->n_workers = n_workers;
    d->turn = xcalloc((size_t)n_layers * n_experts, sizeof *d->turn);
    d->load = xcalloc((size_t)n_workers + 1, sizeof *d->load);
    d->seen = xcalloc((size_t)n_workers + 1, 1);
    d->cap = xmalloc(((size_t)n_workers + 1) * sizeof *d->cap);
    for (int w = 0; w <= n_workers; w++) d->cap[w] = 1.0;
    return d;
}

void disp_free(disp_state *d) {
    if (!d) return;
    free(d->turn), free(d->load), free(d->seen), free(d->cap);
    free(d);
}

/* The replica of ws[n] with the least load this step, among those with seen[w] == want_seen
 * when want_seen >= 0; -1 if none qualifies. */
static int least_loaded(const disp_state *d, const int *ws, int n, int want_seen) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        int w = ws[i];
        if (want_seen >= 0 && d->seen[w] != want_seen) continue;
        if (best < 0 || d->load[w] / d->cap[w] < d->load[best] / d->cap[best]) best = w;
    }
    return best;
}

/* The worker of slot k of a token (ti[k] >= 0) when its expert has one worker or the rule is
 * DISP_TURNS; 0 when DISP_SMART must choose among replicas. */
static int fixed_worker(disp_state *d, const place_plan *p, int layer, int e) {
    int n;
    const int *ws = place_get(p, layer, e, &n);
    DH_ASSERT(n > 0);
    if (n == 1) return ws[0];
    if (d->rule == DISP_TURNS) return ws[d->turn[(size_t)layer * d->n_experts + e]++ % (uint32_t)n];
    return 0;
}

void disp_assign(disp_state *d, const place_plan *p, int layer, const int *idx, int T, int K,
                 int *worker) {
    DH_ASSERT(layer >= 0 && layer < d->n_layers && p->n_workers <= d->n_workers);
    memset(d->load, 0, ((size_t)d->n_workers + 1) * sizeof *d->load);
    // pass 1, the whole step: pairs whose worker is fixed (one replica, or DISP_TURNS)
    int any = 0;
    for (size_t i = 0; i < (size_t)T * K; i++) {
        worker[i] = idx[i] < 0 ? -1 : fixed_worker(d, p, layer, idx[i]);
        if (worker[i] > 0) d->load[worker[i]]++;
        any |= worker[i] == 0;
    }
    if (!any) return;
    // pass 2, row by row: each replicated expert to a visited worker, else the least loaded
    for (int t = 0; t < T; t++) {
        const int *ti = idx + (size_t)t * K;
        int *tw = worker + (size_t)t * K;
        memset(d->seen, 0, (size_t)d->n_workers + 1);
        for (int k = 0; k < K; k++)
            if (tw[k] > 0) d->seen[tw[k]] = 1;
        for (int k = 0; k < K; k++) {
            if (tw[k] != 0) continue;
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
