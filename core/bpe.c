/* bpe.c: byte-level BPE as Hugging Face tokenizers runs it, on raw bytes.
 *
 * A byte-level word is a string of GPT-2 "byte characters", one per byte of the UTF-8 text, so
 * the model works on the raw bytes: the initial symbol of byte b is the vocab id of b's byte
 * character, and the vocab and merges are read once into id space. Merges are a hash table
 * from the pair (left id, right id) to (rank, merged id); a word is merged by applying the
 * lowest-rank pair first, the leftmost on ties, until no pair has a merge. That is exactly the
 * order of HF's Word::merge_all (a binary heap of (rank, position) with stale entries skipped).
 * Short words (most words) keep their pair ranks in an array and scan it for the minimum: two
 * lookups per merge and no allocation. Longer words use a 4-ary heap over a linked list of
 * symbols, O(n log n), so a megabyte word without spaces stays well under a second.
 *
 * Repeated words skip the merging through a cache: a fixed table of 32768 slots, indexed by
 * the word's hash, each holding a word of up to 40 bytes and its up to 12 ids inline. Memory
 * is bounded (about 3 MB), a new word simply replaces the slot's old one, and words too long
 * for a slot are never cached. 64 mutexes, striped over the slots, make it thread-safe; the
 * critical section is a compare and a copy. */
#include "bpe.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define BPE_MAX_ID (1 << 24)     /* ids above this are a malformed file, not a big vocab */
#define SMALL_WORD 64            /* up to this many symbols: array scan, else heap */
#define CACHE_SLOTS 32768        /* power of two */
#define CACHE_KEY_MAX 40         /* longest word cached, bytes */
#define CACHE_IDS_MAX 12         /* most ids a cached word may have */
#define CACHE_LOCKS 64           /* power of two, divides CACHE_SLOTS */
#define NO_RANK UINT32_MAX

typedef struct cache_slot {
    uint64_t hash;
    uint8_t key_len;             /* 0: empty */
    uint8_t n_ids;
    unsigned char key[CACHE_KEY_MAX];
    int32_t ids[CACHE_IDS_MAX];
} cache_slot;

typedef struct cache_lock {      /* one mutex per cache line, no false sharing */
    pthread_mutex_t mu;
    char pad[64 - sizeof(pthread_mutex_t) % 64];
} cache_lock;

typedef struct merge_slot {     /* key and value side by side: one cache miss per lookup */
    uint64_t key;                /* left << 32 | right; UINT64_MAX: empty */
    uint64_t val;                /* rank << 32 | merged id */
} merge_slot;

typedef struct str_table {       /* open addressing: string -> id, strings live in a pool */
    int32_t *slot;               /* [mask + 1], id or -1 */
    size_t mask;
    const char *pool;            /* borrowed from the model */
    const uint32_t *off, *len;   /* per id: the key's place in pool */
} str_table;

struct bpe_model {
    int n_vocab;                 /* vocab entries */
    int max_id;                  /* largest id, -1 if none */
    char *pool;                  /* all pieces, back to back */
    uint32_t *off, *len;         /* [max_id + 1]: piece of id in pool; len UINT32_MAX: no entry */
    str_table pieces;            /* piece text -> id */
    int ignore_merges;           /* a word that is a vocab entry is that entry, unmerged */
    char *raw_pool;              /* ignore_merges only: the bytes each piece stands for */
    uint32_t *raw_off, *raw_len;
    str_table raw;               /* raw bytes -> id */
    int byte_id[256];            /* initial symbol of each byte, -1: no token (byte dropped) */
    merge_slot *merges;          /* [merge_mask + 1], open addressing */
    size_t merge_mask;
    int32_t *by_rank;            /* [3 * n_ranks]: left, right, merged id of each rank */
    size_t n_ranks;
    cache_slot *cache;           /* [CACHE_SLOTS] */
    cache_lock *locks;           /* [CACHE_LOCKS] */
};

/* ---- GPT-2 byte-level characters ----------------------------------------------------- */

