/* model.c: loading a DeepSeek-V2/V3 checkpoint into typed weight views.
 *
 * Each tensor is looked up by its Hugging Face name and checked against the shape the config
 * implies, so a checkpoint that disagrees with its config.json fails at load with the tensor's
 * name rather than computing garbage. Large matrices are used where they lie in the mmap'd
 * file (f32, bf16 or f16) unless a conversion was asked for (--weights), in which case the
 * converted copy is owned by the model. Vectors (norms, the correction bias) are widened to
 * f32 once; the router stays as stored (f32, bf16 or f16) under every --weights, computed in
 * f32 on the exactly widened values.
 *
 * Two matrices are derived for the absorbed attention: per head W_UK^T [C, Dn] (to fold W_UK
 * into the query) and W_UV [Dv, C], both f32. The load parameters decide what a rank maps: the
 * coordinator of a cluster skips the routed experts, a worker maps only the experts it hosts
 * and nothing else. */
#include "core/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/common.h"
#include "core/hugemem.h"
#include "core/nn.h"
#include "core/quant.h"

typedef struct loader {
    model *m;
    const model_params *p;
    int rc;
    int kept; /* matrices left unconverted */
} loader;

model_params model_default_params(void) {
    return (model_params){.weights = -1, .dense = 1, .experts = 1, .host = NULL, .mtp = 1};
}

static void *own(model *m, size_t bytes) {
    if (m->n_owned == m->cap_owned) {
        m->cap_owned = m->cap_owned ? m->cap_owned * 2 : 64;
        m->owned = xrealloc(m->owned, (size_t)m->cap_owned * sizeof *m->owned);
        m->owned_len = xrealloc(m->owned_len, (size_t)m->cap_owned * sizeof *m->owned_len);
    }
    if (!m->arena) m->arena = hm_arena_new();
    void *p = hm_arena_alloc(m->arena, bytes); /* on huge pages: a step streams them all */
    m->owned_len[m->n_owned] = bytes;
    m->owned[m->n_owned++] = p;
    m->owned_bytes += bytes;
    return p;
}

/* Free p if it is one of m's owned buffers (swapped out of the list); else nothing. */
static void disown(model *m, const void *p) {
    for (int i = 0; p && i < m->n_owned; i++) {
        if (m->owned[i] != p) continue;
        hm_arena_free(m->arena, m->owned[i], m->owned_len[i]);
        m->owned_bytes -= m->owned_len[i];
        m->n_owned--;
        m->owned[i] = m->owned[m->n_owned], m->owned_len[i] = m->owned_len[m->n_owned];
        return;
    }
}

/* The storage of a checkpoint written by `darkhorse quantize`: its 2-D tensors are U8 rows of
 * q8 or q4 blocks (metadata "darkhorse_weights"); DT_F32 (meaning: none) otherwise. */
static dh_dtype stored_quant(const model *m) {
    const char *q = st_metadata(m->st, "darkhorse_weights");
    if (q && strcmp(q, "q8") == 0) return DT_Q8;
    if (q && strcmp(q, "q4") == 0) return DT_Q4;
    if (q && strcmp(q, "q4k") == 0) return DT_Q4K;
    return DT_F32;
}

/* The tensor `name` with shape [d0] or [d0, d1] (d1 < 0: 1-D), mapped; NULL and an error. A
 * quantized checkpoint's matrices are U8 [d0, d1 / 32 * block bytes]. */
