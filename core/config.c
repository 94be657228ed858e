/* config.c: config.json into model_config, with jansson.
 *
 * Required are the keys that fix tensor shapes; every other key takes the default of the
 * Hugging Face DeepSeek-V2/V3 configurations, chosen by model_type where the two differ
 * (scoring, top-k method, normalisation, scaling). Types are checked strictly: an integer key
 * must hold an integer, a float key any number, so "hidden_size": "2048" is an error naming
 * the key and the file, not a silent zero. Values are checked against each other (heads and
 * groups divide, top-k fits) so that a bad file fails here, not with a wrong shape later. */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

#define PI 3.14159265358979323846

static const char *const default_domains[CFG_N_DOMAINS] = {
    "mathematics", "code",       "physics", "business", "legal",
    "government",  "biomedical", "logic",   "creative", "general"};

typedef struct reader {
    json_t *root;
    const char *name; /* file name for messages */
    int rc;           /* first error */
} reader;

static void fail(reader *r, const char *fmt, const char *key, const char *what) {
    if (r->rc == 0) {
        char msg[256];
        snprintf(msg, sizeof msg, fmt, key, what);
        log_error("%s: %s", r->name, msg);
        r->rc = DH_EFORMAT;
    }
}

/* An integer key: required (no default) when req, else def when absent or null. */
static int get_int(reader *r, const char *key, int req, int def) {
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v)) {
        if (req) fail(r, "required key \"%s\" is missing%s", key, "");
        return def;
    }
    if (!json_is_integer(v)) {
        fail(r, "key \"%s\" must be an integer, not %s", key,
             json_is_string(v) ? "a string" : json_is_real(v) ? "a real number" : "this type");
        return def;
    }
    json_int_t x = json_integer_value(v);
    if (x < -2147483647LL || x > 2147483647LL) {
        fail(r, "key \"%s\" is out of range%s", key, "");
        return def;
    }
    return (int)x;
}

static double get_num(reader *r, json_t *obj, const char *key, double def) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_number(v)) {
        fail(r, "key \"%s\" must be a number%s", key, "");
        return def;
    }
    return json_number_value(v);
}

static int get_bool(reader *r, const char *key, int def) {
    json_t *v = json_object_get(r->root, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_boolean(v)) {
        fail(r, "key \"%s\" must be true or false%s", key, "");
        return def;
    }
    return json_is_true(v);
}

static const char *get_str(reader *r, json_t *obj, const char *key, const char *def) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_string(v)) {
        fail(r, "key \"%s\" must be a string%s", key, "");
        return def;
    }
    return json_string_value(v);
}

static void read_rope_scaling(reader *r, model_config *c) {
    json_t *rs = json_object_get(r->root, "rope_scaling");
    if (!rs || json_is_null(rs)) return;
    if (!json_is_object(rs)) {
        fail(r, "key \"%s\" must be an object or null%s", "rope_scaling", "");
        return;
    }
    const char *type = get_str(r, rs, "type", NULL);
    if (!type) type = get_str(r, rs, "rope_type", NULL);
    if (!type || strcmp(type, "yarn") != 0) {
        fail(r, "rope_scaling type \"%s\" is not supported (only \"yarn\")%s",
             type ? type : "(none)", "");
        return;
    }
    c->rope_yarn = 1;
    c->yarn_factor = get_num(r, rs, "factor", 1.0);
    c->yarn_original_max_position_embeddings =
        (int)get_num(r, rs, "original_max_position_embeddings", 4096);
    c->yarn_beta_fast = get_num(r, rs, "beta_fast", 32);
    c->yarn_beta_slow = get_num(r, rs, "beta_slow", 1);
    c->yarn_mscale = get_num(r, rs, "mscale", 1);
    c->yarn_mscale_all_dim = get_num(r, rs, "mscale_all_dim", 0);
    if (!(c->yarn_factor > 0) || c->yarn_original_max_position_embeddings <= 0)
        fail(r, "rope_scaling: \"%s\" must be positive%s", "factor/original_max_position_embeddings", "");
}

