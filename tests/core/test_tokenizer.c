/* test_tokenizer.c: the tokenizer against Hugging Face tokenizers, whose ids are the oracle.
 *
 * Every expected id list in tests/data/tokenizer was produced by HF tokenizers 0.22.2 itself
 * (scripts/gen-tokenizer-cases.js); nothing here is what we believe HF gives. The DeepSeek-V3
 * tokenizer is the vendored models/deepseek-v3/tokenizer.json (path from CMake:
 * DH_TOK_VENDORED_JSON), loaded once for the suite. Properties without an HF oracle (streaming
 * equals whole decode, decode(encode(x)) == x, invalid UTF-8 offsets, thread safety, loader
 * errors) are checked directly. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "core/tok_embedded.h"
#include "core/tokenizer.h"
#include "tests/runner.h"

#ifndef DH_TOK_VENDORED_JSON
#error "DH_TOK_VENDORED_JSON must name models/deepseek-v3/tokenizer.json (tests/CMakeLists.txt)"
#endif

static tokenizer *g_tok; /* the vendored DeepSeek-V3 tokenizer, for the whole suite */

static int suite_init(void) {
    g_tok = tok_load(DH_TOK_VENDORED_JSON);
    return g_tok ? 0 : 1;
}

static int suite_clean(void) {
    tok_free(g_tok);
    g_tok = NULL;
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

/* Every line of tests/data/tokenizer/<name> as a JSON object, in order; NULL-terminated array,
 * caller frees with free_rows. */
static json_t **load_rows(const char *name, size_t *n_rows) {
    char rel[256];
    snprintf(rel, sizeof rel, "tokenizer/%s", name);
    size_t len;
    char *buf = dh_test_read_file(dh_test_data(rel), &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    json_t **rows = NULL;
    size_t n = 0;
    for (size_t at = 0; at < len;) {
        char *nl = memchr(buf + at, '\n', len - at);
        size_t ll = nl ? (size_t)(nl - (buf + at)) : len - at;
        if (ll > 0) {
            json_error_t err;
            json_t *row = json_loadb(buf + at, ll, JSON_ALLOW_NUL, &err);
            if (!row) fprintf(stderr, "%s line %zu: %s\n", name, n + 1, err.text);
            CU_ASSERT_PTR_NOT_NULL_FATAL(row);
            rows = xrealloc(rows, (n + 2) * sizeof *rows);
            rows[n++] = row;
        }
        at += ll + 1;
    }
    free(buf);
    rows = xrealloc(rows, (n + 1) * sizeof *rows);
    rows[n] = NULL;
    *n_rows = n;
    return rows;
}

static void free_rows(json_t **rows) {
    for (json_t **r = rows; *r; r++) json_decref(*r);
    free(rows);
}

static int *json_ids(const json_t *arr, size_t *n) {
    *n = json_array_size(arr);
    int *ids = xmalloc((*n + 1) * sizeof *ids);
    for (size_t i = 0; i < *n; i++) ids[i] = (int)json_integer_value(json_array_get(arr, i));
    return ids;
}

/* Encode and compare with HF's ids; on a difference, print where. Returns 1 if equal. */
static int encode_matches(const tokenizer *t, const char *text, size_t len, const json_t *want,
                          const char *label) {
    int *ids;
    size_t n, n_want, off = 0;
    int rc = tok_encode(t, text, len, &ids, &n, &off);
    if (rc != 0) {
        fprintf(stderr, "\n%s: tok_encode failed (%d, offset %zu)\n", label, rc, off);
        return 0;
    }
    int *w = json_ids(want, &n_want);
    size_t i = 0;
    while (i < n && i < n_want && ids[i] == w[i]) i++;
    int ok = i == n && i == n_want;
    if (!ok)
        fprintf(stderr, "\n%s: ids differ at %zu: ours %d, HF %d (lengths %zu, %zu)\n", label, i,
                i < n ? ids[i] : -1, i < n_want ? w[i] : -1, n, n_want);
    free(ids);
    free(w);
    return ok;
}

/* decode(encode(text)) == text. */
static int roundtrips(const tokenizer *t, const char *text, size_t len) {
    int *ids;
    size_t n, out_len;
    char *out;
    if (tok_encode(t, text, len, &ids, &n, NULL) != 0) return 0;
    tok_decode(t, ids, n, &out, &out_len);
    int ok = out_len == len && memcmp(out, text, len) == 0;
    free(ids);
    free(out);
    return ok;
}

/* Feed ids one at a time with out buffers of cap bytes, flush; the concatenation, malloc'd. */
static char *stream_all(const tokenizer *t, const int *ids, size_t n, size_t cap, size_t *len) {
    tok_stream *s = tok_stream_new(t);
    char *all = xmalloc(16 * n + 64), *buf = xmalloc(cap);
    size_t w = 0, k;
    for (size_t i = 0; i < n; i++) {
        k = tok_stream_push(s, ids[i], buf, cap);
        memcpy(all + w, buf, k);
        w += k;
    }
    while ((k = tok_stream_flush(s, buf, cap)) > 0) {
        memcpy(all + w, buf, k);
        w += k;
    }
    tok_stream_free(s);
    free(buf);
    all[w] = 0;
    *len = w;
    return all;
}

/* The id of the single-byte token of byte b: GPT-2's byte characters, written out here as an
 * independent check of the table in bpe.c. */
static int byte_token(const tokenizer *t, int b) {
    int cp = b, k = 0;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
        for (int x = 0; x < b; x++)
            k += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174);
        cp = 256 + k;
    }
    char s[3] = {0};
    if (cp < 0x80) {
        s[0] = (char)cp;
    } else {
        s[0] = (char)(0xC0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3F));
    }
    return tok_token_id(t, s);
}

