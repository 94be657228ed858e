/* test_chat.c: the DeepSeek-V3 chat format against its Jinja template.
 *
 * The literal strings below are the template read by hand; tests/data/tokenizer/chat_cases.jsonl
 * holds the same template rendered by @huggingface/jinja and the ids HF tokenizers gives for
 * the result (scripts/gen-tokenizer-cases.js), so both the text and its encoding have an
 * outside oracle. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/chat.h"
#include "core/common.h"
#include "core/tokenizer.h"
#include "tests/runner.h"

#define BOS "<｜begin▁of▁sentence｜>"
#define EOS "<｜end▁of▁sentence｜>"

static char *format(const chat_message *m, size_t n, int agp) {
    char *out = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(chat_format(m, n, agp, &out, &len), 0);
    CU_ASSERT_EQUAL(len, strlen(out));
    return out;
}

static void test_chat_system_and_user(void) {
    chat_message m[] = {{"system", "You are helpful."}, {"user", "Hi!"}};
    char *s = format(m, 2, 1);
    CU_ASSERT_STRING_EQUAL(s, BOS "You are helpful.<｜User｜>Hi!<｜Assistant｜>");
    free(s);
}

static void test_chat_multi_turn_with_assistant(void) {
    chat_message m[] = {{"system", "S1"}, {"user", "Q1"}, {"assistant", "A1"},
                        {"system", "S2"}, {"user", "Q2"}};
    char *s = format(m, 5, 1);
    /* every system message joins the preamble, wherever it stands */
    CU_ASSERT_STRING_EQUAL(s, BOS "S1\n\nS2<｜User｜>Q1<｜Assistant｜>A1" EOS
                              "<｜User｜>Q2<｜Assistant｜>");
    free(s);
}

static void test_chat_generation_prompt_is_optional(void) {
    chat_message m[] = {{"user", "Q"}, {"assistant", "A"}};
    char *s = format(m, 2, 0);
    CU_ASSERT_STRING_EQUAL(s, BOS "<｜User｜>Q<｜Assistant｜>A" EOS);
    free(s);
    s = format(m, 0, 0);
    CU_ASSERT_STRING_EQUAL(s, BOS);
    free(s);
}

static void test_chat_unknown_roles_are_refused(void) {
    chat_message bad_role[] = {{"user", "x"}, {"moderator", "y"}};
    chat_message tool[] = {{"tool", "result"}};
    chat_message no_content[] = {{"assistant", NULL}};
    chat_message no_role[] = {{NULL, "x"}};
    char *out = (char *)"untouched";
    CU_ASSERT_EQUAL(chat_format(bad_role, 2, 1, &out, NULL), DH_EINVAL);
    CU_ASSERT_PTR_NULL(out);
    CU_ASSERT_EQUAL(chat_format(tool, 1, 1, &out, NULL), DH_EINVAL);
    CU_ASSERT_EQUAL(chat_format(no_content, 1, 1, &out, NULL), DH_EINVAL);
    CU_ASSERT_EQUAL(chat_format(no_role, 1, 1, &out, NULL), DH_EINVAL);
    CU_ASSERT_PTR_NULL(out);
}

/* The rendered template and HF's ids of it, for each case of chat_cases.jsonl. */
static void test_chat_matches_the_template_and_hf_ids(void) {
    tokenizer *t = tok_load(DH_TOK_VENDORED_JSON);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    json_error_t err;
    size_t len;
    char *buf = dh_test_read_file(dh_test_data("tokenizer/chat_cases.jsonl"), &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    size_t cases = 0;
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        json_t *row = json_loads(line, 0, &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(row);
        const json_t *msgs = json_object_get(row, "messages"), *want = json_object_get(row, "ids");
        size_t n = json_array_size(msgs);
        chat_message *m = xcalloc(n + 1, sizeof *m);
        for (size_t i = 0; i < n; i++) {
            m[i].role = json_string_value(json_object_get(json_array_get(msgs, i), "role"));
            m[i].content = json_string_value(json_object_get(json_array_get(msgs, i), "content"));
        }
        char *text;
        int agp = json_is_true(json_object_get(row, "add_generation_prompt"));
        CU_ASSERT_EQUAL_FATAL(chat_format(m, n, agp, &text, NULL), 0);
        CU_ASSERT_STRING_EQUAL(text, json_string_value(json_object_get(row, "text")));
        int *ids;
        size_t n_ids;
        CU_ASSERT_EQUAL_FATAL(tok_encode(t, text, strlen(text), &ids, &n_ids, NULL), 0);
        int same = n_ids == json_array_size(want);
        for (size_t i = 0; same && i < n_ids; i++)
            same = ids[i] == json_integer_value(json_array_get(want, i));
        CU_ASSERT(same);
        if (!same) fprintf(stderr, "\nchat case \"%s\": ids differ from HF\n",
                           json_string_value(json_object_get(row, "name")));
        free(ids);
        free(text);
        free(m);
        json_decref(row);
        cases++;
    }
    CU_ASSERT(cases >= 5);
    free(buf);
    tok_free(t);
}

static CU_TestInfo chat_tests[] = {
    {"system and user", test_chat_system_and_user},
    {"multi-turn with assistant", test_chat_multi_turn_with_assistant},
    {"the generation prompt is optional", test_chat_generation_prompt_is_optional},
    {"unknown roles are refused", test_chat_unknown_roles_are_refused},
    {"matches the template and HF's ids", test_chat_matches_the_template_and_hf_ids},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo chat_suite = {"chat", NULL, NULL, NULL, NULL, chat_tests};
