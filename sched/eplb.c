/* eplb.c: DeepSeek's EPLB, global policy (see eplb.h), written from the description in
 * deepseek-ai/EPLB's eplb.py: replicate_experts, then balanced_packing of the replicas.
 *
 * Two details of that code are kept because they decide the plans: the replica goes to the
 * expert with the highest load / replica count (the first such expert on ties), and the
 * packing sorts replicas by load per replica, descending, and gives each to the lightest pack
 * that still has room. EPLB does not check that two replicas of one expert land on different
 * GPUs; here such a pair becomes one replica, since a second copy on the same worker would
 * add memory and no throughput. */
#include "eplb.h"

#include <stdlib.h>

#include "core/common.h"

void eplb_replicate(const double *load, int E, int n_phys, int *cnt) {
    DH_ASSERT(n_phys >= E);
    for (int e = 0; e < E; e++) cnt[e] = 1;
    for (int r = E; r < n_phys; r++) {
        int best = 0;
        for (int e = 1; e < E; e++)
            if (load[e] / cnt[e] > load[best] / cnt[best]) best = e;
        cnt[best]++;
    }
}

void eplb_pack(const double *w, int n, int W, int per_pack, const double *cap, int *pack) {
    DH_ASSERT(n == W * per_pack);
    int *order = xmalloc((size_t)n * sizeof *order);
    double *pw = xcalloc((size_t)W, sizeof *pw);
    int *pn = xcalloc((size_t)W, sizeof *pn);
    place_order_by_load(w, n, order);
    for (int j = 0; j < n; j++) {
        int best = -1, i = order[j];
        for (int k = 0; k < W; k++) {
            if (pn[k] >= per_pack) continue;
            if (best < 0 || pw[k] / (cap ? cap[k] : 1) < pw[best] / (cap ? cap[best] : 1)) best = k;
        }
        pack[i] = best;
        pw[best] += w[i];
        pn[best]++;
    }
    free(order), free(pw), free(pn);
}

int eplb_layer(place_plan *p, int l, const double *load, int E, int W, int slots, const double *cap) {
    int n = W * slots, merged = 0;
    DH_ASSERT(n >= E);
    double *ld = xmalloc((size_t)E * sizeof *ld), *w = xmalloc((size_t)n * sizeof *w);
    int *cnt = xmalloc((size_t)E * sizeof *cnt);
    int *pack = xmalloc((size_t)n * sizeof *pack);
    for (int e = 0; e < E; e++) ld[e] = load ? load[e] : 1.0;
    eplb_replicate(ld, E, n, cnt);
    // the replicas, each weighing its expert's load / count, listed by expert (this order
    // only breaks ties in the packing, where torch's sort leaves them unspecified)
    int k = 0;
    for (int e = 0; e < E; e++)
        for (int r = 0; r < cnt[e]; r++) w[k++] = ld[e] / cnt[e];
    eplb_pack(w, n, W, slots, cap, pack);
    for (int e = 0, i = 0; e < E; e++) {
        int ws[64], m = 0;
        DH_ASSERT(cnt[e] <= 64);
        for (int r = 0; r < cnt[e]; r++, i++) {
            int dup = 0;
            for (int j = 0; j < m; j++) dup |= ws[j] == pack[i] + 1;
            if (dup) merged++;
            else ws[m++] = pack[i] + 1;
        }
        place_set(p, l, e, ws, m);
    }
    free(ld), free(w), free(cnt), free(pack);
    return merged;
}