static uint32_t byte_char[256];   /* byte -> code point */
static int16_t char_byte[324];    /* code point -> byte, -1 if not a byte character */
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

/* The printable Latin-1 bytes stand for themselves; the other 68 get 256, 257, ... in order. */
static void table_init(void) {
    int next = 256;
    for (int i = 0; i < 324; i++) char_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        byte_char[b] = keep ? (uint32_t)b : (uint32_t)next++;
        char_byte[byte_char[b]] = (int16_t)b;
    }
}

static int utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6)); /* byte characters are all below U+0800 */
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

int bpe_bytelevel_decode(const char *piece, size_t len, unsigned char *out) {
    pthread_once(&table_once, table_init);
    const unsigned char *s = (const unsigned char *)piece;
    size_t i = 0;
    int n = 0;
    while (i < len) {
        uint32_t cp;
        if (s[i] < 0x80) {
            cp = s[i++];
        } else if ((s[i] & 0xE0) == 0xC0 && i + 1 < len && (s[i + 1] & 0xC0) == 0x80) {
            cp = ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F);
            i += 2;
        } else {
            return -1; /* three- and four-byte characters are never byte characters */
        }
        if (cp >= 324 || char_byte[cp] < 0) return -1;
        out[n++] = (unsigned char)char_byte[cp];
    }
    return n;
}

/* ---- hashing and tables ------------------------------------------------------------------ */

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ ((uint64_t)n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t k;
        memcpy(&k, s, 8);
        h = (h ^ k) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t k = 0;
    memcpy(&k, s, n);
    h = (h ^ k) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

static size_t pow2_above(size_t n) {
    size_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

static int table_find(const str_table *t, const void *key, size_t n) {
    if (!t->slot) return -1;
    for (size_t i = hash_bytes(key, n) & t->mask;; i = (i + 1) & t->mask) {
        int32_t id = t->slot[i];
        if (id < 0) return -1;
        if (t->len[id] == n && memcmp(t->pool + t->off[id], key, n) == 0) return id;
    }
}

/* Insert id (its key already in the pool); the caller checked the key is new. */
static void table_insert(str_table *t, int id) {
    for (size_t i = hash_bytes(t->pool + t->off[id], t->len[id]) & t->mask;;
         i = (i + 1) & t->mask) {
        if (t->slot[i] < 0) {
            t->slot[i] = id;
            return;
        }
    }
}

static void table_init_slots(str_table *t, size_t n_keys) {
    size_t cap = pow2_above(n_keys * 2 + 1);
    t->slot = xmalloc(xmul(cap, sizeof *t->slot));
    memset(t->slot, 0xFF, cap * sizeof *t->slot);
    t->mask = cap - 1;
}

static inline uint64_t merge_hash(uint64_t key) {
    return (key * 0x9E3779B97F4A7C15ull) ^ ((key * 0x9E3779B97F4A7C15ull) >> 29);
}

/* Rank and merged id of the pair (a, b); NO_RANK when the pair has no merge. */
static inline uint32_t pair_rank(const bpe_model *m, int a, int b, int *merged) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = merge_hash(key) & m->merge_mask;; i = (i + 1) & m->merge_mask) {
        uint64_t k = m->merges[i].key;
        if (k == key) {
            *merged = (int)(uint32_t)m->merges[i].val;
            return (uint32_t)(m->merges[i].val >> 32);
        }
        if (k == UINT64_MAX) return NO_RANK;
    }
}

/* A later duplicate of a pair replaces the earlier one, as HF's HashMap collect does. */
static void merge_put(bpe_model *m, int a, int b, uint32_t rank, int merged) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = merge_hash(key) & m->merge_mask;
    while (m->merges[i].key != UINT64_MAX && m->merges[i].key != key) i = (i + 1) & m->merge_mask;
    m->merges[i].key = key;
    m->merges[i].val = (uint64_t)rank << 32 | (uint32_t)merged;
}

void bpe_ids_push(bpe_ids *a, int id) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = xrealloc(a->v, xmul(a->cap, sizeof *a->v));
    }
    a->v[a->n++] = id;
}

