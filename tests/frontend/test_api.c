/* test_api.c: the OpenAI request parser and response bodies: every validation rule, the JSON
 * shapes of responses and stream chunks, and a deterministic mutation fuzzer (fixed seed, a few
 * tens of thousands of mutated, truncated and spliced valid requests and random bytes) so that
 * every CI run, the sanitizer build included, fuzzes the parser. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/api.h"
#include "core/common.h"
#include "tests/runner.h"

static const api_limits lim = {.max_context = 512, .vocab_size = 1000};

/* parse a NUL-terminated body; the return code */
static int parse(api_kind kind, const char *body, api_request *r, api_error *e) {
    return api_parse_request(kind, body, strlen(body), &lim, r, e);
}

/* the body must be refused with 400 naming param (NULL: no param) and, if given, code */
static void expect_refused(api_kind kind, const char *body, const char *param, const char *code) {
    api_request r;
    api_error e;
    int rc = parse(kind, body, &r, &e);
    CU_ASSERT_EQUAL(rc, DH_EINVAL);
    CU_ASSERT_EQUAL(e.status, 400);
    CU_ASSERT_STRING_EQUAL(e.type, "invalid_request_error");
    CU_ASSERT(e.message[0] != 0);
    int ok = strcmp(e.param, param ? param : "") == 0 && (!code || (e.code && strcmp(e.code, code) == 0));
    if (rc != DH_EINVAL || !ok)
        printf("\n  body %s: rc %d, param \"%s\" (want \"%s\"), code %s (want %s), message: %s\n", body, rc, e.param,
               param ? param : "", e.code ? e.code : "NULL", code ? code : "any", e.message);
    CU_ASSERT(ok);
    CU_ASSERT_PTR_NULL(r.prompt); /* nothing left allocated */
    CU_ASSERT_PTR_NULL(r.prompt_ids);
    CU_ASSERT_EQUAL(r.n_stop, 0);
}

