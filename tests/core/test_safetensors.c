/* test_safetensors.c: the reader against files written by the writer, by hand (corrupt,
 * truncated, overlapping, unknown dtype) and the reference checkpoints; sharded checkpoints. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/safetensors.h"
#include "tests/runner.h"

static char path[4096];

/* Write a raw safetensors file: header JSON then `data_len` bytes of data. */
static const char *write_raw(const char *name, const char *header, size_t data_len) {
    snprintf(path, sizeof path, "%s/%s", dh_test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(header);
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(n >> (8 * i));
    fwrite(lb, 1, 8, f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xff), f);
    fclose(f);
    return path;
}

static int open_rc(const char *p) {
    int err = 0;
    st_file *st = st_open(p, &err);
    st_close(st);
    return st ? 0 : err;
}

static void test_written_file_reads_back(void) {
    const char *dir = dh_test_tmpdir();
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    stw_tensor ts[2] = {{"a.weight", ST_F32, 2, {2, 3}}, {"b", ST_BF16, 1, {5}}};
    st_writer *w = stw_open(path, ts, 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[5] = {0x3f80, 0x4000, 0, 0xbf80, 0x4040};
    CU_ASSERT_EQUAL(stw_write(w, a, sizeof a), 0);
    CU_ASSERT_EQUAL(stw_write(w, b, sizeof b), 0);
    CU_ASSERT_EQUAL(stw_close(w), 0);
    int err;
    st_file *st = st_open(dir, &err); /* a directory finds model.safetensors */
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_EQUAL(st_count(st), 2);
    const st_tensor *t = st_find(st, "a.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(t->ndim, 2);
    CU_ASSERT_EQUAL(t->shape[1], 3);
    CU_ASSERT_EQUAL(memcmp(st_data(st, t), a, sizeof a), 0);
    t = st_find(st, "b");
    CU_ASSERT_EQUAL(t->dtype, ST_BF16);
    CU_ASSERT_EQUAL(memcmp(st_data(st, t), b, sizeof b), 0);
    CU_ASSERT_PTR_NULL(st_find(st, "missing"));
    CU_ASSERT_EQUAL(st_mapped_bytes(st), sizeof a + sizeof b);
    st_close(st);
}

static void test_declared_size_must_match_what_is_written(void) {
    snprintf(path, sizeof path, "%s/short.safetensors", dh_test_tmpdir());
    stw_tensor ts[1] = {{"a", ST_F32, 1, {4}}};
    st_writer *w = stw_open(path, ts, 1);
    float a[3] = {0};
    stw_write(w, a, sizeof a);
    CU_ASSERT_EQUAL(stw_close(w), DH_EFORMAT);
}

static void test_corrupt_headers_are_errors(void) {
    /* header length past the end */
    snprintf(path, sizeof path, "%s/len.safetensors", dh_test_tmpdir());
    FILE *f = fopen(path, "wb");
    unsigned char lb[8] = {0xff, 0xff, 0, 0, 0, 0, 0, 0};
    fwrite(lb, 1, 8, f);
    fwrite("{}", 1, 2, f);
    fclose(f);
    CU_ASSERT_EQUAL(open_rc(path), DH_EFORMAT);
    /* shorter than 8 bytes */
    snprintf(path, sizeof path, "%s/tiny.safetensors", dh_test_tmpdir());
    f = fopen(path, "wb");
    fwrite("abc", 1, 3, f);
    fclose(f);
    CU_ASSERT_EQUAL(open_rc(path), DH_EFORMAT);
    /* not JSON */
    CU_ASSERT_EQUAL(open_rc(write_raw("json.safetensors", "{\"a\": ", 0)), DH_EFORMAT);
    /* offsets past the data (a truncated file) */
    CU_ASSERT_EQUAL(open_rc(write_raw("trunc.safetensors",
                                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12)),
                    DH_EFORMAT);
    /* size does not match shape x dtype */
    CU_ASSERT_EQUAL(open_rc(write_raw("size.safetensors",
                                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16)),
                    DH_EFORMAT);
    /* begin after end */
    CU_ASSERT_EQUAL(open_rc(write_raw("order.safetensors",
                                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16)),
                    DH_EFORMAT);
    /* overlapping tensors */
    CU_ASSERT_EQUAL(open_rc(write_raw("overlap.safetensors",
                                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                                      16)),
                    DH_EFORMAT);
    /* unknown dtype */
    CU_ASSERT_EQUAL(open_rc(write_raw("dtype.safetensors",
                                      "{\"a\":{\"dtype\":\"F12\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8)),
                    DH_EFORMAT);
    /* negative shape, missing field */
    CU_ASSERT_EQUAL(open_rc(write_raw("neg.safetensors",
                                      "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8)),
                    DH_EFORMAT);
    CU_ASSERT_EQUAL(open_rc(write_raw("field.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8)),
                    DH_EFORMAT);
    /* metadata is allowed; a valid minimal file opens */
    CU_ASSERT_EQUAL(open_rc(write_raw("ok.safetensors",
                                      "{\"__metadata__\":{\"format\":\"pt\"},"
                                      "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                                      8)),
                    0);
    CU_ASSERT_EQUAL(open_rc("/nonexistent/model.safetensors"), DH_ENOTFOUND);
    CU_ASSERT_EQUAL(open_rc(dh_test_tmpdir()), DH_ENOTFOUND); /* empty directory */
}

static void test_sharded_checkpoints_follow_the_index(void) {
    const char *dir = dh_test_tmpdir();
    char p1[4200], p2[4200], idx[4200];
    snprintf(p1, sizeof p1, "%s/model-00001-of-00002.safetensors", dir);
    snprintf(p2, sizeof p2, "%s/model-00002-of-00002.safetensors", dir);
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    stw_tensor t1[1] = {{"x", ST_F32, 1, {2}}}, t2[1] = {{"y", ST_F16, 1, {2}}};
    float x[2] = {1, 2};
    uint16_t y[2] = {0x3c00, 0x4000};
    st_writer *w = stw_open(p1, t1, 1);
    stw_write(w, x, sizeof x);
    stw_close(w);
    w = stw_open(p2, t2, 1);
    stw_write(w, y, sizeof y);
    stw_close(w);
    FILE *f = fopen(idx, "w");
    fprintf(f, "{\"metadata\":{},\"weight_map\":{\"x\":\"model-00001-of-00002.safetensors\","
               "\"y\":\"model-00002-of-00002.safetensors\"}}");
    fclose(f);
    int err;
    st_file *st = st_open(dir, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_EQUAL(st_count(st), 2);
    const st_tensor *ty = st_find(st, "y");
    CU_ASSERT_PTR_NOT_NULL_FATAL(ty);
    CU_ASSERT_EQUAL(((const uint16_t *)st_data(st, ty))[1], 0x4000);
    st_close(st);
    /* an index that names the wrong shard for a tensor */
    f = fopen(idx, "w");
    fprintf(f, "{\"weight_map\":{\"x\":\"model-00002-of-00002.safetensors\","
               "\"y\":\"model-00002-of-00002.safetensors\"}}");
    fclose(f);
    CU_ASSERT_EQUAL(open_rc(dir), DH_EFORMAT);
    /* a path escaping the directory */
    f = fopen(idx, "w");
    fprintf(f, "{\"weight_map\":{\"x\":\"../model.safetensors\"}}");
    fclose(f);
    CU_ASSERT_EQUAL(open_rc(dir), DH_EFORMAT);
}

static void test_reference_checkpoints_open(void) {
    int err;
    st_file *st = st_open(dh_test_data("ref-tiny"), &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_EQUAL(st_count(st), 631);
    st_close(st);
    st = st_open(dh_test_data("ref-tiny-yarn/model.safetensors"), &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_EQUAL(st_count(st), 639);
    const st_tensor *t = st_find(st, "model.layers.1.mlp.gate.e_score_correction_bias");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(t->dtype, ST_F32);
    t = st_find(st, "model.embed_tokens.weight");
    CU_ASSERT_EQUAL(t->dtype, ST_BF16);
    st_close(st);
}

static CU_TestInfo safetensors_tests[] = {
    {"a written file reads back", test_written_file_reads_back},
    {"declared size must match what is written", test_declared_size_must_match_what_is_written},
    {"corrupt headers are errors", test_corrupt_headers_are_errors},
    {"sharded checkpoints follow the index", test_sharded_checkpoints_follow_the_index},
    {"the reference checkpoints open", test_reference_checkpoints_open},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo safetensors_suite = {"safetensors", NULL, NULL, NULL, NULL, safetensors_tests};
