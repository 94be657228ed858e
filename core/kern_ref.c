/* kern_ref.c: the portable kernels, in plain C11.
 *
 * They follow the operation orders that kern.h fixes (f32/bf16/f16 products: one sum per
 * output, k ascending; dot and q8/q4: 16 lanes over k or blocks, then a halving tree), with
 * separate multiply and add, so the AVX-512 kernels agree with them to rounding. They are the
 * fallback on CPUs without AVX-512 and the oracle the SIMD kernels are tested against; they are
 * not tuned beyond giving the compiler 16 independent lanes to vectorise. ISO C11 mode (no GNU
 * extensions) keeps GCC from contracting a * b + c into an FMA, which would change the
 * rounding of the portable order. */
#include <math.h>
#include <string.h>

#include "common.h"
#include "kern.h"

#define LANES 16

size_t kern_scratch_floats(int cols) { return (size_t)KERN_OBLOCK * (size_t)cols + 64; }

static float reduce16(const float *acc) {
    float s8[8], s4[4], s2[2];
    for (int i = 0; i < 8; i++) s8[i] = acc[i] + acc[i + 8];
    for (int i = 0; i < 4; i++) s4[i] = s8[i] + s8[i + 4];
    for (int i = 0; i < 2; i++) s2[i] = s4[i] + s4[i + 2];
    return s2[0] + s2[1];
}

static float dot_ref(const float *a, const float *b, int n) {
    float acc[LANES] = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[k + l] * b[k + l];
    for (int l = 0; k + l < n; l++) acc[l] += a[k + l] * b[k + l];
    return reduce16(acc);
}