static void test_a_minimal_completion_takes_the_defaults(void) {
    api_request r;
    api_error e;
    CU_ASSERT_EQUAL_FATAL(parse(API_COMPLETION, "{\"prompt\": \"Hello\"}", &r, &e), 0);
    CU_ASSERT_STRING_EQUAL(r.prompt, "Hello");
    CU_ASSERT_EQUAL(r.prompt_len, 5);
    CU_ASSERT_EQUAL(r.max_tokens, -1);
    CU_ASSERT_DOUBLE_EQUAL(r.temperature, 1.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(r.top_p, 1.0, 0);
    CU_ASSERT_EQUAL(r.top_k, 0);
    CU_ASSERT(!r.has_seed && !r.stream && !r.include_usage && !r.ignore_eos && r.n_stop == 0);
    api_request_free(&r);
}

static void test_every_parameter_is_read(void) {
    const char *body = "{\"model\": \"whatever\", \"prompt\": \"Hi\", \"max_tokens\": 7, \"temperature\": 0,"
                       " \"top_p\": 0.5, \"top_k\": 40, \"seed\": 12345678901, \"stop\": [\"a\", \"\\n\\n\"],"
                       " \"stream\": true, \"stream_options\": {\"include_usage\": true}, \"n\": 1,"
                       " \"ignore_eos\": true, \"user\": \"u\", \"presence_penalty\": 0, \"logprobs\": null,"
                       " \"some_future_field\": {\"x\": [1, 2]}}";
    api_request r;
    api_error e;
    CU_ASSERT_EQUAL_FATAL(parse(API_COMPLETION, body, &r, &e), 0);
    CU_ASSERT_EQUAL(r.max_tokens, 7);
    CU_ASSERT_DOUBLE_EQUAL(r.temperature, 0.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(r.top_p, 0.5, 1e-7);
    CU_ASSERT_EQUAL(r.top_k, 40);
    CU_ASSERT(r.has_seed && r.seed == 12345678901ULL);
    CU_ASSERT_EQUAL_FATAL(r.n_stop, 2);
    CU_ASSERT_STRING_EQUAL(r.stop[0], "a");
    CU_ASSERT_STRING_EQUAL(r.stop[1], "\n\n");
    CU_ASSERT(r.stream && r.include_usage && r.ignore_eos);
    api_request_free(&r);
    CU_ASSERT_PTR_NULL(r.prompt);
    /* null is absent; a single stop string; top_k -1 is off; max_completion_tokens for chat */
    CU_ASSERT_EQUAL_FATAL(
        parse(API_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":null,\"stop\":\"END\",\"top_k\":-1}", &r, &e), 0);
    CU_ASSERT(r.max_tokens == -1 && r.n_stop == 1 && strcmp(r.stop[0], "END") == 0 && r.top_k == 0);
    api_request_free(&r);
    CU_ASSERT_EQUAL_FATAL(parse(API_COMPLETION, "{\"prompt\":\"x\",\"top_p\":1e-300}", &r, &e), 0);
    CU_ASSERT(r.top_p > 0); /* still positive as a float */
    api_request_free(&r);
    CU_ASSERT_EQUAL_FATAL(parse(API_CHAT,
                                "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                "\"max_completion_tokens\":9,\"max_tokens\":3}",
                                &r, &e),
                          0);
    CU_ASSERT_EQUAL(r.max_tokens, 9);
    api_request_free(&r);
}

static void test_a_prompt_may_be_text_ids_or_a_list_of_one(void) {
    api_request r;
    api_error e;
    CU_ASSERT_EQUAL_FATAL(parse(API_COMPLETION, "{\"prompt\": [\"one string\"]}", &r, &e), 0);
    CU_ASSERT_STRING_EQUAL(r.prompt, "one string");
    api_request_free(&r);
    CU_ASSERT_EQUAL_FATAL(parse(API_COMPLETION, "{\"prompt\": [5, 17, 999]}", &r, &e), 0);
    CU_ASSERT(r.prompt == NULL && r.n_prompt_ids == 3 && r.prompt_ids[0] == 5 && r.prompt_ids[2] == 999);
    api_request_free(&r);
    CU_ASSERT_EQUAL_FATAL(parse(API_COMPLETION, "{\"prompt\": [[1, 2]]}", &r, &e), 0);
    CU_ASSERT(r.n_prompt_ids == 2 && r.prompt_ids[1] == 2);
    api_request_free(&r);
    CU_ASSERT_EQUAL_FATAL(parse(API_COMPLETION, "{\"prompt\": \"caf\\u00e9 \\ud83d\\ude00\"}", &r, &e), 0);
    CU_ASSERT_STRING_EQUAL(r.prompt, "caf\xc3\xa9 \xf0\x9f\x98\x80"); /* escapes decoded to UTF-8 */
    api_request_free(&r);
}

static void test_bad_prompts_are_refused_naming_the_place(void) {
    expect_refused(API_COMPLETION, "{}", "prompt", "missing_required_parameter");
    expect_refused(API_COMPLETION, "{\"prompt\": null}", "prompt", "missing_required_parameter");
    expect_refused(API_COMPLETION, "{\"prompt\": \"\"}", "prompt", "invalid_value");
    expect_refused(API_COMPLETION, "{\"prompt\": []}", "prompt", "invalid_value");
    expect_refused(API_COMPLETION, "{\"prompt\": 42}", "prompt", "invalid_type");
    expect_refused(API_COMPLETION, "{\"prompt\": [\"a\", \"b\"]}", "prompt", "invalid_value");
    expect_refused(API_COMPLETION, "{\"prompt\": [[1], [2]]}", "prompt", "invalid_value");
    expect_refused(API_COMPLETION, "{\"prompt\": [1, 1000]}", "prompt[1]", "invalid_value"); /* vocab 1000 */
    expect_refused(API_COMPLETION, "{\"prompt\": [1, -3]}", "prompt[1]", "invalid_value");
    expect_refused(API_COMPLETION, "{\"prompt\": [1, 2.5]}", "prompt[1]", "invalid_type");
    expect_refused(API_COMPLETION, "{\"prompt\": [[3, \"x\"]]}", "prompt[0][1]", "invalid_type");
    expect_refused(API_COMPLETION, "{\"prompt\": [[]]}", "prompt[0]", "invalid_value");
    expect_refused(API_COMPLETION, "{\"prompt\": [true]}", "prompt[0]", "invalid_type");
    expect_refused(API_COMPLETION, "{\"prompt\": [\"\"]}", "prompt[0]", "invalid_value");
}

static void test_wrong_types_and_absurd_values_are_refused(void) {
    static const struct { const char *extra, *param, *code; } cases[] = {
        {"\"max_tokens\": \"8\"", "max_tokens", "invalid_type"},
        {"\"max_tokens\": 8.5", "max_tokens", "invalid_type"},
        {"\"max_tokens\": 0", "max_tokens", "invalid_value"},
        {"\"max_tokens\": -1", "max_tokens", "invalid_value"},
        {"\"max_tokens\": 513", "max_tokens", "context_length_exceeded"},
        {"\"max_tokens\": 9223372036854775807", "max_tokens", "context_length_exceeded"},
        {"\"temperature\": -0.1", "temperature", "invalid_value"},
        {"\"temperature\": 2.01", "temperature", "invalid_value"},
        {"\"temperature\": \"hot\"", "temperature", "invalid_type"},
        {"\"top_p\": 0", "top_p", "invalid_value"},
        {"\"top_p\": 1.5", "top_p", "invalid_value"},
        {"\"top_k\": -2", "top_k", "invalid_value"},
        {"\"top_k\": 1e3", "top_k", "invalid_type"},
        {"\"top_k\": 99999999999", "top_k", "invalid_value"},
        {"\"seed\": -1", "seed", "invalid_value"},
        {"\"seed\": \"1\"", "seed", "invalid_type"},
        {"\"stream\": 1", "stream", "invalid_type"},
        {"\"stream\": \"true\"", "stream", "invalid_type"},
        {"\"stream_options\": true", "stream_options", "invalid_type"},
        {"\"stream_options\": {\"include_usage\": 1}", "stream_options.include_usage", "invalid_type"},
        {"\"ignore_eos\": 0", "ignore_eos", "invalid_type"},
        {"\"n\": 2", "n", "invalid_value"},
        {"\"n\": 0", "n", "invalid_value"},
        {"\"n\": \"1\"", "n", "invalid_type"},
        {"\"best_of\": 3", "best_of", "invalid_value"},
        {"\"model\": 7", "model", "invalid_type"},
        {"\"user\": []", "user", "invalid_type"},
        {"\"stop\": \"\"", "stop", "invalid_value"},
        {"\"stop\": 5", "stop", "invalid_type"},
        {"\"stop\": [\"a\", 5]", "stop[1]", "invalid_type"},
        {"\"stop\": [\"a\", \"\"]", "stop[1]", "invalid_value"},
        {"\"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]", "stop", "invalid_value"},
        {"\"logprobs\": 2", "logprobs", "unsupported_parameter"},
        {"\"echo\": true", "echo", "unsupported_parameter"},
        {"\"suffix\": \"end\"", "suffix", "unsupported_parameter"},
        {"\"logit_bias\": {\"5\": 100}", "logit_bias", "unsupported_parameter"},
        {"\"presence_penalty\": 0.5", "presence_penalty", "unsupported_parameter"},
        {"\"frequency_penalty\": 3", "frequency_penalty", "invalid_value"},
        {"\"tools\": [{\"type\": \"function\"}]", "tools", "unsupported_parameter"},
        {"\"response_format\": {\"type\": \"json_object\"}", "response_format", "unsupported_parameter"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[512];
        snprintf(body, sizeof body, "{\"prompt\": \"x\", %s}", cases[i].extra);
        expect_refused(API_COMPLETION, body, cases[i].param, cases[i].code);
    }
    char stop[600] = "{\"prompt\": \"x\", \"stop\": \"";
    memset(stop + strlen(stop), 's', API_MAX_STOP_BYTES + 1);
    strcat(stop, "\"}");
    expect_refused(API_COMPLETION, stop, "stop", "invalid_value"); /* a stop string too long */
}

static void test_malformed_json_is_refused_with_its_position(void) {
    api_request r;
    api_error e;
    CU_ASSERT_EQUAL(parse(API_COMPLETION, "{\"prompt\": \"x\",}", &r, &e), DH_EINVAL);
    CU_ASSERT_STRING_EQUAL(e.code, "invalid_json");
    CU_ASSERT_PTR_NOT_NULL(strstr(e.message, "byte 16"));
    expect_refused(API_COMPLETION, "", NULL, "invalid_json");
    expect_refused(API_COMPLETION, "{\"prompt\": \"\\u0000\"}", NULL, "invalid_json"); /* NUL in a string */
    expect_refused(API_COMPLETION, "{\"prompt\": \"\xff\"}", NULL, "invalid_json");     /* not UTF-8 */
    expect_refused(API_COMPLETION, "{\"prompt\": \"\\ud800\"}", NULL, "invalid_json"); /* lone surrogate */
    expect_refused(API_COMPLETION, "{\"max_tokens\": 1e999, \"prompt\": \"x\"}", NULL, "invalid_json");
    expect_refused(API_COMPLETION, "[\"prompt\"]", NULL, "invalid_type");
    expect_refused(API_COMPLETION, "\"prompt\"", NULL, "invalid_type");
    /* not NUL-terminated: the length rules */
    CU_ASSERT_EQUAL_FATAL(api_parse_request(API_COMPLETION, "{\"prompt\": \"ab\"}garbage", 16, &lim, &r, &e), 0);
    CU_ASSERT_STRING_EQUAL(r.prompt, "ab");
    api_request_free(&r);
    CU_ASSERT_EQUAL(api_parse_request(API_COMPLETION, NULL, 0, &lim, &r, &e), DH_EINVAL);
}

static void test_chat_messages_become_the_deepseek_prompt(void) {
    const char *body = "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
                       " {\"role\": \"user\", \"content\": \"Hi\", \"name\": \"ann\"},"
                       " {\"role\": \"assistant\", \"content\": \"Hello!\"},"
                       " {\"role\": \"developer\", \"content\": [{\"type\": \"text\", \"text\": \"Rule 2.\"}]},"
                       " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"},"
                       " {\"type\": \"text\", \"text\": \"b\"}]}]}";
    api_request r;
    api_error e;
    CU_ASSERT_EQUAL_FATAL(parse(API_CHAT, body, &r, &e), 0);
    const char *want = "<｜begin▁of▁sentence｜>Be brief.\n\nRule 2.<｜User｜>Hi<｜Assistant｜>Hello!"
                       "<｜end▁of▁sentence｜><｜User｜>a\nb<｜Assistant｜>";
    CU_ASSERT_STRING_EQUAL(r.prompt, want);
    CU_ASSERT_EQUAL(r.prompt_len, strlen(want));
    api_request_free(&r);
}

static void test_bad_messages_are_refused_naming_index_and_role(void) {
    api_request r;
    api_error e;
    CU_ASSERT_EQUAL(parse(API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"bot\", "
                                    "\"content\": \"y\"}]}", &r, &e), DH_EINVAL);
    CU_ASSERT_STRING_EQUAL(e.param, "messages[1].role");
    CU_ASSERT_PTR_NOT_NULL(strstr(e.message, "messages[1]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.message, "\"bot\""));
    expect_refused(API_CHAT, "{}", "messages", "missing_required_parameter");
    expect_refused(API_CHAT, "{\"messages\": []}", "messages", "invalid_value");
    expect_refused(API_CHAT, "{\"messages\": {\"role\": \"user\"}}", "messages", "invalid_type");
    expect_refused(API_CHAT, "{\"messages\": [\"hi\"]}", "messages[0]", "invalid_type");
    expect_refused(API_CHAT, "{\"messages\": [{\"content\": \"x\"}]}", "messages[0].role",
                   "missing_required_parameter");
    expect_refused(API_CHAT, "{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}", "messages[0].role",
                   "invalid_type");
    expect_refused(API_CHAT, "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", "messages[0].role",
                   "unsupported_value");
    expect_refused(API_CHAT, "{\"messages\": [{\"role\": \"user\"}]}", "messages[0].content",
                   "missing_required_parameter");
    expect_refused(API_CHAT, "{\"messages\": [{\"role\": \"assistant\", \"content\": null, \"tool_calls\": []}]}",
                   "messages[0].content", "missing_required_parameter");
    expect_refused(API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": 3}]}", "messages[0].content",
                   "invalid_type");
    expect_refused(API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
                   "messages[0].content[0]", "unsupported_value");
    expect_refused(API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
                   "messages[0].content[0].text", "missing_required_parameter");
    expect_refused(API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": [7]}]}", "messages[0].content[0]",
                   "invalid_type");
    expect_refused(API_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": 9}",
                   "temperature", "invalid_value");
}

static void test_max_tokens_defaults_and_fits_the_context(void) {
    api_request r = {.kind = API_COMPLETION, .max_tokens = -1};
    api_error e;
    CU_ASSERT_EQUAL(api_resolve_max_tokens(&r, 10, 512, &e), API_DEFAULT_MAX_TOKENS);
    CU_ASSERT_EQUAL(api_resolve_max_tokens(&r, 500, 512, &e), 12); /* the room left */
    CU_ASSERT_EQUAL(api_resolve_max_tokens(&r, 512, 512, &e), -1);
    CU_ASSERT_STRING_EQUAL(e.code, "context_length_exceeded");
    CU_ASSERT_PTR_NOT_NULL(strstr(e.message, "512"));
    CU_ASSERT_EQUAL(api_resolve_max_tokens(&r, 0, 512, &e), -1); /* an empty prompt */
    r.max_tokens = 100;
    CU_ASSERT_EQUAL(api_resolve_max_tokens(&r, 412, 512, &e), 100);
    CU_ASSERT_EQUAL(api_resolve_max_tokens(&r, 413, 512, &e), -1);
    CU_ASSERT_EQUAL(e.status, 400);
    CU_ASSERT_STRING_EQUAL(e.param, "max_tokens");
    CU_ASSERT_PTR_NOT_NULL(strstr(e.message, "context limit of 512 tokens"));
}

/* --- responses --- */

static const char *const names[CFG_N_DOMAINS] = {"mathematics", "code",       "physics", "business", "legal",
                                                 "government",  "biomedical", "logic",   "creative", "general"};
static const double shares[CFG_N_DOMAINS] = {0.5, 0.25, 0.25, 0, 0, 0, 0, 0, 0, 0};

static json_t *load(char *s) {
    json_error_t je;
    json_t *j = json_loads(s, JSON_ALLOW_NUL, &je);
    if (!j) printf("\n  not JSON (%s): %s\n", je.text, s);
    free(s);
    return j;
}

static void test_whole_responses_have_the_openai_shape(void) {
    api_meta m = {.kind = API_CHAT, .id = "chatcmpl-1", .created = 1700000000, .model = "genesis"};
    api_final f = {.finish = API_FINISH_LENGTH, .prompt_tokens = 5, .completion_tokens = 3, .domain_share = shares,
                   .domain_names = names};
    json_t *j = load(api_response_json(&m, "Hi \"there\"", 10, &f));
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "object")), "chat.completion");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "id")), "chatcmpl-1");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "model")), "genesis");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "created")), 1700000000);
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "finish_reason")), "length");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(c, "index")), 0);
    json_t *msg = json_object_get(c, "message");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(msg, "role")), "assistant");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(msg, "content")), "Hi \"there\"");
    json_t *u = json_object_get(j, "usage");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(u, "total_tokens")), 8);
    json_t *ds = json_object_get(json_object_get(j, "darkhorse"), "domain_share");
    CU_ASSERT_EQUAL(json_object_size(ds), CFG_N_DOMAINS);
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(ds, "mathematics")), 0.5, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(json_number_value(json_object_get(ds, "general")), 0.0, 1e-9);
    json_decref(j);
    m.kind = API_COMPLETION;
    f.finish = API_FINISH_STOP;
    j = load(api_response_json(&m, "abc", 2, &f));
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "object")), "text_completion");
    c = json_array_get(json_object_get(j, "choices"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "text")), "ab");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "finish_reason")), "stop");
    CU_ASSERT(json_is_null(json_object_get(c, "logprobs")));
    json_decref(j);
}