/* ---- HF parity ------------------------------------------------------------------------------ */

/* HF's ids for every row of file; and decode(encode(text)) == text when roundtrip is set (it is
 * not for tokenizers that add a prefix space). */
static void check_text_rows(const char *file, const tokenizer *t, int roundtrip) {
    size_t n, bad = 0;
    json_t **rows = load_rows(file, &n);
    for (size_t i = 0; i < n; i++) {
        const json_t *text = json_object_get(rows[i], "text");
        char label[300];
        snprintf(label, sizeof label, "%s line %zu", file, i + 1);
        if (!encode_matches(t, json_string_value(text), json_string_length(text),
                            json_object_get(rows[i], "ids"), label))
            bad++;
        else if (roundtrip && !roundtrips(t, json_string_value(text), json_string_length(text))) {
            fprintf(stderr, "\n%s: decode(encode(text)) != text\n", label);
            bad++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(n > 0);
    free_rows(rows);
}

static void test_tok_reference_cases_match_hf(void) {
    check_text_rows("deepseek_v3_cases.jsonl", g_tok, 1);
}

static void test_tok_unicode_edge_cases_match_hf(void) {
    check_text_rows("unicode_cases.jsonl", g_tok, 1);
}

static void test_tok_random_multiscript_strings_match_hf(void) {
    check_text_rows("random_cases.jsonl", g_tok, 1);
}

/* Licences, C source, documentation, man pages and translations in ten scripts, each encoded
 * whole, twice: with a cold cache and with the cache the first pass filled. */
static void test_tok_long_real_texts_match_hf_cold_and_warm(void) {
    size_t n, bad = 0;
    json_t **rows = load_rows("texts.jsonl", &n);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0) tok_cache_clear(g_tok);
        for (size_t i = 0; i < n; i++) {
            char rel[300];
            const char *file = json_string_value(json_object_get(rows[i], "file"));
            snprintf(rel, sizeof rel, "tokenizer/texts/%s", file);
            size_t len;
            char *text = dh_test_read_file(dh_test_data(rel), &len);
            CU_ASSERT_PTR_NOT_NULL_FATAL(text);
            if (!encode_matches(g_tok, text, len, json_object_get(rows[i], "ids"), file) ||
                !roundtrips(g_tok, text, len))
                bad++;
            free(text);
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(n >= 8);
    free_rows(rows);
}

/* Tiny tokenizers in the Llama-3 (case-insensitive contractions, ignore_merges, [a, b] merges),
 * GPT-2 (lone ByteLevel with prefix space and GPT-2 regex, "a b" merges after #version) and
 * Split-string/invert/empty-match styles, with HF's ids. */
static void test_tok_llama3_gpt2_and_split_styles_match_hf(void) {
    static const char *const names[] = {"tiny_llama3", "tiny_gpt2", "tiny_split"};
    for (int i = 0; i < 3; i++) {
        char rel[64], cases[64];
        snprintf(rel, sizeof rel, "tokenizer/%s.json", names[i]);
        snprintf(cases, sizeof cases, "%s_cases.jsonl", names[i]);
        tokenizer *t = tok_load(dh_test_data(rel));
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        check_text_rows(cases, t, i == 0); /* GPT-2 and Split styles add a prefix space */
        tok_free(t);
    }
}

/* HF's decode of random ids: vocab tokens, lone bytes that break UTF-8 (U+FFFD per maximal
 * invalid subpart), added tokens, and ids past the vocab (skipped). Streaming gives the same. */
static void test_tok_decode_matches_hf_and_streaming_matches_decode(void) {
    size_t n, bad = 0;
    json_t **rows = load_rows("decode_cases.jsonl", &n);
    for (size_t i = 0; i < n; i++) {
        size_t n_ids, len, slen;
        int *ids = json_ids(json_object_get(rows[i], "ids"), &n_ids);
        const json_t *want = json_object_get(rows[i], "text");
        char *out;
        tok_decode(g_tok, ids, n_ids, &out, &len);
        int ok = len == json_string_length(want) && memcmp(out, json_string_value(want), len) == 0;
        for (size_t cap = 4; ok && cap <= 64; cap += cap < 8 ? 1 : 28) {
            char *s = stream_all(g_tok, ids, n_ids, cap, &slen);
            ok = slen == len && memcmp(s, out, len) == 0;
            free(s);
        }
        if (!ok) {
            fprintf(stderr, "\ndecode_cases line %zu differs\n", i + 1);
            bad++;
        }
        free(out);
        free(ids);
    }
    CU_ASSERT_EQUAL(bad, 0);
    free_rows(rows);
}

/* ---- streaming ------------------------------------------------------------------------------ */

static void test_tok_stream_holds_back_a_split_character(void) {
    int b0 = byte_token(g_tok, 0xE4), b1 = byte_token(g_tok, 0xB8), b2 = byte_token(g_tok, 0xAD);
    CU_ASSERT_FATAL(b0 >= 0 && b1 >= 0 && b2 >= 0);
    int hello = tok_token_id(g_tok, "Hello");
    tok_stream *s = tok_stream_new(g_tok);
    char out[64];
    CU_ASSERT_EQUAL(tok_stream_push(s, hello, out, sizeof out), 5);
    CU_ASSERT_EQUAL(tok_stream_push(s, b0, out, sizeof out), 0); /* E4: held */
    CU_ASSERT_EQUAL(tok_stream_push(s, b1, out, sizeof out), 0); /* E4 B8: held */
    CU_ASSERT_EQUAL(tok_stream_push(s, 99999999, out, sizeof out), 0); /* unknown: nothing */
    size_t k = tok_stream_push(s, b2, out, sizeof out);          /* E4 B8 AD = 中 */
    CU_ASSERT(k == 3 && memcmp(out, "中", 3) == 0);
    CU_ASSERT_EQUAL(tok_stream_flush(s, out, sizeof out), 0);
    // an incomplete tail at the end becomes one U+FFFD, as in the whole decode
    CU_ASSERT_EQUAL(tok_stream_push(s, b0, out, sizeof out), 0);
    CU_ASSERT_EQUAL(tok_stream_push(s, b1, out, sizeof out), 0);
    k = tok_stream_flush(s, out, sizeof out);
    CU_ASSERT(k == 3 && memcmp(out, "\xEF\xBF\xBD", 3) == 0);
    CU_ASSERT_EQUAL(tok_stream_flush(s, out, sizeof out), 0);
    // a held prefix that a later byte cannot continue is replaced at once
    CU_ASSERT_EQUAL(tok_stream_push(s, b0, out, sizeof out), 0);
    k = tok_stream_push(s, hello, out, sizeof out);
    CU_ASSERT(k == 8 && memcmp(out, "\xEF\xBF\xBDHello", 8) == 0);
    tok_stream_free(s);
    tok_stream_free(NULL);
}

/* Text with characters of 1 to 4 bytes, tokens cut inside them: each push writes only whole
 * characters, something was held back at least once, and the whole equals the text. */
static void test_tok_stream_output_is_always_whole_characters(void) {
    const char *text = "中文文本😀👨‍👩‍👧 Привет ๐๑๒ 𝐀𝐁𝐂 é\u0301 ok";
    int *ids;
    size_t n;
    CU_ASSERT_FATAL(tok_encode(g_tok, text, strlen(text), &ids, &n, NULL) == 0);
    // re-spell every token as its single bytes, so characters are cut everywhere
    int *bytes = xmalloc(strlen(text) * sizeof *bytes);
    for (size_t i = 0; i < strlen(text); i++) bytes[i] = byte_token(g_tok, (unsigned char)text[i]);
    tok_stream *s = tok_stream_new(g_tok);
    char out[64], all[256];
    size_t w = 0, held = 0;
    for (size_t i = 0; i < strlen(text); i++) {
        size_t k = tok_stream_push(s, bytes[i], out, sizeof out);
        held += k == 0;
        for (size_t j = 0; j < k;) { /* whole UTF-8 characters only */
            unsigned char c = (unsigned char)out[j];
            size_t cl = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
            CU_ASSERT_FATAL(j + cl <= k);
            j += cl;
        }
        memcpy(all + w, out, k);
        w += k;
    }
    w += tok_stream_flush(s, all + w, sizeof all - w);
    CU_ASSERT(held > 10);
    CU_ASSERT(w == strlen(text) && memcmp(all, text, w) == 0);
    size_t slen;
    char *s2 = stream_all(g_tok, ids, n, 4, &slen); /* the real tokens, a 4-byte buffer */
    CU_ASSERT(slen == strlen(text) && memcmp(s2, text, slen) == 0);
    free(s2);
    tok_stream_free(s);
    free(bytes);
    free(ids);
}

/* ---- input checks --------------------------------------------------------------------------- */

static void test_tok_invalid_utf8_is_refused_with_its_offset(void) {
    static const struct {
        const char *s;
        size_t off;
    } bad[] = {
        {"abc\xff", 3},              {"\xc0\xaf", 0},           /* overlong '/' */
        {"a\xe0\x80\xaf", 1},        {"\xf0\x80\x80\xaf", 0},   /* overlong 3, 4 bytes */
        {"ok \xed\xa0\x80", 3},      {"\xed\xbf\xbf", 0},       /* lone surrogates */
        {"\xf4\x90\x80\x80", 0},     {"\xf5\x80\x80\x80", 0},   /* past U+10FFFF */
        {"x\xe4\xb8", 1},            {"\x80", 0},               /* truncated, stray */
        {"h\xc3\xa9llo\xc3", 6},     {"中\xe4\xb8x", 3},
        {"\xfe", 0},                 {"\xc2\x41", 0},
        {"<｜User｜>\xff", 12},      {"12345678\xc1\xbf", 8},   /* after an added token, ASCII run */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int sentinel, *ids = &sentinel;
        size_t n = 99, off = 12345;
        int rc = tok_encode(g_tok, bad[i].s, strlen(bad[i].s), &ids, &n, &off);
        CU_ASSERT_EQUAL(rc, DH_EINVAL);
        CU_ASSERT_EQUAL(off, bad[i].off);
        CU_ASSERT_EQUAL(tok_utf8_check(bad[i].s, strlen(bad[i].s)), bad[i].off);
        CU_ASSERT(ids == NULL && n == 0);
        if (off != bad[i].off)
            fprintf(stderr, "\ncase %zu: offset %zu, want %zu\n", i, off, bad[i].off);
    }
    static const char *const good[] = {"\xf4\x8f\xbf\xbf", "\xef\xbf\xbd", "\xee\x80\x80",
                                       "\xc2\x80", "\xe0\xa0\x80", "\xf0\x90\x80\x80", ""};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        CU_ASSERT(roundtrips(g_tok, good[i], strlen(good[i])));
        CU_ASSERT_EQUAL(tok_utf8_check(good[i], strlen(good[i])), strlen(good[i]));
    }
    int *ids;
    size_t n;
    CU_ASSERT_EQUAL(tok_encode(g_tok, "", 0, &ids, &n, NULL), 0);
    CU_ASSERT(ids != NULL && n == 0);
    free(ids);
    CU_ASSERT_EQUAL(tok_encode(g_tok, "a\0b", 3, &ids, &n, NULL), 0); /* U+0000 is valid */
    CU_ASSERT(n >= 2);
    free(ids);
}

/* A megabyte without a space is one piece for the BPE (heap path): it must finish quickly and
 * decode back. The time is printed, not asserted (scripts/bench-tokenizer.sh measures). */
static void test_tok_one_megabyte_line_without_spaces_encodes(void) {
    const size_t N = 1 << 20;
    char *s = xmalloc(N + 4);
    uint64_t x = 42;
    for (int kind = 0; kind < 4; kind++) {
        size_t len = 0;
        while (len + 3 <= N) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            if (kind == 0) s[len++] = 'a';
            else if (kind == 1) s[len++] = (char)('a' + (x >> 33) % 26);
            else if (kind == 2) s[len++] = ' ';
            else { /* CJK, three bytes each */
                unsigned cp = 0x4E00 + (unsigned)((x >> 33) % 0x51A6);
                s[len++] = (char)(0xE0 | (cp >> 12));
                s[len++] = (char)(0x80 | ((cp >> 6) & 0x3F));
                s[len++] = (char)(0x80 | (cp & 0x3F));
            }
        }
        double t0 = dh_now();
        int *ids;
        size_t n;
        CU_ASSERT_FATAL(tok_encode(g_tok, s, len, &ids, &n, NULL) == 0);
        double t1 = dh_now();
        CU_ASSERT(n > 0 && n < len);
        char *out;
        size_t out_len;
        tok_decode(g_tok, ids, n, &out, &out_len);
        CU_ASSERT(out_len == len && memcmp(out, s, len) == 0);
        fprintf(stderr, "[1 MB line, kind %d: %zu tokens in %.3f s] ", kind, n, t1 - t0);
        free(out);
        free(ids);
    }
    free(s);
}