static void axpy_ref(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static void dot_rows_ref(float *out, size_t ldo, const float *q, size_t ldq, int nq, const float *x, size_t ldx,
                         int rows, int n) {
    for (int i = 0; i < nq; i++)
        for (int r = 0; r < rows; r++) out[i * ldo + r] = dot_ref(q + i * ldq, x + (size_t)r * ldx, n);
}

static void axpy_rows_ref(float *y, size_t ldy, const float *a, size_t lda, int ny, const float *x, size_t ldx,
                          int rows, int n) {
    for (int i = 0; i < ny; i++)
        for (int r = 0; r < rows; r++) axpy_ref(y + i * ldy, a[i * lda + r], x + (size_t)r * ldx, n);
}

static void quantize_ref(const float *x, int cols, int8_t *q, float *d) {
    DH_ASSERT(cols % WT_QBLOCK == 0);
    for (int b = 0; b < cols / WT_QBLOCK; b++) {
        const float *xb = x + b * WT_QBLOCK;
        float amax = 0;
        for (int j = 0; j < WT_QBLOCK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float db = amax / 127.0f, id = db > 0 ? 1.0f / db : 0.0f;
        if (isinf(id)) id = 0; /* d subnormal (max|x| < 3.7e-37): the block quantizes to 0 */
        d[b] = db;
        for (int j = 0; j < WT_QBLOCK; j++) {
            float v = roundf(xb[j] * id);
            q[b * WT_QBLOCK + j] = v == v ? (int8_t)v : 0; /* NaN (x NaN or inf) -> 0 */
        }
    }
}

/* One weight row widened into w (f32/bf16/f16 only). */
static const float *row_f32(const wmat *W, int o, float *w) {
    if (W->dtype == DT_F32) return W->p.f32 + (size_t)o * (size_t)W->cols;
    wt_row(W, o, w);
    return w;
}

static float dot_q8(const int8_t *xq, const float *xd, const wt_q8_block *wb, int nb) {
    float acc[LANES] = {0};
    for (int b = 0; b < nb; b++) {
        int32_t s = 0;
        for (int j = 0; j < WT_QBLOCK; j++) s += (int32_t)xq[b * WT_QBLOCK + j] * wb[b].q[j];
        acc[b % LANES] += xd[b] * wt_f16_to_f32(wb[b].d) * (float)s;
    }
    return reduce16(acc);
}

static float dot_q4(const int8_t *xq, const float *xd, const wt_q4_block *wb, int nb) {
    float acc[LANES] = {0};
    for (int b = 0; b < nb; b++) {
        int32_t s = 0;
        for (int j = 0; j < WT_QBLOCK / 2; j++) {
            s += (int32_t)xq[b * WT_QBLOCK + j] * ((wb[b].q[j] & 0xf) - 8);
            s += (int32_t)xq[b * WT_QBLOCK + j + 16] * ((wb[b].q[j] >> 4) - 8);
        }
        acc[b % LANES] += xd[b] * wt_f16_to_f32(wb[b].d) * (float)s;
    }
    return reduce16(acc);
}

/* q4k: per sub-block b (sub-block j of its super-block) the exact integer sums I = s_j * (sum
 * of nibble * xq) and M = m_j * (sum of xq), then two separate multiply-adds into lane b % 16 */
static float dot_q4k(const int8_t *xq, const float *xd, const uint8_t *p, int cols) {
    float acc[LANES] = {0};
    for (int k0 = 0, b = 0; k0 < cols; k0 += WT_KBLOCK) {
        wt_q4k_head h;
        memcpy(&h, p, sizeof h);
        p += sizeof h;
        float d = wt_f16_to_f32(h.d), nmin = -wt_f16_to_f32(h.dmin);
        for (int j = 0; j < DH_MIN(cols - k0, WT_KBLOCK) / WT_QBLOCK; j++, b++, p += WT_QBLOCK / 2) {
            int32_t is = 0, bs = 0;
            const int8_t *x = xq + (size_t)b * WT_QBLOCK;
            for (int i = 0; i < WT_QBLOCK / 2; i++) {
                is += (int32_t)x[i] * (p[i] & 0xf) + (int32_t)x[i + 16] * (p[i] >> 4);
                bs += (int32_t)x[i] + x[i + 16];
            }
            int sj, mj;
            wt_q4k_scale(&h, j, &sj, &mj);
            acc[b % LANES] += xd[b] * d * (float)(sj * is);
            acc[b % LANES] += xd[b] * nmin * (float)(mj * bs);
        }
    }
    return reduce16(acc);
}

/* f32/bf16/f16: 16 weight rows (or fewer) widened into scratch and transposed there to
 * p[k][16] (in blocks of 64 k, so that the lines written stay in L1), then for each activation
 * row 16 independent sums, acc[l] = acc[l] + x[k] * p[k][l] for k ascending: the order of
 * kern.h, with the 16 lanes there for the compiler to vectorise. Scratch: the panel (16 cols
 * floats), then up to 16 widened rows. */
static void matmul_float_ref(float *y, int ldy, const kern_act *a, const wmat *W, int T, int o0,
                             int o1, float *scratch) {
    int cols = W->cols;
    float *p = scratch;
    for (int o = o0; o < o1; o += LANES) {
        int n = DH_MIN(LANES, o1 - o);
        const float *row[LANES];
        for (int l = 0; l < LANES; l++) /* lanes from n on repeat the last row, not stored */
            row[l] = l < n ? row_f32(W, o + l, scratch + (size_t)(LANES + l) * cols) : row[n - 1];
        for (int k0 = 0; k0 < cols; k0 += 64)
            for (int l = 0; l < LANES; l++)
                for (int k = k0; k < DH_MIN(cols, k0 + 64); k++)
                    p[(size_t)k * LANES + l] = row[l][k];
        for (int t = 0; t < T; t++) {
            const float *x = a->x + (size_t)t * a->ldx;
            float acc[LANES] = {0};
            for (int k = 0; k < cols; k++)
                for (int l = 0; l < LANES; l++) acc[l] += x[k] * p[(size_t)k * LANES + l];
            for (int l = 0; l < n; l++) y[(size_t)t * ldy + o + l] = acc[l];
        }
    }
}

static void matmul_ref(float *y, int ldy, const kern_act *a, const wmat *W, int T, int o0, int o1,
                       float *scratch) {
    int cols = W->cols;
    if (W->dtype == DT_Q8 || W->dtype == DT_Q4) {
        DH_ASSERT(a->q && a->qd && cols % WT_QBLOCK == 0);
        int nb = cols / WT_QBLOCK;
        wt_q8_block *row = (wt_q8_block *)scratch; /* a packed row's blocks, unpacked */
        for (int o = o0; o < o1; o++) {
            const wt_q8_block *wq = W->p.q8 + (size_t)o * nb;
            if (W->dtype == DT_Q8 && W->layout == WT_G16) {
                wt_q8_row_blocks(W, o, row);
                wq = row;
            }
            for (int t = 0; t < T; t++) {
                const int8_t *xq = a->q + (size_t)t * cols;
                const float *xd = a->qd + (size_t)t * nb;
                y[(size_t)t * ldy + o] = W->dtype == DT_Q8 ? dot_q8(xq, xd, wq, nb)
                                                           : dot_q4(xq, xd, W->p.q4 + (size_t)o * nb, nb);
            }
        }
        return;
    }
    if (W->dtype == DT_Q4K) {
        DH_ASSERT(a->q && a->qd && cols % WT_QBLOCK == 0);
        size_t rb = wt_q4k_row_bytes((size_t)cols);
        uint8_t *row = (uint8_t *)scratch; /* a packed row, unpacked */
        for (int o = o0; o < o1; o++) {
            const uint8_t *wr = W->p.q4k + (size_t)o * rb;
            if (W->layout == WT_G16) {
                wt_q4k_row_data(W, o, row);
                wr = row;
            }
            for (int t = 0; t < T; t++)
                y[(size_t)t * ldy + o] = dot_q4k(a->q + (size_t)t * cols, a->qd + (size_t)t * (cols / WT_QBLOCK), wr, cols);
        }
        return;
    }
    matmul_float_ref(y, ldy, a, W, T, o0, o1, scratch);
}

static uint64_t read_ref(const void *p, size_t bytes, int streams, int prefetch, int pace) {
    const uint64_t *w = p;
    size_t per = bytes / 8 / (size_t)streams;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i < per; i += 8)
        for (int s = 0; s < streams; s++) {
            const uint64_t *q = w + (size_t)s * per + i;
            if (prefetch) __builtin_prefetch((const char *)q + prefetch);
            uint64_t x0 = q[0] ^ q[4], x1 = q[1] ^ q[5], x2 = q[2] ^ q[6], x3 = q[3] ^ q[7];
            for (int k = 0; k < pace; k++) x0 = x0 * 3 + x1, x1 = x1 * 3 + x2, x2 = x2 * 3 + x3, x3 = x3 * 3 + x0;
            s0 += x0, s1 += x1, s2 += x2, s3 += x3;
        }
    return s0 ^ s1 ^ s2 ^ s3;
}

static void exp_sub_ref(float *x, int n, float m) {
    for (int i = 0; i < n; i++) x[i] = expf(x[i] - m);
}

static void swiglu_ref(float *g, const float *u, size_t n) {
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void exp_scaled_ref(double *y, const float *x, int n, float m, double s) {
    for (int i = 0; i < n; i++) y[i] = exp(((double)x[i] - m) * s);
}

static const kern_ops ref_ops = {
    .name = "portable",
    .matmul = matmul_ref,
    .quantize = quantize_ref,
    .dot = dot_ref,
    .axpy = axpy_ref,
    .dot_rows = dot_rows_ref,
    .axpy_rows = axpy_rows_ref,
    .read = read_ref,
    .exp_sub = exp_sub_ref,
    .swiglu = swiglu_ref,
    .exp_scaled = exp_scaled_ref,
};

const kern_ops *kern_portable(void) { return &ref_ops; }
