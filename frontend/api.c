/* api.c: OpenAI-compatible request validation and response bodies, with jansson.
 *
 * Parsing is one pass over the fields this server knows, each checked for its JSON type and
 * its range, the first fault refused with a 400 that names the parameter (JSON path style:
 * "messages[2].content[0].text") and says what was expected. A JSON null counts as absent,
 * as OpenAI treats optional parameters; unknown fields are ignored; known fields whose
 * meaning this server does not implement (logprobs, tools, penalties, n > 1, ...) are refused
 * rather than silently dropped, so that a client never gets an answer to another question.
 *
 * Chat messages are checked here (roles, content types) before core/chat.h formats them: a
 * client's bad input is a 400 for the client, not an error in the server's log.
 *
 * Everything is pure: no I/O, no globals, nothing logged. The fuzzers (tests/coordinator/
 * test_api.c, fuzz_api.c) feed this file arbitrary bytes; jansson bounds the nesting depth
 * and rejects invalid UTF-8, NUL characters and integers that overflow 64 bits. */
#include "api.h"

#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/chat.h"
#include "core/common.h"

#define T_INVALID "invalid_request_error"

int api_fail(api_error *err, int status, const char *type, const char *code, const char *param,
             const char *fmt, ...) {
    err->status = status;
    err->type = type;
    err->code = code;
    err->retry_after = 0;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return DH_EINVAL;
}

static const char *type_name(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int bad_type(api_error *err, const char *param, const char *want, const json_t *got) {
    return api_fail(err, 400, T_INVALID, "invalid_type", param, "%s must be %s, not %s", param, want,
                    type_name(got));
}

/* the field k of o; NULL when absent or null */
static json_t *field(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_null(v) ? NULL : v;
}

static int get_bool(json_t *o, const char *k, int *out, api_error *err) {
    json_t *v = field(o, k);
    if (!v) return 0;
    if (!json_is_boolean(v)) return bad_type(err, k, "a boolean", v);
    *out = json_is_true(v);
    return 0;
}

/* an integer in [lo, hi]; *present says whether it was given */
static int get_int(json_t *o, const char *k, long long lo, long long hi, long long *out, int *present,
                   api_error *err) {
    json_t *v = field(o, k);
    *present = v != NULL;
    if (!v) return 0;
    if (!json_is_integer(v)) return bad_type(err, k, "an integer", v);
    long long x = json_integer_value(v);
    if (x < lo && hi == LLONG_MAX)
        return api_fail(err, 400, T_INVALID, "invalid_value", k, "%s must be at least %lld, not %lld", k, lo, x);
    if (x < lo || x > hi)
        return api_fail(err, 400, T_INVALID, "invalid_value", k, "%s must be in [%lld, %lld], not %lld", k, lo, hi,
                        x);
    *out = x;
    return 0;
}

/* a number in [lo, hi] ((lo, hi] when lo_open) */
static int get_number(json_t *o, const char *k, double lo, double hi, int lo_open, double *out, api_error *err) {
    json_t *v = field(o, k);
    if (!v) return 0;
    if (!json_is_number(v)) return bad_type(err, k, "a number", v);
    double x = json_number_value(v);
    if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
        return api_fail(err, 400, T_INVALID, "invalid_value", k, "%s must be in %c%g, %g], not %g", k,
                        lo_open ? '(' : '[', lo, hi, x);
    *out = x;
    return 0;
}

static int unsupported(api_error *err, const char *param, const char *what) {
    return api_fail(err, 400, T_INVALID, "unsupported_parameter", param, "%s is not supported by this server", what);
}

/* --- sampling and output parameters, common to both endpoints --- */

static int parse_stop(json_t *root, api_request *r, api_error *err) {
    json_t *v = field(root, "stop");
    if (!v) return 0;
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > API_MAX_STOP)
            return api_fail(err, 400, T_INVALID, "invalid_value", "stop", "stop may hold at most %d strings, not %zu",
                            API_MAX_STOP, n);
        items = NULL;
    } else if (!json_is_string(v)) {
        return bad_type(err, "stop", "a string or an array of strings", v);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        char param[32] = "stop";
        if (!items) snprintf(param, sizeof param, "stop[%zu]", i);
        if (!json_is_string(s)) return bad_type(err, param, "a string", s);
        size_t len = json_string_length(s);
        if (len == 0) return api_fail(err, 400, T_INVALID, "invalid_value", param, "%s must not be empty", param);
        if (len > API_MAX_STOP_BYTES)
            return api_fail(err, 400, T_INVALID, "invalid_value", param, "%s is %zu bytes long; the limit is %d",
                            param, len, API_MAX_STOP_BYTES);
        r->stop[r->n_stop++] = xstrdup(json_string_value(s));
    }
    return 0;
}

