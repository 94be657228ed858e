/* kvcache.c: the paged latent cache.
 *
 * One pool, [n_layers][n_blocks][KV_BLOCK][row] floats: a block is the same KV_BLOCK positions
 * of every layer (a sequence grows all layers at once), and a layer's rows of consecutive
 * blocks are contiguous. Free blocks are a stack of indices, popped in ascending order (and
 * pushed back so by a close), so a sequence's blocks are mostly runs of consecutive ones and
 * decode attention reads a layer's cache as one stream, which the hardware prefetcher and the
 * dot kernel's prefetch ahead follow. With each block's layers side by side instead, a
 * layer's blocks lay n_layers blocks apart and each started cold: genesis-5b q4k decode after
 * 4096 positions spent 29.8-39.8 ms a step in attention against 26.9-33.9 (AMD EPYC Zen 4,
 * docs/performance.md). Block tables are preallocated for max_seqs sequences of max_seq_len
 * positions, so neither reserving positions nor a decode step allocates. The pool is calloc'd:
 * the kernel hands out its pages as they are first written, so an unused budget costs address
 * space, not memory (with transparent huge pages, the first blocks touch up to a 2 MiB page a
 * layer). */
#include "kvcache.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"

struct kv_cache {
    int n_layers, row;
    int n_blocks, max_seqs, max_blocks; /* max_blocks: per sequence */
    float *pool;
    int *free_stack, n_free;
    int *tables;     /* [max_seqs][max_blocks] */
    int *n_held;     /* blocks held per sequence, -1 when the slot is closed */
    int max_seq_len;
};

kv_cache *kv_new(int n_layers, int row_floats, size_t budget_tokens, int max_seqs, int max_seq_len) {
    size_t n_blocks = budget_tokens / KV_BLOCK;
    if (n_blocks == 0 || max_seqs <= 0 || max_seq_len <= 0) return NULL;
    if (n_blocks > 1u << 30) n_blocks = 1u << 30;
    kv_cache *kv = xcalloc(1, sizeof *kv);
    kv->n_layers = n_layers;
    kv->row = row_floats;
    kv->n_blocks = (int)n_blocks;
    kv->max_seqs = max_seqs;
    kv->max_seq_len = max_seq_len;
    kv->max_blocks = (max_seq_len + KV_BLOCK - 1) / KV_BLOCK;
    kv->pool = xcalloc(xmul(xmul(n_blocks, (size_t)n_layers), (size_t)KV_BLOCK * row_floats), sizeof(float));
    kv->free_stack = xmalloc(n_blocks * sizeof *kv->free_stack);
    for (int i = 0; i < kv->n_blocks; i++) kv->free_stack[i] = kv->n_blocks - 1 - i;
    kv->n_free = kv->n_blocks;
    kv->tables = xmalloc(xmul((size_t)max_seqs * kv->max_blocks, sizeof *kv->tables));
    kv->n_held = xmalloc((size_t)max_seqs * sizeof *kv->n_held);
    for (int s = 0; s < max_seqs; s++) kv->n_held[s] = -1;
    return kv;
}

void kv_free(kv_cache *kv) {
    if (!kv) return;
    free(kv->pool);
    free(kv->free_stack);
    free(kv->tables);
    free(kv->n_held);
    free(kv);
}

int kv_seq_open(kv_cache *kv) {
    for (int s = 0; s < kv->max_seqs; s++)
        if (kv->n_held[s] < 0) {
            kv->n_held[s] = 0;
            return s;
        }
    return DH_EBUSY;
}

void kv_seq_close(kv_cache *kv, int seq) {
    DH_ASSERT(seq >= 0 && seq < kv->max_seqs && kv->n_held[seq] >= 0);
    const int *t = kv->tables + (size_t)seq * kv->max_blocks;
    for (int i = kv->n_held[seq] - 1; i >= 0; i--) kv->free_stack[kv->n_free++] = t[i];
    kv->n_held[seq] = -1;
}

int kv_seq_reserve(kv_cache *kv, int seq, int n) {
    DH_ASSERT(seq >= 0 && seq < kv->max_seqs && kv->n_held[seq] >= 0);
    if (n > kv->max_seq_len) return DH_EINVAL;
    int need = (n + KV_BLOCK - 1) / KV_BLOCK - kv->n_held[seq];
    if (need <= 0) return 0;
    if (need > kv->n_free) return DH_ENOMEM;
    int *t = kv->tables + (size_t)seq * kv->max_blocks;
    for (int i = 0; i < need; i++) t[kv->n_held[seq]++] = kv->free_stack[--kv->n_free];
    return 0;
}

int kv_seq_capacity(const kv_cache *kv, int seq) {
    DH_ASSERT(seq >= 0 && seq < kv->max_seqs);
    return kv->n_held[seq] < 0 ? 0 : kv->n_held[seq] * KV_BLOCK;
}

const float *kv_row_c(const kv_cache *kv, int seq, int layer, int pos) {
    DH_ASSERT(pos >= 0 && pos < kv->n_held[seq] * KV_BLOCK && layer < kv->n_layers);
    int b = kv->tables[(size_t)seq * kv->max_blocks + pos / KV_BLOCK];
    size_t off = (((size_t)layer * kv->n_blocks + b) * KV_BLOCK + pos % KV_BLOCK) * kv->row;
    return kv->pool + off;
}

float *kv_row(kv_cache *kv, int seq, int layer, int pos) { return (float *)kv_row_c(kv, seq, layer, pos); }

size_t kv_total_tokens(const kv_cache *kv) { return (size_t)kv->n_blocks * KV_BLOCK; }
size_t kv_free_tokens(const kv_cache *kv) { return (size_t)kv->n_free * KV_BLOCK; }
int kv_max_seq_len(const kv_cache *kv) { return kv->max_seq_len; }
size_t kv_bytes_per_token(const kv_cache *kv) { return (size_t)kv->n_layers * kv->row * sizeof(float); }
