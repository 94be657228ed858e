/* test_tracefile.c: routing traces on disk: whole traces round trip (float and integer
 * weights), live records merge per sequence (a later step continues a sequence, an MTP record
 * fills its layer), a file cut short is read up to its last whole record (plain and gzip), and
 * malformed files are refused with the record named. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proto/tracefile.h"
#include "tests/runner.h"

/* Two domains, L 2, E 8, K 2: s0 (domain 1, 3 tokens), s1 (domain 0, 2 tokens); ids and
 * weights from the position so that every value differs. */
static trace *sample(float unit) {
    trace *t = trace_new(2, 8, 2, 2, 5);
    t->n_domains = 2, t->hidden_size = 16, t->ffn_size = 4, t->weight_unit = unit;
    snprintf(t->source, sizeof t->source, "test");
    snprintf(t->domain_names[0], TRACE_NAME_MAX, "law");
    snprintf(t->domain_names[1], TRACE_NAME_MAX, "intent");
    t->seqs[0] = (trace_seq){.id = 7, .domain = 1, .start_pos = 0, .n_tokens = 3, .first = 0};
    t->seqs[1] = (trace_seq){.id = 9, .domain = 0, .start_pos = 4, .n_tokens = 2, .first = 3};
    for (int i = 0; i < 5 * 2 * 2; i++) {
        t->ids[i] = (int16_t)((i * 3 + i / 2) % 8);
        if (i % 2 && t->ids[i] == t->ids[i - 1]) t->ids[i] = (int16_t)((t->ids[i] + 1) % 8);
        t->weights[i] = unit > 0 ? (float)((i + 1) * 37) * unit : 0.1f * (float)i + 0.013f;
    }
    return t;
}

static void check_same(const trace *a, const trace *b) {
    CU_ASSERT_EQUAL_FATAL(b->n_seqs, a->n_seqs);
    CU_ASSERT_EQUAL_FATAL(b->n_tokens, a->n_tokens);
    CU_ASSERT_EQUAL(b->n_layers, a->n_layers);
    CU_ASSERT_EQUAL(b->n_experts, a->n_experts);
    CU_ASSERT_EQUAL(b->top_k, a->top_k);
    CU_ASSERT_EQUAL(b->hidden_size, a->hidden_size);
    CU_ASSERT_EQUAL(b->ffn_size, a->ffn_size);
    CU_ASSERT_EQUAL(b->n_domains, a->n_domains);
    CU_ASSERT_STRING_EQUAL(b->domain_names[1], a->domain_names[1]);
    CU_ASSERT_STRING_EQUAL(b->source, a->source);
    for (int s = 0; s < a->n_seqs; s++) {
        CU_ASSERT_EQUAL(b->seqs[s].id, a->seqs[s].id);
        CU_ASSERT_EQUAL(b->seqs[s].domain, a->seqs[s].domain);
        CU_ASSERT_EQUAL(b->seqs[s].start_pos, a->seqs[s].start_pos);
        CU_ASSERT_EQUAL(b->seqs[s].n_tokens, a->seqs[s].n_tokens);
    }
    size_t n = a->n_tokens * (size_t)a->n_layers * a->top_k;
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (a->ids[i] != b->ids[i] || a->weights[i] != b->weights[i]) {
            if (!bad++) printf("\n  entry %zu: id %d weight %.9g, want %d %.9g\n", i, b->ids[i], b->weights[i], a->ids[i],
                               a->weights[i]);
        }
    CU_ASSERT_EQUAL(bad, 0);
}

