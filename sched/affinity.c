/* affinity.c: the fan-out and balance search of one layer (see affinity.h).
 *
 * Why this objective: a static plan that balances total counts still leaves each step
 * skewed, and the skew a step sees depends on which experts share a worker: experts that the
 * same tokens choose together cut fan-out when they share a worker, and raise the step's
 * variance there. So the search scores both on the planning data itself: the exact fan-out
 * of sampled tokens, and the imbalance of the replay's own steps (decode and prefill, each
 * half of the term), instead of a proxy such as pairwise co-occurrence.
 *
 * How: each evaluation touches only the tokens that chose one of the two experts moved (a
 * token list per expert) and, when an expert with one copy moves, each step's loads of the
 * two workers involved; first-improvement passes over all swaps and moves. Worker sets are
 * u64 masks, so a token's fan-out is a few bit operations. */
#include "affinity.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "sched/eplb.h"

#define BIT(w) ((uint64_t)1 << (w))

struct aff_state {
    int E, W, slots;
    double lambda, dshare;
    int max_passes;
    uint64_t host[64];  /* workers (bit w = rank w + 1) of each expert */
    int cnt[64];        /* copies per worker */
    double cap[64], capsum;
    int nt;             /* sampled tokens */
    uint64_t *tm;       /* [nt] chosen sets */
    float *tw;          /* [nt] weights */
    float *fan;         /* [nt] current fan-out */
    int *tl_first, *tl; /* CSR [E + 1]: tokens that chose each expert */
    double fan_sum, tw_sum;
    int ns, n_dec;      /* sampled steps; the first n_dec are decode steps */
    float *C;           /* [ns, E] (token, expert) counts per step */
    double *Sw;         /* [ns, W] load of experts with one copy */
    double *tot;        /* [ns] all load of the step */
    double *imb;        /* [ns] current imbalance */
    double imb_dec, imb_pre;
    /* the move aff_best_move found: e1 from w1 to w2, e2 (or -1) from w2 to w1 */
    int b_e1, b_w1, b_e2, b_w2;
};

aff_params aff_default_params(void) {
    return (aff_params){.n_workers = 0, .slots = 0, .capacity = NULL, .lambda = 10.0, .decode_share = 0.5, .hub = 1,
                        .max_tokens = 2048, .max_steps = 1024, .max_passes = 6};
}

/* Workers a token visits: experts with one copy fix them; a replicated expert adds a worker
 * only when none of its copies is visited (DISP_SMART's first rule). */
static int fan_of(const aff_state *a, uint64_t m) {
    uint64_t v = 0, rep = 0;
    for (uint64_t x = m; x; x &= x - 1) {
        int e = __builtin_ctzll(x);
        uint64_t h = a->host[e];
        if (h & (h - 1)) rep |= BIT(e);
        else v |= h;
    }
    for (; rep; rep &= rep - 1) {
        uint64_t h = a->host[__builtin_ctzll(rep)];
        if (!(h & v)) v |= h & -h;
    }
    return __builtin_popcountll(v);
}

static double step_imb(const aff_state *a, const double *sw, double tot) {
    if (!(tot > 0)) return 1.0;
    double lvl = tot / a->capsum, mx = lvl;
    for (int w = 0; w < a->W; w++) mx = DH_MAX(mx, sw[w] / a->cap[w]);
    return mx / lvl;
}

double aff_objective(const aff_state *a) {
    int n_pre = a->ns - a->n_dec;
    double imb = a->n_dec && n_pre ? a->dshare * a->imb_dec / a->n_dec + (1 - a->dshare) * a->imb_pre / n_pre
               : a->n_dec ? a->imb_dec / a->n_dec : n_pre ? a->imb_pre / n_pre : 1.0;
    return (a->tw_sum > 0 ? a->fan_sum / a->tw_sum : 0) + a->lambda * imb;
}

/* (Re)compute every token's fan-out and every step's loads from the copies. */
static void recompute(aff_state *a) {
    a->fan_sum = 0;
    for (int t = 0; t < a->nt; t++) a->fan[t] = (float)fan_of(a, a->tm[t]), a->fan_sum += a->tw[t] * a->fan[t];
    a->imb_dec = a->imb_pre = 0;
    for (int s = 0; s < a->ns; s++) {
        double *sw = a->Sw + (size_t)s * a->W;
        memset(sw, 0, (size_t)a->W * sizeof *sw);
        for (int e = 0; e < a->E; e++) {
            uint64_t h = a->host[e];
            if (!(h & (h - 1))) sw[__builtin_ctzll(h)] += a->C[(size_t)s * a->E + e];
        }
        a->imb[s] = step_imb(a, sw, a->tot[s]);
        *(s < a->n_dec ? &a->imb_dec : &a->imb_pre) += a->imb[s];
    }
}