static void test_stream_chunks_have_the_openai_shape(void) {
    api_meta m = {.kind = API_CHAT, .id = "chatcmpl-2", .created = 1, .model = "g"};
    api_final f = {.finish = API_FINISH_STOP, .prompt_tokens = 2, .completion_tokens = 1, .domain_share = shares,
                   .domain_names = names};
    json_t *j = load(api_chunk_json(&m, "", 0, 1, NULL)); /* the first: the role */
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "object")), "chat.completion.chunk");
    json_t *c = json_array_get(json_object_get(j, "choices"), 0), *d = json_object_get(c, "delta");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "role")), "assistant");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "content")), "");
    CU_ASSERT(json_is_null(json_object_get(c, "finish_reason")));
    CU_ASSERT_PTR_NULL(json_object_get(j, "usage"));
    json_decref(j);
    j = load(api_chunk_json(&m, "tok", 3, 0, NULL));
    d = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "delta");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "content")), "tok");
    CU_ASSERT_PTR_NULL(json_object_get(d, "role"));
    json_decref(j);
    j = load(api_chunk_json(&m, "", 0, 0, &f)); /* the last: finish_reason, usage, shares */
    c = json_array_get(json_object_get(j, "choices"), 0);
    CU_ASSERT_EQUAL(json_object_size(json_object_get(c, "delta")), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "finish_reason")), "stop");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens")), 1);
    CU_ASSERT_PTR_NOT_NULL(json_object_get(json_object_get(j, "darkhorse"), "domain_share"));
    json_decref(j);
    j = load(api_usage_chunk_json(&m, &f));
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "choices")), 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(j, "usage"), "prompt_tokens")), 2);
    json_decref(j);
    m.kind = API_COMPLETION;
    j = load(api_chunk_json(&m, "xy", 2, 0, NULL));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "object")), "text_completion");
    c = json_array_get(json_object_get(j, "choices"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "text")), "xy");
    json_decref(j);
}