/* ---- loading ------------------------------------------------------------------------------ */

static int is_null_or(const json_t *v, int (*ok)(const json_t *)) {
    return !v || json_is_null(v) || ok(v);
}
static int is_empty_string(const json_t *v) {
    return json_is_string(v) && json_string_length(v) == 0;
}
static int is_zero(const json_t *v) { return json_is_number(v) && json_number_value(v) == 0.0; }
static int is_false(const json_t *v) { return json_is_false(v); }

/* The options of HF's BPE that change results and are not implemented must be off. */
static int check_options(const json_t *model, const char *name) {
    const json_t *type = json_object_get(model, "type");
    if (type && !(json_is_string(type) && strcmp(json_string_value(type), "BPE") == 0)) {
        log_error("%s: model.type: unsupported model \"%s\" (only \"BPE\" is implemented)",
                  name, json_is_string(type) ? json_string_value(type) : "(not a string)");
        return DH_EUNSUPPORTED;
    }
    static const struct {
        const char *key;
        int (*ok)(const json_t *);
        const char *want;
    } opts[] = {
        {"dropout", is_zero, "null or 0 (BPE dropout is not implemented)"},
        {"byte_fallback", is_false, "false (byte fallback is not implemented)"},
        {"continuing_subword_prefix", is_empty_string,
         "null (subword prefixes are not implemented)"},
        {"end_of_word_suffix", is_empty_string, "null (word suffixes are not implemented)"},
    };
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        if (!is_null_or(json_object_get(model, opts[i].key), opts[i].ok)) {
            log_error("%s: model.%s: unsupported value, must be %s", name, opts[i].key,
                      opts[i].want);
            return DH_EUNSUPPORTED;
        }
    }
    const json_t *im = json_object_get(model, "ignore_merges");
    if (im && !json_is_boolean(im) && !json_is_null(im)) {
        log_error("%s: model.ignore_merges: must be true or false", name);
        return DH_EFORMAT;
    }
    return 0;
}

/* "vocab": {piece: id}: the pieces into one pool, the id -> piece arrays, the piece table. */
static int load_vocab(bpe_model *m, const json_t *vocab, const char *name) {
    if (!json_is_object(vocab)) {
        log_error("%s: model.vocab: missing or not an object", name);
        return DH_EFORMAT;
    }
    size_t bytes = 0, n = json_object_size(vocab);
    const char *key;
    const json_t *v;
    m->max_id = -1;
    json_object_foreach((json_t *)vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= BPE_MAX_ID) {
            log_error("%s: model.vocab[\"%s\"]: id must be an integer in [0, %d)", name, key,
                      BPE_MAX_ID);
            return DH_EFORMAT;
        }
        m->max_id = DH_MAX(m->max_id, (int)json_integer_value(v));
        bytes += strlen(key);
    }
    if (bytes >= UINT32_MAX) {
        log_error("%s: model.vocab: too large (%zu bytes of pieces)", name, bytes);
        return DH_EFORMAT;
    }
    size_t n_ids = (size_t)(m->max_id + 1);
    m->n_vocab = (int)n;
    m->pool = xmalloc(bytes + 1);
    m->off = xmalloc(xmul(n_ids + 1, sizeof *m->off));
    m->len = xmalloc(xmul(n_ids + 1, sizeof *m->len));
    memset(m->len, 0xFF, (n_ids + 1) * sizeof *m->len);
    m->pieces = (str_table){.pool = m->pool, .off = m->off, .len = m->len};
    table_init_slots(&m->pieces, n);
    size_t at = 0;
    json_object_foreach((json_t *)vocab, key, v) {
        int id = (int)json_integer_value(v);
        size_t kl = strlen(key);
        if (m->len[id] != UINT32_MAX) {
            log_error("%s: model.vocab[\"%s\"]: id %d is also the id of \"%.*s\"", name, key, id,
                      (int)m->len[id], m->pool + m->off[id]);
            return DH_EFORMAT;
        }
        memcpy(m->pool + at, key, kl);
        m->off[id] = (uint32_t)at;
        m->len[id] = (uint32_t)kl;
        at += kl;
        table_insert(&m->pieces, id); /* keys of a JSON object are distinct */
    }
    return 0;
}