static const st_tensor *need(loader *ld, const char *name, int64_t d0, int64_t d1, const void **data) {
    if (ld->rc) return NULL;
    const st_tensor *t = st_find(ld->m->st, name);
    if (!t) {
        log_error("%s: tensor %s is missing from the checkpoint", ld->m->dir, name);
        ld->rc = DH_ENOTFOUND;
        return NULL;
    }
    int ndim = d1 < 0 ? 1 : 2;
    dh_dtype q = stored_quant(ld->m);
    int quant = t->dtype == ST_U8 && ndim == 2 && q != DT_F32;
    int64_t want1 = quant ? (int64_t)(wt_bytes(q, 1, (size_t)d1)) : d1;
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != want1)) {
        char got[96] = "", want[64];
        for (int i = 0; i < t->ndim; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "",
                     (long long)t->shape[i]);
        if (ndim == 1)
            snprintf(want, sizeof want, "%lld", (long long)d0);
        else
            snprintf(want, sizeof want, "%lld, %lld", (long long)d0, (long long)want1);
        log_error("%s: tensor %s has shape [%s], the config implies [%s]%s", ld->m->dir, name, got, want,
                  quant ? " (bytes of quantized blocks)" : "");
        ld->rc = DH_EFORMAT;
        return NULL;
    }
    if (!quant && t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16) {
        log_error("%s: tensor %s is stored as %s; only F32, BF16 and F16 (and darkhorse's q8/q4) are supported",
                  ld->m->dir, name, st_dtype_name(t->dtype));
        ld->rc = DH_EUNSUPPORTED;
        return NULL;
    }
    *data = st_data(ld->m->st, t);
    if (!*data) {
        ld->rc = DH_EIO;
        return NULL;
    }
    return t;
}

/* the dh_dtype of a tensor's storage */
static dh_dtype stored_dt(const model *m, const st_tensor *t) {
    if (t->dtype == ST_U8) return stored_quant(m);
    return t->dtype == ST_F32 ? DT_F32 : t->dtype == ST_BF16 ? DT_BF16 : DT_F16;
}

/* A vector of n as f32 (widened copy when stored 16-bit); NULL on error. */
static const float *load_vec(loader *ld, const char *name, int n) {
    const void *d;
    const st_tensor *t = need(ld, name, n, -1, &d);
    if (!t) return NULL;
    if (t->dtype == ST_F32) return d;
    float *out = own(ld->m, (size_t)n * sizeof *out);
    wmat w = {.dtype = stored_dt(ld->m, t), .rows = 1, .cols = n};
    w.p.bf16 = d;
    wt_row(&w, 0, out);
    return out;
}

typedef struct convert_job {
    const wmat *src;
    int to, per;
    void *buf;
    float **rows; /* a row of scratch per thread */
    uint8_t **qrows; /* WT_G16: a quantized row per thread, before it is put in its group */
} convert_job;

/* rows [task * per, ...) of the conversion; each row on its own, so the split changes no bit */
static void convert_task(void *ctx, int task, int thread) {
    convert_job *j = ctx;
    int cols = j->src->cols;
    float *row = j->rows[thread];
    void *buf = j->buf;
    for (int r = task * j->per; r < DH_MIN(j->src->rows, (task + 1) * j->per); r++) {
        wt_row(j->src, r, row);
        size_t off = (size_t)r * cols;
        if (j->qrows) { /* WT_G16: quantized, then put in its group of 16 rows */
            if (j->to == DT_Q8)
                quant_q8_row(row, cols, (wt_q8_block *)j->qrows[thread]);
            else
                quant_q4k_row(row, cols, j->qrows[thread]);
            wt_g16_put_row((dh_dtype)j->to, cols, buf, r, j->qrows[thread]);
            continue;
        }
        switch (j->to) {
        case DT_F32: memcpy((float *)buf + off, row, (size_t)cols * sizeof *row); break;
        case DT_BF16:
            for (int c = 0; c < cols; c++) ((uint16_t *)buf)[off + c] = wt_f32_to_bf16(row[c]);
            break;
        case DT_F16:
            for (int c = 0; c < cols; c++) ((uint16_t *)buf)[off + c] = wt_f32_to_f16(row[c]);
            break;
        case DT_Q8: quant_q8_row(row, cols, (wt_q8_block *)buf + off / WT_QBLOCK); break;
        case DT_Q4: quant_q4_row(row, cols, (wt_q4_block *)buf + off / WT_QBLOCK); break;
        case DT_Q4K: quant_q4k_row(row, cols, (uint8_t *)buf + (size_t)r * wt_q4k_row_bytes((size_t)cols)); break;
        default: DH_ASSERT(0);
        }
    }
}

