/* genmodel.c: random checkpoints for tests and benchmarks, in the DeepSeek-V3 layout.
 *
 * The tensor list follows from the configuration exactly as the loader expects it (q LoRA or
 * not, dense and MoE layers, shared experts, the correction bias for noaux_tc, the MTP block),
 * so any configuration of the family can be generated, not only the presets. Values: matrices
 * uniform with standard deviation 0.02 (the family's initializer_range), norm weights
 * 1 +- 0.1, the correction bias +-0.02 (stored F32, as DeepSeek-V3 stores it). Each tensor has
 * its own random stream, seeded from the seed and the tensor's name, so a tensor's values do
 * not depend on which other tensors exist, and the MTP block's copies of the embedding and
 * head equal the originals.
 *
 * The data is generated in chunks of 1M values and written as it is made: genesis-5b (10 GB
 * in bf16) is written with a few MB of memory. */
#include "genmodel.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "config.h"
#include "tensor.h"

const char *const gen_presets[] = {"genesis-tiny", "genesis-1b", "genesis-5b", NULL};

typedef struct preset {
    const char *name;
    int hidden, layers, F, heads, C, Dn, Dr, Dv;
} preset;

static const preset presets[] = {
    {"genesis-tiny", 256, 4, 64, 4, 64, 32, 16, 32},
    {"genesis-1b", 1024, 9, 384, 8, 256, 64, 32, 64},
    {"genesis-5b", 2048, 17, 640, 16, 512, 128, 64, 128},
};

static const char *const domain_names[10] = {"mathematics", "code",       "physics", "business", "legal",
                                             "government",  "biomedical", "logic",   "creative", "general"};

#define SETI(k, v) json_object_set_new(j, k, json_integer(v))
#define SETF(k, v) json_object_set_new(j, k, json_real(v))
#define SETS(k, v) json_object_set_new(j, k, json_string(v))

char *gen_preset_config(const char *name) {
    const preset *p = NULL;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (strcmp(presets[i].name, name) == 0) p = &presets[i];
    if (!p) return NULL;
    json_t *j = json_object();
    json_object_set_new(j, "architectures", json_pack("[s]", "DeepseekV3ForCausalLM"));
    SETS("model_type", "deepseek_v3");
    SETS("darkhorse_preset", p->name);
    SETI("vocab_size", 129280);
    SETI("hidden_size", p->hidden);
    SETI("intermediate_size", 4 * p->hidden);
    SETI("moe_intermediate_size", p->F);
    SETI("num_hidden_layers", p->layers);
    SETI("first_k_dense_replace", 1);
    SETI("moe_layer_freq", 1);
    SETI("num_attention_heads", p->heads);
    SETI("num_key_value_heads", p->heads);
    SETI("n_routed_experts", 64);
    SETI("num_experts_per_tok", 4);
    SETI("n_shared_experts", 2);
    SETI("n_group", 1);
    SETI("topk_group", 1);
    SETS("topk_method", "noaux_tc");
    SETS("scoring_func", "sigmoid");
    json_object_set_new(j, "norm_topk_prob", json_true());
    SETF("routed_scaling_factor", 2.5);
    json_object_set_new(j, "q_lora_rank", json_null());
    SETI("kv_lora_rank", p->C);
    SETI("qk_nope_head_dim", p->Dn);
    SETI("qk_rope_head_dim", p->Dr);
    SETI("v_head_dim", p->Dv);
    SETI("num_nextn_predict_layers", 1);
    SETI("max_position_embeddings", 131072);
    SETF("rms_norm_eps", 1e-6);
    SETF("rope_theta", 10000.0);
    json_object_set_new(j, "rope_scaling",
                        json_pack("{s:s, s:f, s:i, s:f, s:f, s:f, s:f}", "type", "yarn", "factor", 32.0,
                                  "original_max_position_embeddings", 4096, "beta_fast", 32.0, "beta_slow",
                                  1.0, "mscale", 1.0, "mscale_all_dim", 1.0));
    json_object_set_new(j, "tie_word_embeddings", json_false());
    SETI("bos_token_id", 0);
    SETI("eos_token_id", 1);
    SETF("initializer_range", 0.02);
    SETS("torch_dtype", "bfloat16");
    json_t *names = json_array(), *doms = json_array();
    for (int i = 0; i < 10; i++) json_array_append_new(names, json_string(domain_names[i]));
    for (int e = 0; e < 64; e++) json_array_append_new(doms, json_integer(e % 10));
    json_object_set_new(j, "domain_names", names);
    json_object_set_new(j, "expert_domains", doms);
    char *s = json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(j);
    return s;
}

/* --- tensor list --- */

enum { INIT_MATRIX, INIT_NORM, INIT_BIAS };

typedef struct gen_tensor {
    char name[96];
    char seed_name[96]; /* whose values it takes (the MTP copies take the originals') */
    int init;
    int ndim;
    int64_t shape[2];
} gen_tensor;

typedef struct tlist {
    gen_tensor *t;
    int n, cap;
} tlist;

