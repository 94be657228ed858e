/* bpe.h: the BPE model of a byte-level tokenizer.json (bpe_ prefix): vocab, merges by rank,
 * the word cache, and GPT-2's byte <-> character table. Used by tokenizer.c. */
#ifndef DH_BPE_H
#define DH_BPE_H
#include <jansson.h>
#include <stddef.h>

typedef struct bpe_model bpe_model; /* immutable once loaded, except its self-locking cache */

typedef struct bpe_ids { /* a growable array of token ids */
    int *v;              /* [cap], malloc'd, owned by whoever owns the struct */
    size_t n;            /* ids in use */
    size_t cap;
} bpe_ids;
void bpe_ids_push(bpe_ids *a, int id);

/* Build the model from tokenizer.json's "model" object; `name` (the file) prefixes messages.
 * NULL, with a logged error naming the JSON path, when the object is malformed or asks for
 * something not implemented (dropout, byte_fallback, subword prefixes, a non-BPE type). */
bpe_model *bpe_load(const json_t *model, const char *name);
void bpe_free(bpe_model *m); /* bpe_free(NULL) does nothing */

int bpe_vocab_count(const bpe_model *m); /* entries of "vocab" (HF's get_vocab_size) */
int bpe_max_id(const bpe_model *m);      /* largest vocab id, -1 when the vocab is empty */
/* Id of a vocab entry by its text (byte-level characters, as in the file), -1 if none. */
int bpe_piece_id(const bpe_model *m, const char *piece, size_t len);
/* Text of vocab entry `id` (not NUL-terminated), NULL if no entry has that id.
 * Borrowed: valid until bpe_free. */
const char *bpe_piece(const bpe_model *m, int id, size_t *len);

/* Append the ids of one pre-tokenized word, given as the raw UTF-8 bytes it stands for (the
 * byte-level mapping is implied: one initial symbol per byte). Merges apply lowest rank
 * first, leftmost first on ties, as Hugging Face's BPE does. Thread-safe. */
void bpe_encode_word(const bpe_model *m, const unsigned char *w, size_t n, bpe_ids *out);
/* Empty the word cache (for benchmarks). Thread-safe. */
void bpe_cache_clear(const bpe_model *m);

/* GPT-2 byte-level table: the bytes a piece of byte-level characters stands for, written to
 * out (room for len bytes). Returns the byte count, or -1 if some character of the piece is
 * not one of the 256 byte-level characters (or the piece is not valid UTF-8). */
int bpe_bytelevel_decode(const char *piece, size_t len, unsigned char *out);
#endif