/* ---- API ------------------------------------------------------------------------------------ */

static void test_tok_ids_and_vocab_size(void) {
    CU_ASSERT_EQUAL(tok_vocab_size(g_tok), 128815);
    CU_ASSERT_EQUAL(tok_token_id(g_tok, "<｜begin▁of▁sentence｜>"), 0);
    CU_ASSERT_EQUAL(tok_token_id(g_tok, "<｜end▁of▁sentence｜>"), 1);
    CU_ASSERT_EQUAL(tok_token_id(g_tok, "<｜User｜>"), 128803);
    CU_ASSERT_EQUAL(tok_token_id(g_tok, "<｜Assistant｜>"), 128804);
    CU_ASSERT_EQUAL(tok_token_id(g_tok, "<|EOT|>"), 128805);
    CU_ASSERT_EQUAL(tok_token_id(g_tok, "Hello"), 19923);
    CU_ASSERT_EQUAL(tok_token_id(g_tok, "ĠHello"), 45948); /* " Hello" in byte characters */
    CU_ASSERT_EQUAL(tok_token_id(g_tok, "no such token at all"), -1);
    int ids[] = {0, 19923, 14, 2058, 3, 1};
    char *out;
    CU_ASSERT_EQUAL(tok_decode(g_tok, ids, 6, &out, NULL), 0);
    CU_ASSERT_STRING_EQUAL(out, "<｜begin▁of▁sentence｜>Hello, world!<｜end▁of▁sentence｜>");
    free(out);
    /* the longest entries of DeepSeek-V3's vocabulary are 128 spaces ("Ġ" x 128) and 128 dots;
     * 1280 dots cannot take fewer than 10 tokens */
    CU_ASSERT_EQUAL(tok_max_token_bytes(g_tok), 128);
    char dots[1281];
    memset(dots, '.', 1280);
    dots[1280] = 0;
    int *d;
    size_t nd;
    CU_ASSERT_EQUAL_FATAL(tok_encode(g_tok, dots, 1280, &d, &nd, NULL), 0);
    CU_ASSERT(nd >= 10);
    free(d);
}

