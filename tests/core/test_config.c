/* test_config.c: config.json parsing: the reference files, DeepSeek-V2-Lite and V3 style
 * files as published, defaults, and the error for every kind of bad key. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/config.h"
#include "tests/runner.h"

static void test_ref_tiny_config_loads_with_its_values(void) {
    model_config c;
    CU_ASSERT_EQUAL_FATAL(cfg_load(&c, dh_test_data("ref-tiny/config.json")), 0);
    CU_ASSERT_EQUAL(c.hidden_size, 64);
    CU_ASSERT_EQUAL(c.n_routed_experts, 64);
    CU_ASSERT_EQUAL(c.num_experts_per_tok, 4);
    CU_ASSERT_EQUAL(c.q_lora_rank, 0); /* null */
    CU_ASSERT_EQUAL(c.scoring_func, CFG_SCORE_SIGMOID);
    CU_ASSERT_EQUAL(c.topk_method, CFG_TOPK_NOAUX_TC);
    CU_ASSERT_EQUAL(c.num_nextn_predict_layers, 1);
    CU_ASSERT_EQUAL(c.rope_yarn, 0);
    CU_ASSERT_STRING_EQUAL(c.domain_names[6], "biomedical");
    CU_ASSERT_EQUAL(c.expert_domains[13], 3);
    CU_ASSERT(cfg_is_moe_layer(&c, 1) && !cfg_is_moe_layer(&c, 0) && cfg_is_moe_layer(&c, 3));
    CU_ASSERT_DOUBLE_EQUAL(cfg_softmax_scale(&c), 1.0 / sqrt(24.0), 1e-7);
}

