/* safetensors.c: the checkpoint reader and writer.
 *
 * A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor
 * names to {dtype, shape, data_offsets}, and the data. The reader reads only the header at
 * open (with pread) and validates everything a corrupt or hostile file could get wrong, so
 * that no later access can run past the file: lengths, offsets, sizes against shape x dtype,
 * overlaps, dtypes. Tensor data is mmap'd lazily, one mapping per tensor covering only its
 * pages, so an expert worker maps (and the kernel reads) only the experts it hosts.
 *
 * A tensor whose data is not aligned to its element size (legal in the format, never seen in
 * practice) is copied into an aligned buffer instead, since the kernels load whole floats.
 *
 * Sharded checkpoints list their files in model.safetensors.index.json ("weight_map"); each
 * listed tensor must be in the shard the index names. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define MAX_HEADER (100u << 20) /* the format's own limit */

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_N_DTYPES] = {
    [ST_F32] = {"F32", 4},   [ST_BF16] = {"BF16", 2}, [ST_F16] = {"F16", 2},
    [ST_F64] = {"F64", 8},   [ST_I64] = {"I64", 8},   [ST_I32] = {"I32", 4},
    [ST_I16] = {"I16", 2},   [ST_I8] = {"I8", 1},     [ST_U8] = {"U8", 1},
    [ST_U16] = {"U16", 2},   [ST_U32] = {"U32", 4},   [ST_U64] = {"U64", 8},
    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *st_dtype_name(st_dtype t) { return t < ST_N_DTYPES ? dtypes[t].name : "?"; }
size_t st_dtype_size(st_dtype t) { return t < ST_N_DTYPES ? dtypes[t].size : 0; }

typedef struct shard {
    char *path;
    int fd;
    uint64_t size;
} shard;

typedef struct mapping {
    void *base;     /* mmap'd region, or malloc'd copy when copied */
    size_t len;
    const void *data;
    int copied;
} mapping;

struct st_file {
    shard *shards;
    int n_shards;
    st_tensor *tensors;
    mapping *maps;   /* [n], lazily filled */
    int n, cap;
    int *table;      /* open addressing: index+1, 0 empty */
    int table_cap;
    uint64_t mapped;
    char **meta;     /* key, value, key, value ... of the first shard's __metadata__ */
    int n_meta;
};

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static const st_tensor *lookup(const st_file *st, const char *name) {
    if (!st->table_cap) return NULL;
    size_t mask = (size_t)st->table_cap - 1;
    for (size_t i = fnv1a(name) & mask;; i = (i + 1) & mask) {
        int v = st->table[i];
        if (!v) return NULL;
        if (strcmp(st->tensors[v - 1].name, name) == 0) return &st->tensors[v - 1];
    }
}

static void build_table(st_file *st) {
    int cap = 16;
    while (cap < st->n * 2) cap *= 2;
    st->table = xcalloc((size_t)cap, sizeof *st->table);
    st->table_cap = cap;
    for (int k = 0; k < st->n; k++) {
        size_t mask = (size_t)cap - 1;
        size_t i = fnv1a(st->tensors[k].name) & mask;
        while (st->table[i]) i = (i + 1) & mask;
        st->table[i] = k + 1;
    }
}

static int parse_dtype(const char *s) {
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (strcmp(s, dtypes[i].name) == 0) return i;
    return -1;
}

static int u64_of(json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return 0;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

/* One header entry into t; 0 or DH_EFORMAT with a message. */
static int parse_entry(const char *path, const char *name, json_t *v, uint64_t data_len, st_tensor *t) {
    if (!json_is_object(v)) {
        log_error("%s: tensor %s: header entry is not an object", path, name);
        return DH_EFORMAT;
    }
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2) {
        log_error("%s: tensor %s: needs dtype (string), shape (array) and data_offsets ([begin, end])",
                  path, name);
        return DH_EFORMAT;
    }
    int dt = parse_dtype(json_string_value(jd));
    if (dt < 0) {
        log_error("%s: tensor %s: unknown dtype \"%s\"", path, name, json_string_value(jd));
        return DH_EFORMAT;
    }
    t->dtype = (st_dtype)dt;
    if (json_array_size(js) > ST_MAX_DIMS) {
        log_error("%s: tensor %s: %zu dimensions (at most %d)", path, name, json_array_size(js), ST_MAX_DIMS);
        return DH_EFORMAT;
    }
    t->ndim = (int)json_array_size(js);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        uint64_t s;
        if (!u64_of(json_array_get(js, (size_t)d), &s) || s > (1ULL << 40)) {
            log_error("%s: tensor %s: shape[%d] is not a reasonable non-negative integer", path, name, d);
            return DH_EFORMAT;
        }
        t->shape[d] = (int64_t)s;
        if (s && numel > UINT64_MAX / s / 8) {
            log_error("%s: tensor %s: shape overflows", path, name);
            return DH_EFORMAT;
        }
        numel *= s;
    }
    t->numel = numel;
    uint64_t b, e;
    if (!u64_of(json_array_get(jo, 0), &b) || !u64_of(json_array_get(jo, 1), &e) || b > e) {
        log_error("%s: tensor %s: data_offsets must be non-negative integers with begin <= end", path, name);
        return DH_EFORMAT;
    }
    if (e > data_len) {
        log_error("%s: tensor %s: data_offsets [%llu, %llu] run past the end of the data (%llu bytes): "
                  "truncated or corrupt file",
                  path, name, (unsigned long long)b, (unsigned long long)e, (unsigned long long)data_len);
        return DH_EFORMAT;
    }
    uint64_t want = numel * dtypes[dt].size;
    if (e - b != want) {
        log_error("%s: tensor %s: %llu bytes of data, but shape x dtype (%s) needs %llu", path, name,
                  (unsigned long long)(e - b), dtypes[dt].name, (unsigned long long)want);
        return DH_EFORMAT;
    }
    t->nbytes = want;
    t->offset = b; /* relative for now */
    return 0;
}

