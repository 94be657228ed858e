/* test_request.c: a request's tokens and text in the front end (frontend/request.h): only
 * complete UTF-8 is handed out, a stop string arriving in pieces is never shown, max_tokens
 * and the end-of-sentence token end the text, and tokens carry their index (a repeated one is
 * ignored, a gap refused), so that a resumed request's text goes on with no duplicate. The
 * expected texts are written by hand; the token ids come from the embedded tokenizer. */
#include <CUnit/CUnit.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/tok_embedded.h"
#include "frontend/request.h"
#include "tests/runner.h"

#define EOS 1

static tokenizer *g_tok;

typedef struct fed {     /* what the caller saw */
    char shown[1024];    /* every piece handed out, concatenated */
    size_t n;
    int pieces;          /* non-empty pieces */
} fed;

static freq *make(int max_tokens, const char *const *stop, int n_stop) {
    int prompt[2] = {5, 6};
    freq_params p = {.prompt = prompt, .n_prompt = 2, .max_tokens = max_tokens, .sampling = {.seed = 7},
                     .stop = stop, .n_stop = n_stop, .eos_token_id = EOS};
    return freq_new(&p, g_tok);
}

static void take(fed *f, const freq *r, size_t from, size_t to) {
    CU_ASSERT_FATAL(to >= from && f->n + (to - from) < sizeof f->shown);
    memcpy(f->shown + f->n, r->choice.text + from, to - from);
    f->n += to - from;
    f->shown[f->n] = 0;
    f->pieces += to > from;
}

/* feed ids[0..n) at indices first.. ; returns the last freq_token result */
static int feed(freq *r, fed *f, const int *ids, int n, int first) {
    int rc = 0;
    for (int i = 0; i < n; i++) {
        size_t from, to;
        rc = freq_token(r, ids[i], first + i, &from, &to);
        if (rc == 0) take(f, r, from, to);
    }
    return rc;
}

static void end(freq *r, fed *f, int length) {
    size_t from, to;
    freq_end(r, length, &from, &to);
    take(f, r, from, to);
}

/* the ids of text, one token a word or so */
static int encode(const char *text, int **ids) {
    size_t n = 0, off = 0;
    CU_ASSERT_FATAL(tok_encode(g_tok, text, strlen(text), ids, &n, &off) == 0);
    return (int)n;
}

static void test_the_text_is_the_tokens_decoded(void) {
    int *ids;
    int n = encode("Hello, world. This is a test of the text state.", &ids);
    CU_ASSERT_FATAL(n > 5);
    freq *r = make(100, NULL, 0);
    fed f = {0};
    feed(r, &f, ids, n, 0);
    CU_ASSERT(f.pieces >= n - 1); /* no stop strings: each token's text goes out at once */
    end(r, &f, 0);
    CU_ASSERT_STRING_EQUAL(f.shown, "Hello, world. This is a test of the text state.");
    CU_ASSERT_EQUAL(r->choice.finish, FREQ_FINISH_STOP);
    CU_ASSERT_EQUAL(freq_completion_tokens(r), n);
    CU_ASSERT_EQUAL(freq_prompt_tokens(r), 2);
    freq_free(r);
    free(ids);
}

/* "é" is the bytes C3 A9; the byte-level vocabulary spells them "Ã" and "©" */
static void test_a_character_split_across_tokens_waits_for_its_last_byte(void) {
    int c3 = tok_token_id(g_tok, "\xC3\x83"), a9 = tok_token_id(g_tok, "\xC2\xA9");
    CU_ASSERT_FATAL(c3 >= 0 && a9 >= 0);
    int *ids;
    int n = encode("caf", &ids);
    freq *r = make(100, NULL, 0);
    fed f = {0};
    feed(r, &f, ids, n, 0);
    CU_ASSERT_STRING_EQUAL(f.shown, "caf");
    feed(r, &f, &c3, 1, n);
    CU_ASSERT_STRING_EQUAL(f.shown, "caf"); /* half a character: nothing yet */
    feed(r, &f, &a9, 1, n + 1);
    CU_ASSERT_STRING_EQUAL(f.shown, "caf\xC3\xA9");
    // a lone first byte at the end becomes U+FFFD
    feed(r, &f, &c3, 1, n + 2);
    end(r, &f, 0);
    CU_ASSERT_STRING_EQUAL(f.shown, "caf\xC3\xA9\xEF\xBF\xBD");
    freq_free(r);
    free(ids);
}