/* expected.json of ref-tiny-yarn gives inv_freq_fp64 and the softmax scale */
static void test_yarn_frequencies_and_scale_match_the_reference(void) {
    model_config c;
    CU_ASSERT_EQUAL_FATAL(cfg_load(&c, dh_test_data("ref-tiny-yarn/config.json")), 0);
    CU_ASSERT_EQUAL(c.rope_yarn, 1);
    CU_ASSERT_EQUAL(c.q_lora_rank, 40);
    CU_ASSERT_EQUAL(c.n_group, 4);
    double f[4], want[4] = {1.0, 0.012499999999999999, 0.00125, 0.000125};
    cfg_rope_inv_freq(&c, f);
    for (int j = 0; j < 4; j++) CU_ASSERT_DOUBLE_EQUAL(f[j], want[j], 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(cfg_softmax_scale(&c), 0.297843476154079, 1e-7);
}

/* DeepSeek-V2-Lite's config.json as published (trimmed of keys we do not read) */
static const char *v2_lite =
    "{\"architectures\":[\"DeepseekV2ForCausalLM\"],\"model_type\":\"deepseek_v2\",\"aux_loss_alpha\":0.001,"
    "\"bos_token_id\":100000,\"eos_token_id\":100001,\"first_k_dense_replace\":1,\"hidden_act\":\"silu\","
    "\"hidden_size\":2048,\"intermediate_size\":10944,\"kv_lora_rank\":512,\"max_position_embeddings\":163840,"
    "\"moe_intermediate_size\":1408,\"moe_layer_freq\":1,\"n_group\":1,\"n_routed_experts\":64,"
    "\"n_shared_experts\":2,\"norm_topk_prob\":false,\"num_attention_heads\":16,\"num_experts_per_tok\":6,"
    "\"num_hidden_layers\":27,\"num_key_value_heads\":16,\"pretraining_tp\":1,\"q_lora_rank\":null,"
    "\"qk_nope_head_dim\":128,\"qk_rope_head_dim\":64,\"rms_norm_eps\":1e-06,\"rope_scaling\":{\"beta_fast\":32,"
    "\"beta_slow\":1,\"factor\":40,\"mscale\":0.707,\"mscale_all_dim\":0.707,"
    "\"original_max_position_embeddings\":4096,\"type\":\"yarn\"},\"rope_theta\":10000,"
    "\"routed_scaling_factor\":1.0,\"scoring_func\":\"softmax\",\"seq_aux\":true,\"tie_word_embeddings\":false,"
    "\"topk_group\":1,\"topk_method\":\"greedy\",\"torch_dtype\":\"bfloat16\",\"use_cache\":true,"
    "\"v_head_dim\":128,\"vocab_size\":102400}";

static void test_deepseek_v2_lite_config_loads_as_published(void) {
    model_config c;
    CU_ASSERT_EQUAL_FATAL(cfg_parse(&c, v2_lite, "v2-lite/config.json"), 0);
    CU_ASSERT_EQUAL(c.scoring_func, CFG_SCORE_SOFTMAX);
    CU_ASSERT_EQUAL(c.topk_method, CFG_TOPK_GREEDY);
    CU_ASSERT_EQUAL(c.num_experts_per_tok, 6);
    CU_ASSERT_EQUAL(c.norm_topk_prob, 0);
    CU_ASSERT_EQUAL(c.num_nextn_predict_layers, 0);
    CU_ASSERT_EQUAL(c.has_domains, 0);
    CU_ASSERT_EQUAL(c.expert_domains[23], 3); /* round-robin */
    double m = 0.1 * 0.707 * log(40.0) + 1;
    CU_ASSERT_DOUBLE_EQUAL(cfg_softmax_scale(&c), m * m / sqrt(192.0), 1e-7);
}

static void test_deepseek_v3_style_defaults_apply_when_keys_are_absent(void) {
    const char *j = "{\"vocab_size\":100,\"hidden_size\":8,\"intermediate_size\":16,\"moe_intermediate_size\":4,"
                    "\"num_hidden_layers\":2,\"num_attention_heads\":2,\"n_routed_experts\":8,"
                    "\"num_experts_per_tok\":2,\"kv_lora_rank\":4,\"qk_nope_head_dim\":4,\"qk_rope_head_dim\":2,"
                    "\"v_head_dim\":4}";
    model_config c;
    CU_ASSERT_EQUAL_FATAL(cfg_parse(&c, j, "min.json"), 0);
    CU_ASSERT_EQUAL(c.scoring_func, CFG_SCORE_SIGMOID);
    CU_ASSERT_EQUAL(c.n_group, 1);
    CU_ASSERT_EQUAL(c.q_lora_rank, 0);
    CU_ASSERT_EQUAL(c.rope_yarn, 0);
    CU_ASSERT_EQUAL(c.num_nextn_predict_layers, 0);
    CU_ASSERT_EQUAL(c.first_k_dense_replace, 0);
    CU_ASSERT_DOUBLE_EQUAL(c.routed_scaling_factor, 2.5, 0);
    CU_ASSERT_EQUAL(c.norm_topk_prob, 1);
}

/* Replace `from` by `to` in the ref-tiny config and parse it: the return code. */
static int parse_edited(const char *from, const char *to) {
    size_t len;
    char *s = dh_test_read_file(dh_test_data("ref-tiny/config.json"), &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    char *p = strstr(s, from);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    char *out = malloc(len + strlen(to) + 1);
    size_t pre = (size_t)(p - s);
    memcpy(out, s, pre);
    strcpy(out + pre, to);
    strcat(out, p + strlen(from));
    model_config c;
    int rc = cfg_parse(&c, out, "edited/config.json");
    free(s);
    free(out);
    return rc;
}

static void test_bad_keys_are_errors(void) {
    CU_ASSERT_EQUAL(parse_edited("\"hidden_size\": 64,", ""), DH_EFORMAT);          /* missing */
    CU_ASSERT_EQUAL(parse_edited("\"hidden_size\": 64", "\"hidden_size\": \"64\""), DH_EFORMAT);
    CU_ASSERT_EQUAL(parse_edited("\"hidden_size\": 64", "\"hidden_size\": 64.5"), DH_EFORMAT);
    CU_ASSERT_EQUAL(parse_edited("\"n_group\": 1", "\"n_group\": 3"), DH_EFORMAT);  /* 64 % 3 */
    CU_ASSERT_EQUAL(parse_edited("\"num_experts_per_tok\": 4", "\"num_experts_per_tok\": 65"), DH_EFORMAT);
    CU_ASSERT_EQUAL(parse_edited("\"scoring_func\": \"sigmoid\"", "\"scoring_func\": \"relu\""), DH_EFORMAT);
    CU_ASSERT_EQUAL(parse_edited("\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}"),
                    DH_EFORMAT);
    CU_ASSERT_EQUAL(parse_edited("\"expert_domains\": [0,", "\"expert_domains\": [10,"), DH_EFORMAT);
    CU_ASSERT_EQUAL(parse_edited("\"expert_domains\": [0, 1,", "\"expert_domains\": ["), DH_EFORMAT);
    CU_ASSERT_EQUAL(parse_edited("\"qk_rope_head_dim\": 8", "\"qk_rope_head_dim\": 7"), DH_EFORMAT);
    CU_ASSERT_EQUAL(parse_edited("\"norm_topk_prob\": true", "\"norm_topk_prob\": 1"), DH_EFORMAT);
    CU_ASSERT_EQUAL(parse_edited("{", "["), DH_EFORMAT); /* not JSON */
    model_config c;
    CU_ASSERT_EQUAL(cfg_load(&c, "/nonexistent/config.json"), DH_ENOTFOUND);
    CU_ASSERT_EQUAL(cfg_parse(&c, "[1,2]", "array.json"), DH_EFORMAT);
}

static CU_TestInfo config_tests[] = {
    {"ref-tiny config loads with its values", test_ref_tiny_config_loads_with_its_values},
    {"YaRN frequencies and scale match the reference", test_yarn_frequencies_and_scale_match_the_reference},
    {"DeepSeek-V2-Lite config loads as published", test_deepseek_v2_lite_config_loads_as_published},
    {"V3-style defaults apply when keys are absent", test_deepseek_v3_style_defaults_apply_when_keys_are_absent},
    {"bad keys are errors", test_bad_keys_are_errors},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo config_suite = {"config", NULL, NULL, NULL, NULL, config_tests};
