/* planner.c: plans from a routing trace (see planner.h).
 *
 * Every algorithm plans each trace layer once and copies the result to every plan layer that
 * takes that trace layer (a model with more MoE layers than the trace shares them). The
 * classic three reuse placement.c on the trace's loads; eplb and affinity may replicate.
 * A `domain` algorithm (each domain's experts gathered on few workers) was tried and removed:
 * affinity reached its fan-out with far better balance (docs/placement.md). */
#include "planner.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/threadpool.h"
#include "sched/eplb.h"

const char *const planner_algos[] = {"contiguous", "round-robin", "balanced", "eplb", "affinity", NULL};

planner_params planner_default_params(int n_workers) {
    planner_params pp = {.algo = NULL, .n_workers = n_workers};
    pp.aff = aff_default_params();
    return pp;
}

/* One trace layer's plan written into plan layer pl: 0, or a DH_E code. */
static int plan_layer(place_plan *p, int pl, const plan_data *d, int lt, const planner_params *pp, int kind) {
    int E = d->n_experts, W = pp->n_workers;
    const double *load = d->load + (size_t)lt * E;
    if (kind <= 2) { /* contiguous, round-robin, balanced: placement.c on this layer's loads */
        uint8_t one = 1;
        place_input in = {.n_layers = 1, .n_experts = E, .n_workers = W, .is_moe = &one, .load = load,
                          .capacity = pp->capacity, .slots = pp->slots};
        place_plan *q = place_compute(planner_algos[kind], &in);
        if (!q) return DH_EINVAL;
        for (int e = 0; e < E; e++) {
            int n;
            const int *ws = place_get(q, 0, e, &n);
            place_set(p, pl, e, ws, n);
        }
        place_free(q);
        return 0;
    }
    if (kind == 3) {
        eplb_layer(p, pl, load, E, W, pp->slots, pp->capacity);
        return 0;
    }
    return DH_EINVAL; /* affinity: searched in parallel by search_layers */
}

/* The affinity searches of every trace layer, on two threads (the layers are independent and
 * each search is deterministic, so the plan does not depend on the thread count). */
typedef struct search_job {
    const plan_data *d;
    aff_params ap;
    aff_state **st;         /* [L trace] the searched layers */
    const uint8_t *want;    /* [L trace] the layers some plan layer takes */
} search_job;

static void search_one(void *ctx, int lt, int thread) {
    (void)thread;
    search_job *j = ctx;
    if (!j->want[lt]) return;
    j->st[lt] = aff_new(j->d, lt, &j->ap, NULL, 0);
    if (j->st[lt]) aff_search(j->st[lt]);
}

static void search_layers(search_job *j, int n) {
    tp_pool *tp = tp_new(2);
    tp_run(tp, n, search_one, j);
    tp_free(tp);
}

/* Checks shared by compute and migrate; fills the effective slots and layer map. */
static int check(const plan_data *d, planner_params *pp, int *L, const uint8_t **is_moe, int **map) {
    int E = d->n_experts, W = pp->n_workers;
    if (W < 1 || W > E || W > 64) {
        log_error("placement: %d workers for %d experts a layer (want 1..min(E, 64))", W, E);
        return DH_EINVAL;
    }
    if (!pp->slots) pp->slots = (E + W - 1) / W;
    if ((long long)pp->slots * W < E) {
        log_error("placement: %d slots on each of %d workers cannot host %d experts (want --slots >= %d)",
                  pp->slots, W, E, (E + W - 1) / W);
        return DH_EINVAL;
    }
    *L = pp->is_moe ? pp->n_layers : d->n_layers;
    *map = xmalloc((size_t)*L * sizeof **map);
    for (int l = 0; l < *L; l++) (*map)[l] = pp->is_moe ? (pp->is_moe[l] ? pp->trace_layer[l] : -1) : l;
    uint8_t *all = NULL;
    if (!pp->is_moe) {
        all = xmalloc((size_t)*L);
        memset(all, 1, (size_t)*L);
    }
    *is_moe = pp->is_moe ? pp->is_moe : all;
    return 0;
}

