/* config.h: the model's config.json, Hugging Face DeepSeek-V2/V3 schema (cfg_ prefix). */
#ifndef DH_CONFIG_H
#define DH_CONFIG_H

#define CFG_N_DOMAINS 10
#define CFG_MAX_EXPERTS 256

typedef enum cfg_score { CFG_SCORE_SOFTMAX = 0, CFG_SCORE_SIGMOID = 1 } cfg_score;
typedef enum cfg_topk {
    CFG_TOPK_GREEDY = 0,         /* top-k of all scores (V2 "greedy") */
    CFG_TOPK_GROUP_GREEDY = 1,   /* V2 "group_limited_greedy": a group's score is its max */
    CFG_TOPK_NOAUX_TC = 2,       /* V3 "noaux_tc": a group's score is its top-2 sum, bias added */
} cfg_topk;

typedef struct model_config {          /* field names are config.json keys */
    char model_type[32];               /* "deepseek_v3", "deepseek_v2", ... */
    int vocab_size;                    /* V; genesis 129280 */
    int hidden_size;                   /* D */
    int intermediate_size;             /* dense FFN width */
    int moe_intermediate_size;         /* F, routed expert FFN width */
    int num_hidden_layers;             /* main-model layers, dense and MoE */
    int num_attention_heads;           /* H */
    int n_routed_experts;              /* E */
    int num_experts_per_tok;           /* K */
    int n_shared_experts;              /* shared pathway width = n_shared_experts * F */
    int first_k_dense_replace;         /* layers below this are dense */
    int moe_layer_freq;                /* MoE layers are those with i % freq == 0 past the dense */
    int n_group;                       /* expert groups for group-limited routing */
    int topk_group;                    /* groups kept */
    cfg_topk topk_method;
    cfg_score scoring_func;
    int norm_topk_prob;                /* normalise the chosen weights to sum 1 */
    float routed_scaling_factor;
    int q_lora_rank;                   /* 0: no q LoRA (q_proj) */
    int kv_lora_rank;                  /* C */
    int qk_nope_head_dim;              /* Dn */
    int qk_rope_head_dim;              /* Dr */
    int v_head_dim;                    /* Dv */
    float rms_norm_eps;
    double rope_theta;
    int max_position_embeddings;
    /* rope_scaling (YaRN); rope_yarn = 0 when absent */
    int rope_yarn;
    double yarn_factor;
    int yarn_original_max_position_embeddings;
    double yarn_beta_fast, yarn_beta_slow;
    double yarn_mscale, yarn_mscale_all_dim;
    int num_nextn_predict_layers;      /* MTP layers (0 or 1 used) */
    int tie_word_embeddings;
    int bos_token_id, eos_token_id;
    /* ours */
    char domain_names[CFG_N_DOMAINS][32];
    int expert_domains[CFG_MAX_EXPERTS]; /* domain id per routed expert */
    int has_domains;                   /* both keys present in the file */
} model_config;

/* Parse the config.json at path. 0, or DH_ENOTFOUND / DH_EIO / DH_EFORMAT with a message
 * naming the file and the key (a missing required key, a wrong type, an impossible value). */
int cfg_load(model_config *cfg, const char *path);
/* Parse from a string; `name` is used in messages. */
int cfg_parse(model_config *cfg, const char *json, const char *name);
/* Is main-model layer i a MoE layer? (i == num_hidden_layers is the MTP layer: MoE too) */
int cfg_is_moe_layer(const model_config *cfg, int i);
/* Softmax scale of attention: (Dn + Dr)^-0.5, times mscale^2 under YaRN. */
float cfg_softmax_scale(const model_config *cfg);
/* RoPE inverse frequencies (with YaRN when configured) into inv_freq[Dr / 2]. */
void cfg_rope_inv_freq(const model_config *cfg, double *inv_freq);
#endif
