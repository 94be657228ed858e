/* quant.c: weight quantization to the block formats, as llama.cpp's q8_0 and q4_0 define them.
 *
 * q8 keeps one f16 scale per 32 values and int8 values; q4 keeps one f16 scale per 32 values
 * and 4-bit values offset by 8, the scale chosen so that the value of largest magnitude maps
 * to -8 exactly (one more step on that side than on the other).
 *
 * These run at model load over every weight (5 billion for genesis-5b), so they are
 * vectorized: q8 is the kernels' activation quantizer (kern_ops.quantize, whose tables give
 * identical bits) plus the f16 scale; q4 has an AVX-512 loop of its own next to the scalar
 * definition. The scalar code is the definition: the vector code reproduces it bit for bit
 * (the first index of largest magnitude, products and sums rounded one at a time, truncation
 * toward zero), and tests/core/test_kern.c checks that. */
#include "quant.h"

#include <math.h>
#include <string.h>

#include "common.h"
#include "kern.h"

#define CHUNK 1024 /* values quantized per call of the kernel quantizer */

void quant_q8_row(const float *x, int n, wt_q8_block *out) {
    DH_ASSERT(n % WT_QBLOCK == 0);
    const kern_ops *k = kern_avx512();
    if (!k) k = kern_portable();
    int8_t q[CHUNK];
    float d[CHUNK / WT_QBLOCK];
    for (int c = 0; c < n; c += CHUNK) {
        int m = DH_MIN(CHUNK, n - c);
        k->quantize(x + c, m, q, d);
        for (int b = 0; b < m / WT_QBLOCK; b++) {
            wt_q8_block *o = out + c / WT_QBLOCK + b;
            o->d = wt_f32_to_f16(d[b]);
            memcpy(o->q, q + b * WT_QBLOCK, WT_QBLOCK);
        }
    }
}

/* clamp(trunc(v), 0, 15), with NaN (from x NaN or inf) giving 0 */
static int q4_nibble(float v) { return v >= 16 ? 15 : v >= 0 ? (int)v : 0; }

/* The definition: m is the first value of largest magnitude (NaN never is), d = m / -8,
 * nibble = clamp(trunc(x * (1/d) + 8.5), 0, 15), the product and the sum rounded apart. */
static void q4_block_ref(const float *xb, wt_q4_block *out) {
    float amax = 0, m = 0;
    for (int j = 0; j < WT_QBLOCK; j++)
        if (fabsf(xb[j]) > amax) {
            amax = fabsf(xb[j]);
            m = xb[j];
        }
    float d = m / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    out->d = wt_f32_to_f16(d);
    for (int j = 0; j < WT_QBLOCK / 2; j++)
        out->q[j] = (uint8_t)(q4_nibble(xb[j] * id + 8.5f) |
                              q4_nibble(xb[j + 16] * id + 8.5f) << 4);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define Q4_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

/* q4_block_ref, 32 values in two vectors. The product and the sum use explicit rounding modes
 * so that no compiler setting can fuse them into one rounding. */
Q4_AVX512 static void q4_block_avx(const float *xb, wt_q4_block *out) {
    const __m512 sign = _mm512_set1_ps(-0.0f), zero = _mm512_setzero_ps();
    __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
    __m512 a0 = _mm512_andnot_ps(sign, v0), a1 = _mm512_andnot_ps(sign, v1);
    /* max(|x|, 0) drops NaN (maxps returns its second operand when one is NaN), as > does */
    float amax =
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(a0, zero), _mm512_max_ps(a1, zero)));
    float m = 0;
    if (amax > 0) { /* the first index whose magnitude equals the maximum */
        __m512 vm = _mm512_set1_ps(amax);
        uint32_t hit = (uint32_t)_mm512_cmp_ps_mask(a0, vm, _CMP_EQ_OQ) |
                       (uint32_t)_mm512_cmp_ps_mask(a1, vm, _CMP_EQ_OQ) << 16;
        m = xb[__builtin_ctz(hit)];
    }
    float d = m / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    out->d = wt_f32_to_f16(d);
    const int rn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512 vid = _mm512_set1_ps(id), half = _mm512_set1_ps(8.5f);
    __m512 f0 = _mm512_add_round_ps(_mm512_mul_round_ps(v0, vid, rn), half, rn);
    __m512 f1 = _mm512_add_round_ps(_mm512_mul_round_ps(v1, vid, rn), half, rn);
    /* q4_nibble: clamp to [0, 15] before truncating (maxps(NaN, 0) is 0) */
    const __m512 fifteen = _mm512_set1_ps(15.0f);
    __m512i i0 = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(f0, zero), fifteen));
    __m512i i1 = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(f1, zero), fifteen));
    __m512i packed = _mm512_or_si512(i0, _mm512_slli_epi32(i1, 4)); /* lo | hi << 4 */
    _mm_storeu_si128((void *)out->q, _mm512_cvtepi32_epi8(packed));
}