static gen_tensor *add(tlist *l, int init, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static gen_tensor *add(tlist *l, int init, int64_t d0, int64_t d1, const char *fmt, ...) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->t = xrealloc(l->t, (size_t)l->cap * sizeof *l->t);
    }
    gen_tensor *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    snprintf(t->seed_name, sizeof t->seed_name, "%s", t->name);
    t->init = init;
    t->ndim = d1 > 0 ? 2 : 1;
    t->shape[0] = d0, t->shape[1] = d1;
    return t;
}

static void add_ffn(tlist *l, const char *prefix, int D, int F) {
    add(l, INIT_MATRIX, F, D, "%s.gate_proj.weight", prefix);
    add(l, INIT_MATRIX, F, D, "%s.up_proj.weight", prefix);
    add(l, INIT_MATRIX, D, F, "%s.down_proj.weight", prefix);
}

static void build_list(const model_config *c, int mtp_copies, tlist *l) {
    int D = c->hidden_size, H = c->num_attention_heads, C = c->kv_lora_rank, Q = c->q_lora_rank;
    int Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim, Dv = c->v_head_dim, V = c->vocab_size;
    int L = c->num_hidden_layers, n = L + (c->num_nextn_predict_layers > 0 ? 1 : 0);
    add(l, INIT_MATRIX, V, D, "model.embed_tokens.weight");
    for (int i = 0; i < n; i++) {
        if (i == L) {
            add(l, INIT_NORM, D, 0, "model.layers.%d.enorm.weight", i);
            add(l, INIT_NORM, D, 0, "model.layers.%d.hnorm.weight", i);
            add(l, INIT_MATRIX, D, 2 * D, "model.layers.%d.eh_proj.weight", i);
            add(l, INIT_NORM, D, 0, "model.layers.%d.shared_head.norm.weight", i);
            if (mtp_copies) {
                snprintf(add(l, INIT_MATRIX, V, D, "model.layers.%d.embed_tokens.weight", i)->seed_name, 96,
                         "model.embed_tokens.weight");
                snprintf(add(l, INIT_MATRIX, V, D, "model.layers.%d.shared_head.head.weight", i)->seed_name, 96,
                         "lm_head.weight");
            }
        }
        add(l, INIT_NORM, D, 0, "model.layers.%d.input_layernorm.weight", i);
        add(l, INIT_NORM, D, 0, "model.layers.%d.post_attention_layernorm.weight", i);
        if (Q > 0) {
            add(l, INIT_MATRIX, Q, D, "model.layers.%d.self_attn.q_a_proj.weight", i);
            add(l, INIT_NORM, Q, 0, "model.layers.%d.self_attn.q_a_layernorm.weight", i);
            add(l, INIT_MATRIX, (int64_t)H * (Dn + Dr), Q, "model.layers.%d.self_attn.q_b_proj.weight", i);
        } else {
            add(l, INIT_MATRIX, (int64_t)H * (Dn + Dr), D, "model.layers.%d.self_attn.q_proj.weight", i);
        }
        add(l, INIT_MATRIX, C + Dr, D, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", i);
        add(l, INIT_NORM, C, 0, "model.layers.%d.self_attn.kv_a_layernorm.weight", i);
        add(l, INIT_MATRIX, (int64_t)H * (Dn + Dv), C, "model.layers.%d.self_attn.kv_b_proj.weight", i);
        add(l, INIT_MATRIX, D, (int64_t)H * Dv, "model.layers.%d.self_attn.o_proj.weight", i);
        char prefix[96];
        if (!cfg_is_moe_layer(c, i)) {
            snprintf(prefix, sizeof prefix, "model.layers.%d.mlp", i);
            add_ffn(l, prefix, D, c->intermediate_size);
            continue;
        }
        add(l, INIT_MATRIX, c->n_routed_experts, D, "model.layers.%d.mlp.gate.weight", i);
        if (c->topk_method == CFG_TOPK_NOAUX_TC)
            add(l, INIT_BIAS, c->n_routed_experts, 0, "model.layers.%d.mlp.gate.e_score_correction_bias", i);
        for (int e = 0; e < c->n_routed_experts; e++) {
            snprintf(prefix, sizeof prefix, "model.layers.%d.mlp.experts.%d", i, e);
            add_ffn(l, prefix, D, c->moe_intermediate_size);
        }
        if (c->n_shared_experts > 0) {
            snprintf(prefix, sizeof prefix, "model.layers.%d.mlp.shared_experts", i);
            add_ffn(l, prefix, D, c->n_shared_experts * c->moe_intermediate_size);
        }
    }
    add(l, INIT_NORM, D, 0, "model.norm.weight");
    if (!c->tie_word_embeddings) add(l, INIT_MATRIX, V, D, "lm_head.weight");
}

/* --- values --- */

typedef struct rng {
    uint64_t s[4];
} rng;

static uint64_t sm64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed, const char *name) {
    uint64_t x = seed;
    for (const char *p = name; *p; p++) x = (x ^ (unsigned char)*p) * 1099511628211ULL;
    for (int i = 0; i < 4; i++) r->s[i] = sm64(&x);
}

