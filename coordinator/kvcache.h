/* kvcache.h: the MLA latent cache, paged (kv_ prefix).
 *
 * Per layer and position a row of C + Dr floats: the normed latent kv_a_layernorm(c_kv) [C]
 * and the roped shared key k_pe [Dr]. Positions are grouped in blocks of KV_BLOCK; a sequence
 * owns a table of blocks taken from one free list, so sequences of very different lengths
 * share the memory without fragmentation, and closing a sequence returns its blocks at once. */
#ifndef DH_KVCACHE_H
#define DH_KVCACHE_H
#include <stddef.h>

#define KV_BLOCK 16

typedef struct kv_cache kv_cache;   /* owned by the engine thread */

/* Room for budget_tokens positions (rounded down to blocks) over n_layers layers of
 * row_floats each, for up to max_seqs sequences of up to max_seq_len positions. NULL if the
 * budget holds not even one block. */
kv_cache *kv_new(int n_layers, int row_floats, size_t budget_tokens, int max_seqs, int max_seq_len);
void kv_free(kv_cache *kv);         /* kv_free(NULL) does nothing */
/* A new empty sequence: its id (>= 0), or DH_EBUSY when max_seqs are open. */
int kv_seq_open(kv_cache *kv);
/* Close seq and return its blocks to the free list. */
void kv_seq_close(kv_cache *kv, int seq);
/* Make positions [0, n) of seq writable: 0, DH_ENOMEM when the free blocks do not suffice
 * (nothing is taken then), DH_EINVAL when n exceeds max_seq_len. */
int kv_seq_reserve(kv_cache *kv, int seq, int n);
/* Positions seq can hold without taking more blocks. */
int kv_seq_capacity(const kv_cache *kv, int seq);
/* The row of (seq, layer, pos): [row_floats]. Borrowed: valid until kv_seq_close(seq). */
float *kv_row(kv_cache *kv, int seq, int layer, int pos);
const float *kv_row_c(const kv_cache *kv, int seq, int layer, int pos);
/* Accounting, in positions. */
size_t kv_total_tokens(const kv_cache *kv);
size_t kv_free_tokens(const kv_cache *kv);
int kv_max_seq_len(const kv_cache *kv);
size_t kv_bytes_per_token(const kv_cache *kv);
#endif