static void test_errors_models_and_bad_utf8_in_text(void) {
    api_error e;
    api_fail(&e, 429, "rate_limit_error", "queue_full", NULL, "the queue is full (%d waiting)", 3);
    json_t *j = load(api_error_json(&e)), *in = json_object_get(j, "error");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(in, "message")), "the queue is full (3 waiting)");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(in, "type")), "rate_limit_error");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(in, "code")), "queue_full");
    CU_ASSERT(json_is_null(json_object_get(in, "param")));
    json_decref(j);
    api_fail(&e, 400, "invalid_request_error", NULL, "stop[1]", "role \"\xe4\xb8\"");  /* a cut character */
    j = load(api_error_json(&e));
    in = json_object_get(j, "error");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(in, "param")), "stop[1]");
    CU_ASSERT(json_is_null(json_object_get(in, "code")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(in, "message")), "role \"\xef\xbf\xbd\xef\xbf\xbd\"");
    json_decref(j);
    j = load(api_models_json("genesis-tiny", 5));
    json_t *m0 = json_array_get(json_object_get(j, "data"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "object")), "list");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(m0, "id")), "genesis-tiny");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(m0, "object")), "model");
    json_decref(j);
    api_meta m = {.kind = API_COMPLETION, .id = "cmpl-3", .created = 1, .model = "g"};
    api_final f = {.finish = API_FINISH_STOP};
    j = load(api_response_json(&m, "a\xff\xc0\x80\xed\xa0\x80z\0w", 10, &f)); /* invalid, overlong, surrogate, NUL */
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    json_t *t = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text");
    CU_ASSERT_EQUAL(json_string_length(t), 1 + 6 * 3 + 3);
    CU_ASSERT_EQUAL(memcmp(json_string_value(t) + 19, "z\0w", 3), 0);
    CU_ASSERT_PTR_NULL(json_object_get(j, "darkhorse")); /* no shares given */
    json_decref(j);
}

