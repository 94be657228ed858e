/* api.h: the OpenAI-compatible request and response bodies (api_ prefix): pure functions, no
 * I/O. A JSON body of POST /v1/completions or /v1/chat/completions is parsed and validated
 * into an api_request, or refused with an api_error that says the HTTP status, the message,
 * the OpenAI error type, the offending parameter and a code; responses, stream chunks and
 * error bodies are built as JSON text. This is the module the fuzzers target. */
#ifndef DH_API_H
#define DH_API_H
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

#define API_MAX_STOP 4            /* stop strings per request, as OpenAI */
#define API_MAX_STOP_BYTES 256    /* bytes per stop string */
#define API_DEFAULT_MAX_TOKENS 256 /* when max_tokens is absent (capped by the context) */

typedef enum api_kind { API_COMPLETION = 1, API_CHAT = 2 } api_kind;
enum { API_FINISH_NONE = 0, API_FINISH_STOP = 1, API_FINISH_LENGTH = 2 };

typedef struct api_error {
    int status;        /* HTTP status: 400, 401, 404, 405, 413, 429, 500, 503 */
    const char *type;  /* static: "invalid_request_error", "rate_limit_error", "server_error" */
    const char *code;  /* static or NULL: "invalid_type", "invalid_value", ... */
    char param[96];    /* the parameter at fault ("messages[2].role"), "" for none */
    char message[512]; /* for the client */
    int retry_after;   /* > 0: a Retry-After header of this many seconds */
} api_error;

typedef struct api_limits {
    int max_context;   /* prompt + max_tokens at most; the bound of max_tokens alone too */
    int vocab_size;    /* token ids of a prompt must be below it */
} api_limits;

typedef struct api_request {
    api_kind kind;
    char *prompt;          /* text to tokenize (chat: the formatted conversation), NUL-terminated,
                              malloc'd; NULL when the prompt was given as token ids */
    size_t prompt_len;
    int *prompt_ids;       /* completions given as token ids (each in [0, vocab)), malloc'd */
    int n_prompt_ids;
    int max_tokens;        /* -1 when absent: see api_resolve_max_tokens */
    float temperature;     /* [0, 2], default 1; 0 is greedy */
    float top_p;           /* (0, 1], default 1 */
    int top_k;             /* 0 (or -1 given) = off */
    uint64_t seed;
    int has_seed;          /* seed given; otherwise the caller picks one */
    char *stop[API_MAX_STOP]; /* non-empty, malloc'd */
    int n_stop;
    int stream;            /* answer as server-sent events */
    int include_usage;     /* stream_options.include_usage: a usage-only chunk before [DONE] */
    int ignore_eos;        /* extension (as vLLM): do not stop at the end-of-sentence token */
} api_request;

/* Parse body[0..len) (need not be NUL-terminated) as a request of the given kind. 0 with *out
 * filled (free it with api_request_free), or DH_EINVAL with *err filled (status 400) and *out
 * empty. Unknown fields are ignored, as OpenAI does; known fields this server does not
 * implement (logprobs, tools, penalties other than 0, n > 1, ...) are refused. Nothing is
 * logged. */
int api_parse_request(api_kind kind, const char *body, size_t len, const api_limits *lim,
                      api_request *out, api_error *err);
void api_request_free(api_request *r); /* frees the members and empties *r; NULL ok */

/* max_tokens for a prompt of n_prompt tokens: the one given, or min(API_DEFAULT_MAX_TOKENS,
 * room left); -1 with *err (400, naming the context limit) when prompt + max_tokens exceed
 * max_context or the prompt leaves no room. */
int api_resolve_max_tokens(const api_request *r, int n_prompt, int max_context, api_error *err);

/* Fill *err (always returns DH_EINVAL, for `return api_fail(...)`). param may be NULL. */
int api_fail(api_error *err, int status, const char *type, const char *code, const char *param,
             const char *fmt, ...) __attribute__((format(printf, 6, 7)));

typedef struct api_meta {  /* what every response and chunk of one request repeats */
    api_kind kind;
    const char *id;        /* "cmpl-..." or "chatcmpl-..." */
    long long created;     /* Unix seconds */
    const char *model;     /* the served name */
} api_meta;

typedef struct api_final { /* the end of a request */
    int finish;            /* API_FINISH_STOP or API_FINISH_LENGTH */
    int prompt_tokens, completion_tokens;
    const double *domain_share;       /* [CFG_N_DOMAINS] share of routed choices, or NULL */
    const char *const *domain_names;  /* [CFG_N_DOMAINS] */
} api_final;

/* The JSON texts below are malloc'd and NUL-terminated (free with free()); text[0..len) is
 * the generated text (invalid UTF-8, which the engine never gives, would become U+FFFD). */
/* A whole response: text_completion or chat.completion, with usage and the extension field
 * "darkhorse": {"domain_share": {name: share, ...}}. */
char *api_response_json(const api_meta *m, const char *text, size_t len, const api_final *f);
/* One stream chunk: text_completion or chat.completion.chunk. role != 0: the chat's first
 * chunk (delta {"role": "assistant", "content": ""}). f: the last chunk (finish_reason,
 * usage, domain shares), else NULL. */
char *api_chunk_json(const api_meta *m, const char *text, size_t len, int role, const api_final *f);
/* The usage-only chunk (choices []) that OpenAI sends when stream_options.include_usage. */
char *api_usage_chunk_json(const api_meta *m, const api_final *f);
/* {"error": {"message", "type", "param", "code"}} */
char *api_error_json(const api_error *e);
/* GET /v1/models: a list of one model. */
char *api_models_json(const char *model, long long created);
#endif