/* Gain (J before - after) of moving e1 from w1 to w2 and e2 (>= 0) from w2 to w1; with
 * apply, make the move. */
static double try_move(aff_state *a, int e1, int w1, int e2, int w2, int apply) {
    uint64_t h1 = a->host[e1], h2 = e2 >= 0 ? a->host[e2] : 0;
    a->host[e1] = (h1 & ~BIT(w1)) | BIT(w2);
    if (e2 >= 0) a->host[e2] = (h2 & ~BIT(w2)) | BIT(w1);
    double df = 0;
    for (int pass = 0; pass < 2; pass++) {
        int e = pass ? e2 : e1;
        if (e < 0) continue;
        for (int i = a->tl_first[e]; i < a->tl_first[e + 1]; i++) {
            int t = a->tl[i];
            if (pass && (a->tm[t] >> e1 & 1)) continue; /* counted with e1 */
            int f = fan_of(a, a->tm[t]);
            df += a->tw[t] * (f - a->fan[t]);
            if (apply) a->fan[t] = (float)f;
        }
    }
    if (apply) a->fan_sum += df;
    else {
        a->host[e1] = h1;
        if (e2 >= 0) a->host[e2] = h2;
    }
    // balance: only experts with one copy load a worker directly
    int s1 = !(h1 & (h1 - 1)), s2 = e2 >= 0 && !(h2 & (h2 - 1));
    double di_dec = 0, di_pre = 0;
    if (s1 || s2) {
        double row[64];
        for (int s = 0; s < a->ns; s++) {
            const float *c = a->C + (size_t)s * a->E;
            double *sw = apply ? a->Sw + (size_t)s * a->W : row;
            if (!apply) memcpy(row, a->Sw + (size_t)s * a->W, (size_t)a->W * sizeof *row);
            double x = (s1 ? c[e1] : 0) - (s2 ? c[e2] : 0);
            sw[w1] -= x, sw[w2] += x;
            double ni = step_imb(a, sw, a->tot[s]);
            *(s < a->n_dec ? &di_dec : &di_pre) += ni - a->imb[s];
            if (apply) a->imb[s] = ni;
        }
    }
    int n_pre = a->ns - a->n_dec;
    double di = a->n_dec && n_pre ? a->dshare * di_dec / a->n_dec + (1 - a->dshare) * di_pre / n_pre
              : a->n_dec ? di_dec / a->n_dec : n_pre ? di_pre / n_pre : 0;
    if (apply) {
        a->imb_dec += di_dec, a->imb_pre += di_pre;
        if (e2 < 0) a->cnt[w1]--, a->cnt[w2]++;
    }
    return -(df / (a->tw_sum > 0 ? a->tw_sum : 1) + a->lambda * di);
}

/* Scan every move from copy (e1, w1); first-improvement applies the first gain, else the
 * best is remembered. Returns the best gain seen. */
static double scan_from(aff_state *a, int e1, int w1, int first, double best, int *cost) {
    for (int w2 = 0; w2 < a->W; w2++) {
        if (w2 == w1 || (a->host[e1] & BIT(w2))) continue;
        if (a->cnt[w2] < a->slots) { /* into a free slot */
            double g = try_move(a, e1, w1, -1, w2, 0);
            if (g > best + 1e-12) {
                best = g, *cost = 1;
                a->b_e1 = e1, a->b_w1 = w1, a->b_e2 = -1, a->b_w2 = w2;
                if (first) return try_move(a, e1, w1, -1, w2, 1), best;
            }
        }
        for (int e2 = 0; e2 < a->E; e2++) {
            if (e2 == e1 || !(a->host[e2] & BIT(w2)) || (a->host[e2] & BIT(w1))) continue;
            if (first && (e2 < e1 || (e2 == e1 && w2 < w1))) continue; /* seen from (e2, w2) */
            double g = try_move(a, e1, w1, e2, w2, 0);
            if (g > best + 1e-12) {
                best = g, *cost = 2;
                a->b_e1 = e1, a->b_w1 = w1, a->b_e2 = e2, a->b_w2 = w2;
                if (first) return try_move(a, e1, w1, e2, w2, 1), best;
            }
        }
    }
    return best;
}