static void read_topk(reader *r, model_config *c, int v3) {
    const char *sf = get_str(r, r->root, "scoring_func", v3 ? "sigmoid" : "softmax");
    if (strcmp(sf, "sigmoid") == 0)
        c->scoring_func = CFG_SCORE_SIGMOID;
    else if (strcmp(sf, "softmax") == 0)
        c->scoring_func = CFG_SCORE_SOFTMAX;
    else
        fail(r, "scoring_func \"%s\" is not supported%s", sf, "");
    const char *tm = get_str(r, r->root, "topk_method", v3 ? "noaux_tc" : "greedy");
    if (strcmp(tm, "noaux_tc") == 0)
        c->topk_method = CFG_TOPK_NOAUX_TC;
    else if (strcmp(tm, "greedy") == 0 || strcmp(tm, "gready") == 0) /* "gready": V2 configs */
        c->topk_method = CFG_TOPK_GREEDY;
    else if (strcmp(tm, "group_limited_greedy") == 0)
        c->topk_method = CFG_TOPK_GROUP_GREEDY;
    else
        fail(r, "topk_method \"%s\" is not supported%s", tm, "");
}

static void read_domains(reader *r, model_config *c) {
    for (int i = 0; i < CFG_N_DOMAINS; i++)
        snprintf(c->domain_names[i], sizeof c->domain_names[i], "%s", default_domains[i]);
    for (int e = 0; e < CFG_MAX_EXPERTS; e++) c->expert_domains[e] = e % CFG_N_DOMAINS;
    json_t *names = json_object_get(r->root, "domain_names");
    json_t *doms = json_object_get(r->root, "expert_domains");
    if (names && !json_is_null(names)) {
        if (!json_is_array(names) || json_array_size(names) != CFG_N_DOMAINS) {
            fail(r, "key \"%s\" must be an array of 10 strings%s", "domain_names", "");
            return;
        }
        for (int i = 0; i < CFG_N_DOMAINS; i++) {
            json_t *s = json_array_get(names, (size_t)i);
            if (!json_is_string(s) || json_string_length(s) == 0 || json_string_length(s) >= 32) {
                fail(r, "key \"%s\": every name must be a string of 1 to 31 bytes%s", "domain_names", "");
                return;
            }
            snprintf(c->domain_names[i], sizeof c->domain_names[i], "%s", json_string_value(s));
        }
    }
    if (doms && !json_is_null(doms)) {
        if (!json_is_array(doms) || (int)json_array_size(doms) != c->n_routed_experts) {
            char what[64];
            snprintf(what, sizeof what, " (%d, one per routed expert)", c->n_routed_experts);
            fail(r, "key \"%s\" must be an array of n_routed_experts domain ids%s", "expert_domains", what);
            return;
        }
        for (int e = 0; e < c->n_routed_experts; e++) {
            json_t *v = json_array_get(doms, (size_t)e);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) >= CFG_N_DOMAINS) {
                fail(r, "key \"%s\": every id must be an integer 0..9%s", "expert_domains", "");
                return;
            }
            c->expert_domains[e] = (int)json_integer_value(v);
        }
    }
    c->has_domains = names && doms && !json_is_null(names) && !json_is_null(doms);
}

static void check(reader *r, int ok, const char *what) {
    if (!ok) fail(r, "inconsistent configuration: %s%s", what, "");
}