/* "Hello world, how are you" with the stop string "lo wo": it arrives over two tokens
 * ("Hello", " world"); nothing of it is ever shown, and the text ends before it */
static void test_a_stop_string_across_tokens_is_never_shown(void) {
    const char *stop[2] = {"never here", "lo wo"};
    int *ids;
    int n = encode("Hello world, how are you", &ids);
    freq *r = make(100, stop, 2);
    fed f = {0};
    int i = 0;
    for (; i < n && !r->choice.finish; i++) {
        feed(r, &f, ids + i, 1, i);
        CU_ASSERT_PTR_NULL(strstr(f.shown, "lo")); /* not even the start of it */
    }
    CU_ASSERT_EQUAL(r->choice.finish, FREQ_FINISH_STOP);
    CU_ASSERT_STRING_EQUAL(f.shown, "Hel");
    CU_ASSERT_EQUAL(i, 2); /* it ended on " world" */
    CU_ASSERT_EQUAL(freq_completion_tokens(r), 2);
    // later tokens and the engine's end change nothing
    CU_ASSERT_EQUAL(feed(r, &f, ids + i, n - i, i), 1);
    end(r, &f, 1);
    CU_ASSERT_STRING_EQUAL(f.shown, "Hel");
    CU_ASSERT_EQUAL(r->choice.finish, FREQ_FINISH_STOP);
    freq_free(r);
    free(ids);
}

/* text is held back by (longest stop - 1) bytes while it could still begin a stop string, and
 * comes out whole when the request ends without one */
static void test_text_is_held_back_only_as_long_as_a_stop_string(void) {
    const char *stop[1] = {"12345"};
    int *ids;
    int n = encode("one two three four five six", &ids);
    freq *r = make(100, stop, 1);
    fed f = {0};
    for (int i = 0; i < n; i++) {
        feed(r, &f, ids + i, 1, i);
        CU_ASSERT(r->choice.len - r->choice.emitted <= 4);
    }
    CU_ASSERT(strlen(f.shown) + 4 == r->choice.len);
    end(r, &f, 0);
    CU_ASSERT_STRING_EQUAL(f.shown, "one two three four five six");
    freq_free(r);
    free(ids);
}

static void test_a_stop_string_inside_one_token_cuts_it(void) {
    const char *stop[1] = {"ell"};
    int *ids;
    int n = encode("Hello", &ids);
    CU_ASSERT_FATAL(n == 1); /* one token holds the whole stop string */
    freq *r = make(100, stop, 1);
    fed f = {0};
    feed(r, &f, ids, n, 0);
    CU_ASSERT_STRING_EQUAL(f.shown, "H");
    CU_ASSERT_EQUAL(r->choice.finish, FREQ_FINISH_STOP);
    freq_free(r);
    free(ids);
}

static void test_max_tokens_ends_the_text(void) {
    int *ids;
    int n = encode("alpha beta gamma delta epsilon", &ids);
    CU_ASSERT_FATAL(n >= 4);
    freq *r = make(3, NULL, 0);
    fed f = {0};
    CU_ASSERT_EQUAL(feed(r, &f, ids, 3, 0), 0);
    CU_ASSERT_EQUAL(r->choice.finish, FREQ_FINISH_LENGTH);
    CU_ASSERT_STRING_EQUAL(f.shown, "alpha beta gamma");
    CU_ASSERT_EQUAL(feed(r, &f, ids + 3, 1, 3), 1); /* after the end: ignored */
    end(r, &f, 1);
    CU_ASSERT_STRING_EQUAL(f.shown, "alpha beta gamma");
    CU_ASSERT_EQUAL(freq_completion_tokens(r), 3);
    freq_free(r);
    free(ids);
}