/* fields this server knows but does not implement: refused unless given as their neutral value */
static int refuse_unsupported(json_t *root, api_kind kind, api_error *err) {
    json_t *v;
    if ((v = field(root, "logprobs")) && !json_is_false(v) && !(json_is_integer(v) && json_integer_value(v) == 0))
        return unsupported(err, "logprobs", "logprobs");
    if ((v = field(root, "top_logprobs")) && !(json_is_integer(v) && json_integer_value(v) == 0))
        return unsupported(err, "top_logprobs", "top_logprobs");
    if ((v = field(root, "echo")) && !json_is_false(v)) return unsupported(err, "echo", "echo");
    if ((v = field(root, "suffix")) && !(json_is_string(v) && json_string_length(v) == 0))
        return unsupported(err, "suffix", "suffix");
    if ((v = field(root, "logit_bias")) && !(json_is_object(v) && json_object_size(v) == 0))
        return unsupported(err, "logit_bias", "logit_bias");
    if ((v = field(root, "tools")) && !(json_is_array(v) && json_array_size(v) == 0))
        return unsupported(err, "tools", "tool calling");
    if ((v = field(root, "functions")) && !(json_is_array(v) && json_array_size(v) == 0))
        return unsupported(err, "functions", "function calling");
    if ((v = field(root, "response_format"))) {
        json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!json_is_string(t) || strcmp(json_string_value(t), "text") != 0)
            return unsupported(err, "response_format", "response_format other than {\"type\": \"text\"}");
    }
    static const char *const penalties[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        double p = 0;
        if (get_number(root, penalties[i], -2, 2, 0, &p, err)) return DH_EINVAL;
        if (p != 0) return unsupported(err, penalties[i], "a non-zero penalty");
    }
    long long x;
    int present;
    if (get_int(root, "n", LLONG_MIN, LLONG_MAX, &x, &present, err)) return DH_EINVAL;
    if (present && x != 1)
        return api_fail(err, 400, T_INVALID, "invalid_value", "n", "n must be 1 (one choice per request), not %lld",
                        x);
    if (kind == API_COMPLETION) {
        if (get_int(root, "best_of", LLONG_MIN, LLONG_MAX, &x, &present, err)) return DH_EINVAL;
        if (present && x != 1)
            return api_fail(err, 400, T_INVALID, "invalid_value", "best_of", "best_of must be 1, not %lld", x);
    }
    return 0;
}

static int parse_common(json_t *root, const api_limits *lim, api_request *r, api_error *err) {
    json_t *v = field(root, "model");
    if (v && !json_is_string(v)) return bad_type(err, "model", "a string", v);
    if ((v = field(root, "user")) && !json_is_string(v)) return bad_type(err, "user", "a string", v);
    if (refuse_unsupported(root, r->kind, err)) return DH_EINVAL;
    long long x;
    int present;
    const char *mt = "max_tokens";
    if (r->kind == API_CHAT && field(root, "max_completion_tokens")) mt = "max_completion_tokens"; /* the newer name */
    if (get_int(root, mt, 1, LLONG_MAX, &x, &present, err)) return DH_EINVAL;
    if (present && x > lim->max_context)
        return api_fail(err, 400, T_INVALID, "context_length_exceeded", mt,
                        "%s (%lld) exceeds the context limit of %d tokens", mt, x, lim->max_context);
    r->max_tokens = present ? (int)x : -1;
    double d = r->temperature;
    if (get_number(root, "temperature", 0, 2, 0, &d, err)) return DH_EINVAL;
    r->temperature = (float)d;
    d = r->top_p;
    if (get_number(root, "top_p", 0, 1, 1, &d, err)) return DH_EINVAL;
    r->top_p = (float)d > 0 ? (float)d : FLT_MIN; /* a positive double below float's range */
    if (get_int(root, "top_k", -1, INT_MAX, &x, &present, err)) return DH_EINVAL;
    r->top_k = present && x > 0 ? (int)x : 0;
    if (get_int(root, "seed", 0, LLONG_MAX, &x, &r->has_seed, err)) return DH_EINVAL;
    r->seed = r->has_seed ? (uint64_t)x : 0;
    if (get_bool(root, "stream", &r->stream, err) || get_bool(root, "ignore_eos", &r->ignore_eos, err))
        return DH_EINVAL;
    if ((v = field(root, "stream_options"))) {
        if (!json_is_object(v)) return bad_type(err, "stream_options", "an object", v);
        json_t *u = field(v, "include_usage");
        if (u && !json_is_boolean(u)) return bad_type(err, "stream_options.include_usage", "a boolean", u);
        r->include_usage = json_is_true(u);
    }
    return parse_stop(root, r, err);
}