static int q4_have_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

void quant_q4_row(const float *x, int n, wt_q4_block *out) {
    DH_ASSERT(n % WT_QBLOCK == 0);
#if defined(__x86_64__) && defined(__GNUC__)
    if (q4_have_avx512()) {
        for (int b = 0; b < n / WT_QBLOCK; b++) q4_block_avx(x + b * WT_QBLOCK, out + b);
        return;
    }
#endif
    for (int b = 0; b < n / WT_QBLOCK; b++) q4_block_ref(x + b * WT_QBLOCK, out + b);
}

void quant_q4_row_ref(const float *x, int n, wt_q4_block *out) {
    DH_ASSERT(n % WT_QBLOCK == 0);
    for (int b = 0; b < n / WT_QBLOCK; b++) q4_block_ref(x + b * WT_QBLOCK, out + b);
}

/* ---- q4k ---- */

/* round(v) (halves up) clamped to [0, hi], 0 for NaN; no libm call, so loops vectorize */
static int q_clamp(float v, int hi) {
    if (!(v > 0)) return 0;
    if (v >= (float)hi) return hi;
    return (int)(v + 0.5f);
}

/* Least squares a, b for the nibbles q (b <= 0 kept, a >= 0); its squared error, from the
 * sums (sum (a q + b - x)^2 expanded), so one pass over the values. */
static float q4k_ls(const float *x, const uint8_t *q, float *a_out, float *b_out) {
    /* 8 partial sums of each (i mod 8): independent chains the compiler can put in lanes */
    float p[5][8] = {{0}};
    for (int i = 0; i < WT_QBLOCK; i += 8)
        for (int l = 0; l < 8; l++) {
            float v = x[i + l] == x[i + l] ? x[i + l] : 0, qi = (float)q[i + l];
            p[0][l] += qi, p[1][l] += qi * qi, p[2][l] += v, p[3][l] += qi * v, p[4][l] += v * v;
        }
    float t[5];
    for (int k = 0; k < 5; k++)
        t[k] = ((p[k][0] + p[k][1]) + (p[k][2] + p[k][3])) + ((p[k][4] + p[k][5]) + (p[k][6] + p[k][7]));
    float sq = t[0], sqq = t[1], sx = t[2], sqx = t[3], sxx = t[4];
    const float n = WT_QBLOCK;
    float den = n * sqq - sq * sq, a, b;
    if (den <= 0) return INFINITY;
    a = (n * sqx - sq * sx) / den;
    b = (sx - a * sq) / n;
    if (b > 0) b = 0, a = sqq > 0 ? sqx / sqq : 0; /* the min must not be positive */
    if (a < 0) a = 0;
    *a_out = a, *b_out = b;
    return sxx - 2 * a * sqx - 2 * b * sx + a * a * sqq + 2 * a * b * sq + n * b * b;
}