/* --- the deterministic fuzzer --- */

static uint64_t rng_state;
static uint64_t rnd(void) {
    uint64_t x = rng_state += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}
static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static const char *const corpus[] = {
    "{\"prompt\": \"Hello world\", \"max_tokens\": 16, \"temperature\": 0}",
    "{\"model\": \"m\", \"prompt\": [\"x\"], \"stream\": true, \"stream_options\": {\"include_usage\": true}}",
    "{\"prompt\": [1, 2, 3, 999], \"top_p\": 0.9, \"top_k\": 5, \"seed\": 42, \"n\": 1, \"best_of\": 1}",
    "{\"prompt\": [[7, 8]], \"stop\": [\"a\", \"bb\", \"\\n\"], \"ignore_eos\": false, \"logprobs\": null}",
    "{\"prompt\": \"caf\\u00e9\", \"stop\": \"end\", \"presence_penalty\": 0, \"echo\": false, \"suffix\": \"\"}",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 8}",
    "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": "
    "[{\"type\": \"text\", \"text\": \"a\"}]}, {\"role\": \"assistant\", \"content\": \"b\"}], \"stream\": true}",
    "{\"messages\": [{\"role\": \"developer\", \"content\": \"d\", \"name\": \"n\"}], \"max_completion_tokens\": 4, "
    "\"response_format\": {\"type\": \"text\"}, \"tools\": [], \"logit_bias\": {}}",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"\\ud83d\\ude00 \\\"q\\\"\"}], \"temperature\": 1.5,"
    " \"user\": \"u\"}",
    "{\"prompt\": \"p\", \"unknown\": {\"deep\": [[[[{}]]]]}, \"frequency_penalty\": 0.0, \"top_logprobs\": 0}",
};
#define N_CORPUS (sizeof corpus / sizeof corpus[0])
static const char *const tokens[] = {"-1",   "0",  "1e308", "99999999999999999999", "2.5", "null", "true",
                                     "\"x\"", "[]", "{}",    "\"\\u0000\"",           "\"\\ud800\"", "[[[[", "\xff",
                                     "\"\"", "-0", "1e-400", "\"prompt\"", "\"messages\"", "\"role\"", ",", ":"};