/* --- the prompt of /v1/completions --- */

static int set_text(api_request *r, json_t *s) {
    r->prompt_len = json_string_length(s);
    r->prompt = xmalloc(r->prompt_len + 1);
    memcpy(r->prompt, json_string_value(s), r->prompt_len + 1);
    return 0;
}

static int parse_ids(json_t *a, const char *path, const api_limits *lim, api_request *r, api_error *err) {
    size_t n = json_array_size(a);
    if (n > (size_t)lim->max_context)
        return api_fail(err, 400, T_INVALID, "context_length_exceeded", "prompt",
                        "the prompt (%zu tokens) exceeds the context limit of %d tokens", n, lim->max_context);
    r->prompt_ids = xmalloc(DH_MAX(n, 1) * sizeof *r->prompt_ids);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(a, i);
        char param[48];
        snprintf(param, sizeof param, "%s[%zu]", path, i);
        if (!json_is_integer(t)) return bad_type(err, param, "a token id (an integer)", t);
        long long id = json_integer_value(t);
        if (id < 0 || id >= lim->vocab_size)
            return api_fail(err, 400, T_INVALID, "invalid_value", param,
                            "%s: token id %lld is not in [0, %d), the model's vocabulary", param, id,
                            lim->vocab_size);
        r->prompt_ids[i] = (int)id;
    }
    r->n_prompt_ids = (int)n;
    return 0;
}

static int parse_prompt(json_t *root, const api_limits *lim, api_request *r, api_error *err) {
    json_t *p = field(root, "prompt");
    if (!p) return api_fail(err, 400, T_INVALID, "missing_required_parameter", "prompt", "prompt is required");
    if (json_is_string(p)) {
        if (json_string_length(p) == 0)
            return api_fail(err, 400, T_INVALID, "invalid_value", "prompt", "prompt must not be empty");
        return set_text(r, p);
    }
    if (!json_is_array(p))
        return bad_type(err, "prompt", "a string, an array of token ids or a list of one of these", p);
    size_t n = json_array_size(p);
    if (n == 0) return api_fail(err, 400, T_INVALID, "invalid_value", "prompt", "prompt must not be empty");
    json_t *first = json_array_get(p, 0);
    if (json_is_integer(first)) return parse_ids(p, "prompt", lim, r, err);
    if (n > 1 && (json_is_string(first) || json_is_array(first)))
        return api_fail(err, 400, T_INVALID, "invalid_value", "prompt",
                        "prompt holds %zu prompts; this server takes one per request", n);
    if (json_is_string(first)) {
        if (json_string_length(first) == 0)
            return api_fail(err, 400, T_INVALID, "invalid_value", "prompt[0]", "prompt[0] must not be empty");
        return set_text(r, first);
    }
    if (json_is_array(first)) {
        if (json_array_size(first) == 0)
            return api_fail(err, 400, T_INVALID, "invalid_value", "prompt[0]", "prompt[0] must not be empty");
        return parse_ids(first, "prompt[0]", lim, r, err);
    }
    return bad_type(err, "prompt[0]", "a string, a token id or an array of token ids", first);
}

/* --- the messages of /v1/chat/completions --- */

/* content: a string, or an array of {"type": "text", "text": ...} parts joined by "\n" (as
 * vLLM joins them); *out malloc'd */