/* Should w (q8 or q4k, row-major) be held packed as WT_G16? When the kernels read those
 * fastest that way (kern_ops.g16) and its rows make whole groups. */
static int want_g16(const wmat *w) {
    const kern_ops *k = nn_kernels();
    return k && k->g16 && wt_g16_packable(w);
}

/* src converted to dtype `to`, in a buffer the model owns, packed as WT_G16 when `pack` and
 * want_g16; on the nn pool's threads when it is running (q4k's fits cost ~10 ns a weight),
 * unless the load must stay on its own thread (the pool is not for two callers at once) */
static wmat convert(loader *ld, const wmat *src, int to, int pack) {
    model *m = ld->m;
    int rows = src->rows, cols = src->cols, nt = nn_pool() && !ld->p->own_thread ? nn_threads() : 1;
    wmat w = {.dtype = (dh_dtype)to, .rows = rows, .cols = cols};
    pack = pack && want_g16(&w);
    convert_job j = {.src = src, .to = to, .buf = own(m, wt_bytes((dh_dtype)to, (size_t)rows, (size_t)cols))};
    j.rows = xcalloc((size_t)nt, sizeof *j.rows);
    for (int t = 0; t < nt; t++) j.rows[t] = xmalloc((size_t)cols * sizeof(float));
    if (pack) {
        j.qrows = xcalloc((size_t)nt, sizeof *j.qrows);
        for (int t = 0; t < nt; t++) j.qrows[t] = xmalloc(wt_bytes((dh_dtype)to, 1, (size_t)cols));
    }
    int tasks = DH_MIN(rows, 8 * nt);
    j.per = (rows + tasks - 1) / tasks;
    if (pack) j.per = (j.per + WT_G16_ROWS - 1) / WT_G16_ROWS * WT_G16_ROWS; /* whole groups a task */
    tasks = (rows + j.per - 1) / j.per;
    if (nt > 1) tp_run(nn_pool(), tasks, convert_task, &j);
    else
        for (int t = 0; t < tasks; t++) convert_task(&j, t, 0);
    for (int t = 0; t < nt; t++) {
        free(j.rows[t]);
        if (j.qrows) free(j.qrows[t]);
    }
    free(j.rows);
    free(j.qrows);
    w.p.bf16 = j.buf;
    w.layout = pack ? WT_G16 : WT_ROWS;
    return w;
}

/* A copy in 4 MiB chunks on the pool: on the AMD EPYC VM measured, the first touch of fresh
 * memory is most of a copy's time (3 s a GiB), and two threads take it side by side (genesis-1b,
 * 2 GB: loads of 5.3-6.7 s against 6.1-7.3 s with one memcpy, 3 alternated pairs). */
#define COPY_CHUNK ((size_t)4 << 20)
typedef struct copy_job {
    void *dst;
    const void *src;
    size_t n;
} copy_job;

static void copy_task(void *ctx, int task, int thread) {
    (void)thread;
    copy_job *j = ctx;
    size_t o = (size_t)task * COPY_CHUNK;
    memcpy((char *)j->dst + o, (const char *)j->src + o, DH_MIN(COPY_CHUNK, j->n - o));
}

/* A matrix w kept as stored (mapped): packed as WT_G16 into a buffer the model owns when
 * want_g16 (a quantized checkpoint's own q8/q4k), else copied into one when the params ask for
 * copies (pausing between chunks when they say so), its mapping released either way; else w as
 * it is, on the file's pages. */