static void validate(reader *r, const model_config *c) {
    check(r, c->vocab_size > 0 && c->hidden_size > 0 && c->num_hidden_layers > 0 &&
                 c->num_attention_heads > 0 && c->kv_lora_rank > 0 && c->qk_nope_head_dim > 0 &&
                 c->v_head_dim > 0 && c->intermediate_size > 0,
          "sizes must be positive");
    check(r, c->qk_rope_head_dim > 0 && c->qk_rope_head_dim % 2 == 0,
          "qk_rope_head_dim must be positive and even (RoPE rotates pairs)");
    check(r, c->n_routed_experts >= 0 && c->n_routed_experts <= CFG_MAX_EXPERTS,
          "n_routed_experts must be 0..256");
    if (c->n_routed_experts > 0) {
        check(r, c->moe_intermediate_size > 0, "moe_intermediate_size must be positive");
        check(r, c->num_experts_per_tok > 0 && c->num_experts_per_tok <= c->n_routed_experts,
              "num_experts_per_tok must be 1..n_routed_experts");
        check(r, c->n_group > 0 && c->n_routed_experts % c->n_group == 0,
              "n_group must divide n_routed_experts");
        check(r, c->topk_group > 0 && c->topk_group <= c->n_group, "topk_group must be 1..n_group");
        check(r, c->n_group == 1 || c->topk_method != CFG_TOPK_NOAUX_TC ||
                     c->n_routed_experts / c->n_group >= 2,
              "noaux_tc group scores need at least 2 experts a group");
        check(r, c->n_group == 1 || c->topk_method == CFG_TOPK_GREEDY ||
                     c->topk_group * (c->n_routed_experts / c->n_group) >= c->num_experts_per_tok,
              "the kept groups must hold at least num_experts_per_tok experts");
        check(r, c->moe_layer_freq > 0, "moe_layer_freq must be positive");
        check(r, c->n_shared_experts >= 0, "n_shared_experts must not be negative");
    }
    check(r, c->q_lora_rank >= 0, "q_lora_rank must not be negative");
    check(r, c->first_k_dense_replace >= 0, "first_k_dense_replace must not be negative");
    check(r, c->num_nextn_predict_layers >= 0, "num_nextn_predict_layers must not be negative");
    check(r, c->rms_norm_eps > 0 && c->rope_theta > 1, "rms_norm_eps and rope_theta must be positive");
}

int cfg_parse(model_config *c, const char *json, const char *name) {
    memset(c, 0, sizeof *c);
    json_error_t jerr;
    json_t *root = json_loads(json, 0, &jerr);
    if (!root) {
        log_error("%s: not valid JSON: %s (line %d, column %d)", name, jerr.text, jerr.line, jerr.column);
        return DH_EFORMAT;
    }
    reader r = {.root = root, .name = name};
    if (!json_is_object(root)) {
        fail(&r, "the top level must be a JSON object%s%s", "", "");
        json_decref(root);
        return r.rc;
    }
    const char *mt = get_str(&r, root, "model_type", "deepseek_v3");
    snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    int v3 = strcmp(c->model_type, "deepseek_v2") != 0;

    c->vocab_size = get_int(&r, "vocab_size", 1, 0);
    c->hidden_size = get_int(&r, "hidden_size", 1, 0);
    c->intermediate_size = get_int(&r, "intermediate_size", 1, 0);
    c->moe_intermediate_size = get_int(&r, "moe_intermediate_size", 1, 0);
    c->num_hidden_layers = get_int(&r, "num_hidden_layers", 1, 0);
    c->num_attention_heads = get_int(&r, "num_attention_heads", 1, 0);
    c->n_routed_experts = get_int(&r, "n_routed_experts", 1, 0);
    c->num_experts_per_tok = get_int(&r, "num_experts_per_tok", 1, 0);
    c->kv_lora_rank = get_int(&r, "kv_lora_rank", 1, 0);
    c->qk_nope_head_dim = get_int(&r, "qk_nope_head_dim", 1, 0);
    c->qk_rope_head_dim = get_int(&r, "qk_rope_head_dim", 1, 0);
    c->v_head_dim = get_int(&r, "v_head_dim", 1, 0);

    c->n_shared_experts = get_int(&r, "n_shared_experts", 0, 0);
    c->first_k_dense_replace = get_int(&r, "first_k_dense_replace", 0, 0);
    c->moe_layer_freq = get_int(&r, "moe_layer_freq", 0, 1);
    c->n_group = get_int(&r, "n_group", 0, 1);
    c->topk_group = get_int(&r, "topk_group", 0, 1);
    c->norm_topk_prob = get_bool(&r, "norm_topk_prob", v3);
    c->routed_scaling_factor = (float)get_num(&r, root, "routed_scaling_factor", v3 ? 2.5 : 1.0);
    c->q_lora_rank = get_int(&r, "q_lora_rank", 0, 0);
    c->rms_norm_eps = (float)get_num(&r, root, "rms_norm_eps", 1e-6);
    c->rope_theta = get_num(&r, root, "rope_theta", 10000);
    c->max_position_embeddings = get_int(&r, "max_position_embeddings", 0, v3 ? 4096 : 2048);
    c->num_nextn_predict_layers = get_int(&r, "num_nextn_predict_layers", 0, 0);
    c->tie_word_embeddings = get_bool(&r, "tie_word_embeddings", 0);
    c->bos_token_id = get_int(&r, "bos_token_id", 0, 0);
    c->eos_token_id = get_int(&r, "eos_token_id", 0, 1);
    read_topk(&r, c, v3);
    read_rope_scaling(&r, c);
    if (r.rc == 0) read_domains(&r, c);
    if (r.rc == 0) validate(&r, c);
    json_decref(root);
    return r.rc;
}