int aff_search(aff_state *a) {
    int passes = 0;
    for (; passes < a->max_passes; passes++) {
        int improved = 0, cost;
        for (int e1 = 0; e1 < a->E; e1++)
            for (int w1 = 0; w1 < a->W; w1++)
                if ((a->host[e1] & BIT(w1)) && scan_from(a, e1, w1, 1, 0, &cost) > 0) improved = 1;
        if (!improved) break;
    }
    recompute(a); /* drop the drift of the incremental sums */
    return passes;
}

double aff_best_move(aff_state *a, int *cost) {
    double best = 0;
    *cost = 0;
    a->b_e1 = -1;
    for (int e1 = 0; e1 < a->E; e1++)
        for (int w1 = 0; w1 < a->W; w1++)
            if (a->host[e1] & BIT(w1)) best = scan_from(a, e1, w1, 0, best, cost);
    return best;
}

void aff_apply_best(aff_state *a) {
    if (a->b_e1 >= 0) try_move(a, a->b_e1, a->b_w1, a->b_e2, a->b_w2, 1);
    a->b_e1 = -1;
}

void aff_write(const aff_state *a, place_plan *p, int pl) {
    for (int e = 0; e < a->E; e++) {
        int ws[64], n = 0;
        for (int w = 0; w < a->W; w++)
            if (a->host[e] & BIT(w)) ws[n++] = w + 1;
        place_set(p, pl, e, ws, n);
    }
}

/* Replica counts: the hottest experts on every worker while whole rows of W - 1 extra slots
 * fit, then the rest to the next hottest (a partial hub); or EPLB's rule alone (capped at W).
 * A hub is on every worker, so it never adds to a token's fan-out, and the replica choice can
 * send it to whichever visited worker is lightest: the most balancing for a slot. Spreading
 * the same slots as second copies of several experts (EPLB's rule) balanced worse and cut
 * fan-out less on held-out data (docs/placement.md). */
static void replica_counts(const double *load, int E, int W, int n_phys, int hub, int *cnt) {
    if (!hub) {
        eplb_replicate(load, E, n_phys, cnt);
        for (int e = 0; e < E; e++) cnt[e] = DH_MIN(cnt[e], W);
        return;
    }
    for (int e = 0; e < E; e++) cnt[e] = 1;
    int extra = n_phys - E;
    while (extra >= W - 1 && W > 1) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (cnt[e] == 1 && (best < 0 || load[e] > load[best])) best = e;
        if (best < 0) break;
        cnt[best] = W, extra -= W - 1;
    }
    while (extra > 0) { /* the rest to one more expert: the most copies, then the heaviest */
        int best = -1;
        for (int e = 0; e < E; e++)
            if (cnt[e] < W && (best < 0 || cnt[e] > cnt[best] || (cnt[e] == cnt[best] && load[e] > load[best]))) best = e;
        if (best < 0) break;
        cnt[best]++, extra--;
    }
}

/* Heaviest copy first (load / copies), each to the lightest worker with room not hosting it. */
static void initial_pack(aff_state *a, const double *load, const int *cnt) {
    double wl[64] = {0};
    int done[64] = {0};
    for (;;) {
        int e = -1;
        for (int i = 0; i < a->E; i++)
            if (done[i] < cnt[i] && (e < 0 || load[i] / cnt[i] > load[e] / cnt[e])) e = i;
        if (e < 0) break;
        int best = -1;
        for (int w = 0; w < a->W; w++) {
            if (a->cnt[w] >= a->slots || (a->host[e] & BIT(w))) continue;
            if (best < 0 || wl[w] / a->cap[w] < wl[best] / a->cap[best]) best = w;
        }
        done[e]++;
        if (best < 0) { /* no room left for this copy: the expert keeps fewer replicas */
            DH_ASSERT(a->host[e]);
            continue;
        }
        a->host[e] |= BIT(best), a->cnt[best]++, wl[best] += load[e] / cnt[e];
    }
}