static wmat as_stored(loader *ld, wmat w, const st_tensor *mapped) {
    if (ld->rc || (!want_g16(&w) && !ld->p->copy)) return w;
    size_t n = wt_bytes(w.dtype, (size_t)w.rows, (size_t)w.cols);
    if (want_g16(&w)) {
        w = wt_g16_pack(&w, own(ld->m, n));
    } else {
        copy_job j = {.dst = own(ld->m, n), .src = w.p.bf16, .n = n};
        int tasks = (int)((n + COPY_CHUNK - 1) / COPY_CHUNK), pool = nn_pool() && !ld->p->own_thread;
        if (pool && tasks > 1) {
            tp_run(nn_pool(), tasks, copy_task, &j);
        } else {
            for (int i = 0; i < tasks && !ld->rc; i++) {
                copy_task(&j, i, 0);
                if (ld->p->pause && ld->p->pause(ld->p->pause_ctx)) ld->rc = DH_ECANCELLED;
            }
        }
        w.p.bf16 = j.dst;
    }
    st_release(ld->m->st, mapped);
    return w;
}

/* Can a [., cols] matrix be held as `to`? (q8/q4/q4k need rows of whole blocks of 32) */
static int convertible(loader *ld, const char *name, int cols, dh_dtype stored, int to) {
    if ((to != DT_Q8 && to != DT_Q4 && to != DT_Q4K) || cols % WT_QBLOCK == 0) return 1;
    if (ld->kept++ == 0) /* said once: there may be thousands */
        log_warn("%s: matrices with rows not a multiple of 32 wide (%s, %d) stay %s under %s", ld->m->dir, name, cols,
                 wt_dtype_name(stored), wt_dtype_name((dh_dtype)to));
    return 0;
}

/* A matrix [rows, cols] in the stored format, or converted to `to` (>= 0). */
static wmat load_mat_as(loader *ld, const char *name, int rows, int cols, int to) {
    wmat w = {0};
    const void *d;
    const st_tensor *t = need(ld, name, rows, cols, &d);
    if (!t) return w;
    wmat stored = {.dtype = stored_dt(ld->m, t), .rows = rows, .cols = cols};
    stored.p.bf16 = d;
    if (to < 0 || to == (int)stored.dtype || !convertible(ld, name, cols, stored.dtype, to))
        return as_stored(ld, stored, t);
    w = convert(ld, &stored, to, 1);
    st_release(ld->m->st, t); /* the stored copy is not needed any more */
    return w;
}

static wmat load_mat(loader *ld, const char *name, int rows, int cols) {
    return load_mat_as(ld, name, rows, cols, ld->p->weights);
}

static void load_ffn(loader *ld, const char *prefix, int D, int F, ffn_weights *f) {
    char name[256];
    snprintf(name, sizeof name, "%s.gate_proj.weight", prefix);
    f->gate_proj = load_mat(ld, name, F, D);
    snprintf(name, sizeof name, "%s.up_proj.weight", prefix);
    f->up_proj = load_mat(ld, name, F, D);
    snprintf(name, sizeof name, "%s.down_proj.weight", prefix);
    f->down_proj = load_mat(ld, name, D, F);
}