static void test_tok_embedded_json_is_the_vendored_file(void) {
    size_t len, flen;
    const unsigned char *emb = tok_embedded_json(&len);
    char *file = dh_test_read_file(DH_TOK_VENDORED_JSON, &flen);
    CU_ASSERT_PTR_NOT_NULL_FATAL(file);
    CU_ASSERT(len == flen && memcmp(emb, file, len) == 0);
    CU_ASSERT_EQUAL(emb[len], 0);
    free(file);
    tokenizer *t = tok_load_buffer((const char *)emb, len, "embedded");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    int *ids;
    size_t n;
    CU_ASSERT(tok_encode(t, "Hello, world!", 13, &ids, &n, NULL) == 0);
    CU_ASSERT(n == 4 && ids[0] == 19923 && ids[1] == 14 && ids[2] == 2058 && ids[3] == 3);
    free(ids);
    tok_free(t);
    tok_free(NULL);
}

typedef struct thread_job {
    json_t **rows;
    size_t n, bad;
} thread_job;

static void *encode_rows(void *arg) {
    thread_job *j = arg;
    for (int rep = 0; rep < 3; rep++)
        for (size_t i = 0; i < j->n; i++) {
            const json_t *text = json_object_get(j->rows[i], "text");
            if (!encode_matches(g_tok, json_string_value(text), json_string_length(text),
                                json_object_get(j->rows[i], "ids"), "thread"))
                j->bad++;
            if (rep == 1 && i == j->n / 2) tok_cache_clear(g_tok); /* clear under the others */
        }
    return NULL;
}

