/* migrate.c: a bounded step from the plan in use toward an ideal one.
 *
 * Policy. The cost of a re-plan is what the workers must map while they serve: one placement
 * added to a worker, one move. The gain is what the step time gains, and a MoE layer waits for
 * its busiest worker, so an entry's gain is how much it lowers its layer's maximum of
 * load / capacity; the sum of squares of load / capacity breaks ties (with two workers at the
 * maximum no single move lowers it, yet moving toward even is the way there). Greedy: take the
 * entry (layer, expert) whose switch to the ideal plan's workers gains the most per placement
 * it adds, re-evaluate, repeat while the budget lasts and an entry still gains. An entry moves
 * whole (its worker set becomes the ideal one), so it never ends up hosted by nobody. An entry
 * that only sheds replicas adds no placement, but it must gain like any other (its load moves
 * onto the replicas that stay).
 *
 * First the ideal plan's worker labels are aligned with the old plan's, layer by layer: a
 * planner numbers its workers as it likes, and "the ideal plan, with workers 1 and 2 swapped"
 * is as ideal and moves nothing. Workers are paired by the most experts in common (greedy),
 * only with workers of the same capacity, so the relabelled plan is as balanced as the ideal.
 *
 * Greedy is not optimal: a swap of two experts whose halves each hurt is never made. The
 * planner's migration-aware search (`place --from PLAN --max-moves M`) may do better; this is
 * the small rule the live cluster needs. O(moves x entries x workers): 576 entries and 4
 * workers re-evaluate in well under a millisecond per move. */
#include "migrate.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

#define REL_EPS 1e-12 /* gains below this share of the layer's score are rounding, not gains */

static double cap_of(const double *capacity, int w) { return capacity ? capacity[w] : 1.0; }

/* Worker loads of layer l under p into wl[W], through place_worker_load on a load vector that
 * is zero outside layer l (mask: [n_layers * E] zeros, left zero). */
static void layer_load(const place_plan *p, int l, const double *load, double *mask, double *wl) {
    int E = p->n_experts;
    size_t off = (size_t)l * E;
    for (int e = 0; e < E; e++) mask[off + e] = load ? load[off + e] : 1.0;
    place_worker_load(p, mask, NULL, wl);
    memset(mask + off, 0, (size_t)E * sizeof *mask);
}

/* the layer's score: max and sum of squares of load / capacity */
static void score(const double *wl, const double *capacity, int W, double *mx, double *sq) {
    *mx = 0, *sq = 0;
    for (int w = 0; w < W; w++) {
        double t = wl[w] / cap_of(capacity, w);
        *mx = DH_MAX(*mx, t);
        *sq += t * t;
    }
}

double mig_imbalance(const place_plan *p, const double *load, const double *capacity) {
    int L = p->n_layers, E = p->n_experts, W = p->n_workers;
    double *mask = xcalloc((size_t)L * E + 1, sizeof *mask), *wl = xmalloc((size_t)W * sizeof *wl);
    double capsum = 0, num = 0, den = 0;
    for (int w = 0; w < W; w++) capsum += cap_of(capacity, w);
    for (int l = 0; l < L; l++) {
        if (p->offsets[(size_t)l * E] == p->offsets[(size_t)(l + 1) * E]) continue; /* a dense layer */
        layer_load(p, l, load, mask, wl);
        double mx, sq, tot = 0;
        score(wl, capacity, W, &mx, &sq);
        for (int w = 0; w < W; w++) tot += wl[w];
        num += mx;
        den += tot / capsum;
    }
    free(mask), free(wl);
    return den > 0 ? num / den : 1.0;
}

/* workers of b's entry i missing from a's */
static int same_at(const place_plan *a, const place_plan *b, int l, int e) {
    int na, nb;
    const int *wa = place_get(a, l, e, &na), *wb = place_get(b, l, e, &nb);
    return na == nb && memcmp(wa, wb, (size_t)na * sizeof *wa) == 0;
}

static place_plan *copy_plan(const place_plan *p) {
    place_plan *c = place_new(p->n_layers, p->n_experts, p->n_workers);
    size_t n = (size_t)p->n_layers * p->n_experts;
    memcpy(c->offsets, p->offsets, (n + 1) * sizeof *c->offsets);
    c->workers = xrealloc(c->workers, ((size_t)p->offsets[n] + 1) * sizeof *c->workers);
    memcpy(c->workers, p->workers, (size_t)p->offsets[n] * sizeof *c->workers);
    memcpy(c->algo, p->algo, sizeof c->algo);
    return c;
}

/* layer loads tmp[W] (a copy of wl) after entry (l, e) takes ideal's workers instead of cur's */
static void switched(const place_plan *cur, const place_plan *ideal, int l, int e, double x, const double *wl,
                     double *tmp) {
    int W = cur->n_workers, nc, ni;
    const int *wc = place_get(cur, l, e, &nc), *wi = place_get(ideal, l, e, &ni);
    memcpy(tmp, wl, (size_t)W * sizeof *tmp);
    for (int j = 0; j < nc; j++) tmp[wc[j] - 1] -= x / nc;
    for (int j = 0; j < ni; j++) tmp[wi[j] - 1] += x / ni;
}

