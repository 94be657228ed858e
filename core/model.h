/* model.h: a checkpoint's weights as typed views, by layer (model_ prefix).
 *
 * Dims legend: D hidden, V vocab, H heads, Dn/Dr/Dv nope/rope/v head dims, C kv_lora_rank,
 * Q q_lora_rank, E routed experts, F expert FFN width, I dense FFN width, L main layers.
 * Layer L (when the checkpoint has one) is the MTP block. */
#ifndef DH_MODEL_H
#define DH_MODEL_H
#include <stdint.h>

#include "core/config.h"
#include "core/hugemem.h"
#include "core/safetensors.h"
#include "core/tensor.h"

typedef struct mla_weights {           /* model.layers.{i}.self_attn.*, stored [out, in] */
    wmat q_proj;                       /* [H*(Dn+Dr), D]; unset (rows 0) with q LoRA */
    wmat q_a_proj;                     /* [Q, D] */
    const float *q_a_layernorm;        /* [Q] */
    wmat q_b_proj;                     /* [H*(Dn+Dr), Q] */
    wmat kv_a_proj_with_mqa;           /* [C+Dr, D] */
    const float *kv_a_layernorm;       /* [C] */
    wmat kv_b_proj;                    /* [H*(Dn+Dv), C]: per head, W_UK rows then W_UV rows */
    wmat w_uk_t;                       /* f32, owned: per head W_UK^T, [H*C, Dn] (absorbed q) */
    wmat w_uv;                         /* f32, owned: per head W_UV, [H*Dv, C] (absorbed output) */
    wmat o_proj;                       /* [D, H*Dv] */
} mla_weights;

typedef struct ffn_weights {           /* SwiGLU: down(silu(gate(x)) * up(x)) */
    wmat gate_proj;                    /* [F, D] */
    wmat up_proj;                      /* [F, D] */
    wmat down_proj;                    /* [D, F] */
} ffn_weights;

typedef struct moe_weights {           /* model.layers.{i}.mlp.* of a MoE layer */
    wmat gate;                         /* router, f32 always: [E, D] */
    const float *e_score_correction_bias; /* [E], NULL when absent (zero) */
    ffn_weights shared;                /* shared_experts: width n_shared_experts * F; rows 0 if none */
    ffn_weights *experts;              /* [E]; an expert not hosted here has rows 0 */
} moe_weights;

typedef struct layer_weights {
    const float *input_layernorm;      /* [D] */
    const float *post_attention_layernorm; /* [D] */
    mla_weights attn;
    int is_moe;
    ffn_weights mlp;                   /* dense layers: [I, D] ... */
    moe_weights moe;
    /* the MTP block only */
    const float *enorm, *hnorm;        /* [D] */
    wmat eh_proj;                      /* [D, 2D]: [enorm(embedding); hnorm(hidden)] -> D */
    const float *shared_head_norm;     /* [D] */
    wmat shared_head_head;             /* [V, D] (the main lm_head when the file has none) */
    wmat embed_tokens;                 /* [V, D] (the main embedding when the file has none) */
} layer_weights;

typedef struct model_params {
    int weights;                /* -1: compute on the stored values; else a dh_dtype to convert
                                   every large matrix to (norms, router and bias stay f32) */
    int dense;                  /* load embedding, attention, dense FFNs, shared experts, head */
    int experts;                /* load every routed expert (ignored when host is set) */
    const uint8_t *host;        /* [n_layers * E]: load routed expert (l, e) when host[l*E+e] */
    int mtp;                    /* load the MTP block when the checkpoint has one */
    int own_thread;             /* convert on the calling thread only, never on the nn pool (a
                                   load on a helper thread beside a serving one) */
    int copy;                   /* matrices kept as stored get memory of the model's own, copied
                                   from the file, not the file's pages mapped: on the AMD EPYC
                                   (Zen 5) VM measured, products read the page cache's pages
                                   1.2-1.5 times slower (docs/performance.md). Off by default (a
                                   load for the shapes alone); the commands' --mmap leaves it off */
    int (*pause)(void *ctx);    /* with own_thread: called after every 4 MiB copied, so that a load
                                   beside serving copies at its own pace; a nonzero return stops
                                   the load (model_load: NULL, DH_ECANCELLED). NULL: no pauses */
    void *pause_ctx;
} model_params;

typedef struct model {
    model_config cfg;
    char dir[1024];
    st_file *st;
    wmat embed_tokens;          /* [V, D] */
    const float *norm;          /* [D] */
    wmat lm_head;               /* [V, D] */
    int n_layers;               /* L main layers + MTP blocks loaded */
    int has_mtp;                /* layer L is an MTP block */
    layer_weights *layers;      /* [n_layers] */
    double *inv_freq;           /* [Dr/2] RoPE inverse frequencies (YaRN applied) */
    float softmax_scale;
    uint64_t config_hash;       /* FNV-1a of config.json bytes and the tensor index */
    /* owned buffers (converted weights), freed by model_free */
    void **owned;
    size_t *owned_len;          /* [n_owned] their bytes */
    int n_owned, cap_owned;
    uint64_t owned_bytes;
    hm_arena *arena;            /* where the owned buffers live (hugemem.h); NULL until one is */
} model;

model_params model_default_params(void);  /* stored values, everything, MTP */
/* Load the model in directory dir (config.json + safetensors). Every tensor the params ask
 * for must be present with the shape the config implies: NULL with a message naming the
 * tensor, the shape found and the shape expected otherwise. */
model *model_load(const char *dir, const model_params *p);
void model_free(model *m);      /* model_free(NULL) does nothing */
/* Give back the memory of routed expert (layer, e) of m: unmap its three tensors and free their
 * converted copies (f is its views, as loaded into m; the caller has stopped using them and
 * cleared any copy of them). Touches only m's mappings and owned buffers, never its views, so
 * it may run on another thread while m's other experts serve, as long as nothing else loads
 * into or releases from m meanwhile. */
void model_release_expert(model *m, int layer, int e, const ffn_weights *f);
/* Bytes of weight data the model reads per token (active parameters at their storage size):
 * attention, dense FFNs, shared experts, K routed experts per MoE layer and the head. */
double model_active_bytes(const model *m);
/* The same in parameters: bits per weight = 8 * bytes / params. */
double model_active_params(const model *m);
/* MoE layers among the n_layers loaded, the MTP block's included: M of the layer map that
 * routing traces use (model MoE layer j takes trace layer floor(j * L / M)). */
int model_moe_layers(const model *m);
/* Memory the model holds: mapped tensor bytes plus owned converted buffers. */
uint64_t model_weight_bytes(const model *m);
#endif