static void test_tok_several_threads_encode_at_once(void) {
    size_t n;
    json_t **rows = load_rows("random_cases.jsonl", &n);
    pthread_t th[4];
    thread_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (thread_job){.rows = rows, .n = n};
        CU_ASSERT_FATAL(pthread_create(&th[i], NULL, encode_rows, &jobs[i]) == 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(jobs[i].bad, 0);
    }
    free_rows(rows);
}

/* ---- loader errors -------------------------------------------------------------------------- */

/* Load `root` (after a change), with stderr captured: NULL expected, and the message must name
 * `want` (the component or JSON path). */
static void expect_load_error(json_t *root, const char *want) {
    char *text = json_dumps(root, JSON_COMPACT);
    char path[] = "/tmp/dhtok-err-XXXXXX";
    int fd = mkstemp(path), saved = dup(2);
    CU_ASSERT_FATAL(fd >= 0 && saved >= 0);
    fflush(stderr);
    dup2(fd, 2);
    tokenizer *t = tok_load_buffer(text, strlen(text), "tiny.json");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    char msg[2048] = {0};
    ssize_t got = pread(fd, msg, sizeof msg - 1, 0);
    close(fd);
    unlink(path);
    CU_ASSERT_PTR_NULL(t);
    tok_free(t);
    CU_ASSERT(got > 0 && strstr(msg, want) != NULL);
    if (!strstr(msg, want)) fprintf(stderr, "\nwanted \"%s\" in: %s\n", want, msg);
    free(text);
}

