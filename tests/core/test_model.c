/* test_model.c: loading checkpoints: what a rank maps, and the errors for a checkpoint that
 * disagrees with its config (a missing tensor, a wrong shape, an unsupported dtype). */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/genmodel.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "tests/runner.h"

static const char *base_cfg =
    "{\"vocab_size\":300,\"hidden_size\":64,\"intermediate_size\":96,\"moe_intermediate_size\":32,"
    "\"num_hidden_layers\":2,\"first_k_dense_replace\":1,\"num_attention_heads\":2,\"n_routed_experts\":8,"
    "\"num_experts_per_tok\":2,\"n_shared_experts\":0,\"kv_lora_rank\":32,\"qk_nope_head_dim\":32,"
    "\"qk_rope_head_dim\":8,\"v_head_dim\":16,\"num_nextn_predict_layers\":1}";

static const char *make(const char *cfg) {
    const char *dir = dh_test_tmpdir();
    gen_params gp = {.seed = 1, .dtype = ST_BF16};
    CU_ASSERT_EQUAL(gen_checkpoint(dir, cfg, &gp), 0);
    return dir;
}

/* replace config.json of dir by the base config edited from -> to */
static void edit_config(const char *dir, const char *from, const char *to) {
    char path[4200], buf[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    const char *p = strstr(base_cfg, from);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - base_cfg), base_cfg, to, p + strlen(from));
    FILE *f = fopen(path, "w");
    fputs(buf, f);
    fclose(f);
}