/* For ignore_merges: every piece made only of byte characters, keyed by its raw bytes. */
static void load_raw(bpe_model *m) {
    size_t n_ids = (size_t)(m->max_id + 1), pool_len = 0, at = 0;
    for (size_t id = 0; id < n_ids; id++)
        if (m->len[id] != UINT32_MAX) pool_len += m->len[id]; /* raw is never longer */
    m->raw_pool = xmalloc(pool_len + 1);
    m->raw_off = xmalloc(xmul(n_ids + 1, sizeof *m->raw_off));
    m->raw_len = xmalloc(xmul(n_ids + 1, sizeof *m->raw_len));
    memset(m->raw_len, 0xFF, (n_ids + 1) * sizeof *m->raw_len);
    m->raw = (str_table){.pool = m->raw_pool, .off = m->raw_off, .len = m->raw_len};
    table_init_slots(&m->raw, (size_t)m->n_vocab);
    for (size_t id = 0; id < n_ids; id++) {
        if (m->len[id] == UINT32_MAX) continue;
        int n = bpe_bytelevel_decode(m->pool + m->off[id], m->len[id],
                                     (unsigned char *)m->raw_pool + at);
        if (n <= 0) continue; /* not all byte characters: no word can spell it */
        m->raw_off[id] = (uint32_t)at;
        m->raw_len[id] = (uint32_t)n;
        table_insert(&m->raw, (int)id);
        at += (size_t)n;
    }
}

/* One merge, "a b" or ["a", "b"], into its two parts. */
static int merge_parts(const json_t *e, const char **a, size_t *al, const char **b, size_t *bl) {
    if (json_is_string(e)) {
        const char *s = json_string_value(e), *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' ')) return -1; /* HF: exactly two parts split on ' ' */
        *a = s;
        *al = (size_t)(sp - s);
        *b = sp + 1;
        *bl = strlen(sp + 1);
        return 0;
    }
    if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
        json_is_string(json_array_get(e, 1))) {
        *a = json_string_value(json_array_get(e, 0));
        *al = json_string_length(json_array_get(e, 0));
        *b = json_string_value(json_array_get(e, 1));
        *bl = json_string_length(json_array_get(e, 1));
        return 0;
    }
    return -1;
}

static int load_merges(bpe_model *m, const json_t *merges, const char *name) {
    if (!json_is_array(merges)) {
        log_error("%s: model.merges: missing or not an array", name);
        return DH_EFORMAT;
    }
    size_t n = json_array_size(merges), cap = pow2_above(n * 2 + 1);
    m->merges = xmalloc(xmul(cap, sizeof *m->merges));
    memset(m->merges, 0xFF, cap * sizeof *m->merges);
    m->merge_mask = cap - 1;
    m->by_rank = xmalloc(xmul(3 * n + 1, sizeof *m->by_rank));
    char *cat = NULL;
    size_t cat_cap = 0;
    uint32_t rank = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const json_t *e = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(e) && strncmp(json_string_value(e), "#version", 8) == 0) continue;
        if (merge_parts(e, &a, &al, &b, &bl) != 0) {
            log_error("%s: model.merges[%zu]: not \"a b\" nor [\"a\", \"b\"]", name, i);
            rc = DH_EFORMAT;
            break;
        }
        if (al + bl + 1 > cat_cap) {
            cat_cap = 2 * (al + bl + 1);
            cat = xrealloc(cat, cat_cap);
        }
        memcpy(cat, a, al);
        memcpy(cat + al, b, bl);
        int ia = bpe_piece_id(m, a, al), ib = bpe_piece_id(m, b, bl);
        int im = bpe_piece_id(m, cat, al + bl);
        if (ia < 0 || ib < 0 || im < 0) {
            const char *which = ia < 0 ? a : ib < 0 ? b : cat;
            int wl = (int)(ia < 0 ? al : ib < 0 ? bl : al + bl);
            log_error("%s: model.merges[%zu]: \"%.*s\" is not in the vocab", name, i, wl, which);
            rc = DH_EFORMAT;
            break;
        }
        m->by_rank[3 * rank] = ia;
        m->by_rank[3 * rank + 1] = ib;
        m->by_rank[3 * rank + 2] = im;
        merge_put(m, ia, ib, rank++, im); /* ranks count the merges, "#version" lines not */
    }
    m->n_ranks = rank;
    free(cat);
    return rc;
}