/* the engine's end by EOS (the token itself never comes as a token) finishes with "stop", and
 * a stop string completed by what the decoder still held is not shown either */
static void test_the_end_of_sentence_finishes_with_stop(void) {
    int *ids;
    int n = encode("short answer", &ids);
    freq *r = make(100, NULL, 0);
    fed f = {0};
    feed(r, &f, ids, n, 0);
    end(r, &f, 0);
    CU_ASSERT_EQUAL(r->choice.finish, FREQ_FINISH_STOP);
    CU_ASSERT_STRING_EQUAL(f.shown, "short answer");
    CU_ASSERT_EQUAL(freq_completion_tokens(r), n);
    freq_free(r);
    // "x" then a lone C3 byte: at the end it becomes U+FFFD, which completes the stop "x\uFFFD"
    const char *stop[1] = {"x\xEF\xBF\xBD"};
    int x = tok_token_id(g_tok, "x"), c3 = tok_token_id(g_tok, "\xC3\x83");
    r = make(100, stop, 1);
    fed g = {0};
    feed(r, &g, (int[]){x, c3}, 2, 0);
    end(r, &g, 0);
    CU_ASSERT_STRING_EQUAL(g.shown, "");
    CU_ASSERT_EQUAL(r->choice.finish, FREQ_FINISH_STOP);
    freq_free(r);
    free(ids);
}

/* tokens 0..4, then 2..9 again (a backend that repeats): the text is that of 0..9 once; a gap
 * is refused and changes nothing */
static void test_repeated_tokens_are_ignored_and_gaps_refused(void) {
    int *ids;
    int n = encode("a b c d e f g h i j", &ids);
    CU_ASSERT_FATAL(n == 10);
    freq *r = make(100, NULL, 0);
    fed f = {0};
    feed(r, &f, ids, 5, 0);
    size_t from, to;
    CU_ASSERT_EQUAL(freq_token(r, ids[7], 7, &from, &to), DH_EINVAL);
    CU_ASSERT_EQUAL(from, to);
    CU_ASSERT_EQUAL(freq_completion_tokens(r), 5);
    feed(r, &f, ids + 2, 8, 2);
    end(r, &f, 0);
    CU_ASSERT_STRING_EQUAL(f.shown, "a b c d e f g h i j");
    CU_ASSERT_EQUAL(freq_completion_tokens(r), 10);
    CU_ASSERT_EQUAL(memcmp(r->choice.tokens, ids, 10 * sizeof *ids), 0);
    freq_free(r);
    free(ids);
}

static int request_init(void) {
    size_t len;
    const unsigned char *json = tok_embedded_json(&len);
    g_tok = tok_load_buffer((const char *)json, len, "embedded tokenizer.json");
    return !g_tok;
}

static int request_clean(void) {
    tok_free(g_tok);
    return 0;
}

static CU_TestInfo request_tests[] = {
    {"the text is the tokens decoded", test_the_text_is_the_tokens_decoded},
    {"a character split across tokens waits for its last byte",
     test_a_character_split_across_tokens_waits_for_its_last_byte},
    {"a stop string across tokens is never shown", test_a_stop_string_across_tokens_is_never_shown},
    {"text is held back only as long as a stop string", test_text_is_held_back_only_as_long_as_a_stop_string},
    {"a stop string inside one token cuts it", test_a_stop_string_inside_one_token_cuts_it},
    {"max_tokens ends the text", test_max_tokens_ends_the_text},
    {"the end of sentence finishes with stop", test_the_end_of_sentence_finishes_with_stop},
    {"repeated tokens are ignored and gaps refused", test_repeated_tokens_are_ignored_and_gaps_refused},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo request_suite = {"request", request_init, request_clean, NULL, NULL, request_tests};