/* The affine fit of one sub-block: x[i] ~ a * q[i] + b with q in 0..15, a >= 0, b <= 0. Tries
 * grids of 15 + 0.5 k steps over [min(x, 0), max x] (k = -4..1: the narrower ones clip the
 * extremes), each followed by the least-squares a and b for its nibbles, keeps the one of least
 * squared error, then alternates nearest nibbles and least squares twice more. */
static void q4k_fit(const float *x, float *a_out, float *b_out) {
    float lo = 0, hi = 0;
    for (int i = 0; i < WT_QBLOCK; i++) {
        float v = x[i] == x[i] ? x[i] : 0;
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    *a_out = 0, *b_out = lo;
    if (!(hi > lo) || !isfinite(hi - lo)) return;
    float best = INFINITY, a, b;
    uint8_t q[WT_QBLOCK];
    for (int k = -4; k <= 1; k++) {
        float iscale = (15.0f + 0.5f * (float)k) / (hi - lo);
        for (int i = 0; i < WT_QBLOCK; i++) q[i] = (uint8_t)q_clamp(iscale * ((x[i] == x[i] ? x[i] : 0) - lo), 15);
        float err = q4k_ls(x, q, &a, &b);
        if (err < best) best = err, *a_out = a, *b_out = b;
    }
    for (int it = 0; it < 2 && *a_out > 0; it++) {
        float inv = 1.0f / *a_out;
        for (int i = 0; i < WT_QBLOCK; i++) q[i] = (uint8_t)q_clamp(((x[i] == x[i] ? x[i] : 0) - *b_out) * inv, 15);
        float err = q4k_ls(x, q, &a, &b);
        if (!(err < best)) break;
        best = err, *a_out = a, *b_out = b;
    }
}

/* One super-block of ns sub-blocks: the sub-block fits, their scales and mins quantized to 6
 * bits against the super-block's f16 d and dmin, then each value's nibble chosen against the
 * scale and min actually stored. Returns the bytes written (16 + 16 ns). */
static size_t q4k_super(const float *x, int ns, uint8_t *out) {
    float a[8], b[8], amax = 0, mmax = 0;
    for (int j = 0; j < ns; j++) {
        q4k_fit(x + j * WT_QBLOCK, &a[j], &b[j]);
        amax = a[j] > amax ? a[j] : amax;
        mmax = -b[j] > mmax ? -b[j] : mmax;
    }
    wt_q4k_head h;
    memset(&h, 0, sizeof h);
    h.d = wt_f32_to_f16(amax / 63);
    h.dmin = wt_f32_to_f16(mmax / 63);
    float d = wt_f16_to_f32(h.d), dmin = wt_f16_to_f32(h.dmin);
    uint8_t *q = out + sizeof h;
    for (int j = 0; j < ns; j++) {
        int sj = d > 0 ? q_clamp(a[j] / d, 63) : 0, mj = dmin > 0 ? q_clamp(-b[j] / dmin, 63) : 0;
        h.sc[j] = (uint8_t)(sj | (mj & 3) << 6);
        h.sc[8 + j / 2] |= (uint8_t)((mj >> 2) << (4 * (j % 2)));
        float step = d * (float)sj, off = dmin * (float)mj, inv = step > 0 ? 1.0f / step : 0;
        const float *xj = x + j * WT_QBLOCK;
        for (int i = 0; i < WT_QBLOCK / 2; i++) {
            int lo = q_clamp((xj[i] + off) * inv, 15), hi = q_clamp((xj[i + 16] + off) * inv, 15);
            q[j * 16 + i] = (uint8_t)(lo | hi << 4);
        }
    }
    memcpy(out, &h, sizeof h);
    return sizeof h + (size_t)ns * WT_QBLOCK / 2;
}

void quant_q4k_row(const float *x, int n, uint8_t *out) {
    DH_ASSERT(n % WT_QBLOCK == 0);
    for (int k0 = 0; k0 < n; k0 += WT_KBLOCK)
        out += q4k_super(x + k0, DH_MIN(WT_KBLOCK, n - k0) / WT_QBLOCK, out);
}