static int cmp_offset(const void *a, const void *b) {
    const st_tensor *x = *(st_tensor *const *)a, *y = *(st_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : 0;
}

/* Read and validate the header of one shard, appending its tensors. */
static int read_shard(st_file *st, int si) {
    shard *sh = &st->shards[si];
    const char *path = sh->path;
    unsigned char lenbuf[8];
    if (sh->size < 8 || pread(sh->fd, lenbuf, 8, 0) != 8) {
        log_error("%s: shorter than the 8-byte header length: not a safetensors file", path);
        return DH_EFORMAT;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | lenbuf[i];
    if (hlen > sh->size - 8 || hlen > MAX_HEADER) {
        log_error("%s: header length %llu runs past the end of the file (%llu bytes)", path,
                  (unsigned long long)hlen, (unsigned long long)sh->size);
        return DH_EFORMAT;
    }
    char *hdr = xmalloc((size_t)hlen + 1);
    if (pread(sh->fd, hdr, (size_t)hlen, 8) != (ssize_t)hlen) {
        log_error("%s: cannot read the %llu-byte header", path, (unsigned long long)hlen);
        free(hdr);
        return DH_EIO;
    }
    hdr[hlen] = 0;
    json_error_t jerr;
    json_t *root = json_loadb(hdr, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    free(hdr);
    if (!root || !json_is_object(root)) {
        log_error("%s: the header is not a JSON object (%s)", path, root ? "wrong type" : jerr.text);
        json_decref(root);
        return DH_EFORMAT;
    }
    uint64_t data_start = 8 + hlen, data_len = sh->size - data_start;
    int first = st->n, rc = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            const char *mk;
            json_t *mv;
            if (si == 0 && json_is_object(val))
                json_object_foreach(val, mk, mv) {
                    if (!json_is_string(mv)) continue;
                    st->meta = xrealloc(st->meta, (size_t)(st->n_meta + 2) * sizeof *st->meta);
                    st->meta[st->n_meta++] = xstrdup(mk);
                    st->meta[st->n_meta++] = xstrdup(json_string_value(mv));
                }
            continue;
        }
        if (lookup(st, key)) {
            log_error("%s: tensor %s appears twice in the checkpoint", path, key);
            rc = DH_EFORMAT;
            break;
        }
        if (st->n == st->cap) {
            st->cap = st->cap ? st->cap * 2 : 256;
            st->tensors = xrealloc(st->tensors, (size_t)st->cap * sizeof *st->tensors);
        }
        st_tensor *t = &st->tensors[st->n];
        memset(t, 0, sizeof *t);
        rc = parse_entry(path, key, val, data_len, t);
        if (rc) break;
        t->name = xstrdup(key);
        t->shard = si;
        st->n++;
    }
    json_decref(root);
    if (rc) return rc;
    /* overlaps: sort this shard's tensors by offset */
    int m = st->n - first;
    st_tensor **order = xmalloc((size_t)(m ? m : 1) * sizeof *order);
    for (int i = 0; i < m; i++) order[i] = &st->tensors[first + i];
    qsort(order, (size_t)m, sizeof *order, cmp_offset);
    uint64_t end = 0;
    const char *prev = NULL;
    for (int i = 0; i < m && !rc; i++) {
        if (order[i]->nbytes == 0) continue;
        if (order[i]->offset < end) {
            log_error("%s: tensors %s and %s overlap in the data section", path, prev, order[i]->name);
            rc = DH_EFORMAT;
        }
        end = order[i]->offset + order[i]->nbytes;
        prev = order[i]->name;
    }
    free(order);
    for (int i = first; i < st->n; i++) st->tensors[i].offset += data_start;
    /* the table is rebuilt by the caller once all shards are read */
    free(st->table);
    build_table(st);
    return rc;
}

static int add_shard(st_file *st, const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        log_error("%s: cannot open: %s", path, strerror(errno));
        return errno == ENOENT ? DH_ENOTFOUND : DH_EIO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        log_error("%s: not a regular file", path);
        close(fd);
        return DH_EIO;
    }
    st->shards = xrealloc(st->shards, (size_t)(st->n_shards + 1) * sizeof *st->shards);
    st->shards[st->n_shards] = (shard){.path = xstrdup(path), .fd = fd, .size = (uint64_t)sb.st_size};
    st->n_shards++;
    return read_shard(st, st->n_shards - 1);
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static int open_index(st_file *st, const char *dir, const char *index_path) {
    json_error_t jerr;
    json_t *root = json_load_file(index_path, 0, &jerr);
    if (!root) {
        log_error("%s: not valid JSON: %s (line %d)", index_path, jerr.text, jerr.line);
        return DH_EFORMAT;
    }
    json_t *wm = json_object_get(root, "weight_map");
    int rc = 0;
    if (!json_is_object(wm)) {
        log_error("%s: \"weight_map\" must be an object of tensor name to file", index_path);
        rc = DH_EFORMAT;
    }
    const char *key;
    json_t *val;
    /* open each distinct shard once, in order of first mention */
    json_object_foreach(wm, key, val) {
        if (rc) break;
        const char *file = json_string_value(val);
        if (!file || !*file || file[0] == '/' || strstr(file, "..")) {
            log_error("%s: tensor %s: shard name must be a plain relative file name", index_path, key);
            rc = DH_EFORMAT;
            break;
        }
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, file);
        int seen = 0;
        for (int i = 0; i < st->n_shards; i++) seen |= strcmp(st->shards[i].path, path) == 0;
        if (!seen) rc = add_shard(st, path);
    }
    json_object_foreach(wm, key, val) {
        if (rc) break;
        const st_tensor *t = lookup(st, key);
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, json_string_value(val));
        if (!t || strcmp(st->shards[t->shard].path, path) != 0) {
            log_error("%s: tensor %s is listed in %s but is not in that file", index_path, key,
                      json_string_value(val));
            rc = DH_EFORMAT;
        }
    }
    json_decref(root);
    return rc;
}

