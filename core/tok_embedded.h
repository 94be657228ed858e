/* tok_embedded.h: DeepSeek-V3's tokenizer.json, built into the library (tok_embedded_ prefix),
 * so that the darkhorse binary can write it into every checkpoint it generates without the
 * source tree. The bytes are models/deepseek-v3/tokenizer.json (see ORIGIN.md beside it). */
#ifndef DH_TOK_EMBEDDED_H
#define DH_TOK_EMBEDDED_H
#include <stddef.h>

/* The file's bytes (*len of them, followed by one NUL not counted in *len). Static data:
 * never freed, valid for the life of the process. Load it with tok_load_buffer. */
const unsigned char *tok_embedded_json(size_t *len);
#endif