bpe_model *bpe_load(const json_t *model, const char *name) {
    pthread_once(&table_once, table_init);
    if (!json_is_object(model)) {
        log_error("%s: model: missing or not an object", name);
        return NULL;
    }
    if (check_options(model, name) != 0) return NULL;
    bpe_model *m = xcalloc(1, sizeof *m);
    m->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    if (load_vocab(m, json_object_get(model, "vocab"), name) != 0 ||
        load_merges(m, json_object_get(model, "merges"), name) != 0)
        goto fail;
    int missing = 0;
    for (int b = 0; b < 256; b++) {
        char c[2];
        int n = utf8_put(byte_char[b], c);
        m->byte_id[b] = bpe_piece_id(m, c, (size_t)n);
        missing += m->byte_id[b] < 0;
    }
    const json_t *unk = json_object_get(model, "unk_token");
    if (missing && unk && !json_is_null(unk)) {
        log_error("%s: model.unk_token: unknown tokens are not implemented, and %d byte "
                  "characters are not in the vocab", name, missing);
        goto fail;
    }
    if (missing)
        log_warn("%s: %d of the 256 byte characters are not in the vocab; their bytes are "
                 "dropped, as Hugging Face does", name, missing);
    if (m->ignore_merges) load_raw(m);
    m->cache = xcalloc(CACHE_SLOTS, sizeof *m->cache);
    m->locks = xcalloc(CACHE_LOCKS, sizeof *m->locks);
    for (int i = 0; i < CACHE_LOCKS; i++) pthread_mutex_init(&m->locks[i].mu, NULL);
    return m;
fail:
    bpe_free(m);
    return NULL;
}

void bpe_free(bpe_model *m) {
    if (!m) return;
    if (m->locks)
        for (int i = 0; i < CACHE_LOCKS; i++) pthread_mutex_destroy(&m->locks[i].mu);
    free(m->locks);
    free(m->cache);
    free(m->merges);
    free(m->by_rank);
    free(m->raw.slot);
    free(m->raw_pool);
    free(m->raw_off);
    free(m->raw_len);
    free(m->pieces.slot);
    free(m->pool);
    free(m->off);
    free(m->len);
    free(m);
}

int bpe_vocab_count(const bpe_model *m) { return m->n_vocab; }
int bpe_max_id(const bpe_model *m) { return m->max_id; }

int bpe_piece_id(const bpe_model *m, const char *piece, size_t len) {
    return table_find(&m->pieces, piece, len);
}

const char *bpe_piece(const bpe_model *m, int id, size_t *len) {
    if (id < 0 || id > m->max_id || m->len[id] == UINT32_MAX) return NULL;
    *len = m->len[id];
    return m->pool + m->off[id];
}

/* ---- merging ------------------------------------------------------------------------------ */