st_file *st_open(const char *path, int *err) {
    st_file *st = xcalloc(1, sizeof *st);
    struct stat sb;
    int rc;
    if (stat(path, &sb) != 0) {
        log_error("%s: no such checkpoint file or directory", path);
        rc = DH_ENOTFOUND;
    } else if (S_ISDIR(sb.st_mode)) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
        if (file_exists(p)) {
            rc = open_index(st, path, p);
        } else {
            snprintf(p, sizeof p, "%s/model.safetensors", path);
            if (file_exists(p)) {
                rc = add_shard(st, p);
            } else {
                log_error("%s: neither model.safetensors.index.json nor model.safetensors is here", path);
                rc = DH_ENOTFOUND;
            }
        }
    } else {
        rc = add_shard(st, path);
    }
    if (rc == 0) st->maps = xcalloc((size_t)(st->n ? st->n : 1), sizeof *st->maps);
    if (err) *err = rc;
    if (rc) {
        st_close(st);
        return NULL;
    }
    return st;
}

void st_close(st_file *st) {
    if (!st) return;
    for (int i = 0; i < st->n; i++) {
        if (st->maps && st->maps[i].base) {
            if (st->maps[i].copied)
                free(st->maps[i].base);
            else
                munmap(st->maps[i].base, st->maps[i].len);
        }
        free((char *)st->tensors[i].name);
    }
    for (int i = 0; i < st->n_shards; i++) {
        close(st->shards[i].fd);
        free(st->shards[i].path);
    }
    for (int i = 0; i < st->n_meta; i++) free(st->meta[i]);
    free(st->meta);
    free(st->maps);
    free(st->shards);
    free(st->tensors);
    free(st->table);
    free(st);
}

int st_count(const st_file *st) { return st->n; }
const st_tensor *st_at(const st_file *st, int i) { return &st->tensors[i]; }
const st_tensor *st_find(const st_file *st, const char *name) { return lookup(st, name); }
uint64_t st_mapped_bytes(const st_file *st) { return st->mapped; }