static uint64_t next_rand(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The sampled tokens, their lists per expert, and the steps' counts. The steps are
 * resampled rather than the replay's own: a plan fitted to a few hundred exact steps learns
 * their noise (it judged 0.02 better on its own steps than on held-out ones), and fresh
 * draws of the same kind of step average it out. */
static void take_data(aff_state *a, const plan_data *d, int lt, const aff_params *p) {
    int N = d->n_tokens, E = a->E, rng_start = 0;
    const uint64_t *mask = d->mask + (size_t)lt * N;
    a->nt = DH_MIN(N, p->max_tokens);
    a->tm = xmalloc((size_t)a->nt * sizeof *a->tm);
    a->tw = xmalloc((size_t)a->nt * sizeof *a->tw);
    a->fan = xcalloc((size_t)a->nt, sizeof *a->fan);
    a->tl_first = xcalloc((size_t)E + 1, sizeof *a->tl_first);
    for (int i = 0; i < a->nt; i++) {
        int t = (int)((long long)i * N / a->nt);
        a->tm[i] = mask[t], a->tw[i] = d->weight[t], a->tw_sum += d->weight[t];
        for (uint64_t x = mask[t]; x; x &= x - 1) a->tl_first[__builtin_ctzll(x) + 1]++;
    }
    for (int e = 0; e < E; e++) a->tl_first[e + 1] += a->tl_first[e];
    a->tl = xmalloc(((size_t)a->tl_first[E] + 1) * sizeof *a->tl);
    int *fill = xcalloc((size_t)E, sizeof *fill);
    for (int i = 0; i < a->nt; i++)
        for (uint64_t x = a->tm[i]; x; x &= x - 1) {
            int e = __builtin_ctzll(x);
            a->tl[a->tl_first[e] + fill[e]++] = i;
        }
    free(fill);
    // steps: resampled from the replay's own, half decode-like, half prefill-like (below)
    int n_pre = d->n_steps - d->n_decode;
    a->n_dec = d->n_decode ? (n_pre ? p->max_steps / 2 : p->max_steps) : 0;
    a->ns = a->n_dec + (n_pre ? p->max_steps - a->n_dec : 0);
    a->C = xcalloc((size_t)a->ns * E + 1, sizeof *a->C);
    a->Sw = xcalloc((size_t)a->ns * a->W + 1, sizeof *a->Sw);
    a->tot = xcalloc((size_t)a->ns + 1, sizeof *a->tot);
    a->imb = xcalloc((size_t)a->ns + 1, sizeof *a->imb);
    uint64_t rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)lt; /* fixed: plans are reproducible */
    for (int i = 0; i < a->ns; i++) {
        for (int b = 0; b < d->batch; b++) {
            int t;
            if (i < a->n_dec) { /* slot b of a random decode step: mostly other sequences */
                int s = (int)(next_rand(&rng) % (uint64_t)d->n_decode);
                t = d->step_tok[d->step_first[s] + b];
            } else { /* B consecutive tokens from a random start, as prefill takes them */
                if (b == 0) rng_start = (int)(next_rand(&rng) % (uint64_t)(N - d->batch + 1));
                t = rng_start + b;
            }
            for (uint64_t x = mask[t]; x; x &= x - 1) a->C[(size_t)i * E + __builtin_ctzll(x)] += d->weight[t];
            a->tot[i] += d->weight[t] * __builtin_popcountll(mask[t]);
        }
    }
}

aff_state *aff_new(const plan_data *d, int lt, const aff_params *p, const place_plan *from, int pl) {
    int E = d->n_experts, W = p->n_workers;
    DH_ASSERT(E <= 64 && W >= 1 && W <= 64 && lt >= 0 && lt < d->n_layers);
    if ((long long)W * p->slots < E) {
        log_error("placement: %d workers of %d slots cannot host %d experts", W, p->slots, E);
        return NULL;
    }
    aff_state *a = xcalloc(1, sizeof *a);
    a->E = E, a->W = W, a->slots = p->slots, a->lambda = p->lambda, a->dshare = p->decode_share, a->max_passes = p->max_passes;
    for (int w = 0; w < W; w++) a->cap[w] = p->capacity ? p->capacity[w] : 1.0, a->capsum += a->cap[w];
    take_data(a, d, lt, p);
    const double *load = d->load + (size_t)lt * E;
    if (from) {
        for (int e = 0; e < E; e++) {
            int n;
            const int *ws = place_get(from, pl, e, &n);
            for (int i = 0; i < n; i++) a->host[e] |= BIT(ws[i] - 1), a->cnt[ws[i] - 1]++;
        }
    } else {
        int cnt[64];
        replica_counts(load, E, W, W * p->slots, p->hub, cnt);
        initial_pack(a, load, cnt);
    }
    recompute(a);
    return a;
}

void aff_free(aff_state *a) {
    if (!a) return;
    free(a->tm), free(a->tw), free(a->fan), free(a->tl_first), free(a->tl);
    free(a->C), free(a->Sw), free(a->tot), free(a->imb);
    free(a);
}