/* W_UK^T and W_UV per head from kv_b_proj, in f32. */
static void derive_absorbed(loader *ld, mla_weights *a, const model_config *c) {
    if (ld->rc) return;
    int H = c->num_attention_heads, C = c->kv_lora_rank, Dn = c->qk_nope_head_dim, Dv = c->v_head_dim;
    size_t nuk = (size_t)H * C * Dn * sizeof(float), nuv = (size_t)H * Dv * C * sizeof(float);
    float *uk_t = xmalloc(nuk), *uv = xmalloc(nuv);
    float *row = xmalloc((size_t)C * sizeof *row);
    for (int h = 0; h < H; h++) {
        for (int d = 0; d < Dn; d++) { /* W_UK[h][d, :] -> column d of W_UK^T[h] */
            wt_row(&a->kv_b_proj, h * (Dn + Dv) + d, row);
            for (int cc = 0; cc < C; cc++) uk_t[((size_t)h * C + cc) * Dn + d] = row[cc];
        }
        for (int d = 0; d < Dv; d++) wt_row(&a->kv_b_proj, h * (Dn + Dv) + Dn + d, uv + ((size_t)h * Dv + d) * C);
    }
    free(row);
    a->w_uk_t = wt_f32(uk_t, H * C, Dn);
    a->w_uv = wt_f32(uv, H * Dv, C);
    /* held like the other matrices: as --weights asks, else as kv_b_proj is stored: bf16 values
     * transposed stay bf16 (exact), and a checkpoint `darkhorse quantize` wrote gets them in its
     * format, the same bits as --weights at load (in f32 instead, genesis-5b's q4k copy read
     * 0.12 GB more a token in decode) */
    int to = ld->p->weights >= 0 ? ld->p->weights : (int)a->kv_b_proj.dtype;
    if (to != DT_F32 && convertible(ld, "the absorbed W_UK", Dn, DT_F32, to) &&
        convertible(ld, "the absorbed W_UV", C, DT_F32, to)) {
        int pack = C % WT_G16_ROWS == 0 && Dv % WT_G16_ROWS == 0; /* the per-head slices stay whole groups */
        a->w_uk_t = convert(ld, &a->w_uk_t, to, pack);
        a->w_uv = convert(ld, &a->w_uv, to, pack);
        free(uk_t);
        free(uv);
    } else {
        float *k = own(ld->m, nuk), *v = own(ld->m, nuv); /* 64-byte aligned, freed with the model */
        memcpy(k, uk_t, nuk);
        memcpy(v, uv, nuv);
        a->w_uk_t.p.f32 = k, a->w_uv.p.f32 = v;
        free(uk_t);
        free(uv);
    }
}

static void load_attn(loader *ld, int i, mla_weights *a) {
    const model_config *c = &ld->m->cfg;
    int D = c->hidden_size, H = c->num_attention_heads, C = c->kv_lora_rank, Q = c->q_lora_rank;
    int Dn = c->qk_nope_head_dim, Dr = c->qk_rope_head_dim, Dv = c->v_head_dim;
    char name[256];
#define NAME(s) (snprintf(name, sizeof name, "model.layers.%d.self_attn." s, i), name)
    if (Q > 0) {
        a->q_a_proj = load_mat(ld, NAME("q_a_proj.weight"), Q, D);
        a->q_a_layernorm = load_vec(ld, NAME("q_a_layernorm.weight"), Q);
        a->q_b_proj = load_mat(ld, NAME("q_b_proj.weight"), H * (Dn + Dr), Q);
    } else {
        a->q_proj = load_mat(ld, NAME("q_proj.weight"), H * (Dn + Dr), D);
    }
    a->kv_a_proj_with_mqa = load_mat(ld, NAME("kv_a_proj_with_mqa.weight"), C + Dr, D);
    a->kv_a_layernorm = load_vec(ld, NAME("kv_a_layernorm.weight"), C);
    a->kv_b_proj = load_mat(ld, NAME("kv_b_proj.weight"), H * (Dn + Dv), C);
    a->o_proj = load_mat(ld, NAME("o_proj.weight"), D, H * Dv);
#undef NAME
    derive_absorbed(ld, a, c);
}

static int hosted(const loader *ld, int i, int e) {
    if (ld->p->host) return ld->p->host[(size_t)i * ld->m->cfg.n_routed_experts + e] != 0;
    return ld->p->experts;
}

static void load_moe(loader *ld, int i, moe_weights *moe) {
    const model_config *c = &ld->m->cfg;
    int D = c->hidden_size, E = c->n_routed_experts, F = c->moe_intermediate_size;
    char name[256];
    moe->experts = xcalloc((size_t)E, sizeof *moe->experts);
    if (ld->p->dense) {
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", i);
        /* as stored, never quantized: the f32, bf16 and f16 kernels add the same products in
         * the same order (kern.h), so a bf16 router gives the bits its f32 widening gave, from
         * half the bytes (test_kern checks every float product against one written-out sequence);
         * genesis-1b's (64 x 1024, 128 KiB) still runs on both threads (nn.c) */
        moe->gate = load_mat_as(ld, name, E, D, -1);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", i);
        if (st_find(ld->m->st, name)) moe->e_score_correction_bias = load_vec(ld, name, E);
        if (c->n_shared_experts > 0) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.shared_experts", i);
            load_ffn(ld, name, D, c->n_shared_experts * F, &moe->shared);
        }
    }
    for (int e = 0; e < E && !ld->rc; e++) {
        if (!hosted(ld, i, e)) continue;
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d", i, e);
        load_ffn(ld, name, D, F, &moe->experts[e]);
    }
}