#define N_TOKENS (sizeof tokens / sizeof tokens[0])

/* one mutation of buf[0..*n) (capacity cap) */
static void mutate(char *buf, size_t *n, size_t cap) {
    size_t len = *n, at = below(len + 1);
    switch (below(7)) {
    case 0: /* flip bits */
        if (len) buf[below(len)] ^= (char)(1u << below(8));
        break;
    case 1: /* a structural or random byte */
        if (len) buf[below(len)] = below(2) ? "{}[]\",:0123456789\\u.-e tnf"[below(26)] : (char)below(256);
        break;
    case 2: { /* delete a span */
        size_t want = below(16) + 1, k = DH_MIN(want, len - at); /* DH_MIN evaluates twice */
        memmove(buf + at, buf + at + k, len - at - k);
        *n = len - k;
        break;
    }
    case 3: /* truncate */
        *n = below(len + 1);
        break;
    case 4: { /* splice a piece of another request in */
        const char *o = corpus[below(N_CORPUS)];
        size_t ol = strlen(o), from = below(ol), want = below(ol - from) + 1, k = DH_MIN(want, cap - len);
        memmove(buf + at + k, buf + at, len - at);
        memcpy(buf + at, o + from, k);
        *n = len + k;
        break;
    }
    case 5: { /* replace a value-ish span with an interesting token */
        const char *t = tokens[below(N_TOKENS)];
        size_t tl = strlen(t), want = below(6), k = DH_MIN(want, len - at);
        if (len - k + tl > cap) break;
        memmove(buf + at + tl, buf + at + k, len - at - k);
        memcpy(buf + at, t, tl);
        *n = len - k + tl;
        break;
    }
    default: { /* duplicate a span */
        size_t want = below(24), k = DH_MIN(want, DH_MIN(len - at, cap - len));
        memmove(buf + at + k, buf + at, len - at);
        *n = len + k;
        break;
    }
    }
}