place_plan *planner_compute(const plan_data *d, const planner_params *pp_in) {
    planner_params pp = *pp_in;
    const char *algo = pp.algo ? pp.algo : PLANNER_DEFAULT_ALGO;
    int kind = -1;
    for (int i = 0; planner_algos[i]; i++)
        if (!strcmp(algo, planner_algos[i])) kind = i;
    if (kind < 0) {
        log_error("placement: unknown algorithm '%s' (contiguous, round-robin, balanced, eplb, affinity)", algo);
        return NULL;
    }
    int L, *map;
    const uint8_t *is_moe;
    if (check(d, &pp, &L, &is_moe, &map)) return NULL;
    place_plan *p = place_new(L, d->n_experts, pp.n_workers);
    snprintf(p->algo, sizeof p->algo, "%s", algo);
    int rc = 0, Lt = d->n_layers;
    aff_state **st = xcalloc((size_t)Lt, sizeof *st);
    if (kind == 4) {
        uint8_t *want = xcalloc((size_t)Lt, 1);
        for (int l = 0; l < L; l++)
            if (map[l] >= 0) want[map[l]] = 1;
        search_job j = {.d = d, .ap = pp.aff, .st = st, .want = want};
        j.ap.n_workers = pp.n_workers, j.ap.slots = pp.slots, j.ap.capacity = pp.capacity;
        search_layers(&j, Lt);
        for (int lt = 0; lt < Lt; lt++)
            if (want[lt] && !st[lt]) rc = DH_EINVAL;
        free(want);
    }
    for (int l = 0; l < L && !rc; l++) {
        if (map[l] < 0) continue;
        if (kind == 4) {
            aff_write(st[map[l]], p, l);
            continue;
        }
        int prev = -1; /* an earlier plan layer with the same trace layer */
        for (int j = 0; j < l && prev < 0; j++)
            if (map[j] == map[l]) prev = j;
        if (prev < 0) {
            log_debug("placement: layer %d (trace layer %d) by %s", l, map[l], algo);
            rc = plan_layer(p, l, d, map[l], &pp, kind);
            continue;
        }
        for (int e = 0; e < d->n_experts; e++) {
            int n;
            const int *ws = place_get(p, prev, e, &n);
            int tmp[64];
            memcpy(tmp, ws, (size_t)n * sizeof *tmp);
            place_set(p, l, e, tmp, n);
        }
    }
    for (int lt = 0; lt < Lt; lt++) aff_free(st[lt]);
    free(st);
    if (is_moe != pp.is_moe) free((void *)is_moe);
    free(map);
    if (rc) place_free(p), p = NULL;
    return p;
}

place_plan *planner_migrate(const plan_data *d, const planner_params *pp_in, const place_plan *from,
                            int max_moves, int *made) {
    planner_params pp = *pp_in;
    *made = 0;
    int L, *map;
    const uint8_t *is_moe;
    if (check(d, &pp, &L, &is_moe, &map)) return NULL;
    place_plan *p = NULL;
    aff_state **st = xcalloc((size_t)L, sizeof *st);
    double *gain = xcalloc((size_t)L, sizeof *gain);
    int *cost = xcalloc((size_t)L, sizeof *cost), ok = 1;
    if (from->n_layers != L || from->n_experts != d->n_experts || from->n_workers != pp.n_workers ||
        place_validate(from, is_moe) != 0) {
        log_error("placement: the plan to migrate from is for %d layers, %d experts, %d workers; this is %d, %d, %d",
                  from->n_layers, from->n_experts, from->n_workers, L, d->n_experts, pp.n_workers);
        ok = 0;
    }
    aff_params ap = pp.aff;
    ap.n_workers = pp.n_workers, ap.slots = pp.slots, ap.capacity = pp.capacity;
    for (int l = 0; l < L && ok; l++) {
        if (map[l] < 0) continue;
        if (!(st[l] = aff_new(d, map[l], &ap, from, l))) ok = 0;
        else gain[l] = aff_best_move(st[l], &cost[l]);
    }
    // the best move of all layers each time, while the budget allows it
    while (ok) {
        int best = -1;
        for (int l = 0; l < L; l++)
            if (st[l] && gain[l] > 1e-12 && *made + cost[l] <= max_moves && (best < 0 || gain[l] > gain[best])) best = l;
        if (best < 0) break;
        aff_apply_best(st[best]);
        *made += cost[best];
        gain[best] = aff_best_move(st[best], &cost[best]);
    }
    if (ok) {
        p = place_new(L, d->n_experts, pp.n_workers);
        snprintf(p->algo, sizeof p->algo, "migrate");
        for (int l = 0; l < L; l++)
            if (st[l]) aff_write(st[l], p, l);
    }
    for (int l = 0; l < L; l++) aff_free(st[l]);
    free(st), free(gain), free(cost), free(map);
    if (is_moe != pp.is_moe) free((void *)is_moe);
    return p;
}