/* ideal with its workers renamed, layer by layer, to keep as many of old's placements as it can:
 * new[b] = old's worker a sharing the most experts with ideal's b, among equal capacities */
static place_plan *align(const place_plan *old, const place_plan *ideal, const double *capacity) {
    int L = old->n_layers, E = old->n_experts, W = old->n_workers;
    place_plan *out = copy_plan(ideal);
    int *ov = xmalloc((size_t)W * W * sizeof *ov), *to = xmalloc((size_t)W * sizeof *to);
    int *used = xmalloc((size_t)W * sizeof *used), ws[1024];
    for (int l = 0; l < L; l++) {
        // ov[a * W + b]: experts of layer l on old's worker a and ideal's worker b
        memset(ov, 0, (size_t)W * W * sizeof *ov);
        for (int e = 0; e < E; e++) {
            int na, nb;
            const int *wa = place_get(old, l, e, &na), *wb = place_get(ideal, l, e, &nb);
            for (int i = 0; i < na; i++)
                for (int j = 0; j < nb; j++) ov[(size_t)(wa[i] - 1) * W + (wb[j] - 1)]++;
        }
        // pair greedily, largest overlap first, lowest ranks on ties
        for (int w = 0; w < W; w++) to[w] = -1, used[w] = 0;
        for (int k = 0; k < W; k++) {
            int ba = -1, bb = -1;
            for (int a = 0; a < W; a++)
                for (int b = 0; b < W && !used[a]; b++)
                    if (to[b] < 0 && cap_of(capacity, a) == cap_of(capacity, b) &&
                        (ba < 0 || ov[(size_t)a * W + b] > ov[(size_t)ba * W + bb]))
                        ba = a, bb = b;
            if (ba < 0) break;
            to[bb] = ba, used[ba] = 1;
        }
        for (int b = 0; b < W; b++) DH_ASSERT(to[b] >= 0); /* each capacity class pairs with itself */
        for (int e = 0; e < E; e++) {
            int nb;
            const int *wb = place_get(ideal, l, e, &nb);
            DH_ASSERT(nb <= 1024);
            for (int j = 0; j < nb; j++) ws[j] = to[wb[j] - 1] + 1;
            place_set(out, l, e, ws, nb);
        }
    }
    free(ov), free(to), free(used);
    return out;
}

place_plan *mig_limit(const place_plan *old, const place_plan *ideal, const double *load,
                      const double *capacity, int max_moves, int *moved) {
    DH_ASSERT(old->n_layers == ideal->n_layers && old->n_experts == ideal->n_experts &&
              old->n_workers == ideal->n_workers);
    int L = old->n_layers, E = old->n_experts, W = old->n_workers;
    size_t n = (size_t)L * E;
    place_plan *cur = copy_plan(old), *want = align(old, ideal, capacity);
    snprintf(cur->algo, sizeof cur->algo, "migrated");
    double *mask = xcalloc(n + 1, sizeof *mask), *wl = xmalloc(((size_t)L * W + 1) * sizeof *wl);
    double *tmp = xmalloc((size_t)W * sizeof *tmp);
    for (int l = 0; l < L; l++) layer_load(cur, l, load, mask, wl + (size_t)l * W);
    // candidates: the entries where want differs, each with the placements it adds
    int *cost = xmalloc((n + 1) * sizeof *cost);
    for (size_t i = 0; i < n; i++)
        cost[i] = same_at(old, want, (int)(i / E), (int)(i % E)) ? -1 : place_added_at(old, want, (int)(i / E), (int)(i % E));
    int budget = max_moves < 0 ? INT_MAX : max_moves, total = 0;
    for (;;) {
        long best = -1;
        double best_dmx = 0, best_dsq = 0;
        for (size_t i = 0; i < n; i++) {
            if (cost[i] < 0 || cost[i] > budget) continue;
            int l = (int)(i / E), e = (int)(i % E);
            const double *lw = wl + (size_t)l * W;
            switched(cur, want, l, e, load ? load[i] : 1.0, lw, tmp);
            double mx0, sq0, mx1, sq1, per = DH_MAX(cost[i], 1);
            score(lw, capacity, W, &mx0, &sq0);
            score(tmp, capacity, W, &mx1, &sq1);
            double dmx = (mx0 - mx1) / per, dsq = (sq0 - sq1) / per;
            double emx = REL_EPS * mx0, esq = REL_EPS * sq0;
            int gains = dmx > emx || (fabs(dmx) <= emx && dsq > esq);
            if (!gains) continue;
            int better = best < 0 || dmx > best_dmx + emx || (fabs(dmx - best_dmx) <= emx && dsq > best_dsq + esq);
            if (better) best = (long)i, best_dmx = dmx, best_dsq = dsq;
        }
        if (best < 0) break;
        int l = (int)(best / E), e = (int)(best % E), ni;
        switched(cur, want, l, e, load ? load[best] : 1.0, wl + (size_t)l * W, tmp);
        memcpy(wl + (size_t)l * W, tmp, (size_t)W * sizeof *tmp);
        const int *wi = place_get(want, l, e, &ni);
        place_set(cur, l, e, wi, ni);
        budget -= cost[best];
        total += cost[best];
        cost[best] = -1;
    }
    free(mask), free(wl), free(tmp), free(cost);
    place_free(want);
    if (moved) *moved = total;
    return cur;
}
