/* tokenizer.h: Hugging Face tokenizer.json byte-level BPE, exact against HF tokenizers (tok_).
 *
 * Supported: a BPE model (merges "a b" or ["a", "b"], ignore_merges), added tokens (matched in
 * the raw text first, leftmost-longest; lstrip/rstrip/single_word rejected), a null or empty
 * Sequence normalizer, a pre-tokenizer of Split (regex or string, Isolated, invert) steps ending
 * in ByteLevel (or ByteLevel alone), and the ByteLevel decoder: what DeepSeek-V2/V3, Llama-3
 * and GPT-2 files use. Anything else is refused at load with a message naming the JSON path. */
#ifndef DH_TOKENIZER_H
#define DH_TOKENIZER_H
#include <stddef.h>

typedef struct tokenizer tokenizer; /* immutable after load; share it freely between threads */

/* Load a tokenizer.json: NULL, with a logged error naming the file and the component or JSON
 * path, if it cannot be read, is malformed or uses something not implemented. */
tokenizer *tok_load(const char *path);
/* The same from a buffer of len bytes (need not be NUL-terminated); `name` labels messages.
 * The buffer is borrowed for the call only. */
tokenizer *tok_load_buffer(const char *json, size_t len, const char *name);
void tok_free(tokenizer *t); /* tok_free(NULL) does nothing */

/* Encode UTF-8 text as HF's encode(text, add_special_tokens=False): no special tokens are
 * added; added and special tokens written in the text are matched. *ids is malloc'd (never
 * NULL on success, even for no ids); the caller frees it. Returns 0, or DH_EINVAL for text that
 * is not valid UTF-8 (*err_offset = byte offset of the first bad sequence, err_offset may be
 * NULL; nothing is logged, the caller reports it) or longer than 2 GB, or DH_EUNSUPPORTED if
 * the regex engine gives up (its backtracking limit; HF fails there too). Thread-safe: several
 * threads may encode with one tokenizer at once. */
int tok_encode(const tokenizer *t, const char *text, size_t len, int **ids, size_t *n_ids,
               size_t *err_offset);
/* Decode ids to text as HF's decode(ids, skip_special_tokens=False) with the ByteLevel decoder:
 * added tokens decode to their content, ids without a token are skipped, bytes that do not form
 * UTF-8 become U+FFFD. *out is malloc'd and NUL-terminated (the caller frees it); *out_len
 * (may be NULL) excludes the NUL. Returns 0. Thread-safe. */
int tok_decode(const tokenizer *t, const int *ids, size_t n, char **out, size_t *out_len);

/* Offset of the first byte of s[0..len) that does not start a well-formed UTF-8 sequence
 * (overlong, surrogate, above U+10FFFF, truncated, stray), len if all of it is valid: the check
 * tok_encode makes, for callers that want to report bad input before parsing it further. */
size_t tok_utf8_check(const char *s, size_t len);

int tok_vocab_size(const tokenizer *t); /* max id + 1 over vocab and added tokens */
/* The most bytes of text one token stands for (128 for DeepSeek-V3). The normalizer is the
 * identity and each token covers the bytes it decodes to (add_prefix_space only adds), so a
 * text of n bytes encodes to at least n / this many tokens: a bound that rejects a prompt that
 * cannot fit a context without tokenizing it. */
size_t tok_max_token_bytes(const tokenizer *t);
/* Id of an added token or vocab entry by its text (as written in tokenizer.json, so a vocab
 * entry is spelled in byte-level characters: "Ġthe"), -1 if none. Added tokens win. */
int tok_token_id(const tokenizer *t, const char *piece);
/* Empty the BPE word cache, so that a benchmark run starts cold. Thread-safe. */
void tok_cache_clear(const tokenizer *t);

/* Streaming decoder for one generated sequence, owned by one thread at a time. Keeps a
 * reference to t, which must outlive it. */
typedef struct tok_stream tok_stream;
tok_stream *tok_stream_new(const tokenizer *t);
void tok_stream_free(tok_stream *s); /* tok_stream_free(NULL) does nothing */
/* Feed one id; writes to out (at most cap bytes, no NUL) only complete UTF-8 characters, and
 * holds back a tail that may still become a character with the next ids. Returns the bytes
 * written. Nothing is lost when cap is small: what did not fit comes out of the next push or
 * flush (a cap of at least TOK_STREAM_MIN_CAP always makes progress; 0 just accumulates).
 * Concatenated output equals tok_decode of all the ids. An unknown id adds nothing. */
#define TOK_STREAM_MIN_CAP 4 /* the longest UTF-8 character */
size_t tok_stream_push(tok_stream *s, int id, char *out, size_t cap);
/* End of stream: writes what is held (an incomplete tail as U+FFFD), at most cap bytes, and
 * returns the count; with a cap below what is held, call again until it returns 0. The stream
 * is then empty and may decode a new sequence. */
size_t tok_stream_flush(tok_stream *s, char *out, size_t cap);
#endif