static json_t *tiny_root(void) {
    json_error_t err;
    json_t *r = json_load_file(dh_test_data("tokenizer/tiny_llama3.json"), 0, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    return r;
}

#define PATH(...) json_pack(__VA_ARGS__)

static void test_tok_loader_errors_name_the_component(void) {
    CU_ASSERT_PTR_NULL(tok_load("/nonexistent/tokenizer.json"));
    CU_ASSERT_PTR_NULL(tok_load_buffer("{\"version\": ", 12, "truncated.json"));
    CU_ASSERT_PTR_NULL(tok_load_buffer("[1, 2]", 6, "array.json"));
    json_t *r, *pre, *model;
    // the unmodified file loads
    r = tiny_root();
    char *text = json_dumps(r, JSON_COMPACT);
    tokenizer *t = tok_load_buffer(text, strlen(text), "tiny.json");
    CU_ASSERT_PTR_NOT_NULL(t);
    tok_free(t);
    free(text);
    json_decref(r);

    r = tiny_root();
    json_object_set_new(json_object_get(r, "model"), "type", json_string("WordPiece"));
    expect_load_error(r, "model.type");
    json_decref(r);

    r = tiny_root();
    json_object_set_new(r, "pre_tokenizer", PATH("{s:s}", "type", "Whitespace"));
    expect_load_error(r, "pre_tokenizer.type: unsupported pre-tokenizer \"Whitespace\"");
    json_decref(r);

    r = tiny_root();
    pre = json_array_get(json_object_get(json_object_get(r, "pre_tokenizer"), "pretokenizers"), 0);
    json_object_set_new(pre, "behavior", json_string("Removed"));
    expect_load_error(r, "pre_tokenizer.pretokenizers[0].behavior");
    json_decref(r);

    r = tiny_root();
    pre = json_array_get(json_object_get(json_object_get(r, "pre_tokenizer"), "pretokenizers"), 0);
    json_object_set_new(pre, "pattern", PATH("{s:s}", "Regex", "\\p{Han}+|."));
    expect_load_error(r, "\\p{Han}");
    json_object_set_new(pre, "pattern", PATH("{s:s}", "Regex", "\\w+|."));
    expect_load_error(r, "\\w is not supported");
    json_object_set_new(pre, "pattern", PATH("{s:s}", "Regex", "(unclosed"));
    expect_load_error(r, "pre_tokenizer.pretokenizers[0].pattern.Regex: bad regex");
    json_decref(r);

    r = tiny_root();
    json_object_set_new(r, "pre_tokenizer",
                        PATH("{s:s,s:[{s:s},{s:s,s:{s:s},s:s}]}", "type", "Sequence",
                             "pretokenizers", "type", "ByteLevel", "type", "Split", "pattern",
                             "Regex", "a", "behavior", "Isolated"));
    expect_load_error(r, "ByteLevel must be the last step");
    json_object_set_new(r, "pre_tokenizer", json_null());
    expect_load_error(r, "pre_tokenizer: null is not supported");
    json_decref(r);

    r = tiny_root();
    json_object_set_new(r, "normalizer", PATH("{s:s}", "type", "NFC"));
    expect_load_error(r, "normalizer.type: unsupported normalizer \"NFC\"");
    json_decref(r);

    r = tiny_root();
    json_object_set_new(r, "decoder", PATH("{s:s}", "type", "WordPiece"));
    expect_load_error(r, "decoder.type");
    json_decref(r);

    r = tiny_root();
    json_object_set_new(r, "truncation", PATH("{s:i}", "max_length", 8));
    expect_load_error(r, "truncation");
    json_decref(r);

    r = tiny_root();
    json_t *added = json_object_get(r, "added_tokens");
    json_object_set_new(json_array_get(added, 0), "lstrip", json_true());
    expect_load_error(r, "added_tokens[0].lstrip");
    json_decref(r);

    r = tiny_root();
    added = json_object_get(r, "added_tokens");
    json_object_set_new(json_array_get(added, 1), "id", json_integer(5));
    expect_load_error(r, "added_tokens[1]");
    json_decref(r);

    r = tiny_root();
    model = json_object_get(r, "model");
    json_array_set_new(json_object_get(model, "merges"), 3, PATH("[s,s]", "no such", "piece"));
    expect_load_error(r, "model.merges[3]: \"no such\" is not in the vocab");
    json_decref(r);

    r = tiny_root();
    json_object_set_new(json_object_get(r, "model"), "byte_fallback", json_true());
    expect_load_error(r, "model.byte_fallback");
    json_object_set_new(json_object_get(r, "model"), "byte_fallback", json_false());
    json_object_set_new(json_object_get(r, "model"), "dropout", json_real(0.1));
    expect_load_error(r, "model.dropout");
    json_decref(r);
}

static CU_TestInfo tokenizer_tests[] = {
    {"the 58 reference cases give HF's ids and decode back", test_tok_reference_cases_match_hf},
    {"Unicode edge cases give HF's ids", test_tok_unicode_edge_cases_match_hf},
    {"random multi-script strings give HF's ids", test_tok_random_multiscript_strings_match_hf},
    {"long real texts give HF's ids, cold and warm cache",
     test_tok_long_real_texts_match_hf_cold_and_warm},
    {"Llama-3, GPT-2 and Split-string styles give HF's ids",
     test_tok_llama3_gpt2_and_split_styles_match_hf},
    {"decode matches HF, streaming matches decode",
     test_tok_decode_matches_hf_and_streaming_matches_decode},
    {"the stream holds back a split character", test_tok_stream_holds_back_a_split_character},
    {"stream output is always whole characters", test_tok_stream_output_is_always_whole_characters},
    {"invalid UTF-8 is refused with its offset", test_tok_invalid_utf8_is_refused_with_its_offset},
    {"a 1 MB line without spaces encodes", test_tok_one_megabyte_line_without_spaces_encodes},
    {"token ids and vocab size", test_tok_ids_and_vocab_size},
    {"the embedded tokenizer.json is the vendored file",
     test_tok_embedded_json_is_the_vendored_file},
    {"several threads encode at once", test_tok_several_threads_encode_at_once},
    {"loader errors name the component", test_tok_loader_errors_name_the_component},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo tokenizer_suite = {"tokenizer", suite_init, suite_clean, NULL, NULL, tokenizer_tests};