static void load_layer(loader *ld, int i) {
    model *m = ld->m;
    const model_config *c = &m->cfg;
    layer_weights *l = &m->layers[i];
    int D = c->hidden_size, V = c->vocab_size;
    char name[256];
    l->is_moe = cfg_is_moe_layer(c, i);
    if (ld->p->dense) {
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", i);
        l->input_layernorm = load_vec(ld, name, D);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", i);
        l->post_attention_layernorm = load_vec(ld, name, D);
        load_attn(ld, i, &l->attn);
        if (!l->is_moe) {
            snprintf(name, sizeof name, "model.layers.%d.mlp", i);
            load_ffn(ld, name, D, c->intermediate_size, &l->mlp);
        }
    }
    if (l->is_moe) load_moe(ld, i, &l->moe);
    if (i < c->num_hidden_layers || !ld->p->dense) return;
    /* the MTP block's own parts */
#define NAME(s) (snprintf(name, sizeof name, "model.layers.%d." s, i), name)
    l->enorm = load_vec(ld, NAME("enorm.weight"), D);
    l->hnorm = load_vec(ld, NAME("hnorm.weight"), D);
    l->eh_proj = load_mat(ld, NAME("eh_proj.weight"), D, 2 * D);
    l->shared_head_norm = load_vec(ld, NAME("shared_head.norm.weight"), D);
    l->shared_head_head = st_find(m->st, NAME("shared_head.head.weight"))
                              ? load_mat(ld, name, V, D) : m->lm_head;
    l->embed_tokens = st_find(m->st, NAME("embed_tokens.weight")) ? load_mat(ld, name, V, D)
                                                                  : m->embed_tokens;
#undef NAME
}

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n) {
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

/* FNV-1a of config.json, combined with an order-free hash of the tensor index. */
static uint64_t model_identity(const model *m, const char *cfg_path) {
    uint64_t h = 1469598103934665603ULL;
    FILE *f = fopen(cfg_path, "rb");
    if (f) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) h = hash_bytes(h, buf, n);
        fclose(f);
    }
    uint64_t idx = 0;
    for (int i = 0; i < st_count(m->st); i++) {
        const st_tensor *t = st_at(m->st, i);
        uint64_t th = hash_bytes(1469598103934665603ULL, t->name, strlen(t->name));
        th = hash_bytes(th, &t->dtype, sizeof t->dtype);
        th = hash_bytes(th, t->shape, sizeof t->shape[0] * (size_t)t->ndim);
        idx += th * 0x9E3779B97F4A7C15ULL;
    }
    return hash_bytes(h, &idx, sizeof idx);
}