/* Up to SMALL_WORD symbols: rank[i] is the rank of the pair (sym[i], sym[i+1]). */
static void merge_small(const bpe_model *m, int *sym, int k, bpe_ids *out) {
    uint32_t rank[SMALL_WORD];
    int merged[SMALL_WORD];
    for (int i = 0; i + 1 < k; i++) rank[i] = pair_rank(m, sym[i], sym[i + 1], &merged[i]);
    while (k > 1) {
        uint32_t best = NO_RANK;
        int bi = -1;
        for (int i = 0; i + 1 < k; i++)
            if (rank[i] < best) {
                best = rank[i];
                bi = i;
            }
        if (bi < 0) break;
        // sym[bi] absorbs sym[bi+1]; pairs right of it shift left by one
        sym[bi] = merged[bi];
        memmove(sym + bi + 1, sym + bi + 2, (size_t)(k - bi - 2) * sizeof *sym);
        memmove(rank + bi, rank + bi + 1, (size_t)(k - bi - 2) * sizeof *rank);
        memmove(merged + bi, merged + bi + 1, (size_t)(k - bi - 2) * sizeof *merged);
        k--;
        if (bi > 0) rank[bi - 1] = pair_rank(m, sym[bi - 1], sym[bi], &merged[bi - 1]);
        if (bi + 1 < k) rank[bi] = pair_rank(m, sym[bi], sym[bi + 1], &merged[bi]);
    }
    for (int i = 0; i < k; i++) bpe_ids_push(out, sym[i]);
}

/* Min-heap of rank << 32 | position: lowest rank first, leftmost on ties. Four children per
 * node: half the levels of a binary heap, which matters once the heap outgrows the caches. */
static void heap_sift_down(uint64_t *h, size_t n, size_t i) {
    uint64_t x = h[i];
    for (;;) {
        size_t c = 4 * i + 1, best = c;
        if (c >= n) break;
        for (size_t j = c + 1; j < c + 4 && j < n; j++)
            if (h[j] < h[best]) best = j;
        if (h[best] >= x) break;
        h[i] = h[best];
        i = best;
    }
    h[i] = x;
}

static void heap_push(uint64_t *h, size_t *n, uint64_t x) {
    size_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 4] > x) {
        h[i] = h[(i - 1) / 4];
        i = (i - 1) / 4;
    }
    h[i] = x;
}

static uint64_t heap_pop(uint64_t *h, size_t *n) {
    uint64_t top = h[0];
    h[0] = h[--*n];
    heap_sift_down(h, *n, 0);
    return top;
}

/* Any length: symbols in a linked list, candidate pairs in a heap. An entry is stale when the
 * pair at its position is no longer the pair of its rank (a rank names one pair); stale entries
 * are skipped, as in HF's Word::merge_all. Pops come in rank order, at random positions, so a
 * symbol keeps its id and links together: one cache miss per symbol touched, not three. */
typedef struct sym_node {
    int32_t id;   /* -1 once merged into its left neighbour */
    int32_t prev; /* -1 at the start */
    int32_t next; /* -1 at the end */
} sym_node;

static void merge_large(const bpe_model *m, const int *ids, size_t k, bpe_ids *out) {
    sym_node *s = xmalloc(xmul(k, sizeof *s));
    uint64_t *heap = xmalloc(xmul(3 * k, sizeof *heap)); /* k-1 pairs, 2 more per merge */
    size_t hn = 0;
    int merged;
    uint32_t r;
    for (size_t i = 0; i < k; i++) {
        s[i] = (sym_node){.id = ids[i], .prev = (int32_t)i - 1,
                          .next = i + 1 < k ? (int32_t)(i + 1) : -1};
        if (i + 1 < k && (r = pair_rank(m, ids[i], ids[i + 1], &merged)) != NO_RANK)
            heap[hn++] = (uint64_t)r << 32 | i;
    }
    if (hn > 1) /* heapify: sift down every parent, last first */
        for (size_t i = (hn - 2) / 4 + 1; i-- > 0;) heap_sift_down(heap, hn, i);
    while (hn > 0) {
        uint64_t top = heap_pop(heap, &hn);
        sym_node *a = &s[(uint32_t)top];
        const int32_t *rule = m->by_rank + 3 * (top >> 32);
        if (a->next < 0 || a->id != rule[0] || s[a->next].id != rule[1]) continue;
        // a absorbs its right neighbour b
        sym_node *b = &s[a->next];
        a->id = rule[2];
        b->id = -1;
        a->next = b->next;
        if (b->next >= 0) s[b->next].prev = (int32_t)(a - s);
        if (a->prev >= 0 && (r = pair_rank(m, s[a->prev].id, a->id, &merged)) != NO_RANK)
            heap_push(heap, &hn, (uint64_t)r << 32 | (uint32_t)a->prev);
        if (a->next >= 0 && (r = pair_rank(m, a->id, s[a->next].id, &merged)) != NO_RANK)
            heap_push(heap, &hn, (uint64_t)r << 32 | (uint32_t)(a - s));
    }
    for (int32_t p = 0; p >= 0; p = s[p].next) bpe_ids_push(out, s[p].id);
    free(s);
    free(heap);
}

