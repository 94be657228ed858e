/* tensor.c: dtype names and sizes, scalar conversions between f32, bf16 and f16, and row
 * widening for every storage format.
 *
 * bf16 is the top half of an f32, so widening is a shift; narrowing rounds to nearest even on
 * the dropped 16 bits. f16 conversions are written out bit by bit (subnormals, infinities and
 * NaN included) rather than relying on _Float16 or F16C, so that the portable build computes
 * exactly what the SIMD one does. */
#include "tensor.h"

#include <math.h>
#include <string.h>

#include "common.h"

static const char *const dtype_names[DT_COUNT] = {"f32", "bf16", "f16", "q8", "q4", "q4k"};

const char *wt_dtype_name(dh_dtype t) {
    return (t >= 0 && t < DT_COUNT) ? dtype_names[t] : "?";
}

int wt_dtype_parse(const char *name) {
    for (int i = 0; i < DT_COUNT; i++)
        if (strcmp(name, dtype_names[i]) == 0) return i;
    return -1;
}

size_t wt_bytes(dh_dtype t, size_t rows, size_t cols) {
    switch (t) {
    case DT_F32: return xmul(xmul(rows, cols), 4);
    case DT_BF16:
    case DT_F16: return xmul(xmul(rows, cols), 2);
    case DT_Q8: return xmul(xmul(rows, cols / WT_QBLOCK), sizeof(wt_q8_block));
    case DT_Q4: return xmul(xmul(rows, cols / WT_QBLOCK), sizeof(wt_q4_block));
    case DT_Q4K: return xmul(rows, wt_q4k_row_bytes(cols));
    default: DH_ASSERT(0);
    }
    return 0;
}

double wt_bits_per_weight(dh_dtype t) {
    switch (t) {
    case DT_F32: return 32;
    case DT_BF16:
    case DT_F16: return 16;
    case DT_Q8: return 8.0 * sizeof(wt_q8_block) / WT_QBLOCK;
    case DT_Q4: return 8.0 * sizeof(wt_q4_block) / WT_QBLOCK;
    case DT_Q4K: return 8.0 * (double)wt_q4k_row_bytes(WT_KBLOCK) / WT_KBLOCK;
    default: return 0;
    }
}

size_t wt_q4k_row_bytes(size_t cols) {
    DH_ASSERT(cols % WT_QBLOCK == 0);
    size_t full = cols / WT_KBLOCK, tail = cols % WT_KBLOCK / WT_QBLOCK;
    return full * (sizeof(wt_q4k_head) + WT_KBLOCK / 2) + (tail ? sizeof(wt_q4k_head) + tail * WT_QBLOCK / 2 : 0);
}

wmat wt_f32(const float *p, int rows, int cols) {
    wmat w = {.dtype = DT_F32, .rows = rows, .cols = cols};
    w.p.f32 = p;
    return w;
}

wmat wt_rows(const wmat *W, int r0, int n) {
    DH_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= W->rows);
    wmat v = *W;
    v.rows = n;
    size_t off = (size_t)r0 * (size_t)W->cols;
    switch (W->dtype) {
    case DT_F32: v.p.f32 = W->p.f32 + off; break;
    case DT_BF16:
    case DT_F16: v.p.bf16 = W->p.bf16 + off; break;
    case DT_Q8: /* a group of 16 packed rows takes the bytes of 16 rows: the same offset */
        DH_ASSERT(W->layout == WT_ROWS || (r0 % WT_G16_ROWS == 0 && n % WT_G16_ROWS == 0));
        v.p.q8 = W->p.q8 + off / WT_QBLOCK;
        break;
    case DT_Q4: v.p.q4 = W->p.q4 + off / WT_QBLOCK; break;
    case DT_Q4K:
        DH_ASSERT(W->layout == WT_ROWS || (r0 % WT_G16_ROWS == 0 && n % WT_G16_ROWS == 0));
        v.p.q4k = W->p.q4k + (size_t)r0 * wt_q4k_row_bytes((size_t)W->cols);
        break;
    default: DH_ASSERT(0);
    }
    return v;
}