static const char *const keys[] = {"prompt", "messages", "role", "content", "type", "text", "max_tokens",
                                   "max_completion_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                                   "stream", "stream_options", "include_usage", "n", "best_of", "logprobs", "echo",
                                   "suffix", "logit_bias", "tools", "response_format", "presence_penalty",
                                   "frequency_penalty", "model", "user", "ignore_eos", "top_logprobs"};
#define N_KEYS (sizeof keys / sizeof keys[0])

/* an interesting JSON value: edges of every range, every type */
static json_t *some_value(int depth) {
    static const char *const words[] = {"", "x", "user", "system", "assistant", "developer", "tool", "text",
                                        "image_url", "\u00e9", "<\uff5cUser\uff5c>", "stop"};
    switch (below(depth > 2 ? 14 : 17)) {
    case 0: return json_integer(-1);
    case 1: return json_integer(0);
    case 2: return json_integer(1);
    case 3: return json_integer((json_int_t)below(2000) - 500);
    case 4: return json_integer(INT64_MAX);
    case 5: return json_real(2.5);
    case 6: return json_real(1e300);
    case 7: return json_real(0.5);
    case 8: return json_null();
    case 9: return json_true();
    case 10: return json_false();
    case 11: return json_string(words[below(sizeof words / sizeof words[0])]);
    case 12: return json_array();
    case 13: return json_object();
    case 14: { /* an array of a few values */
        json_t *a = json_array();
        for (size_t i = below(6); i > 0; i--) json_array_append_new(a, some_value(depth + 1));
        return a;
    }
    case 15: { /* a message-like object */
        json_t *o = json_object();
        json_object_set_new(o, "role", some_value(depth + 1));
        json_object_set_new(o, "content", some_value(depth + 1));
        return o;
    }
    default: { /* an object of known keys */
        json_t *o = json_object();
        for (size_t i = below(4); i > 0; i--) json_object_set_new(o, keys[below(N_KEYS)], some_value(depth + 1));
        return o;
    }
    }
}

/* change one place of the tree under root: replace a value, drop a key, or add a known key */
static void mutate_tree(json_t *root) {
    json_t *at = root;
    for (int depth = 0; depth < 6; depth++) { /* walk down a random path */
        json_t *next = NULL;
        if (json_is_object(at) && json_object_size(at)) {
            size_t i = below(json_object_size(at));
            void *it = json_object_iter(at);
            while (i--) it = json_object_iter_next(at, it);
            next = json_object_iter_value(it);
        } else if (json_is_array(at) && json_array_size(at)) {
            next = json_array_get(at, below(json_array_size(at)));
        }
        if (!next || !(json_is_object(next) || json_is_array(next)) || below(3) == 0) break;
        at = next;
    }
    if (json_is_array(at)) {
        size_t n = json_array_size(at);
        if (n && below(2)) json_array_set_new(at, below(n), some_value(1));
        else if (n && below(2)) json_array_remove(at, below(n));
        else json_array_append_new(at, some_value(1));
    } else if (json_is_object(at)) {
        size_t n = json_object_size(at);
        if (n && below(3) == 0) {
            size_t i = below(n);
            void *it = json_object_iter(at);
            while (i--) it = json_object_iter_next(at, it);
            json_object_del(at, json_object_iter_key(it));
        } else {
            json_object_set_new(at, keys[below(N_KEYS)], some_value(1));
        }
    }
}

/* a corpus request with 1 to 3 changes in its tree, as JSON text into buf */
static size_t structured(char *buf, size_t cap) {
    json_t *root = json_loads(corpus[below(N_CORPUS)], 0, NULL);
    DH_ASSERT(root != NULL);
    for (size_t k = below(3) + 1; k > 0; k--) mutate_tree(root);
    size_t n = json_dumpb(root, buf, cap, JSON_COMPACT);
    json_decref(root);
    return n <= cap ? n : 0;
}