void st_release(st_file *st, const st_tensor *t) {
    int i = (int)(t - st->tensors);
    DH_ASSERT(i >= 0 && i < st->n);
    mapping *m = &st->maps[i];
    if (!m->base) return;
    if (m->copied)
        free(m->base);
    else
        munmap(m->base, m->len);
    st->mapped -= t->nbytes;
    memset(m, 0, sizeof *m);
}

const char *st_metadata(const st_file *st, const char *key) {
    for (int i = 0; i + 1 < st->n_meta; i += 2)
        if (strcmp(st->meta[i], key) == 0) return st->meta[i + 1];
    return NULL;
}

const void *st_data(st_file *st, const st_tensor *t) {
    int i = (int)(t - st->tensors);
    DH_ASSERT(i >= 0 && i < st->n);
    mapping *m = &st->maps[i];
    if (m->base) return m->data;
    static const uint64_t empty = 0;
    if (t->nbytes == 0) return &empty;
    const shard *sh = &st->shards[t->shard];
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t start = t->offset & ~(uint64_t)(pg - 1);
    size_t len = (size_t)(t->offset + t->nbytes - start);
    void *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, sh->fd, (off_t)start);
    if (p == MAP_FAILED) {
        log_error("%s: tensor %s: mmap of %zu bytes failed: %s", sh->path, t->name, len, strerror(errno));
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)p + (t->offset - start);
    size_t es = st_dtype_size(t->dtype);
    if (es > 1 && ((uintptr_t)d % es) != 0) {
        /* misaligned for its element type: keep an aligned copy instead */
        void *copy = NULL;
        if (posix_memalign(&copy, 64, (size_t)t->nbytes) != 0) {
            log_error("%s: tensor %s: cannot allocate an aligned copy", sh->path, t->name);
            munmap(p, len);
            return NULL;
        }
        memcpy(copy, d, (size_t)t->nbytes);
        munmap(p, len);
        *m = (mapping){.base = copy, .len = (size_t)t->nbytes, .data = copy, .copied = 1};
    } else {
        *m = (mapping){.base = p, .len = len, .data = d};
    }
    st->mapped += t->nbytes;
    return m->data;
}

/* --- writer --- */

struct st_writer {
    FILE *f;
    char *path;
    uint64_t expect, written;
};

st_writer *stw_open(const char *path, const stw_tensor *ts, int n) {
    return stw_open_meta(path, ts, n, NULL, NULL, 0);
}

st_writer *stw_open_meta(const char *path, const stw_tensor *ts, int n, const char *const *keys,
                         const char *const *values, int n_meta) {
    json_t *root = json_object();
    if (n_meta > 0) {
        json_t *meta = json_object();
        for (int i = 0; i < n_meta; i++) json_object_set_new(meta, keys[i], json_string(values[i]));
        json_object_set_new(root, "__metadata__", meta);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        json_t *shape = json_array();
        uint64_t numel = 1;
        for (int d = 0; d < ts[i].ndim; d++) {
            json_array_append_new(shape, json_integer(ts[i].shape[d]));
            numel *= (uint64_t)ts[i].shape[d];
        }
        uint64_t nb = numel * st_dtype_size(ts[i].dtype);
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", st_dtype_name(ts[i].dtype), "shape",
                              shape, "data_offsets", (json_int_t)off, (json_int_t)(off + nb));
        json_object_set_new(root, ts[i].name, e);
        off += nb;
    }
    char *hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
    FILE *f = fopen(path, "wb");
    if (!f) {
        log_error("%s: cannot create: %s", path, strerror(errno));
        free(hdr);
        return NULL;
    }
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(lb, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    for (size_t i = hl; i < padded && ok; i++) ok = fputc(' ', f) != EOF;
    free(hdr);
    if (!ok) {
        log_error("%s: write failed: %s", path, strerror(errno));
        fclose(f);
        return NULL;
    }
    st_writer *w = xcalloc(1, sizeof *w);
    w->f = f;
    w->path = xstrdup(path);
    w->expect = off;
    return w;
}

int stw_write(st_writer *w, const void *data, size_t nbytes) {
    if (fwrite(data, 1, nbytes, w->f) != nbytes) {
        log_error("%s: write failed: %s", w->path, strerror(errno));
        return DH_EIO;
    }
    w->written += nbytes;
    return 0;
}

int stw_close(st_writer *w) {
    if (!w) return 0;
    int rc = 0;
    if (w->written != w->expect) {
        log_error("%s: wrote %llu bytes of tensor data, the header declares %llu", w->path,
                  (unsigned long long)w->written, (unsigned long long)w->expect);
        rc = DH_EFORMAT;
    }
    if (fclose(w->f) != 0) {
        log_error("%s: close failed: %s", w->path, strerror(errno));
        rc = DH_EIO;
    }
    free(w->path);
    free(w);
    return rc;
}