float wt_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t wt_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float wt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13); /* inf or NaN */
    } else if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t wt_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00;        /* NaN */
    if (a >= 0x477ff000u) return sign | 0x7c00;       /* rounds to inf */
    if (a < 0x38800000u) {                            /* subnormal or zero in f16 */
        if (a < 0x33000000u) return sign;             /* below half the smallest subnormal */
        uint32_t man = (a & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(a >> 23);             /* 14..24 */
        uint32_t r = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return sign | (uint16_t)r;
    }
    uint32_t r = ((a >> 13) - ((127 - 15) << 10));
    uint32_t rem = a & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return sign | (uint16_t)r;
}

/* G16: bytes from a group's start to block b's (whole groups of blocks come before it) */
static size_t g16_block_off(size_t b) { return b * WT_G16_ROWS * sizeof(wt_q8_block); }

/* block b of row r of a q8 matrix, as row-major storage holds it */
static void q8_block(const wmat *W, int r, size_t b, wt_q8_block *out) {
    size_t nb = (size_t)W->cols / WT_QBLOCK;
    if (W->layout == WT_ROWS) {
        *out = W->p.q8[(size_t)r * nb + b];
        return;
    }
    int i = r % WT_G16_ROWS;
    const uint8_t *p = (const uint8_t *)(W->p.q8 + (size_t)(r - i) * nb) + g16_block_off(b);
    memcpy(&out->d, p + 2 * i, 2);
    for (int j = 0; j < WT_QBLOCK; j++)
        out->q[j] = (int8_t)(p[2 * WT_G16_ROWS + 64 * (j / 4) + 4 * i + j % 4] ^ 0x80);
}

void wt_q8_row_blocks(const wmat *W, int r, wt_q8_block *out) {
    DH_ASSERT(W->dtype == DT_Q8 && r >= 0 && r < W->rows);
    for (size_t b = 0; b < (size_t)W->cols / WT_QBLOCK; b++) q8_block(W, r, b, out + b);
}

/* q4k WT_G16: where byte c of row r's piece k (16 bytes) lies, from the start of the matrix */
static size_t g16_piece_off(size_t rb, int r, size_t k, int c) {
    int i = r % WT_G16_ROWS;
    return (size_t)(r - i) * rb + 256 * k + 64 * (size_t)(c / 4) + 4 * (size_t)i + (size_t)(c % 4);
}

void wt_q4k_row_data(const wmat *W, int r, uint8_t *out) {
    DH_ASSERT(W->dtype == DT_Q4K && r >= 0 && r < W->rows);
    size_t rb = wt_q4k_row_bytes((size_t)W->cols);
    if (W->layout == WT_ROWS) {
        memcpy(out, W->p.q4k + (size_t)r * rb, rb);
        return;
    }
    for (size_t k = 0; k < rb / 16; k++)
        for (int c = 0; c < 16; c++) out[16 * k + (size_t)c] = W->p.q4k[g16_piece_off(rb, r, k, c)];
}

int wt_g16_packable(const wmat *W) {
    return (W->dtype == DT_Q8 || W->dtype == DT_Q4K) && W->layout == WT_ROWS && W->rows % WT_G16_ROWS == 0 &&
           W->cols % WT_QBLOCK == 0;
}

void wt_g16_put_row(dh_dtype t, int cols, void *out, int r, const void *row) {
    DH_ASSERT((t == DT_Q8 || t == DT_Q4K) && cols % WT_QBLOCK == 0 && r >= 0);
    int i = r % WT_G16_ROWS;
    if (t == DT_Q4K) { /* piece k's dword m of row i: 4 bytes at 256 k + 64 m + 4 i */
        size_t rb = wt_q4k_row_bytes((size_t)cols);
        uint8_t *g = (uint8_t *)out + (size_t)(r - i) * rb;
        const uint8_t *s = row;
        for (size_t k = 0; k < rb / 16; k++)
            for (int m = 0; m < 4; m++) memcpy(g + 256 * k + 64 * (size_t)m + 4 * (size_t)i, s + 16 * k + 4 * (size_t)m, 4);
        return;
    }
    size_t nb = (size_t)cols / WT_QBLOCK;
    const wt_q8_block *s = row;
    uint8_t *g = (uint8_t *)out + (size_t)(r - i) * nb * sizeof(wt_q8_block);
    for (size_t b = 0; b < nb; b++) {
        uint8_t *p = g + g16_block_off(b);
        memcpy(p + 2 * i, &s[b].d, 2);
        for (int v = 0; v < 8; v++) { /* bytes 4v..4v+3 of the block, the sign bits flipped */
            uint32_t w;
            memcpy(&w, s[b].q + 4 * v, 4);
            w ^= 0x80808080u;
            memcpy(p + 2 * WT_G16_ROWS + 64 * v + 4 * i, &w, 4);
        }
    }
}