model *model_load(const char *dir, const model_params *p) {
    model *m = xcalloc(1, sizeof *m);
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    char cfg_path[1100];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        log_error("%s: no such model directory", dir);
        free(m);
        return NULL;
    }
    if (cfg_load(&m->cfg, cfg_path) != 0) {
        free(m);
        return NULL;
    }
    int err;
    m->st = st_open(dir, &err);
    if (!m->st) {
        free(m);
        return NULL;
    }
    const model_config *c = &m->cfg;
    loader ld = {.m = m, .p = p};
    int D = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
    m->has_mtp = p->mtp && c->num_nextn_predict_layers > 0;
    if (m->has_mtp) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", L);
        if (!st_find(m->st, name)) {
            log_warn("%s: config says %d MTP layer(s) but %s is absent: MTP disabled", dir,
                     c->num_nextn_predict_layers, name);
            m->has_mtp = 0;
        }
    }
    m->n_layers = L + (m->has_mtp ? 1 : 0);
    m->layers = xcalloc((size_t)m->n_layers, sizeof *m->layers);
    if (p->dense) {
        m->embed_tokens = load_mat(&ld, "model.embed_tokens.weight", V, D);
        m->norm = load_vec(&ld, "model.norm.weight", D);
        m->lm_head = c->tie_word_embeddings ? m->embed_tokens : load_mat(&ld, "lm_head.weight", V, D);
    }
    for (int i = 0; i < m->n_layers && !ld.rc; i++) load_layer(&ld, i);
    m->inv_freq = xcalloc((size_t)c->qk_rope_head_dim / 2, sizeof *m->inv_freq);
    cfg_rope_inv_freq(c, m->inv_freq);
    m->softmax_scale = cfg_softmax_scale(c);
    if (ld.rc) {
        model_free(m);
        return NULL;
    }
    m->config_hash = model_identity(m, cfg_path);
    return m;
}

void model_free(model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_layers; i++) free(m->layers[i].moe.experts);
    free(m->layers);
    hm_arena_free_all(m->arena); /* every owned buffer with it */
    free(m->owned);
    free(m->owned_len);
    free(m->inv_freq);
    st_close(m->st);
    free(m);
}

void model_release_expert(model *m, int layer, int e, const ffn_weights *f) {
    static const char *const part[3] = {"gate_proj", "up_proj", "down_proj"};
    const wmat *ws[3] = {&f->gate_proj, &f->up_proj, &f->down_proj};
    for (int k = 0; k < 3; k++) {
        disown(m, ws[k]->p.bf16); /* a converted copy (--weights) */
        char name[256];
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s.weight", layer, e, part[k]);
        const st_tensor *t = st_find(m->st, name);
        if (t) st_release(m->st, t); /* its mapping (none left after a conversion) */
    }
}

/* bytes (or, with params, elements) of a matrix */
static double mat_size(const wmat *w, int params) {
    if (!w->rows) return 0.0;
    return params ? (double)w->rows * w->cols : (double)wt_bytes(w->dtype, (size_t)w->rows, (size_t)w->cols);
}

static double ffn_size(const ffn_weights *f, int params) {
    return mat_size(&f->gate_proj, params) + mat_size(&f->up_proj, params) + mat_size(&f->down_proj, params);
}

static double active(const model *m, int params) {
    const model_config *c = &m->cfg;
    double b = mat_size(&m->lm_head, params);
    for (int i = 0; i < c->num_hidden_layers; i++) {
        const layer_weights *l = &m->layers[i];
        const mla_weights *a = &l->attn;
        b += mat_size(&a->q_proj, params) + mat_size(&a->q_a_proj, params) + mat_size(&a->q_b_proj, params) +
             mat_size(&a->kv_a_proj_with_mqa, params) + mat_size(&a->o_proj, params) +
             mat_size(&a->w_uk_t, params) + mat_size(&a->w_uv, params);
        if (!l->is_moe) {
            b += ffn_size(&l->mlp, params);
            continue;
        }
        b += mat_size(&l->moe.gate, params) + ffn_size(&l->moe.shared, params);
        /* K routed experts, at the size of one hosted here (all have the same shape) */
        for (int e = 0; e < c->n_routed_experts; e++)
            if (l->moe.experts[e].gate_proj.rows) {
                b += c->num_experts_per_tok * ffn_size(&l->moe.experts[e], params);
                break;
            }
    }
    return b;
}

double model_active_bytes(const model *m) { return active(m, 0); }
double model_active_params(const model *m) { return active(m, 1); }

uint64_t model_weight_bytes(const model *m) { return st_mapped_bytes(m->st) + m->owned_bytes; }

int model_moe_layers(const model *m) {
    int M = 0;
    for (int l = 0; l < m->n_layers; l++) M += m->layers[l].is_moe != 0;
    return M;
}