static int parse_content(json_t *c, size_t i, char **out, api_error *err) {
    char param[96];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (!c) return api_fail(err, 400, T_INVALID, "missing_required_parameter", param, "%s is required", param);
    if (json_is_string(c)) {
        *out = xstrdup(json_string_value(c));
        return 0;
    }
    if (!json_is_array(c)) return bad_type(err, param, "a string or an array of text parts", c);
    size_t n = json_array_size(c), len = 0;
    for (size_t j = 0; j < n; j++) {
        json_t *part = json_array_get(c, j);
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        snprintf(param, sizeof param, "messages[%zu].content[%zu]", i, j);
        if (!json_is_object(part)) return bad_type(err, param, "an object", part);
        if (!json_is_string(type)) {
            snprintf(param, sizeof param, "messages[%zu].content[%zu].type", i, j);
            return type ? bad_type(err, param, "a string", type)
                        : api_fail(err, 400, T_INVALID, "missing_required_parameter", param, "%s is required", param);
        }
        if (strcmp(json_string_value(type), "text") != 0)
            return api_fail(err, 400, T_INVALID, "unsupported_value", param,
                            "%s: content parts of type \"%.40s\" are not supported (only \"text\")", param,
                            json_string_value(type));
        if (!json_is_string(text)) {
            snprintf(param, sizeof param, "messages[%zu].content[%zu].text", i, j);
            return text ? bad_type(err, param, "a string", text)
                        : api_fail(err, 400, T_INVALID, "missing_required_parameter", param, "%s is required", param);
        }
        len += json_string_length(text) + 1;
    }
    char *s = xmalloc(len + 1), *p = s;
    for (size_t j = 0; j < n; j++) {
        json_t *text = json_object_get(json_array_get(c, j), "text");
        size_t k = json_string_length(text);
        if (j) *p++ = '\n';
        memcpy(p, json_string_value(text), k);
        p += k;
    }
    *p = 0;
    *out = s;
    return 0;
}

/* the role of messages[i], checked: "system" (developer too), "user" or "assistant" */
static int parse_role(json_t *m, size_t i, const char **role, api_error *err) {
    char param[48];
    snprintf(param, sizeof param, "messages[%zu].role", i);
    json_t *v = field(m, "role");
    if (!v) return api_fail(err, 400, T_INVALID, "missing_required_parameter", param, "%s is required", param);
    if (!json_is_string(v)) return bad_type(err, param, "a string", v);
    const char *s = json_string_value(v);
    if (!strcmp(s, "system") || !strcmp(s, "developer")) *role = "system";
    else if (!strcmp(s, "user")) *role = "user";
    else if (!strcmp(s, "assistant")) *role = "assistant";
    else if (!strcmp(s, "tool") || !strcmp(s, "function"))
        return api_fail(err, 400, T_INVALID, "unsupported_value", param,
                        "messages[%zu]: role \"%s\" is not supported (this server has no tool calls)", i, s);
    else
        return api_fail(err, 400, T_INVALID, "invalid_value", param,
                        "messages[%zu]: unknown role \"%.64s\" (expected system, developer, user or assistant)", i,
                        s);
    return 0;
}

static int parse_messages(json_t *root, api_request *r, api_error *err) {
    json_t *a = field(root, "messages");
    if (!a) return api_fail(err, 400, T_INVALID, "missing_required_parameter", "messages", "messages is required");
    if (!json_is_array(a)) return bad_type(err, "messages", "an array", a);
    size_t n = json_array_size(a);
    if (n == 0) return api_fail(err, 400, T_INVALID, "invalid_value", "messages", "messages must not be empty");
    chat_message *msgs = xcalloc(n, sizeof *msgs);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *m = json_array_get(a, i);
        char param[32];
        snprintf(param, sizeof param, "messages[%zu]", i);
        char *content = NULL;
        if (!json_is_object(m)) rc = bad_type(err, param, "an object", m);
        else if (!(rc = parse_role(m, i, &msgs[i].role, err)))
            rc = parse_content(field(m, "content"), i, &content, err);
        msgs[i].content = content;
    }
    if (!rc) {
        rc = chat_format(msgs, n, 1, &r->prompt, &r->prompt_len); /* cannot fail: checked above */
        DH_ASSERT(rc == 0);
    }
    for (size_t i = 0; i < n; i++) free((char *)msgs[i].content);
    free(msgs);
    return rc;
}

