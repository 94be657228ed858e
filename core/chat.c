/* chat.c: the DeepSeek-V3 chat template, written out in C.
 *
 * The Jinja template of DeepSeek-V3's tokenizer_config.json, for the roles served here, first
 * gathers every system message (joined by "\n\n", wherever they stand in the conversation) and
 * puts them right after the begin-of-sentence token, then walks the messages in order: a user
 * message is "<｜User｜>" + content, an assistant message "<｜Assistant｜>" + content +
 * "<｜end▁of▁sentence｜>"; add_generation_prompt appends "<｜Assistant｜>". Tool calls and tool
 * outputs are the rest of the template; they are refused, not approximated. Special tokens in
 * user text are left as they are, as the template leaves them (the tokenizer will match them). */
#include "chat.h"

#include <string.h>

#include "common.h"

#define BOS "<｜begin▁of▁sentence｜>"
#define EOS "<｜end▁of▁sentence｜>"
#define USER "<｜User｜>"
#define ASSISTANT "<｜Assistant｜>"

typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void put(sbuf *b, const char *s) {
    size_t len = strlen(s);
    if (b->n + len + 1 > b->cap) {
        b->cap = 2 * (b->n + len + 1);
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, len + 1);
    b->n += len;
}

static int check(const chat_message *m, size_t i) {
    if (!m->role) {
        log_error("chat: message %zu has no role", i);
        return DH_EINVAL;
    }
    if (strcmp(m->role, "tool") == 0) {
        log_error("chat: message %zu: role \"tool\" is not supported", i);
        return DH_EINVAL;
    }
    if (strcmp(m->role, "system") != 0 && strcmp(m->role, "user") != 0 &&
        strcmp(m->role, "assistant") != 0) {
        log_error("chat: message %zu: unknown role \"%s\" (expected system, user or assistant)",
                  i, m->role);
        return DH_EINVAL;
    }
    if (!m->content) {
        log_error("chat: message %zu (%s) has no content (tool calls are not supported)", i,
                  m->role);
        return DH_EINVAL;
    }
    return 0;
}

int chat_format(const chat_message *msgs, size_t n, int add_generation_prompt, char **out,
                size_t *out_len) {
    *out = NULL;
    for (size_t i = 0; i < n; i++) {
        int rc = check(&msgs[i], i);
        if (rc) return rc;
    }
    sbuf b = {0};
    put(&b, BOS);
    int first_system = 1;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(msgs[i].role, "system") != 0) continue;
        if (!first_system) put(&b, "\n\n");
        put(&b, msgs[i].content);
        first_system = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(msgs[i].role, "user") == 0) {
            put(&b, USER);
            put(&b, msgs[i].content);
        } else if (strcmp(msgs[i].role, "assistant") == 0) {
            put(&b, ASSISTANT);
            put(&b, msgs[i].content);
            put(&b, EOS);
        }
    }
    if (add_generation_prompt) put(&b, ASSISTANT);
    *out = b.p;
    if (out_len) *out_len = b.n;
    return 0;
}