static void round_trip(float unit) {
    char path[4200];
    snprintf(path, sizeof path, "%s/t.dhtrace", dh_test_tmpdir());
    trace *a = sample(unit);
    CU_ASSERT_EQUAL_FATAL(tf_write(a, path), 0);
    trace *b = tf_read(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    check_same(a, b);
    trace_free(a);
    trace_free(b);
}

static void test_tracefile_whole_trace_round_trips_with_float_weights(void) { round_trip(0); }
static void test_tracefile_whole_trace_round_trips_with_integer_weights(void) { round_trip(1e-4f); }

/* A live-style file, L 3 (layer 2 the MTP block), K 1, E 4: step 0 holds seq 0 at 0..1 and
 * seq 1 at 0..2 for layers 0 and 1; an MTP record fills layer 2 of seq 0 at 0..1; step 2
 * continues seq 0 with position 2. */
static void write_live(const char *path) {
    trace hdr = {.n_layers = 3, .n_experts = 4, .top_k = 1, .n_domains = 2};
    snprintf(hdr.domain_names[0], TRACE_NAME_MAX, "a");
    snprintf(hdr.domain_names[1], TRACE_NAME_MAX, "b");
    tf_writer *w = tf_writer_open(path, &hdr);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    const int main_layers[2] = {0, 1}, mtp[1] = {2};
    tf_part p0[2] = {{.seq_id = 0, .domain = 1, .start_pos = 0, .n_tokens = 2},
                     {.seq_id = 1, .domain = 0, .start_pos = 0, .n_tokens = 3}};
    const int ids0[10] = {0, 1, 1, 2, 2, 3, 3, 0, 0, 1}; /* [5 tokens][2 layers] */
    const float w0[10] = {.1f, .2f, .3f, .4f, .5f, .6f, .7f, .8f, .9f, 1.f};
    CU_ASSERT_EQUAL(tf_writer_add(w, 0, main_layers, 2, p0, 2, ids0, w0), 0);
    tf_part p1[1] = {{.seq_id = 0, .domain = 1, .start_pos = 0, .n_tokens = 2}};
    const int ids1[2] = {3, 2};
    const float w1[2] = {1.5f, 2.5f};
    CU_ASSERT_EQUAL(tf_writer_add(w, 1, mtp, 1, p1, 1, ids1, w1), 0);
    tf_part p2[1] = {{.seq_id = 0, .domain = 1, .start_pos = 2, .n_tokens = 1}};
    const int ids2[2] = {2, 1};
    const float w2[2] = {3.5f, 4.5f};
    CU_ASSERT_EQUAL(tf_writer_add(w, 2, main_layers, 2, p2, 1, ids2, w2), 0);
    CU_ASSERT_EQUAL(tf_writer_close(w), 0);
}

static void test_tracefile_live_records_merge_per_sequence(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s/live.dhtrace", dh_test_tmpdir());
    write_live(path);
    trace *t = tf_read(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL_FATAL(t->n_seqs, 2);
    CU_ASSERT_EQUAL(t->n_tokens, 6);
    CU_ASSERT_EQUAL(t->seqs[0].n_tokens, 3); /* 2 in step 0, 1 more in step 2 */
    CU_ASSERT_EQUAL(t->seqs[0].domain, 1);
    CU_ASSERT_EQUAL(t->seqs[1].n_tokens, 3);
    /* seq 0, [token][layer]: (0, 1, 3) (1, 2, 2) (2, 1, -1): the MTP layer of token 2 never ran */
    const int16_t want0[9] = {0, 1, 3, 1, 2, 2, 2, 1, -1};
    const float wantw0[9] = {.1f, .2f, 1.5f, .3f, .4f, 2.5f, 3.5f, 4.5f, 0};
    for (int i = 0; i < 9; i++) {
        CU_ASSERT_EQUAL(t->ids[t->seqs[0].first * 3 + (size_t)i], want0[i]);
        CU_ASSERT_EQUAL(t->weights[t->seqs[0].first * 3 + (size_t)i], wantw0[i]);
    }
    const int16_t want1[9] = {2, 3, -1, 3, 0, -1, 0, 1, -1};
    for (int i = 0; i < 9; i++) CU_ASSERT_EQUAL(t->ids[t->seqs[1].first * 3 + (size_t)i], want1[i]);
    trace_free(t);
}

/* Write path's first n bytes to cut. */
static void truncate_copy(const char *path, const char *cut, size_t n) {
    size_t len;
    unsigned char *b = dh_test_read_file(path, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    FILE *f = fopen(cut, "wb");
    fwrite(b, 1, n < len ? n : len, f);
    fclose(f);
    free(b);
}

static void test_tracefile_a_truncated_file_is_read_to_its_last_whole_record(void) {
    const char *dir = dh_test_tmpdir();
    char path[4200], cut[4200];
    snprintf(path, sizeof path, "%s/live.dhtrace", dir);
    snprintf(cut, sizeof cut, "%s/cut.dhtrace", dir);
    write_live(path);
    size_t len;
    free(dh_test_read_file(path, &len));
    /* the last record (seq 0, position 2: 2 ids, 2 weights) packs to 28 bytes after its 4-byte
     * length: cutting 1 or 3 bytes leaves it incomplete, cutting 30 leaves half its length */
    static const size_t drops[3] = {1, 3, 30};
    for (int i = 0; i < 3; i++) {
        size_t drop = drops[i];
        truncate_copy(path, cut, len - drop);
        trace *t = tf_read(cut);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_EQUAL(t->n_seqs, 2);
        CU_ASSERT_EQUAL(t->seqs[0].n_tokens, 2); /* position 2 was in the lost record */
        CU_ASSERT_EQUAL(t->ids[t->seqs[0].first * 3 + 2], 3); /* the MTP record before it is kept */
        trace_free(t);
    }
}

static void test_tracefile_a_truncated_gzip_file_is_read_to_its_last_whole_record(void) {
    const char *dir = dh_test_tmpdir();
    char path[4200], cut[4200];
    snprintf(path, sizeof path, "%s/live.dhtrace.gz", dir);
    snprintf(cut, sizeof cut, "%s/cut.dhtrace.gz", dir);
    write_live(path); /* .gz: compressed, flushed after every record */
    size_t len;
    unsigned char *b = dh_test_read_file(path, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT(len > 2 && b[0] == 0x1f && b[1] == 0x8b); /* it is gzip */
    free(b);
    trace *whole = tf_read(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(whole);
    CU_ASSERT_EQUAL(whole->seqs[0].n_tokens, 3);
    trace_free(whole);
    /* the gzip trailer (8 bytes) and the last flushed block gone: a crash before close */
    truncate_copy(path, cut, len - 20);
    trace *t = tf_read(cut);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(t->n_seqs, 2);
    CU_ASSERT_EQUAL(t->seqs[0].n_tokens, 2);
    trace_free(t);
}

static void test_tracefile_malformed_files_are_refused(void) {
    const char *dir = dh_test_tmpdir();
    char path[4200];
    snprintf(path, sizeof path, "%s/bad", dir);
    FILE *f = fopen(path, "wb");
    fputs("not a trace at all", f);
    fclose(f);
    CU_ASSERT_PTR_NULL(tf_read(path));
    snprintf(path, sizeof path, "%s/absent", dir);
    CU_ASSERT_PTR_NULL(tf_read(path));
    /* a record whose id is not below E: refused, not clamped */
    snprintf(path, sizeof path, "%s/range.dhtrace", dir);
    trace hdr = {.n_layers = 1, .n_experts = 4, .top_k = 1};
    tf_writer *w = tf_writer_open(path, &hdr);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    tf_part p = {.seq_id = 0, .n_tokens = 1};
    const int id = 4;
    const float wt = 1;
    CU_ASSERT_EQUAL(tf_writer_add(w, 0, NULL, 1, &p, 1, &id, &wt), 0);
    CU_ASSERT_EQUAL(tf_writer_close(w), 0);
    CU_ASSERT_PTR_NULL(tf_read(path));
}

static CU_TestInfo tracefile_tests[] = {
    {"a whole trace round trips with float weights", test_tracefile_whole_trace_round_trips_with_float_weights},
    {"a whole trace round trips with integer weights", test_tracefile_whole_trace_round_trips_with_integer_weights},
    {"live records merge per sequence, the MTP layer filled in", test_tracefile_live_records_merge_per_sequence},
    {"a truncated file is read to its last whole record", test_tracefile_a_truncated_file_is_read_to_its_last_whole_record},
    {"a truncated gzip file is read to its last whole record", test_tracefile_a_truncated_gzip_file_is_read_to_its_last_whole_record},
    {"malformed files are refused", test_tracefile_malformed_files_are_refused},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo tracefile_suite = {"tracefile", NULL, NULL, NULL, NULL, tracefile_tests};