int api_parse_request(api_kind kind, const char *body, size_t len, const api_limits *lim, api_request *out,
                      api_error *err) {
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    out->kind = kind;
    out->max_tokens = -1;
    out->temperature = 1;
    out->top_p = 1;
    json_error_t je;
    json_t *root = json_loadb(body ? body : "", body ? len : 0, JSON_DECODE_ANY, &je);
    if (!root)
        return api_fail(err, 400, T_INVALID, "invalid_json", NULL,
                        "the body is not valid JSON: %s (line %d, column %d, byte %d)", je.text, je.line,
                        je.column, je.position);
    int rc;
    if (!json_is_object(root)) rc = api_fail(err, 400, T_INVALID, "invalid_type", NULL,
                                             "the body must be a JSON object, not %s", type_name(root));
    else if (!(rc = parse_common(root, lim, out, err)))
        rc = kind == API_CHAT ? parse_messages(root, out, err) : parse_prompt(root, lim, out, err);
    json_decref(root);
    if (rc) api_request_free(out);
    return rc;
}

void api_request_free(api_request *r) {
    if (!r) return;
    free(r->prompt);
    free(r->prompt_ids);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    api_kind kind = r->kind;
    memset(r, 0, sizeof *r);
    r->kind = kind;
}

int api_resolve_max_tokens(const api_request *r, int n_prompt, int max_context, api_error *err) {
    const char *what = r->kind == API_CHAT ? "messages" : "prompt";
    if (n_prompt < 1) {
        api_fail(err, 400, T_INVALID, "invalid_value", what, "the %s encodes to no tokens", what);
        return -1;
    }
    if (r->max_tokens < 0) {
        int room = max_context - n_prompt;
        if (room >= 1) return DH_MIN(API_DEFAULT_MAX_TOKENS, room);
        api_fail(err, 400, T_INVALID, "context_length_exceeded", what,
                 "the %s (%d tokens) leaves no room for a completion in the context limit of %d tokens", what,
                 n_prompt, max_context);
        return -1;
    }
    if ((long long)n_prompt + r->max_tokens <= max_context) return r->max_tokens;
    api_fail(err, 400, T_INVALID, "context_length_exceeded", "max_tokens",
             "the %s (%d tokens) plus max_tokens (%d) exceeds the context limit of %d tokens", what, n_prompt,
             r->max_tokens, max_context);
    return -1;
}

/* --- responses --- */

/* length of the valid UTF-8 character at s[0..n), 0 if there is none */
static size_t utf8_char(const unsigned char *s, size_t n) {
    if (s[0] < 0x80) return 1;
    size_t k = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 ? 2 : 0;
    if (k == 0 || s[0] > 0xF4 || n < k) return 0;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    /* overlong forms, UTF-16 surrogates, beyond U+10FFFF */
    if (k == 3 && ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0))) return 0;
    if (k == 4 && ((s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))) return 0;
    return k;
}

/* a JSON string of text[0..n); bytes that are not UTF-8 become U+FFFD */
static json_t *text_json(const char *text, size_t n) {
    json_t *j = json_stringn(text, n);
    if (j) return j;
    char *s = xmalloc(xmul(n, 3) + 1), *p = s;
    const unsigned char *u = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_char(u + i, n - i);
        if (k) memcpy(p, u + i, k), p += k, i += k;
        else memcpy(p, "\xEF\xBF\xBD", 3), p += 3, i++;
    }
    j = json_stringn(s, (size_t)(p - s));
    free(s);
    DH_ASSERT(j != NULL);
    return j;
}

static char *dump(json_t *root) {
    char *s = json_dumps(root, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(root);
    DH_ASSERT(s != NULL); /* only an allocation failure, which aborts elsewhere too */
    return s;
}

static const char *finish_name(int finish) {
    return finish == API_FINISH_STOP ? "stop" : finish == API_FINISH_LENGTH ? "length" : NULL;
}

static json_t *head(const api_meta *m, const char *object) {
    json_t *o = json_object();
    json_object_set_new(o, "id", text_json(m->id, strlen(m->id)));
    json_object_set_new(o, "object", json_string(object));
    json_object_set_new(o, "created", json_integer(m->created));
    json_object_set_new(o, "model", text_json(m->model, strlen(m->model)));
    return o;
}

static json_t *usage(const api_final *f) {
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(f->prompt_tokens));
    json_object_set_new(u, "completion_tokens", json_integer(f->completion_tokens));
    json_object_set_new(u, "total_tokens", json_integer((json_int_t)f->prompt_tokens + f->completion_tokens));
    return u;
}

