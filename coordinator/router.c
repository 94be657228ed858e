/* router.c: choosing the K experts of a token and their gate weights.
 *
 * DeepSeek-V3 (noaux_tc): s = sigmoid(logit); choice = s + bias; with groups, a group scores
 * the sum of its two best choices and only the topk_group best groups compete; the K best
 * choices are the experts; weights are s (not the choice: the bias steers load, it does not
 * change how much an expert counts), normalised over the K, times routed_scaling_factor.
 * DeepSeek-V2 (greedy / group_limited_greedy): p = softmax(logit), a group scores its max p,
 * weights are p (normalised when norm_topk_prob), times the scaling factor.
 *
 * Selection is a partial insertion sort over E <= 256 values, best first; a strict ">" keeps
 * the lower index on ties, so the choice is deterministic. */
#include "router.h"

#include <math.h>

#include "core/common.h"

router router_from_config(const model_config *c, const float *bias) {
    router r = {
        .n_experts = c->n_routed_experts,
        .top_k = c->num_experts_per_tok,
        .n_group = c->n_group,
        .topk_group = c->topk_group,
        .score = c->scoring_func == CFG_SCORE_SIGMOID ? ROUTER_SCORE_SIGMOID : ROUTER_SCORE_SOFTMAX,
        .norm_topk_prob = c->norm_topk_prob,
        .scaling = c->routed_scaling_factor,
        .bias = bias,
    };
    if (c->n_group <= 1 || c->topk_method == CFG_TOPK_GREEDY)
        r.group = ROUTER_GROUP_NONE;
    else
        r.group = c->topk_method == CFG_TOPK_NOAUX_TC ? ROUTER_GROUP_TOP2 : ROUTER_GROUP_MAX;
    return r;
}

/* indices of the k largest of v[n] (skipping -inf), best first, ties to the lower index */
static void top_k(const float *v, int n, int k, int *out) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (v[i] == -INFINITY) continue;
        if (m == k && !(v[i] > v[out[k - 1]])) continue;
        int j = m < k ? m++ : k - 1;
        while (j > 0 && v[i] > v[out[j - 1]]) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = i;
    }
    DH_ASSERT(m == k);
}

void router_select(const router *r, const float *logit, int *idx, float *w) {
    int E = r->n_experts, K = r->top_k;
    DH_ASSERT(E <= CFG_MAX_EXPERTS && K <= E);
    float s[CFG_MAX_EXPERTS], choice[CFG_MAX_EXPERTS];
    if (r->score == ROUTER_SCORE_SIGMOID) {
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logit[e]));
    } else {
        float mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++) mx = fmaxf(mx, logit[e]);
        for (int e = 0; e < E; e++) sum += s[e] = expf(logit[e] - mx);
        for (int e = 0; e < E; e++) s[e] /= sum;
    }
    for (int e = 0; e < E; e++) choice[e] = s[e] + (r->bias ? r->bias[e] : 0.0f);
    if (r->group != ROUTER_GROUP_NONE) {
        int G = r->n_group, per = E / G, best[CFG_MAX_EXPERTS];
        float gs[CFG_MAX_EXPERTS] = {0};
        for (int g = 0; g < G; g++) {
            const float *cg = choice + g * per;
            if (r->group == ROUTER_GROUP_MAX) {
                gs[g] = -INFINITY;
                for (int i = 0; i < per; i++) gs[g] = fmaxf(gs[g], cg[i]);
            } else {
                int two[2];
                top_k(cg, per, 2, two);
                gs[g] = cg[two[0]] + cg[two[1]];
            }
        }
        top_k(gs, G, r->topk_group, best);
        unsigned char keep[CFG_MAX_EXPERTS] = {0};
        for (int i = 0; i < r->topk_group; i++) keep[best[i]] = 1;
        for (int g = 0; g < G; g++)
            if (!keep[g])
                for (int i = 0; i < per; i++) choice[g * per + i] = -INFINITY;
    }
    top_k(choice, E, K, idx);
    float sum = 0;
    for (int k = 0; k < K; k++) sum += w[k] = s[idx[k]];
    for (int k = 0; k < K; k++) {
        if (r->norm_topk_prob && sum > 0) w[k] /= sum;
        w[k] *= r->scaling;
    }
}
