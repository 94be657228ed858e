/* kern_avx512.c: AVX-512 kernels for f32, bf16 and f16 weights.
 *
 * The product is computed in register tiles of R activation rows by C weight rows (up to
 * 4 x 4: sixteen 16-lane accumulators), each accumulator running over k in steps of 16 with
 * one fused multiply-add, the tail masked, and reduced at the end with the fixed tree of
 * _mm512_reduce_add_ps. A tile of any shape performs, per output element, exactly the same
 * operations, so a row's result does not depend on T (see kern.h).
 *
 * Cache blocking: weights are walked in blocks of KERN_OBLOCK rows and activations in blocks
 * of TBLOCK rows, so that both blocks stay in L2 while the tiles run over them. bf16/f16 weights
 * are widened on the fly for small T (a weight is then used by at most 3 rows, and memory
 * bandwidth is the limit), and widened once per block into scratch for larger T (a weight is
 * then reused by every row, and widening it each time would cost as much as the FMAs).
 * Widening is exact, so both paths give the same bits.
 *
 * The file is compiled for AVX-512 with a pragma; nothing here runs unless kern_avx512()
 * found the features at run time. */
#include "kern.h"

#include "common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
#include <immintrin.h>

#define TBLOCK 64
#define SMALL_T 4 /* below this, widen bf16/f16 on the fly */

/* load 16 weights (or fewer with a mask) as f32 */
static inline __attribute__((always_inline)) __m512 load_w(const void *p, dh_dtype dt, __mmask16 m,
                                                          int masked) {
    switch (dt) {
    case DT_BF16: {
        __m256i h = masked ? _mm256_maskz_loadu_epi16(m, p) : _mm256_loadu_si256(p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case DT_F16: {
        __m256i h = masked ? _mm256_maskz_loadu_epi16(m, p) : _mm256_loadu_si256(p);
        return _mm512_cvtph_ps(h);
    }
    default: return masked ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p);
    }
}

static inline __attribute__((always_inline)) const void *w_at(const void *w, dh_dtype dt, size_t i) {
    return dt == DT_F32 ? (const void *)((const float *)w + i) : (const void *)((const uint16_t *)w + i);
}

/* y[r*ldy + c] = dot(x row r, w row c) for r < R, c < C */
static inline __attribute__((always_inline)) void tile(float *y, int ldy, const float *x, int ldx,
                                                       const void *w, size_t ldw, dh_dtype dt,
                                                       int cols, int R, int C) {
    __m512 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= cols; k += 16) {
        __m512 xv[4];
        for (int r = 0; r < R; r++) xv[r] = _mm512_loadu_ps(x + (size_t)r * ldx + k);
        for (int c = 0; c < C; c++) {
            __m512 wv = load_w(w_at(w, dt, (size_t)c * ldw + k), dt, 0, 0);
            for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    if (k < cols) {
        __mmask16 m = (__mmask16)((1u << (cols - k)) - 1);
        __m512 xv[4];
        for (int r = 0; r < R; r++) xv[r] = _mm512_maskz_loadu_ps(m, x + (size_t)r * ldx + k);
        for (int c = 0; c < C; c++) {
            __m512 wv = load_w(w_at(w, dt, (size_t)c * ldw + k), dt, m, 1);
            for (int r = 0; r < R; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) y[(size_t)r * ldy + c] = _mm512_reduce_add_ps(acc[r][c]);
}

#define TILE_CASE(R, C) \
    case (R) * 8 + (C): tile(y, ldy, x, ldx, w, ldw, dt, cols, R, C); break;

static void tile_any(float *y, int ldy, const float *x, int ldx, const void *w, size_t ldw,
                     dh_dtype dt, int cols, int R, int C) {
    switch (R * 8 + C) {
        TILE_CASE(1, 1) TILE_CASE(1, 2) TILE_CASE(1, 3) TILE_CASE(1, 4)
        TILE_CASE(2, 1) TILE_CASE(2, 2) TILE_CASE(2, 3) TILE_CASE(2, 4)
        TILE_CASE(3, 1) TILE_CASE(3, 2) TILE_CASE(3, 3) TILE_CASE(3, 4)
        TILE_CASE(4, 1) TILE_CASE(4, 2) TILE_CASE(4, 3) TILE_CASE(4, 4)
    default: DH_ASSERT(0);
    }
}

/* rows [o0, o1) of a 16-bit weight matrix widened to f32 */
static void widen_rows(float *dst, const wmat *W, int o0, int o1) {
    size_t n = (size_t)(o1 - o0) * (size_t)W->cols;
    const uint16_t *src = (W->dtype == DT_BF16 ? W->p.bf16 : W->p.f16) + (size_t)o0 * W->cols;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_w(src + i, W->dtype, 0, 0));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(dst + i, m, load_w(src + i, W->dtype, m, 1));
    }
}

static void matmul_float(float *y, int ldy, const float *x, int ldx, const wmat *W, int T, int o0,
                         int o1, float *scratch) {
    int cols = W->cols;
    const void *base = W->dtype == DT_F32 ? (const void *)W->p.f32 : (const void *)W->p.bf16;
    int widen = W->dtype != DT_F32 && T >= SMALL_T;
    for (int ob = o0; ob < o1; ob += KERN_OBLOCK) {
        int oe = DH_MIN(ob + KERN_OBLOCK, o1);
        const void *wb;
        dh_dtype dt;
        if (widen) {
            widen_rows(scratch, W, ob, oe);
            wb = scratch;
            dt = DT_F32;
        } else {
            wb = w_at(base, W->dtype, (size_t)ob * cols);
            dt = W->dtype;
        }
        for (int tb = 0; tb < T; tb += TBLOCK) {
            int te = DH_MIN(tb + TBLOCK, T);
            for (int t = tb; t < te; t += 4) {
                int R = DH_MIN(4, te - t);
                for (int o = ob; o < oe; o += 4) {
                    int C = DH_MIN(4, oe - o);
                    tile_any(y + (size_t)t * ldy + o, ldy, x + (size_t)t * ldx, ldx,
                             w_at(wb, dt, (size_t)(o - ob) * cols), (size_t)cols, dt, cols, R, C);
                }
            }
        }
    }
}

static float dot_avx(const float *a, const float *b, int n) {
    float y;
    tile(&y, 1, a, n, b, (size_t)n, DT_F32, n, 1, 1);
    return y;
}

static void axpy_avx(float *y, float a, const float *x, int n) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 r = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

static void matmul_avx(float *y, int ldy, const kern_act *a, const wmat *W, int T, int o0, int o1,
                       float *scratch) {
    if (W->dtype == DT_Q8 || W->dtype == DT_Q4) {
        kern_portable()->matmul(y, ldy, a, W, T, o0, o1, scratch);
        return;
    }
    matmul_float(y, ldy, a->x, a->ldx, W, T, o0, o1, scratch);
}

static void quantize_avx(const float *x, int cols, int8_t *q, float *d) {
    kern_portable()->quantize(x, cols, q, d);
}

static const kern_ops avx_ops = {
    .name = "avx512",
    .matmul = matmul_avx,
    .quantize = quantize_avx,
    .dot = dot_avx,
    .axpy = axpy_avx,
};

const kern_ops *kern_avx512(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return &avx_ops;
    return NULL;
}
#else
const kern_ops *kern_avx512(void) { return NULL; }
#endif
