/* tracefile.c: routing traces on disk (see tracefile.h and docs/placement.md).
 *
 * Layout: "DHTRACE1", then messages, each a uint32 little-endian length and the packed
 * protobuf: one darkhorse.TraceHeader, then darkhorse.RouteRecord messages to the end. The
 * length prefix makes a file appendable and lets a reader stop cleanly at a record cut short
 * by a crash. The whole file may be gzip-compressed (gzread reads plain files as they are).
 *
 * A record holds sequences (RouteSeq): an id, a domain, the position of its first token here
 * and, per (token, record layer), K expert ids and K gate weights. The importer writes one
 * record per sequence with every layer; live recording one record per engine step, with the
 * step's sequences, and a separate record with only the MTP layer when the MTP block runs.
 *
 * Reading merges the records per (domain, sequence id) in two passes over the unpacked
 * records: the first finds each sequence's first and last position, the second fills the
 * [N, L, K] arrays (tokens no record covered for a layer keep id -1). Weights are floats,
 * or integers in TraceHeader.weight_unit (the ESFT source is rounded to 1e-4, so its weights
 * are stored exactly in a quarter of the space). */
#include "tracefile.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "core/common.h"
#include "darkhorse.pb-c.h"

#define TF_MAGIC "DHTRACE1"
#define TF_MAGIC_LEN 8
#define TF_MAX_MSG (1u << 30) /* a length beyond this is corruption, not a record */

/* ---- reading ---- */

/* The whole (decompressed) file in memory; a read error after some data is a warning (a
 * gzip stream cut short by a crash), and the bytes before it are kept. */
static unsigned char *slurp(const char *path, size_t *len) {
    gzFile g = gzopen(path, "rb");
    if (!g) {
        log_error("%s: cannot open the trace: %s", path, strerror(errno));
        return NULL;
    }
    gzbuffer(g, 1 << 18);
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = xmalloc(cap);
    for (;;) {
        if (cap - n < (1 << 20)) buf = xrealloc(buf, cap *= 2);
        int r = gzread(g, buf + n, (unsigned)(cap - n));
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        if (r < 0) {
            int zerr;
            const char *msg = gzerror(g, &zerr);
            if (n == 0) {
                log_error("%s: cannot read the trace: %s", path, msg);
                free(buf);
                gzclose(g);
                return NULL;
            }
            log_warn("%s: the compressed stream ends early (%s): reading the %zu bytes before it", path, msg, n);
        }
        break;
    }
    gzclose(g);
    *len = n;
    return buf;
}