int cfg_load(model_config *c, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        log_error("%s: cannot open the model configuration", path);
        return DH_ENOTFOUND;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 16384;
            if (cap > (64u << 20)) {
                log_error("%s: larger than 64 MiB, not a config.json", path);
                free(buf);
                fclose(f);
                return DH_EFORMAT;
            }
            buf = xrealloc(buf, cap);
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        log_error("%s: read error", path);
        free(buf);
        return DH_EIO;
    }
    buf[len] = 0;
    int rc = cfg_parse(c, buf, path);
    free(buf);
    return rc;
}

int cfg_is_moe_layer(const model_config *c, int i) {
    if (c->n_routed_experts == 0) return 0;
    if (i >= c->num_hidden_layers) return 1; /* the MTP block */
    return i >= c->first_k_dense_replace && i % c->moe_layer_freq == 0;
}

static double yarn_mscale(double factor, double m) {
    return factor <= 1 ? 1.0 : 0.1 * m * log(factor) + 1.0;
}

float cfg_softmax_scale(const model_config *c) {
    double s = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    if (c->rope_yarn && c->yarn_mscale_all_dim != 0) {
        double m = yarn_mscale(c->yarn_factor, c->yarn_mscale_all_dim);
        s *= m * m;
    }
    return (float)s;
}

void cfg_rope_inv_freq(const model_config *c, double *inv_freq) {
    int d = c->qk_rope_head_dim;
    double base = c->rope_theta;
    for (int j = 0; j < d / 2; j++) inv_freq[j] = pow(base, -2.0 * j / d);
    if (!c->rope_yarn) return;
    double orig = c->yarn_original_max_position_embeddings;
    double low = floor(d * log(orig / (c->yarn_beta_fast * 2 * PI)) / (2 * log(base)));
    double high = ceil(d * log(orig / (c->yarn_beta_slow * 2 * PI)) / (2 * log(base)));
    low = fmax(low, 0);
    high = fmin(high, d - 1);
    if (high == low) high += 0.001; /* as Hugging Face's yarn_linear_ramp_mask */
    for (int j = 0; j < d / 2; j++) {
        double ramp = fmin(fmax((j - low) / (high - low), 0.0), 1.0);
        inv_freq[j] = inv_freq[j] / c->yarn_factor * ramp + inv_freq[j] * (1 - ramp);
    }
}