/* what must hold for any input: an accepted request is within every limit, a refused one says
 * why in a body that is JSON */
static int check_one(api_kind kind, const char *buf, size_t n, int *accepted) {
    api_request r;
    api_error e;
    int rc = api_parse_request(kind, buf, n, &lim, &r, &e), ok = 1;
    *accepted += rc == 0;
    if (rc == 0) {
        ok &= (r.prompt != NULL) != (r.prompt_ids != NULL);
        ok &= r.max_tokens == -1 || (r.max_tokens >= 1 && r.max_tokens <= lim.max_context);
        ok &= r.temperature >= 0 && r.temperature <= 2 && r.top_p > 0 && r.top_p <= 1 && r.top_k >= 0;
        ok &= r.n_stop >= 0 && r.n_stop <= API_MAX_STOP;
        for (int i = 0; i < r.n_stop; i++) ok &= strlen(r.stop[i]) >= 1 && strlen(r.stop[i]) <= API_MAX_STOP_BYTES;
        for (int i = 0; i < r.n_prompt_ids; i++) ok &= r.prompt_ids[i] >= 0 && r.prompt_ids[i] < lim.vocab_size;
        if (r.prompt) { /* the prompt back as generated text must give JSON */
            api_meta m = {.kind = kind, .id = "x", .created = 0, .model = "m"};
            api_final f = {.finish = API_FINISH_STOP, .domain_share = shares, .domain_names = names};
            json_t *j = load(api_response_json(&m, r.prompt, r.prompt_len, &f));
            ok &= j != NULL;
            json_decref(j);
        }
        api_request_free(&r);
    } else {
        ok &= rc == DH_EINVAL && e.status == 400 && e.type && e.message[0];
        json_t *j = load(api_error_json(&e));
        ok &= j != NULL;
        json_decref(j);
    }
    if (!ok) printf("\n  invariant broken for input of %zu bytes: %.*s\n", n, (int)DH_MIN(n, 300), buf);
    return ok;
}

static void test_mutated_requests_and_random_bytes_never_break_the_parser(void) {
    enum { ITERS = 30000, CAP = 4096 };
    static char buf[CAP];
    rng_state = 20240601;
    int accepted = 0, failures = 0;
    for (int it = 0; it < ITERS && failures < 5; it++) {
        size_t n;
        if (it % 10 == 9) { /* random bytes */
            n = below(200);
            for (size_t i = 0; i < n; i++) buf[i] = (char)below(256);
        } else if (it % 2) { /* valid JSON, changed in meaning: the validation rules */
            n = structured(buf, CAP);
        } else { /* changed as bytes: the JSON parser and everything after it */
            const char *seed = corpus[below(N_CORPUS)];
            n = strlen(seed);
            memcpy(buf, seed, n);
            int k = 1 + (int)below(4);
            for (int m = 0; m < k; m++) mutate(buf, &n, CAP);
        }
        failures += !check_one(below(2) ? API_CHAT : API_COMPLETION, buf, n, &accepted);
    }
    CU_ASSERT_EQUAL(failures, 0);
    CU_ASSERT(accepted > ITERS / 20); /* some requests stay valid: the paths past validation are reached */
    printf(" (%d of %d accepted) ", accepted, ITERS);
}

static CU_TestInfo api_tests[] = {
    {"a minimal completion takes the defaults", test_a_minimal_completion_takes_the_defaults},
    {"every parameter is read", test_every_parameter_is_read},
    {"a prompt may be text, ids or a list of one", test_a_prompt_may_be_text_ids_or_a_list_of_one},
    {"bad prompts are refused naming the place", test_bad_prompts_are_refused_naming_the_place},
    {"wrong types and absurd values are refused", test_wrong_types_and_absurd_values_are_refused},
    {"malformed JSON is refused with its position", test_malformed_json_is_refused_with_its_position},
    {"chat messages become the DeepSeek prompt", test_chat_messages_become_the_deepseek_prompt},
    {"bad messages are refused naming index and role", test_bad_messages_are_refused_naming_index_and_role},
    {"max_tokens defaults and fits the context", test_max_tokens_defaults_and_fits_the_context},
    {"whole responses have the OpenAI shape", test_whole_responses_have_the_openai_shape},
    {"stream chunks have the OpenAI shape", test_stream_chunks_have_the_openai_shape},
    {"errors, models, and bad UTF-8 in text", test_errors_models_and_bad_utf8_in_text},
    {"mutated requests and random bytes never break the parser",
     test_mutated_requests_and_random_bytes_never_break_the_parser},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo api_suite = {"api", NULL, NULL, NULL, NULL, api_tests};