static uint32_t get_u32le(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The next message's bytes at *off: 1 with *msg and *mlen set, 0 at a clean end, -1 when the
 * message is cut short (warned: a truncated last record). */
static int next_msg(const char *path, const unsigned char *buf, size_t len, size_t *off, int index,
                    const unsigned char **msg, size_t *mlen) {
    if (*off == len) return 0;
    if (len - *off < 4) {
        log_warn("%s: record %d is truncated (%zu bytes of its length): ignored, %d whole record%s read", path,
                 index, len - *off, index - 1, index == 2 ? "" : "s");
        return -1;
    }
    uint32_t n = get_u32le(buf + *off);
    if (n > len - *off - 4) {
        log_warn("%s: record %d is truncated (%zu of %u bytes): ignored, %d whole record%s read", path, index,
                 len - *off - 4, n, index - 1, index == 2 ? "" : "s");
        return -1;
    }
    *msg = buf + *off + 4, *mlen = n;
    *off += 4 + (size_t)n;
    return 1;
}

/* Open-addressing map from (domain, sequence id) to a sequence index. */
typedef struct seqmap {
    size_t cap;       /* power of two */
    int64_t *key_id;  /* [cap] */
    int *key_dom;     /* [cap] */
    int *val;         /* [cap], -1 empty */
} seqmap;

static void map_init(seqmap *m, size_t cap) {
    m->cap = cap;
    m->key_id = xmalloc(cap * sizeof *m->key_id), m->key_dom = xmalloc(cap * sizeof *m->key_dom);
    m->val = xmalloc(cap * sizeof *m->val);
    for (size_t i = 0; i < cap; i++) m->val[i] = -1;
}

static void map_free(seqmap *m) { free(m->key_id), free(m->key_dom), free(m->val); }

static size_t map_slot(const seqmap *m, int64_t id, int dom) {
    uint64_t h = ((uint64_t)id * 0x9E3779B97F4A7C15ull) ^ ((uint64_t)dom * 0xC2B2AE3D27D4EB4Full);
    size_t i = (size_t)(h >> 17) & (m->cap - 1);
    while (m->val[i] >= 0 && (m->key_id[i] != id || m->key_dom[i] != dom)) i = (i + 1) & (m->cap - 1);
    return i;
}

/* The index of (id, dom), or -1 (and *slot where it would go). */
static int map_find(const seqmap *m, int64_t id, int dom, size_t *slot) {
    *slot = map_slot(m, id, dom);
    return m->val[*slot];
}

static void map_put(seqmap *m, int64_t id, int dom, int v) {
    if (2 * (size_t)(v + 1) > m->cap) { /* keep the load under 1/2: rehash into twice the room */
        seqmap n;
        map_init(&n, m->cap * 2);
        for (size_t i = 0; i < m->cap; i++)
            if (m->val[i] >= 0) {
                size_t s = map_slot(&n, m->key_id[i], m->key_dom[i]);
                n.key_id[s] = m->key_id[i], n.key_dom[s] = m->key_dom[i], n.val[s] = m->val[i];
            }
        map_free(m);
        *m = n;
    }
    size_t s = map_slot(m, id, dom);
    m->key_id[s] = id, m->key_dom[s] = dom, m->val[s] = v;
}

typedef struct span {
    int64_t id;
    int domain, start, end; /* positions [start, end) */
} span;

/* The header into t's shape (a new trace with no tokens yet is made by the caller). */
static int check_header(const char *path, const Darkhorse__TraceHeader *h) {
    if (h->version != 1) {
        log_error("%s: trace format version %u is not supported (1 is)", path, h->version);
        return DH_EFORMAT;
    }
    if (h->layers < 1 || h->layers > 4096 || h->experts < 1 || h->experts > 32767 || h->top_k < 1 ||
        h->top_k > h->experts || h->n_domain_names > TRACE_MAX_DOMAINS || !(h->weight_unit >= 0)) {
        log_error("%s: header: impossible shape (layers %u, experts %u, top_k %u, %zu domains, weight unit %g)",
                  path, h->layers, h->experts, h->top_k, h->n_domain_names, (double)h->weight_unit);
        return DH_EFORMAT;
    }
    return 0;
}

/* Check one record against the header: 0, or DH_EFORMAT naming the record (1-based). */
static int check_record(const char *path, int ri, const Darkhorse__TraceHeader *h, const Darkhorse__RouteRecord *r) {
    size_t nl = r->n_layers ? r->n_layers : h->layers;
    for (size_t i = 0; i < r->n_layers; i++)
        if (r->layers[i] >= h->layers || (i && r->layers[i] <= r->layers[i - 1])) {
            log_error("%s: record %d: layer list is not ascending within 0..%u", path, ri, h->layers - 1);
            return DH_EFORMAT;
        }
    for (size_t s = 0; s < r->n_seqs; s++) {
        const Darkhorse__RouteSeq *q = r->seqs[s];
        size_t n = (size_t)q->n_tokens * nl * h->top_k;
        size_t nw = h->weight_unit > 0 ? q->n_weight_units : q->n_weights;
        int dom_ok = h->n_domain_names ? q->domain < h->n_domain_names : q->domain == 0;
        if (q->n_experts != n || nw != n || !dom_ok || q->start_pos > (1u << 30)) {
            log_error("%s: record %d, sequence %lld: %zu ids and %zu weights for %u tokens x %zu layers x %u "
                      "(domain %u of %zu)", path, ri, (long long)q->seq_id, q->n_experts, nw, q->n_tokens, nl,
                      h->top_k, q->domain, h->n_domain_names);
            return DH_EFORMAT;
        }
        for (size_t i = 0; i < n; i++)
            if (q->experts[i] >= h->experts) {
                log_error("%s: record %d, sequence %lld, token %zu: expert id %u is not below %u", path, ri,
                          (long long)q->seq_id, i / (nl * h->top_k), q->experts[i], h->experts);
                return DH_EFORMAT;
            }
    }
    return 0;
}

/* Pass 1: every sequence's span of positions. */
static span *find_spans(Darkhorse__RouteRecord **recs, int n_recs, seqmap *map, int *n_spans) {
    int n = 0, cap = 64;
    span *sp = xmalloc((size_t)cap * sizeof *sp);
    for (int r = 0; r < n_recs; r++)
        for (size_t s = 0; s < recs[r]->n_seqs; s++) {
            const Darkhorse__RouteSeq *q = recs[r]->seqs[s];
            size_t slot;
            int i = map_find(map, q->seq_id, (int)q->domain, &slot);
            int a = (int)q->start_pos, b = a + (int)q->n_tokens;
            if (i < 0) {
                if (n == cap) sp = xrealloc(sp, (size_t)(cap *= 2) * sizeof *sp);
                sp[n] = (span){.id = q->seq_id, .domain = (int)q->domain, .start = a, .end = b};
                map_put(map, q->seq_id, (int)q->domain, n++);
            } else {
                sp[i].start = DH_MIN(sp[i].start, a), sp[i].end = DH_MAX(sp[i].end, b);
            }
        }
    *n_spans = n;
    return sp;
}

/* Pass 2: copy every record's tokens into t. */
static void fill(trace *t, Darkhorse__RouteRecord **recs, int n_recs, const seqmap *map, float unit) {
    int L = t->n_layers, K = t->top_k;
    for (int r = 0; r < n_recs; r++) {
        const Darkhorse__RouteRecord *rec = recs[r];
        int nl = rec->n_layers ? (int)rec->n_layers : L;
        for (size_t s = 0; s < rec->n_seqs; s++) {
            const Darkhorse__RouteSeq *q = rec->seqs[s];
            size_t slot;
            const trace_seq *ts = &t->seqs[map_find(map, q->seq_id, (int)q->domain, &slot)];
            for (uint32_t i = 0; i < q->n_tokens; i++) {
                size_t tok = ts->first + (size_t)((int)q->start_pos + (int)i - ts->start_pos);
                for (int j = 0; j < nl; j++) {
                    int l = rec->n_layers ? (int)rec->layers[j] : j;
                    size_t src = ((size_t)i * nl + j) * K, dst = (tok * L + l) * K;
                    for (int k = 0; k < K; k++) {
                        t->ids[dst + k] = (int16_t)q->experts[src + k];
                        t->weights[dst + k] = unit > 0 ? (float)(q->weight_units[src + k] * (double)unit)
                                                       : q->weights[src + k];
                    }
                }
            }
        }
    }
}

/* Build the trace from the header and the unpacked records. */
static trace *assemble(const Darkhorse__TraceHeader *h, Darkhorse__RouteRecord **recs, int n_recs) {
    seqmap map;
    map_init(&map, 64);
    int n_spans;
    span *sp = find_spans(recs, n_recs, &map, &n_spans);
    size_t N = 0;
    for (int i = 0; i < n_spans; i++) N += (size_t)(sp[i].end - sp[i].start);
    trace *t = trace_new((int)h->layers, (int)h->experts, (int)h->top_k, n_spans, N);
    snprintf(t->source, sizeof t->source, "%s", h->source ? h->source : "");
    t->hidden_size = (int)h->hidden_size, t->ffn_size = (int)h->ffn_size, t->weight_unit = h->weight_unit;
    t->n_domains = (int)h->n_domain_names;
    for (int d = 0; d < t->n_domains; d++) snprintf(t->domain_names[d], TRACE_NAME_MAX, "%s", h->domain_names[d]);
    if (t->n_domains == 0) t->n_domains = 1, snprintf(t->domain_names[0], TRACE_NAME_MAX, "all");
    size_t first = 0;
    for (int i = 0; i < n_spans; i++) {
        t->seqs[i] = (trace_seq){.id = sp[i].id, .domain = sp[i].domain, .start_pos = sp[i].start,
                                 .n_tokens = sp[i].end - sp[i].start, .first = first};
        first += (size_t)(sp[i].end - sp[i].start);
    }
    for (size_t i = 0; i < N * (size_t)t->n_layers * t->top_k; i++) t->ids[i] = -1;
    fill(t, recs, n_recs, &map, h->weight_unit);
    free(sp);
    map_free(&map);
    return t;
}

trace *tf_read(const char *path) {
    size_t len = 0, off = TF_MAGIC_LEN, mlen;
    unsigned char *buf = slurp(path, &len);
    if (!buf) return NULL;
    trace *t = NULL;
    Darkhorse__TraceHeader *h = NULL;
    Darkhorse__RouteRecord **recs = NULL;
    int n_recs = 0, cap = 0;
    const unsigned char *msg;
    if (len < TF_MAGIC_LEN || memcmp(buf, TF_MAGIC, TF_MAGIC_LEN) != 0) {
        log_error("%s: not a Darkhorse trace (it does not start with \"" TF_MAGIC "\")", path);
        goto out;
    }
    if (next_msg(path, buf, len, &off, 0, &msg, &mlen) != 1 ||
        !(h = darkhorse__trace_header__unpack(NULL, mlen, msg)) || check_header(path, h) != 0) {
        if (!h) log_error("%s: the trace header is missing or malformed", path);
        goto out;
    }
    for (int rc; (rc = next_msg(path, buf, len, &off, n_recs + 1, &msg, &mlen)) == 1;) {
        if (n_recs == cap) recs = xrealloc(recs, (size_t)(cap = cap ? 2 * cap : 256) * sizeof *recs);
        recs[n_recs] = darkhorse__route_record__unpack(NULL, mlen, msg);
        if (!recs[n_recs]) {
            log_error("%s: record %d (at byte %zu) is malformed", path, n_recs + 1, off - mlen - 4);
            goto out;
        }
        n_recs++;
        if (check_record(path, n_recs, h, recs[n_recs - 1]) != 0) goto out;
    }
    t = assemble(h, recs, n_recs);
out:
    for (int i = 0; i < n_recs; i++) darkhorse__route_record__free_unpacked(recs[i], NULL);
    free(recs);
    if (h) darkhorse__trace_header__free_unpacked(h, NULL);
    free(buf);
    return t;
}

/* ---- writing ---- */

struct tf_writer {
    gzFile g;
    char *path;
    int L, K;
    float unit;
    int failed;
    uint32_t *ids;           /* scratch [cap_vals] */
    float *w;
    uint32_t *wu;
    size_t cap_vals;
    Darkhorse__RouteSeq *seqs; /* scratch [cap_seqs] */
    Darkhorse__RouteSeq **seqp;
    int cap_seqs;
    uint32_t *layers;        /* [L] */
    unsigned char *pack;     /* scratch [cap_pack] */
    size_t cap_pack;
};

/* Write one length-prefixed message from w->pack. */
static int put_msg(tf_writer *w, size_t n) {
    unsigned char len[4] = {(unsigned char)n, (unsigned char)(n >> 8), (unsigned char)(n >> 16),
                            (unsigned char)(n >> 24)};
    if (n > TF_MAX_MSG || gzwrite(w->g, len, 4) != 4 || (n && gzwrite(w->g, w->pack, (unsigned)n) != (int)n)) {
        int zerr;
        log_error("%s: cannot write the trace: %s", w->path, n > TF_MAX_MSG ? "record too large" : gzerror(w->g, &zerr));
        w->failed = 1;
        return DH_EIO;
    }
    return 0;
}

static void grow_pack(tf_writer *w, size_t n) {
    if (n > w->cap_pack) free(w->pack), w->pack = xmalloc(w->cap_pack = n + n / 2 + 64);
}

static tf_writer *writer_open(const char *path, const trace *hdr, const char *mode) {
    gzFile g = gzopen(path, mode);
    if (!g) {
        log_error("%s: cannot create the trace: %s", path, strerror(errno));
        return NULL;
    }
    tf_writer *w = xcalloc(1, sizeof *w);
    w->g = g, w->path = xstrdup(path);
    w->L = hdr->n_layers, w->K = hdr->top_k, w->unit = hdr->weight_unit > 0 ? hdr->weight_unit : 0;
    w->layers = xmalloc((size_t)w->L * sizeof *w->layers);
    Darkhorse__TraceHeader h = DARKHORSE__TRACE_HEADER__INIT;
    char *names[TRACE_MAX_DOMAINS];
    for (int d = 0; d < hdr->n_domains; d++) names[d] = (char *)hdr->domain_names[d];
    h.version = 1, h.source = (char *)hdr->source;
    h.layers = (uint32_t)hdr->n_layers, h.experts = (uint32_t)hdr->n_experts, h.top_k = (uint32_t)hdr->top_k;
    h.hidden_size = (uint32_t)DH_MAX(hdr->hidden_size, 0), h.ffn_size = (uint32_t)DH_MAX(hdr->ffn_size, 0);
    h.n_domain_names = (size_t)hdr->n_domains, h.domain_names = names, h.weight_unit = w->unit;
    size_t n = darkhorse__trace_header__get_packed_size(&h);
    grow_pack(w, n);
    darkhorse__trace_header__pack(&h, w->pack);
    if (gzwrite(g, TF_MAGIC, TF_MAGIC_LEN) != TF_MAGIC_LEN || put_msg(w, n) != 0) {
        log_error("%s: cannot write the trace header", path);
        tf_writer_close(w);
        return NULL;
    }
    return w;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

tf_writer *tf_writer_open(const char *path, const trace *hdr) {
    tf_writer *w = writer_open(path, hdr, ends_with(path, ".gz") ? "wb6" : "wbT");
    if (w && gzflush(w->g, Z_SYNC_FLUSH) != Z_OK) w->failed = 1;
    return w;
}

/* One record; flushed to the file when flush (live recording), else left to gzip's buffer. */
static int add_record(tf_writer *w, uint64_t step, const int *layers, int n_layers, const tf_part *parts,
                      int n_parts, const int *ids, const float *weights, int flush) {
    int nl = layers ? n_layers : w->L, K = w->K;
    size_t total = 0;
    for (int s = 0; s < n_parts; s++) total += (size_t)parts[s].n_tokens * nl * K;
    if (total > w->cap_vals) {
        free(w->ids), free(w->w), free(w->wu);
        w->cap_vals = total + total / 2;
        w->ids = xmalloc(w->cap_vals * sizeof *w->ids);
        w->w = xmalloc(w->cap_vals * sizeof *w->w);
        w->wu = xmalloc(w->cap_vals * sizeof *w->wu);
    }
    if (n_parts > w->cap_seqs) {
        free(w->seqs), free(w->seqp);
        w->cap_seqs = n_parts + n_parts / 2;
        w->seqs = xmalloc((size_t)w->cap_seqs * sizeof *w->seqs);
        w->seqp = xmalloc((size_t)w->cap_seqs * sizeof *w->seqp);
    }
    // ids and weights as the message's types; one RouteSeq per part over them
    for (size_t i = 0; i < total; i++) {
        DH_ASSERT(ids[i] >= 0);
        w->ids[i] = (uint32_t)ids[i];
        if (w->unit > 0) w->wu[i] = (uint32_t)lrint(DH_MAX(weights[i], 0.0f) / w->unit);
        else w->w[i] = weights[i];
    }
    size_t off = 0;
    for (int s = 0; s < n_parts; s++) {
        size_t n = (size_t)parts[s].n_tokens * nl * K;
        Darkhorse__RouteSeq *q = &w->seqs[s];
        *q = (Darkhorse__RouteSeq)DARKHORSE__ROUTE_SEQ__INIT;
        q->seq_id = parts[s].seq_id, q->domain = (uint32_t)parts[s].domain;
        q->start_pos = (uint32_t)parts[s].start_pos, q->n_tokens = (uint32_t)parts[s].n_tokens;
        q->n_experts = n, q->experts = w->ids + off;
        if (w->unit > 0) q->n_weight_units = n, q->weight_units = w->wu + off;
        else q->n_weights = n, q->weights = w->w + off;
        w->seqp[s] = q;
        off += n;
    }
    Darkhorse__RouteRecord r = DARKHORSE__ROUTE_RECORD__INIT;
    r.step = step, r.n_seqs = (size_t)n_parts, r.seqs = w->seqp;
    if (layers) {
        for (int j = 0; j < nl; j++) w->layers[j] = (uint32_t)layers[j];
        r.n_layers = (size_t)nl, r.layers = w->layers;
    }
    size_t n = darkhorse__route_record__get_packed_size(&r);
    grow_pack(w, n);
    darkhorse__route_record__pack(&r, w->pack);
    int rc = put_msg(w, n);
    if (rc == 0 && flush && gzflush(w->g, Z_SYNC_FLUSH) != Z_OK) w->failed = 1, rc = DH_EIO;
    return rc;
}

int tf_writer_add(tf_writer *w, uint64_t step, const int *layers, int n_layers, const tf_part *parts,
                  int n_parts, const int *ids, const float *weights) {
    return add_record(w, step, layers, n_layers, parts, n_parts, ids, weights, 1);
}

int tf_writer_close(tf_writer *w) {
    if (!w) return 0;
    int rc = w->failed ? DH_EIO : 0;
    if (gzclose(w->g) != Z_OK && rc == 0) {
        log_error("%s: cannot finish writing the trace", w->path);
        rc = DH_EIO;
    }
    free(w->ids), free(w->w), free(w->wu), free(w->seqs), free(w->seqp), free(w->layers), free(w->pack);
    free(w->path);
    free(w);
    return rc;
}

int tf_write(const trace *t, const char *path) {
    tf_writer *w = writer_open(path, t, "wb6");
    if (!w) return DH_EIO;
    int L = t->n_layers, K = t->top_k, rc = 0;
    int *ids = NULL;
    size_t cap = 0;
    for (int s = 0; s < t->n_seqs && rc == 0; s++) {
        const trace_seq *q = &t->seqs[s];
        size_t n = (size_t)q->n_tokens * L * K;
        if (n > cap) free(ids), ids = xmalloc((cap = n) * sizeof *ids);
        for (size_t i = 0; i < n; i++) ids[i] = t->ids[q->first * L * K + i];
        for (size_t i = 0; i < n && rc == 0; i++)
            if (ids[i] < 0) {
                log_error("%s: sequence %d has an unrecorded layer: only whole traces are written", path, s);
                rc = DH_EINVAL;
            }
        tf_part part = {.seq_id = q->id, .domain = q->domain, .start_pos = q->start_pos, .n_tokens = q->n_tokens};
        if (rc == 0) rc = add_record(w, (uint64_t)s, NULL, 0, &part, 1, ids, t->weights + q->first * L * K, 0);
    }
    free(ids);
    int rc2 = tf_writer_close(w);
    return rc ? rc : rc2;
}
