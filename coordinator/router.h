/* router.h: MoE routing, sigmoid + ALF bias or softmax, with group-limited top-k (router_). */
#ifndef DH_ROUTER_H
#define DH_ROUTER_H
#include "core/config.h"

typedef enum router_score { ROUTER_SCORE_SOFTMAX = 0, ROUTER_SCORE_SIGMOID = 1 } router_score;
typedef enum router_group { ROUTER_GROUP_NONE = 0, ROUTER_GROUP_MAX = 1, ROUTER_GROUP_TOP2 = 2 } router_group;

typedef struct router {
    int n_experts;        /* E */
    int top_k;            /* K */
    int n_group;          /* groups of E / n_group consecutive experts */
    int topk_group;       /* groups kept */
    router_group group;   /* how a group is scored: its max score, or the sum of its top-2 choices */
    router_score score;
    int norm_topk_prob;   /* normalise the K weights to sum 1 */
    float scaling;        /* routed_scaling_factor, multiplies the weights */
    const float *bias;    /* [E] e_score_correction_bias, added for choosing only; NULL = 0 */
} router;

/* The router of a config's MoE layer with that bias (borrowed). */
router router_from_config(const model_config *cfg, const float *bias);
/* One token: logit [E] = x . W_gate^T. Writes the K chosen experts, best first, and their
 * gate weights. Ties go to the lower expert index. */
void router_select(const router *r, const float *logit, int *idx, float *w);
#endif
