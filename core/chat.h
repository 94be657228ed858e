/* chat.h: DeepSeek-V3's chat format (chat_ prefix): messages to the prompt text that the
 * chat_template of its tokenizer_config.json produces, for the HTTP chat API. */
#ifndef DH_CHAT_H
#define DH_CHAT_H
#include <stddef.h>

typedef struct chat_message {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* UTF-8 text; NULL only in tool-call messages, which are refused */
} chat_message;

/* The prompt for msgs[0..n): "<｜begin▁of▁sentence｜>", the system contents joined by "\n\n",
 * then in order "<｜User｜>" + content for each user message and "<｜Assistant｜>" + content +
 * "<｜end▁of▁sentence｜>" for each assistant message, then "<｜Assistant｜>" if
 * add_generation_prompt. *out is malloc'd and NUL-terminated (caller frees); *out_len may be
 * NULL. Returns 0, or DH_EINVAL (logged, naming the message index and role) for a role other
 * than those three (tool messages included: not supported) or a missing role or content. */
int chat_format(const chat_message *msgs, size_t n, int add_generation_prompt, char **out,
                size_t *out_len);
#endif