/* usage and the extension field, on a final response or chunk */
static void add_final(json_t *o, const api_final *f) {
    json_object_set_new(o, "usage", usage(f));
    if (!f->domain_share || !f->domain_names) return;
    json_t *shares = json_object();
    for (int d = 0; d < CFG_N_DOMAINS; d++) {
        const char *name = f->domain_names[d];
        json_t *key = text_json(name, strlen(name)); /* object keys must be UTF-8 too */
        json_object_set_new(shares, json_string_value(key), json_real(f->domain_share[d]));
        json_decref(key);
    }
    json_t *ext = json_object();
    json_object_set_new(ext, "domain_share", shares);
    json_object_set_new(o, "darkhorse", ext);
}

/* {"index": 0, key: value, "logprobs": null, "finish_reason": ...}; takes value */
static json_t *choice(const char *key, json_t *value, int finish) {
    json_t *c = json_object();
    json_object_set_new(c, "index", json_integer(0));
    json_object_set_new(c, key, value);
    json_object_set_new(c, "logprobs", json_null());
    const char *fin = finish_name(finish);
    json_object_set_new(c, "finish_reason", fin ? json_string(fin) : json_null());
    return c;
}

char *api_response_json(const api_meta *m, const char *text, size_t len, const api_final *f) {
    int chat = m->kind == API_CHAT;
    json_t *o = head(m, chat ? "chat.completion" : "text_completion"), *c;
    if (chat) {
        json_t *msg = json_object();
        json_object_set_new(msg, "role", json_string("assistant"));
        json_object_set_new(msg, "content", text_json(text, len));
        c = choice("message", msg, f->finish);
    } else {
        c = choice("text", text_json(text, len), f->finish);
    }
    json_t *choices = json_array();
    json_array_append_new(choices, c);
    json_object_set_new(o, "choices", choices);
    add_final(o, f);
    return dump(o);
}

char *api_chunk_json(const api_meta *m, const char *text, size_t len, int role, const api_final *f) {
    int chat = m->kind == API_CHAT;
    json_t *o = head(m, chat ? "chat.completion.chunk" : "text_completion"), *c;
    int finish = f ? f->finish : API_FINISH_NONE;
    if (chat) {
        json_t *delta = json_object();
        if (role) json_object_set_new(delta, "role", json_string("assistant"));
        if (role || len) json_object_set_new(delta, "content", text_json(text, len));
        c = choice("delta", delta, finish);
    } else {
        c = choice("text", text_json(text, len), finish);
    }
    json_t *choices = json_array();
    json_array_append_new(choices, c);
    json_object_set_new(o, "choices", choices);
    if (f) add_final(o, f);
    return dump(o);
}

char *api_usage_chunk_json(const api_meta *m, const api_final *f) {
    json_t *o = head(m, m->kind == API_CHAT ? "chat.completion.chunk" : "text_completion");
    json_object_set_new(o, "choices", json_array());
    json_object_set_new(o, "usage", usage(f));
    return dump(o);
}

char *api_error_json(const api_error *e) {
    json_t *in = json_object();
    json_object_set_new(in, "message", text_json(e->message, strlen(e->message)));
    json_object_set_new(in, "type", json_string(e->type ? e->type : "server_error"));
    json_object_set_new(in, "param", e->param[0] ? text_json(e->param, strlen(e->param)) : json_null());
    json_object_set_new(in, "code", e->code ? json_string(e->code) : json_null());
    json_t *o = json_object();
    json_object_set_new(o, "error", in);
    return dump(o);
}

char *api_models_json(const char *model, long long created) {
    json_t *m = json_object();
    json_object_set_new(m, "id", text_json(model, strlen(model)));
    json_object_set_new(m, "object", json_string("model"));
    json_object_set_new(m, "created", json_integer(created));
    json_object_set_new(m, "owned_by", json_string("darkhorse"));
    json_t *data = json_array();
    json_array_append_new(data, m);
    json_t *o = json_object();
    json_object_set_new(o, "object", json_string("list"));
    json_object_set_new(o, "data", data);
    return dump(o);
}