static void test_a_generated_checkpoint_loads_whole_or_in_parts(void) {
    const char *dir = make(base_cfg);
    model_params p = model_default_params();
    model *all = model_load(dir, &p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(all);
    CU_ASSERT_EQUAL(all->n_layers, 3); /* 2 + MTP */
    CU_ASSERT(all->has_mtp && all->layers[2].is_moe && !all->layers[0].is_moe);
    CU_ASSERT_EQUAL(all->layers[2].embed_tokens.p.bf16, all->embed_tokens.p.bf16); /* shared, not stored */
    /* a worker hosting experts 3 and 5 of layer 1 maps nothing else */
    uint8_t host[3 * 8] = {0};
    host[1 * 8 + 3] = host[1 * 8 + 5] = 1;
    model_params wp = model_default_params();
    wp.dense = 0, wp.host = host;
    model *w = model_load(dir, &wp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(model_weight_bytes(w), 2 * 3 * 64 * 32 * 2); /* two experts, three bf16 matrices */
    CU_ASSERT(w->layers[1].moe.experts[3].gate_proj.rows == 32 && w->layers[1].moe.experts[4].gate_proj.rows == 0);
    CU_ASSERT_EQUAL(w->config_hash, all->config_hash);
    /* converted weights: q8 halves bf16's bytes roughly */
    model_params qp = model_default_params();
    qp.weights = DT_Q8;
    model *q = model_load(dir, &qp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(q);
    CU_ASSERT_EQUAL(q->layers[1].moe.experts[0].up_proj.dtype, DT_Q8);
    CU_ASSERT_EQUAL(q->layers[1].moe.gate.dtype, all->layers[1].moe.gate.dtype); /* the router stays as stored */
    CU_ASSERT(model_active_bytes(q) < 0.6 * model_active_bytes(all));
    model_free(all), model_free(w), model_free(q);
}

static void test_a_checkpoint_that_disagrees_with_its_config_is_refused(void) {
    model_params p = model_default_params();
    const char *dir = make(base_cfg);
    /* shared experts the file does not have: the missing tensor is named */
    edit_config(dir, "\"n_shared_experts\":0", "\"n_shared_experts\":2");
    CU_ASSERT_PTR_NULL(model_load(dir, &p));
    /* a width the tensors do not have: the wrong shape is named */
    edit_config(dir, "\"moe_intermediate_size\":32", "\"moe_intermediate_size\":48");
    CU_ASSERT_PTR_NULL(model_load(dir, &p));
    /* q LoRA in the config, q_proj in the file */
    edit_config(dir, "\"kv_lora_rank\":32", "\"q_lora_rank\":16,\"kv_lora_rank\":32");
    CU_ASSERT_PTR_NULL(model_load(dir, &p));
    /* an MTP layer the file lacks is a warning, not an error: MTP is off */
    const char *d2 = make("{\"vocab_size\":300,\"hidden_size\":64,\"intermediate_size\":96,\"moe_intermediate_size\":32,"
                          "\"num_hidden_layers\":2,\"first_k_dense_replace\":1,\"num_attention_heads\":2,"
                          "\"n_routed_experts\":8,\"num_experts_per_tok\":2,\"kv_lora_rank\":32,"
                          "\"qk_nope_head_dim\":32,\"qk_rope_head_dim\":8,\"v_head_dim\":16}");
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", d2);
    FILE *f = fopen(path, "w");
    fputs(base_cfg, f);
    fclose(f);
    model *m = model_load(d2, &p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    CU_ASSERT_EQUAL(m->has_mtp, 0);
    model_free(m);
    CU_ASSERT_PTR_NULL(model_load("/nonexistent/model", &p));
}

/* A worker gives back a lost expert: its bytes (mapped, or converted and owned) leave the model,
 * and the experts it keeps are untouched, the same views over the same bytes. */
static void test_releasing_an_expert_gives_back_its_bytes_and_keeps_the_others(void) {
    const char *dir = make(base_cfg);
    uint8_t host[3 * 8] = {0};
    host[1 * 8 + 3] = host[1 * 8 + 5] = host[2 * 8 + 0] = 1;
    const uint64_t expert_bf16 = 3 * 64 * 32 * 2, expert_q8 = 3 * 2 * 32 * 34; /* q8: 34-byte blocks of 32 */
    for (int q = 0; q < 2; q++) {
        model_params wp = model_default_params();
        wp.dense = 0, wp.host = host, wp.weights = q ? DT_Q8 : -1, wp.own_thread = 1;
        model *w = model_load(dir, &wp);
        CU_ASSERT_PTR_NOT_NULL_FATAL(w);
        uint64_t one = q ? expert_q8 : expert_bf16;
        CU_ASSERT_EQUAL(model_weight_bytes(w), 3 * one);
        ffn_weights kept = w->layers[1].moe.experts[5], lost = w->layers[1].moe.experts[3];
        float before[32], after[32];
        wt_row(&kept.down_proj, 7, before);
        memset(&w->layers[1].moe.experts[3], 0, sizeof lost); /* the caller clears its views first */
        model_release_expert(w, 1, 3, &lost);
        CU_ASSERT_EQUAL(model_weight_bytes(w), 2 * one);
        CU_ASSERT_EQUAL(w->layers[1].moe.experts[5].down_proj.p.bf16, kept.down_proj.p.bf16);
        wt_row(&w->layers[1].moe.experts[5].down_proj, 7, after);
        CU_ASSERT_EQUAL(memcmp(before, after, sizeof before), 0);
        model_release_expert(w, 2, 0, &w->layers[2].moe.experts[0]);
        CU_ASSERT_EQUAL(model_weight_bytes(w), one);
        model_free(w);
    }
}

static int stop_after(void *ctx) { return --*(int *)ctx < 0; }

/* The re-plan helper's load beside serving: with copies and pauses, experts get memory of the
 * model's own with the same bits and their mappings go, the load pauses after every chunk, a
 * stop from the pause cancels the load, and a release still gives back an expert's bytes. */
static void test_experts_copied_into_memory_of_their_own_keep_their_bits(void) {
    const char *dir = make(base_cfg);
    uint8_t host[3 * 8] = {0};
    host[1 * 8 + 3] = host[1 * 8 + 5] = host[2 * 8 + 0] = 1;
    const uint64_t one = 3 * 64 * 32 * 2, mat = 64 * 32 * 2; /* an expert, a matrix: bf16 */
    model_params wp = model_default_params();
    wp.dense = 0, wp.host = host, wp.own_thread = 1;
    model *ref = model_load(dir, &wp); /* on the file's pages */
    CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
    CU_ASSERT_EQUAL(st_mapped_bytes(ref->st), 3 * one);
    int left = 5; /* nine matrices of one chunk each: stopped after the sixth */
    wp.copy = 1, wp.pause = stop_after, wp.pause_ctx = &left;
    CU_ASSERT_PTR_NULL(model_load(dir, &wp));
    left = 1000;
    model *w = model_load(dir, &wp);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(left, 1000 - 9); /* a pause after each copied chunk */
    CU_ASSERT_EQUAL(st_mapped_bytes(w->st), 0);
    CU_ASSERT_EQUAL(model_weight_bytes(w), 3 * one);
    CU_ASSERT_EQUAL(w->owned_bytes, 3 * one);
    int ids[3][2] = {{1, 3}, {1, 5}, {2, 0}};
    for (int i = 0; i < 3; i++) {
        const ffn_weights *a = &w->layers[ids[i][0]].moe.experts[ids[i][1]];
        const ffn_weights *b = &ref->layers[ids[i][0]].moe.experts[ids[i][1]];
        CU_ASSERT(a->gate_proj.p.bf16 != b->gate_proj.p.bf16);
        CU_ASSERT_EQUAL(memcmp(a->gate_proj.p.bf16, b->gate_proj.p.bf16, mat), 0);
        CU_ASSERT_EQUAL(memcmp(a->up_proj.p.bf16, b->up_proj.p.bf16, mat), 0);
        CU_ASSERT_EQUAL(memcmp(a->down_proj.p.bf16, b->down_proj.p.bf16, mat), 0);
    }
    ffn_weights lost = w->layers[1].moe.experts[3];
    memset(&w->layers[1].moe.experts[3], 0, sizeof lost);
    model_release_expert(w, 1, 3, &lost);
    CU_ASSERT_EQUAL(model_weight_bytes(w), 2 * one);
    model_free(w), model_free(ref);
}

static CU_TestInfo model_tests[] = {
    {"a generated checkpoint loads whole or in parts", test_a_generated_checkpoint_loads_whole_or_in_parts},
    {"a checkpoint that disagrees with its config is refused", test_a_checkpoint_that_disagrees_with_its_config_is_refused},
    {"releasing an expert gives back its bytes and keeps the others",
     test_releasing_an_expert_gives_back_its_bytes_and_keeps_the_others},
    {"experts copied into memory of their own keep their bits",
     test_experts_copied_into_memory_of_their_own_keep_their_bits},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo model_suite = {"model", NULL, NULL, NULL, NULL, model_tests};