static void merge_word(const bpe_model *m, const unsigned char *w, size_t n, bpe_ids *out) {
    int small[SMALL_WORD];
    int *sym = n <= SMALL_WORD ? small : xmalloc(xmul(n, sizeof *sym));
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (m->byte_id[w[i]] >= 0) sym[k++] = m->byte_id[w[i]];
    if (k <= SMALL_WORD) {
        if (sym != small) memcpy(small, sym, k * sizeof *sym);
        merge_small(m, small, (int)k, out);
    } else {
        merge_large(m, sym, k, out);
    }
    if (sym != small) free(sym);
}

/* ---- cache ---------------------------------------------------------------------------------- */

static int cache_get(const bpe_model *m, uint64_t h, const unsigned char *w, size_t n,
                     bpe_ids *out) {
    size_t i = h & (CACHE_SLOTS - 1);
    cache_slot *s = &m->cache[i];
    int32_t ids[CACHE_IDS_MAX];
    int n_ids = -1;
    pthread_mutex_lock(&m->locks[i & (CACHE_LOCKS - 1)].mu);
    if (s->hash == h && s->key_len == n && memcmp(s->key, w, n) == 0) {
        n_ids = s->n_ids;
        memcpy(ids, s->ids, (size_t)n_ids * sizeof *ids);
    }
    pthread_mutex_unlock(&m->locks[i & (CACHE_LOCKS - 1)].mu);
    for (int j = 0; j < n_ids; j++) bpe_ids_push(out, ids[j]);
    return n_ids >= 0;
}

static void cache_put(const bpe_model *m, uint64_t h, const unsigned char *w, size_t n,
                      const int *ids, size_t n_ids) {
    if (n_ids > CACHE_IDS_MAX) return;
    size_t i = h & (CACHE_SLOTS - 1);
    cache_slot *s = &m->cache[i];
    pthread_mutex_lock(&m->locks[i & (CACHE_LOCKS - 1)].mu);
    s->hash = h;
    s->key_len = (uint8_t)n;
    s->n_ids = (uint8_t)n_ids;
    memcpy(s->key, w, n);
    for (size_t j = 0; j < n_ids; j++) s->ids[j] = ids[j];
    pthread_mutex_unlock(&m->locks[i & (CACHE_LOCKS - 1)].mu);
}

void bpe_cache_clear(const bpe_model *m) {
    for (size_t l = 0; l < CACHE_LOCKS; l++) {
        pthread_mutex_lock(&m->locks[l].mu);
        for (size_t i = l; i < CACHE_SLOTS; i += CACHE_LOCKS) m->cache[i].key_len = 0;
        pthread_mutex_unlock(&m->locks[l].mu);
    }
}

void bpe_encode_word(const bpe_model *m, const unsigned char *w, size_t n, bpe_ids *out) {
    if (n == 0) return;
    if (m->ignore_merges) {
        int id = table_find(&m->raw, w, n);
        if (id >= 0) {
            bpe_ids_push(out, id);
            return;
        }
    }
    uint64_t h = 0;
    if (n <= CACHE_KEY_MAX) {
        h = hash_bytes(w, n);
        if (cache_get(m, h, w, n, out)) return;
    }
    size_t start = out->n;
    merge_word(m, w, n, out);
    if (n <= CACHE_KEY_MAX) cache_put(m, h, w, n, out->v + start, out->n - start);
}