wmat wt_g16_pack(const wmat *W, void *out) {
    DH_ASSERT(wt_g16_packable(W));
    size_t rb = wt_bytes(W->dtype, 1, (size_t)W->cols);
    for (int r = 0; r < W->rows; r++) wt_g16_put_row(W->dtype, W->cols, out, r, (const uint8_t *)W->p.bf16 + (size_t)r * rb);
    wmat v = *W;
    v.layout = WT_G16;
    v.p.bf16 = out;
    return v;
}

void wt_row(const wmat *W, int r, float *out) {
    DH_ASSERT(r >= 0 && r < W->rows);
    size_t n = (size_t)W->cols, off = (size_t)r * n;
    switch (W->dtype) {
    case DT_F32: memcpy(out, W->p.f32 + off, n * sizeof *out); break;
    case DT_BF16:
        for (size_t i = 0; i < n; i++) out[i] = wt_bf16_to_f32(W->p.bf16[off + i]);
        break;
    case DT_F16:
        for (size_t i = 0; i < n; i++) out[i] = wt_f16_to_f32(W->p.f16[off + i]);
        break;
    case DT_Q8: {
        wt_q8_block b;
        for (size_t i = 0; i < n / WT_QBLOCK; i++) {
            q8_block(W, r, i, &b);
            float d = wt_f16_to_f32(b.d);
            for (int j = 0; j < WT_QBLOCK; j++) out[i * WT_QBLOCK + j] = d * (float)b.q[j];
        }
        break;
    }
    case DT_Q4: {
        const wt_q4_block *b = W->p.q4 + off / WT_QBLOCK;
        for (size_t i = 0; i < n / WT_QBLOCK; i++) {
            float d = wt_f16_to_f32(b[i].d);
            for (int j = 0; j < WT_QBLOCK / 2; j++) {
                out[i * WT_QBLOCK + j] = d * (float)((b[i].q[j] & 0xf) - 8);
                out[i * WT_QBLOCK + j + 16] = d * (float)((b[i].q[j] >> 4) - 8);
            }
        }
        break;
    }
    case DT_Q4K: {
        size_t rb = wt_q4k_row_bytes(n);
        const uint8_t *p = W->p.q4k + (size_t)r * rb;
        uint8_t sb[sizeof(wt_q4k_head) + WT_KBLOCK / 2]; /* a super-block of a packed row */
        for (size_t k0 = 0; k0 < n; k0 += WT_KBLOCK) {
            if (W->layout == WT_G16) {
                size_t first = wt_q4k_row_bytes(k0) / 16, pieces = wt_q4k_row_bytes(DH_MIN(n - k0, WT_KBLOCK)) / 16;
                for (size_t k = 0; k < pieces; k++)
                    for (int c = 0; c < 16; c++) sb[16 * k + (size_t)c] = W->p.q4k[g16_piece_off(rb, r, first + k, c)];
                p = sb;
            }
            wt_q4k_head h;
            memcpy(&h, p, sizeof h);
            const uint8_t *q = p + sizeof h;
            int ns = (int)(DH_MIN(n - k0, WT_KBLOCK) / WT_QBLOCK);
            float d = wt_f16_to_f32(h.d), dmin = wt_f16_to_f32(h.dmin);
            for (int j = 0; j < ns; j++, q += WT_QBLOCK / 2) {
                int sj, mj;
                wt_q4k_scale(&h, j, &sj, &mj);
                float *o = out + k0 + (size_t)j * WT_QBLOCK, a = d * (float)sj, b = dmin * (float)mj;
                for (int i = 0; i < WT_QBLOCK / 2; i++) {
                    o[i] = a * (float)(q[i] & 0xf) - b;
                    o[i + 16] = a * (float)(q[i] >> 4) - b;
                }
            }
            p = q;
        }
        break;
    }
    default: DH_ASSERT(0);
    }
}

void wt_q4k_scale(const wt_q4k_head *h, int j, int *s, int *m) {
    *s = h->sc[j] & 63;
    *m = h->sc[j] >> 6 | (h->sc[8 + j / 2] >> (4 * (j % 2)) & 15) << 2;
}