static uint64_t rng_next(rng *r) { /* xoshiro256+ */
    uint64_t res = r->s[0] + r->s[3], t = r->s[1] << 17;
    r->s[2] ^= r->s[0], r->s[3] ^= r->s[1], r->s[1] ^= r->s[2], r->s[0] ^= r->s[3];
    r->s[2] ^= t, r->s[3] = (r->s[3] << 45) | (r->s[3] >> 19);
    return res;
}

/* n values in [-a, a): two per 64-bit draw */
static void fill(rng *r, float *out, size_t n, float center, float a) {
    for (size_t i = 0; i < n; i += 2) {
        uint64_t u = rng_next(r);
        out[i] = center + a * ((float)(u >> 40) * (2.0f / 16777216.0f) - 1.0f);
        if (i + 1 < n) out[i + 1] = center + a * ((float)((u >> 8) & 0xffffff) * (2.0f / 16777216.0f) - 1.0f);
    }
}

static void progress(const gen_params *p, uint64_t done, uint64_t total, double t0, int final) {
    if (!p->progress) return;
    double dt = dh_now() - t0;
    int tty = isatty(2);
    fprintf(stderr, "%sinit-model: %.2f / %.2f GB (%.0f%%), %.0f MB/s%s", tty ? "\r" : "", done / 1e9,
            total / 1e9, total ? 100.0 * done / total : 100.0, dt > 0 ? done / dt / 1e6 : 0.0,
            tty && !final ? "" : "\n");
}

int gen_checkpoint(const char *dir, const char *config_json, const gen_params *p) {
    model_config c;
    int rc = cfg_parse(&c, config_json, "generated config.json");
    if (rc) return rc;
    char path[1200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f || fputs(config_json, f) < 0 || fclose(f) != 0) {
        log_error("%s: cannot write", path);
        return DH_EIO;
    }
    tlist l = {0};
    build_list(&c, p->mtp_copies, &l);
    stw_tensor *ts = xcalloc((size_t)l.n, sizeof *ts);
    uint64_t total = 0;
    for (int i = 0; i < l.n; i++) {
        st_dtype dt = l.t[i].init == INIT_BIAS ? ST_F32 : p->dtype;
        ts[i] = (stw_tensor){.name = l.t[i].name, .dtype = dt, .ndim = l.t[i].ndim,
                             .shape = {l.t[i].shape[0], l.t[i].shape[1]}};
        total += (uint64_t)l.t[i].shape[0] * (l.t[i].ndim == 2 ? (uint64_t)l.t[i].shape[1] : 1) * st_dtype_size(dt);
    }
    /* written under a temporary name and renamed at the end: never a half-written model */
    char final[1200];
    snprintf(final, sizeof final, "%s/model.safetensors", dir);
    snprintf(path, sizeof path, "%s/model.safetensors.partial", dir);
    st_writer *w = stw_open(path, ts, l.n);
    if (!w) {
        free(ts);
        free(l.t);
        return DH_EIO;
    }
    enum { CHUNK = 1 << 20 };
    float *buf = xmalloc(CHUNK * sizeof *buf);
    uint16_t *half = xmalloc(CHUNK * sizeof *half);
    double t0 = dh_now(), last = t0;
    uint64_t done = 0;
    for (int i = 0; i < l.n && !rc; i++) {
        const gen_tensor *t = &l.t[i];
        size_t n = (size_t)t->shape[0] * (t->ndim == 2 ? (size_t)t->shape[1] : 1);
        rng r;
        rng_seed(&r, p->seed, t->seed_name);
        for (size_t off = 0; off < n && !rc; off += CHUNK) {
            size_t m = DH_MIN((size_t)CHUNK, n - off);
            if (t->init == INIT_NORM) fill(&r, buf, m, 1.0f, 0.1f);
            else if (t->init == INIT_BIAS) fill(&r, buf, m, 0.0f, 0.02f);
            else fill(&r, buf, m, 0.0f, 0.02f * 1.7320508f);
            if (ts[i].dtype == ST_F32) {
                rc = stw_write(w, buf, m * sizeof *buf);
                done += m * sizeof *buf;
            } else {
                for (size_t k = 0; k < m; k++)
                    half[k] = ts[i].dtype == ST_BF16 ? wt_f32_to_bf16(buf[k]) : wt_f32_to_f16(buf[k]);
                rc = stw_write(w, half, m * sizeof *half);
                done += m * sizeof *half;
            }
            if (dh_now() - last > (isatty(2) ? 0.5 : 5.0)) { /* a line every 5 s into a log */
                progress(p, done, total, t0, 0);
                last = dh_now();
            }
        }
    }
    int crc = stw_close(w);
    if (!rc) rc = crc;
    if (!rc && rename(path, final) != 0) {
        log_error("%s: cannot rename to %s", path, final);
        rc = DH_EIO;
    }
    if (rc) unlink(path);
    if (!rc) progress(p, done, total, t0, 1);
    free(buf);
    free(half);
    free(ts);
    free(l.t);
    return rc;
}
