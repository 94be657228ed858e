/* test_kern.c: every kernel against a naive double-precision loop, the AVX-512 kernels against
 * the portable ones, the f32/bf16/f16 products against their documented operation sequences
 * (kern.h) bit for bit, and the batch invariance that the serving engine relies on; the
 * activation quantizers against each other bit for bit, and the weight quantizers against their
 * scalar definitions and their round-trip error bounds. */
#include <CUnit/CUnit.h>
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/kern.h"
#include "core/nn.h"
#include "core/quant.h"

static uint64_t rng = 88172645463325252ULL;
static float frand(void) { /* xorshift64, uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* A random weight matrix of dtype dt; *store is the owned buffer. */
static wmat make_w(dh_dtype dt, int rows, int cols, void **store) {
    wmat W = {.dtype = dt, .rows = rows, .cols = cols};
    size_t n = (size_t)rows * cols;
    if (dt == DT_F32) {
        float *p = malloc(n * 4);
        for (size_t i = 0; i < n; i++) p[i] = frand();
        W.p.f32 = p;
        *store = p;
    } else if (dt == DT_BF16 || dt == DT_F16) {
        uint16_t *p = malloc(n * 2);
        for (size_t i = 0; i < n; i++) p[i] = dt == DT_BF16 ? wt_f32_to_bf16(frand()) : wt_f32_to_f16(frand());
        W.p.bf16 = p;
        *store = p;
    } else if (dt == DT_Q8) {
        wt_q8_block *b = malloc(n / 32 * sizeof *b);
        for (size_t i = 0; i < n / 32; i++) {
            b[i].d = wt_f32_to_f16(0.01f + 0.02f * fabsf(frand()));
            for (int j = 0; j < 32; j++) b[i].q[j] = (int8_t)(frand() * 127);
        }
        W.p.q8 = b;
        *store = b;
    } else if (dt == DT_Q4K) { /* random heads (every 6-bit scale and min) and nibbles */
        size_t rb = wt_q4k_row_bytes((size_t)cols);
        uint8_t *p = malloc((size_t)rows * rb);
        for (size_t i = 0; i < (size_t)rows * rb; i++) {
            frand();
            p[i] = (uint8_t)(rng >> 24);
        }
        for (int r = 0; r < rows; r++)
            for (int k0 = 0; k0 < cols; k0 += WT_KBLOCK) {
                wt_q4k_head h;
                uint8_t *hp = p + (size_t)r * rb + (size_t)k0 / WT_KBLOCK * (sizeof h + WT_KBLOCK / 2);
                memcpy(&h, hp, sizeof h);
                h.d = wt_f32_to_f16(0.0005f + 0.001f * fabsf(frand()));
                h.dmin = wt_f32_to_f16(0.0005f + 0.001f * fabsf(frand()));
                memcpy(hp, &h, sizeof h);
            }
        W.p.q4k = p;
        *store = p;
    } else {
        wt_q4_block *b = malloc(n / 32 * sizeof *b);
        for (size_t i = 0; i < n / 32; i++) {
            b[i].d = wt_f32_to_f16(0.01f + 0.02f * fabsf(frand()));
            for (int j = 0; j < 16; j++) b[i].q[j] = (uint8_t)(rng >> (j % 8 * 8));
            frand();
        }
        W.p.q4 = b;
        *store = b;
    }
    return W;
}

static int is_quant(dh_dtype dt) { return dt == DT_Q8 || dt == DT_Q4 || dt == DT_Q4K; }

/* Row o of a q4k matrix in double, as its two parts: element k is aq[k] - bm[k] with aq = d s_j
 * nibble and bm = dmin m_j (exact in double). */
static void q4k_parts(const wmat *W, int o, double *aq, double *bm) {
    const uint8_t *p = W->p.q4k + (size_t)o * wt_q4k_row_bytes((size_t)W->cols);
    for (int k0 = 0; k0 < W->cols; k0 += WT_KBLOCK) {
        wt_q4k_head h;
        memcpy(&h, p, sizeof h);
        p += sizeof h;
        for (int j = 0; j < DH_MIN(W->cols - k0, WT_KBLOCK) / 32; j++, p += 16) {
            int sj, mj;
            wt_q4k_scale(&h, j, &sj, &mj);
            for (int i = 0; i < 32; i++) {
                int nib = i < 16 ? p[i] & 15 : p[i - 16] >> 4;
                aq[k0 + 32 * j + i] = (double)wt_f16_to_f32(h.d) * sj * nib;
                bm[k0 + 32 * j + i] = (double)wt_f16_to_f32(h.dmin) * mj;
            }
        }
    }
}

/* Quantized copy of x (portable quantizer), as nn_matmul prepares it. */
static void quantize_rows(const float *x, int T, int cols, int8_t *q, float *d) {
    for (int t = 0; t < T; t++)
        kern_portable()->quantize(x + (size_t)t * cols, cols, q + (size_t)t * cols, d + (size_t)t * (cols / 32));
}

/* Naive oracle in double: for q8/q4 on the quantized activations, else on x. Also returns
 * sum |x_k w_k| per element for the rounding bound. */
static void naive(double *y, double *mag, const float *x, const int8_t *q, const float *qd,
                  const wmat *W, int T) {
    float *w = malloc((size_t)W->cols * 4);
    double *aq = malloc((size_t)W->cols * 8), *bm = malloc((size_t)W->cols * 8);
    int quant = is_quant(W->dtype), k4 = W->dtype == DT_Q4K;
    for (int o = 0; o < W->rows; o++) {
        if (k4)
            q4k_parts(W, o, aq, bm);
        else
            wt_row(W, o, w);
        for (int t = 0; t < T; t++) {
            double s = 0, m = 0;
            for (int k = 0; k < W->cols; k++) {
                double xv = quant ? (double)qd[t * (W->cols / 32) + k / 32] * q[(size_t)t * W->cols + k]
                                  : x[(size_t)t * W->cols + k];
                /* q4k: the kernels sum the two parts apart, so they bound the rounding */
                s += k4 ? xv * (aq[k] - bm[k]) : xv * w[k];
                m += k4 ? fabs(xv) * (aq[k] + bm[k]) : fabs(xv * w[k]);
            }
            y[(size_t)t * W->rows + o] = s;
            mag[(size_t)t * W->rows + o] = m;
        }
    }
    free(w), free(aq), free(bm);
}

/* The rounding bound of a product with `cols` inputs, as a fraction of sum_k |x_k w_k|.
 * f32/bf16/f16: one sum k = 0, 1, ... (kern.h), n = cols roundings of relative size u = 2^-24
 * at most (a product and a sum each, or one fused step), so the classical bound of recursive
 * summation, gamma_n = n u / (1 - n u) (Higham, Accuracy and Stability, (3.5)), barring
 * underflow; the naive loop's own error, in double, is 2^-29 times smaller. q8/q4: the bound
 * these tests used before for 16 lanes and a tree (unchanged: their order did not change). */
static double rounding_bound(dh_dtype dt, int cols) {
    if (dt == DT_F32 || dt == DT_BF16 || dt == DT_F16) {
        double nu = (double)cols * 0x1p-24;
        return nu / (1 - nu);
    }
    if (dt == DT_Q4K) return ((double)cols / 8 + 6) * 2.4e-7; /* two sums a block */
    return ((double)cols / 16 + 6) * 2.4e-7;
}

static int check_close(const char *what, const float *got, const double *want, const double *mag,
                       size_t n, dh_dtype dt, int cols) {
    double worst = 0;
    size_t wi = 0;
    int bad = 0;
    double g = rounding_bound(dt, cols);
    for (size_t i = 0; i < n; i++) {
        double err = fabs(got[i] - want[i]), tol = g * mag[i] + 1e-30;
        if (err / tol > worst) {
            worst = err / tol;
            wi = i;
        }
        bad += err > tol;
    }
    if (bad)
        printf("\n  %s: %d bad, worst at %zu: got %.9g want %.9g tol %.3g\n", what, bad, wi, got[wi],
               want[wi], g * mag[wi]);
    return bad;
}

static void run_kernel(const kern_ops *k, float *y, const float *x, const int8_t *q, const float *qd,
                       const wmat *W, int T, int o0, int o1) {
    float *scratch = malloc(kern_scratch_floats(W->cols) * sizeof(float));
    kern_act a = {.x = x, .ldx = W->cols, .q = q, .qd = qd};
    k->matmul(y, W->rows, &a, W, T, o0, o1, scratch);
    free(scratch);
}

static void check_dtype_against_naive(dh_dtype dt) {
    static const int shapes[][3] = {{1, 7, 32}, {3, 5, 64}, {4, 9, 96}, {9, 70, 160}, {17, 65, 2048}};
    const kern_ops *tables[2] = {kern_portable(), kern_avx512()};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], rows = shapes[s][1], cols = shapes[s][2];
        if ((dt == DT_F32 || dt == DT_BF16 || dt == DT_F16) && s == 1) cols = 37; /* a ragged tail */
        void *store;
        wmat W = make_w(dt, rows, cols, &store);
        float *x = malloc((size_t)T * cols * 4), *y = malloc((size_t)T * rows * 4);
        int8_t *q = malloc((size_t)T * cols);
        float *qd = malloc((size_t)T * (cols / 32 + 1) * 4);
        for (int i = 0; i < T * cols; i++) x[i] = frand();
        if (is_quant(dt)) quantize_rows(x, T, cols, q, qd);
        double *want = malloc((size_t)T * rows * 8), *mag = malloc((size_t)T * rows * 8);
        naive(want, mag, x, q, qd, &W, T);
        for (int k = 0; k < 2; k++) {
            if (!tables[k]) continue;
            run_kernel(tables[k], y, x, q, qd, &W, T, 0, rows);
            char what[64];
            snprintf(what, sizeof what, "%s %s T=%d %dx%d", tables[k]->name, wt_dtype_name(dt), T, rows, cols);
            CU_ASSERT_EQUAL(check_close(what, y, want, mag, (size_t)T * rows, dt, cols), 0);
        }
        free(x), free(y), free(q), free(qd), free(want), free(mag), free(store);
    }
}

static void test_f32_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_F32); }
static void test_bf16_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_BF16); }
static void test_f16_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_F16); }
static void test_q8_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_Q8); }
static void test_q4_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_Q4); }
static void test_q4k_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_Q4K); }

/* A row's result must not depend on how many other rows share the call, nor on the output
 * range a task covers: bit for bit. */
static void test_rows_do_not_depend_on_the_batch(void) {
    const kern_ops *tables[2] = {kern_portable(), kern_avx512()};
    for (int dt = 0; dt < DT_COUNT; dt++) {
        int rows = 131, cols = 288, Tmax = 70;
        void *store;
        wmat W = make_w((dh_dtype)dt, rows, cols, &store);
        float *x = malloc((size_t)Tmax * cols * 4), *y = malloc((size_t)Tmax * rows * 4),
              *y1 = malloc((size_t)rows * 4);
        int8_t *q = malloc((size_t)Tmax * cols);
        float *qd = malloc((size_t)Tmax * cols / 32 * 4);
        for (int i = 0; i < Tmax * cols; i++) x[i] = frand();
        quantize_rows(x, Tmax, cols, q, qd);
        for (int k = 0; k < 2; k++) {
            if (!tables[k]) continue;
            /* both sides of the AVX-512 float kernels' small path (T <= 8) and of the q8/q4
             * ones' (T <= 4) */
            static const int Ts[] = {2, 3, 4, 5, 8, 9, 13, 64, 70};
            int bad = 0;
            for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
                int T = Ts[ti];
                run_kernel(tables[k], y, x, q, qd, &W, T, 0, rows);
                for (int t = 0; t < T; t += 3) {
                    /* the same row alone, over an odd output range split in two */
                    run_kernel(tables[k], y1, x + (size_t)t * cols, q + (size_t)t * cols,
                               qd + (size_t)t * (cols / 32), &W, 1, 0, 50);
                    run_kernel(tables[k], y1, x + (size_t)t * cols, q + (size_t)t * cols,
                               qd + (size_t)t * (cols / 32), &W, 1, 50, rows);
                    if (memcmp(y1, y + (size_t)t * rows, (size_t)rows * 4) != 0) {
                        if (bad++ < 2)
                            printf("\n  %s %s: row %d of a batch of %d differs from the row alone\n",
                                   tables[k]->name, wt_dtype_name((dh_dtype)dt), t, T);
                    }
                }
            }
            CU_ASSERT_EQUAL(bad, 0);
        }
        free(x), free(y), free(y1), free(q), free(qd), free(store);
    }
}

/* Every float dtype, on the small path (T = 7) and the packed one (T = 20, 2300 inputs: two
 * passes over k), split over the pool's 2 threads by blocks of 64 rows. */
static void test_threaded_matmul_equals_one_thread(void) {
    static const int shapes[][3] = {{7, 300, 256}, {20, 300, 2300}};
    for (int dt = DT_F32; dt <= DT_F16; dt++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int T = shapes[s][0], rows = shapes[s][1], cols = shapes[s][2];
            void *store;
            wmat W = make_w((dh_dtype)dt, rows, cols, &store);
            float *x = malloc((size_t)T * cols * 4), *y = malloc((size_t)T * rows * 4),
                  *y1 = malloc((size_t)T * rows * 4);
            for (int i = 0; i < T * cols; i++) x[i] = frand();
            nn_reserve(T, cols);
            nn_matmul(y, x, &W, T); /* large enough to run on the pool */
            run_kernel(nn_kernels(), y1, x, NULL, NULL, &W, T, 0, rows);
            CU_ASSERT_EQUAL(memcmp(y, y1, (size_t)T * rows * 4), 0);
            free(x), free(y), free(y1), free(store);
        }
    CU_ASSERT_EQUAL(nn_threads(), 2);
}

static void test_dot_and_axpy_match_naive(void) {
    const kern_ops *tables[2] = {kern_portable(), kern_avx512()};
    for (int k = 0; k < 2; k++) {
        if (!tables[k]) continue;
        for (int n = 1; n < 100; n += 7) {
            float a[100], b[100], y[100], y0[100];
            double s = 0, m = 0;
            for (int i = 0; i < n; i++) {
                a[i] = frand(), b[i] = frand(), y[i] = y0[i] = frand();
                s += (double)a[i] * b[i];
                m += fabs((double)a[i] * b[i]);
            }
            CU_ASSERT(fabs(tables[k]->dot(a, b, n) - s) <= 1e-6 * m + 1e-12);
            tables[k]->axpy(y, 0.5f, a, n);
            for (int i = 0; i < n; i++) CU_ASSERT(fabsf(y[i] - (y0[i] + 0.5f * a[i])) <= 1e-6f);
        }
    }
}

/* dot_rows and axpy_rows are dot and axpy row by row, bit for bit, in each table: the widths
 * of attention's keys (96, 192, 576), values (64, 128, 512) and tails, every register block
 * of 1 to 8 vectors with and without a masked last one; 1 to 6 queries (outputs) at once, so
 * every tile of up to 4 and the ones after it; strides wider than a row */
static void test_dot_rows_and_axpy_rows_are_dot_and_axpy_bit_for_bit(void) {
    const kern_ops *tables[2] = {kern_portable(), kern_avx512()};
    enum { MAXR = 9, MAXN = 600, LD = 613, MAXQ = 6, LDQ = 607, LDA = 11, LDO = 13 };
    static float x[MAXR * LD], q[MAXQ * LDQ], a[MAXQ * LDA], y[MAXQ * LDQ], y1[MAXQ * LDQ], ya[MAXQ * LDQ];
    static float out[MAXQ * LDO];
    for (size_t i = 0; i < sizeof x / sizeof *x; i++) x[i] = frand();
    for (int i = 0; i < MAXQ * LDQ; i++) q[i] = frand(), y[i] = frand();
    for (int i = 0; i < MAXQ * LDA; i++) a[i] = frand();
    const int ns[] = {1, 7, 16, 17, 32, 48, 64, 96, 112, 128, 129, 144, 192, 200, 512, 576, 600};
    for (int k = 0; k < 2; k++) {
        if (!tables[k]) continue;
        for (size_t in = 0; in < sizeof ns / sizeof *ns; in++)
            for (int nq = 1; nq <= MAXQ; nq++)
                for (int rows = 0; rows <= MAXR; rows++) {
                    int n = ns[in], bad = 0;
                    tables[k]->dot_rows(out, LDO, q, LDQ, nq, x, LD, rows, n);
                    for (int i = 0; i < nq; i++)
                        for (int r = 0; r < rows; r++) {
                            float d = tables[k]->dot(q + i * LDQ, x + (size_t)r * LD, n);
                            bad += memcmp(&d, &out[i * LDO + r], sizeof d) != 0;
                        }
                    memcpy(y1, y, sizeof y);
                    memcpy(ya, y, sizeof y);
                    tables[k]->axpy_rows(y1, LDQ, a, LDA, nq, x, LD, rows, n);
                    for (int i = 0; i < nq; i++)
                        for (int r = 0; r < rows; r++) tables[k]->axpy(ya + i * LDQ, a[i * LDA + r], x + (size_t)r * LD, n);
                    bad += memcmp(ya, y1, sizeof ya) != 0; /* the elements past n untouched too */
                    CU_ASSERT_EQUAL(bad, 0);
                    if (bad) fprintf(stderr, "%s: n %d, queries %d, rows %d differ\n", tables[k]->name, n, nq, rows);
                }
    }
}

/* kern.h's order for f32/bf16/f16 products, written out: k ascending from +0, one fmaf a step
 * (AVX-512: fmaf is the fused operation, correctly rounded) or a product and a sum (portable:
 * ISO C mode keeps the compiler from fusing them). */
static float order_fused(const float *x, const float *w, int n) {
    float acc = 0.0f;
    for (int k = 0; k < n; k++) acc = fmaf(x[k], w[k], acc);
    return acc;
}
static float order_separate(const float *x, const float *w, int n) {
    float acc = 0.0f;
    for (int k = 0; k < n; k++) {
        float p = x[k] * w[k];
        acc = acc + p;
    }
    return acc;
}

/* Every output of both tables equals its written-out sequence bit for bit: the small path
 * (T <= 8) and the packed one, tails of k of every length, one and several passes over k
 * (2085 and 4133 inputs), output ranges that are not multiples of 16 or 64, and x rows with a
 * stride. Stronger than any tolerance: a step out of order, or fused where the order says
 * separate (or the reverse), changes the low bits (checked by swapping the two sequences). */
static void test_float_products_are_their_documented_sequences(void) {
    static const int Ts[] = {1, 2, 3, 8, 9, 13, 20};
    static const int colss[] = {1, 7, 16, 31, 33, 100, 1000, 2085, 4133};
    static const int ranges[][2] = {{0, 131}, {5, 70}, {64, 131}, {129, 131}};
    const kern_ops *tables[2] = {kern_portable(), kern_avx512()};
    int rows = 131, bad = 0;
    for (int dt = DT_F32; dt <= DT_F16; dt++)
        for (size_t c = 0; c < sizeof colss / sizeof colss[0]; c++) {
            int cols = colss[c], ldx = cols + 3, T = Ts[c % (sizeof Ts / sizeof Ts[0])];
            if (cols > 2048) T = c % 2 ? 1 : 13; /* the long rows once on each path */
            void *store;
            wmat W = make_w((dh_dtype)dt, rows, cols, &store);
            float *x = malloc((size_t)T * ldx * 4), *w = malloc((size_t)cols * 4);
            float *y = malloc((size_t)T * rows * 4), *want = malloc((size_t)T * rows * 4);
            for (size_t i = 0; i < (size_t)T * ldx; i++) x[i] = frand() * (i % 7 ? 1.0f : 300.0f);
            for (int k = 0; k < 2; k++) {
                if (!tables[k]) continue;
                for (int o = 0; o < rows; o++) {
                    wt_row(&W, o, w);
                    for (int t = 0; t < T; t++) {
                        const float *xt = x + (size_t)t * ldx;
                        want[(size_t)t * rows + o] =
                            k ? order_fused(xt, w, cols) : order_separate(xt, w, cols);
                    }
                }
                for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
                    int o0 = ranges[r][0], o1 = ranges[r][1];
                    float *scratch = malloc(kern_scratch_floats(cols) * sizeof(float));
                    kern_act a = {.x = x, .ldx = ldx};
                    tables[k]->matmul(y, rows, &a, &W, T, o0, o1, scratch);
                    free(scratch);
                    for (int t = 0; t < T; t++)
                        for (int o = o0; o < o1; o++) {
                            size_t i = (size_t)t * rows + o;
                            if (memcmp(y + i, want + i, 4) != 0 && bad++ < 3)
                                printf("\n  %s %s T=%d cols=%d [%d,%d): y[%d,%d] = %a, the "
                                       "sequence gives %a", tables[k]->name,
                                       wt_dtype_name((dh_dtype)dt), T, cols, o0, o1, t, o, y[i],
                                       want[i]);
                        }
                }
            }
            free(x), free(w), free(y), free(want), free(store);
        }
    CU_ASSERT_EQUAL(bad, 0);
}

/* OpenBLAS as an independent oracle: the products of f32 weights, through the kernels nn_init
 * picked and on 2 threads, against cblas_sgemm on the same inputs (Y = X W^T). sgemm sums in
 * its own blocked order, so the two agree within twice the bound of any order, 2 gamma_n
 * sum_k |x_k w_k| per element; the magnitudes come from the double-precision naive loop. */
static void test_f32_products_agree_with_openblas_sgemm(void) {
    static const int shapes[][3] = {{1, 129, 2048}, {7, 300, 1000}, {37, 131, 2085}, {512, 200, 2048}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], rows = shapes[s][1], cols = shapes[s][2];
        void *store;
        wmat W = make_w(DT_F32, rows, cols, &store);
        float *x = malloc((size_t)T * cols * 4), *y = malloc((size_t)T * rows * 4),
              *ref = malloc((size_t)T * rows * 4);
        double *want = malloc((size_t)T * rows * sizeof *want), *mag = malloc((size_t)T * rows * sizeof *mag);
        for (size_t i = 0; i < (size_t)T * cols; i++) x[i] = frand();
        nn_reserve(T, cols);
        nn_matmul(y, x, &W, T);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, rows, cols, 1.0f, x, cols, W.p.f32,
                    cols, 0.0f, ref, rows);
        naive(want, mag, x, NULL, NULL, &W, T);
        double g = 2 * rounding_bound(DT_F32, cols), worst = 0;
        for (size_t i = 0; i < (size_t)T * rows; i++)
            worst = DH_MAX(worst, fabs((double)y[i] - ref[i]) / (g * mag[i] + 1e-30));
        if (worst > 1 || getenv("DH_TEST_VERBOSE"))
            printf("\n  T=%d %dx%d: worst |ours - sgemm| = %.3g of the bound", T, rows, cols, worst);
        CU_ASSERT(worst <= 1);
        /* and the sgemm oracle is itself right (it could be broken by a bad core type) */
        double worst_ref = 0;
        for (size_t i = 0; i < (size_t)T * rows; i++)
            worst_ref = DH_MAX(worst_ref, fabs(ref[i] - want[i]) / (g / 2 * mag[i] + 1e-30));
        CU_ASSERT(worst_ref <= 1);
        free(x), free(y), free(ref), free(want), free(mag), free(store);
    }
}

static void test_rmsnorm_softmax_and_swiglu_match_their_formulas(void) {
    float x[40], w[40], y[40];
    double ss = 0;
    for (int i = 0; i < 40; i++) {
        x[i] = frand() * 3;
        w[i] = frand();
        ss += (double)x[i] * x[i];
    }
    nn_rmsnorm(y, x, w, 1, 40, 1e-6f);
    double r = 1.0 / sqrt(ss / 40 + 1e-6);
    for (int i = 0; i < 40; i++) CU_ASSERT(fabs(y[i] - x[i] * r * w[i]) <= 1e-6 * (1 + fabs(y[i])));
    float p[5] = {1, 2, 3, 1000, -1000};
    nn_softmax(p, 5);
    CU_ASSERT_DOUBLE_EQUAL(p[3], 1.0, 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(p[4], 0.0, 1e-30);
    float g[3] = {0, 1, -2}, u[3] = {5, 2, 3};
    nn_swiglu(g, u, 3);
    CU_ASSERT_DOUBLE_EQUAL(g[0], 0.0, 1e-7);
    CU_ASSERT_DOUBLE_EQUAL(g[1], 2.0 / (1 + exp(-1.0)), 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(g[2], 3.0 * -2.0 / (1 + exp(2.0)), 1e-6);
}

/* Every table's exp_sub, swiglu and exp_scaled against libm's expf, nn_swiglu's formula and libm's
 * exp (double), bit for bit: every float whose bits are a multiple
 * of EXP_STRIDE (all signs, exponents, NaNs and infinities; DH_TEST_EXP_ALL=1 runs all 2^32,
 * about 90 s), then values near a softmax's, with m != 0 and every tail length. On glibc the
 * AVX-512 table must have found its 16-lane path (exp16): else this would compare expf with
 * itself. */
#define EXP_STRIDE 61
static void test_exp_sub_swiglu_and_exp_scaled_give_libm_bits_in_every_table(void) {
    const kern_ops *tables[2] = {kern_portable(), kern_avx512()};
#ifdef __GLIBC__
    if (tables[1]) CU_ASSERT(tables[1]->exp16 == 1);
#endif
    const char *all = getenv("DH_TEST_EXP_ALL");
    uint64_t stride = all && atoi(all) > 0 ? 1 : EXP_STRIDE;
    enum { B = 4096 };
    float *x = malloc(2 * B * sizeof *x), *g = malloc(B * sizeof *g), *u = malloc(B * sizeof *u);
    double *d = malloc(B * sizeof *d);
    for (int i = 0; i < B; i++) u[i] = frand() * 4;
    for (int k = 0; k < 2; k++) {
        if (!tables[k]) continue;
        long bad = 0, bad_swiglu = 0, bad_scaled = 0;
        for (uint64_t b0 = 0; b0 < (1ull << 32); b0 += stride * B) {
            int n = 0;
            for (uint64_t b = b0; b < b0 + stride * B && b < (1ull << 32); b += stride) {
                uint32_t bits = (uint32_t)b;
                memcpy(x + n++, &bits, sizeof bits);
            }
            memcpy(x + B, x, (size_t)n * sizeof *x);
            memcpy(g, x, (size_t)n * sizeof *x);
            tables[k]->exp_sub(x, n, 0.0f);
            tables[k]->swiglu(g, u, (size_t)n);
            for (int i = 0; i < n; i++) {
                float e = expf(x[B + i]), y = x[B + i] / (1.0f + expf(-x[B + i])) * u[i];
                bad += memcmp(&e, x + i, sizeof e) != 0;
                bad_swiglu += memcmp(&y, g + i, sizeof y) != 0;
            }
            /* exp_scaled on every 5th block: around its fast path, past 512 and below 2^-54 */
            if (b0 / (stride * B) % 5) continue;
            const double scale[] = {1.0, 1 / 0.7, 7.5, 1e-17, 1e-20};
            const float m[] = {0.0f, -3.25f, 0.0f, 0.0f, 1.5f};
            for (int j = 0; j < 5; j++) {
                tables[k]->exp_scaled(d, x + B, n, m[j], scale[j]);
                for (int i = 0; i < n; i++) {
                    double e = exp(((double)x[B + i] - m[j]) * scale[j]);
                    bad_scaled += memcmp(&e, d + i, sizeof e) != 0;
                }
            }
        }
        CU_ASSERT_EQUAL(bad_swiglu, 0);
        CU_ASSERT_EQUAL(bad_scaled, 0);
        if (bad_scaled) fprintf(stderr, "exp_scaled of table %s: %ld values differ\n", tables[k]->name, bad_scaled);
        if (bad_swiglu) fprintf(stderr, "swiglu of table %s: %ld values differ\n", tables[k]->name, bad_swiglu);
        CU_ASSERT_EQUAL(bad, 0);
        if (bad) fprintf(stderr, "exp_sub of table %s: %ld values differ from expf\n", tables[k]->name, bad);
        for (int n = 1; n <= 40; n++) {
            float m = frand() * 20;
            for (int i = 0; i < n; i++) x[i] = x[B + i] = m + frand() * 30 - 25;
            tables[k]->exp_sub(x, n, m);
            int same = 1;
            for (int i = 0; i < n; i++) {
                float e = expf(x[B + i] - m);
                same &= memcmp(&e, x + i, sizeof e) == 0;
            }
            CU_ASSERT(same);
        }
    }
    free(x), free(g), free(u), free(d);
}

/* ---- shape sweeps: every path of the SIMD kernels, strided and over odd output ranges ---- */

/* y[t*ldy + o] for o in [o0, o1) from table k (ldy = rows + 3; x rows ldx apart; q8/q4 use q,
 * qd) against the naive want and, when ref is given, the portable result ref [T, rows]. Outputs
 * outside the range must keep their sentinel bits. Returns the number of failures. */
static int sweep_one(const kern_ops *k, const wmat *W, int T, int o0, int o1, const float *x,
                     int ldx, const int8_t *q, const float *qd, const double *want,
                     const double *mag, float *ref) {
    int rows = W->rows, ldy = rows + 3, cols = W->cols, bad = 0;
    float *y = malloc((size_t)T * ldy * sizeof *y);
    float *scratch = malloc(kern_scratch_floats(cols) * sizeof(float));
    const uint32_t sentinel = 0x7fc0dead;
    for (size_t i = 0; i < (size_t)T * ldy; i++) memcpy(y + i, &sentinel, 4);
    kern_act a = {.x = x, .ldx = ldx, .q = q, .qd = qd};
    k->matmul(y, ldy, &a, W, T, o0, o1, scratch);
    double g = rounding_bound(W->dtype, cols), worst = 0;
    int wt = 0, wo = 0;
    for (int t = 0; t < T; t++)
        for (int o = 0; o < ldy; o++) {
            float v = y[(size_t)t * ldy + o];
            uint32_t u;
            memcpy(&u, &v, 4);
            if (o < o0 || o >= o1) {
                if (u != sentinel && bad++ < 2)
                    printf("\n  %s %s T=%d %dx%d [%d,%d): wrote y[%d,%d] outside the range", k->name,
                           wt_dtype_name(W->dtype), T, rows, cols, o0, o1, t, o);
                continue;
            }
            size_t i = (size_t)t * rows + o;
            /* within tol of the truth, and (AVX-512) within 2 tol of the portable kernel: both
             * are within tol of the truth */
            double tol = g * mag[i] + 1e-30, r = fabs(v - want[i]) / tol;
            if (ref) r = DH_MAX(r, fabs((double)v - ref[i]) / (2 * tol));
            if (r > worst) worst = r, wt = t, wo = o;
        }
    if (worst > 1) {
        size_t i = (size_t)wt * rows + wo;
        printf("\n  %s %s T=%d %dx%d [%d,%d): worst y[%d,%d] = %.9g, naive %.9g%s%.9g, tol %.3g",
               k->name, wt_dtype_name(W->dtype), T, rows, cols, o0, o1, wt, wo,
               y[(size_t)wt * ldy + wo], want[i], ref ? ", portable " : "",
               ref ? ref[i] : 0.0, g * mag[i]);
        bad++;
    }
    free(y);
    free(scratch);
    return bad;
}

/* The portable result of outputs [o0, o1), rows of out W->rows apart. */
static void portable_rows(const wmat *W, int T, int o0, int o1, const float *x, int ldx,
                          const int8_t *q, const float *qd, float *out) {
    float *scratch = malloc(kern_scratch_floats(W->cols) * sizeof(float));
    kern_act a = {.x = x, .ldx = ldx, .q = q, .qd = qd};
    kern_portable()->matmul(out, W->rows, &a, W, T, o0, o1, scratch);
    free(scratch);
}

/* Naive double oracle with a row stride for x. */
static void naive_ld(double *y, double *mag, const float *x, int ldx, const int8_t *q,
                     const float *qd, const wmat *W, int T) {
    float *xc = malloc((size_t)T * W->cols * sizeof *xc);
    for (int t = 0; t < T; t++) memcpy(xc + (size_t)t * W->cols, x + (size_t)t * ldx, (size_t)W->cols * 4);
    naive(y, mag, xc, q, qd, W, T);
    free(xc);
}

static void sweep_dtype(dh_dtype dt) {
    static const int Ts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 64, 70};
    static const int qcols[] = {32, 64, 96, 160, 640, 2048, 4096, 288, 1024, 640, 2048, 288, 160};
    static const int fcols[] = {1, 7, 15, 16, 17, 37, 100, 257, 1000, 2051, 130, 31, 48};
    static const int ranges[][2] = {{0, 131}, {3, 70}, {17, 113}, {64, 131}, {0, 50}, {129, 131}};
    int quant = is_quant(dt), rows = 131, bad = 0;
    const kern_ops *avx = kern_avx512();
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
        int T = Ts[i], cols = quant ? qcols[i] : fcols[i], ldx = quant ? cols : cols + 1;
        void *store;
        wmat W = make_w(dt, rows, cols, &store);
        if (dt == DT_Q8) { /* the extremes of the format, whatever the quantizer produces */
            wt_q8_block *b = (wt_q8_block *)store;
            b[0].q[0] = -128, b[0].q[1] = 127, b[(size_t)rows * (cols / 32) - 1].q[31] = -128;
        }
        float *x = malloc((size_t)T * ldx * 4), *ref = malloc((size_t)T * rows * 4);
        int8_t *q = malloc((size_t)T * cols);
        float *qd = malloc((size_t)T * (cols / 32 + 1) * 4);
        for (size_t j = 0; j < (size_t)T * ldx; j++) x[j] = frand() * (j % 5 ? 1.0f : 40.0f);
        if (quant) {
            for (int t = 0; t < T; t++)
                kern_portable()->quantize(x + (size_t)t * ldx, cols, q + (size_t)t * cols,
                                          qd + (size_t)t * (cols / 32));
            q[0] = -128; /* not a quantizer output, but the kernels take any int8 */
        }
        double *want = malloc((size_t)T * rows * 8), *mag = malloc((size_t)T * rows * 8);
        naive_ld(want, mag, x, ldx, q, qd, &W, T);
        portable_rows(&W, T, 0, rows, x, ldx, q, qd, ref);
        for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
            int o0 = ranges[r][0], o1 = ranges[r][1];
            if (r % 2) /* the portable kernel on half the ranges: it is the slow part */
                bad += sweep_one(kern_portable(), &W, T, o0, o1, x, ldx, q, qd, want, mag, NULL);
            if (avx) bad += sweep_one(avx, &W, T, o0, o1, x, ldx, q, qd, want, mag, ref);
        }
        free(x), free(ref), free(q), free(qd), free(want), free(mag), free(store);
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_f32_kernels_agree_on_every_shape_and_range(void) { sweep_dtype(DT_F32); }
static void test_bf16_kernels_agree_on_every_shape_and_range(void) { sweep_dtype(DT_BF16); }
static void test_f16_kernels_agree_on_every_shape_and_range(void) { sweep_dtype(DT_F16); }
static void test_q8_kernels_agree_on_every_shape_and_range(void) { sweep_dtype(DT_Q8); }
static void test_q4_kernels_agree_on_every_shape_and_range(void) { sweep_dtype(DT_Q4); }
static void test_q4k_kernels_agree_on_every_shape_and_range(void) { sweep_dtype(DT_Q4K); }

/* Batch invariance where the AVX-512 q8/q4 kernels process the rows in chunks (a long row:
 * cols 8192 keeps 64 rows a chunk), where the float kernels make several passes over k (the
 * batch, packed, in 4 passes of 2048; the row alone on the small path), and over full and
 * partial 64-row blocks. */
static void test_long_rows_do_not_depend_on_the_batch(void) {
    const kern_ops *tables[2] = {kern_portable(), kern_avx512()};
    static const dh_dtype dts[] = {DT_F32, DT_BF16, DT_F16, DT_Q8, DT_Q4, DT_Q4K};
    int rows = 80, cols = 8192, T = 70, bad = 0;
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
        void *store;
        wmat W = make_w(dts[d], rows, cols, &store);
        float *x = malloc((size_t)T * cols * 4), *y = malloc((size_t)T * rows * 4),
              *y1 = malloc((size_t)rows * 4);
        int8_t *q = malloc((size_t)T * cols);
        float *qd = malloc((size_t)T * cols / 32 * 4);
        for (int i = 0; i < T * cols; i++) x[i] = frand();
        quantize_rows(x, T, cols, q, qd);
        for (int k = 0; k < 2; k++) {
            if (!tables[k]) continue;
            run_kernel(tables[k], y, x, q, qd, &W, T, 0, rows);
            for (int t = 0; t < T; t += 23) {
                run_kernel(tables[k], y1, x + (size_t)t * cols, q + (size_t)t * cols,
                           qd + (size_t)t * (cols / 32), &W, 1, 0, 64);
                run_kernel(tables[k], y1, x + (size_t)t * cols, q + (size_t)t * cols,
                           qd + (size_t)t * (cols / 32), &W, 1, 64, rows);
                for (int o = 0; o < rows; o++)
                    if (memcmp(y1 + o, y + (size_t)t * rows + o, 4) != 0 && bad++ < 2)
                        printf("\n  %s %s: row %d of %d, output %d: %.9g alone, %.9g in the batch",
                               tables[k]->name, wt_dtype_name(dts[d]), t, T, o, y1[o],
                               y[(size_t)t * rows + o]);
            }
        }
        free(x), free(y), free(y1), free(q), free(qd), free(store);
    }
    CU_ASSERT_EQUAL(bad, 0);
}

/* The AVX-512 q8/q4/q4k kernels pack a block of rows for more than 4 activation rows and do
 * not for up to 4: each row of a batch must come out as it does alone, whatever the shape
 * (q4k rows ending in a short super-block: 288, 160, 640 columns; 131 rows: a partial block of
 * 64 and a partial group of 16) and the output range. */
static void test_quantized_prompt_rows_equal_decode_rows(void) {
    static const int shapes[][2] = {{131, 288}, {131, 160}, {70, 640}, {65, 1024}, {17, 32}};
    static const int Ts[] = {5, 9, 23};
    const kern_ops *avx = kern_avx512();
    int bad = 0;
    if (!avx) return; /* the portable kernels have one path */
    for (int dt = DT_Q8; dt <= DT_Q4K; dt++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int rows = shapes[s][0], cols = shapes[s][1], T = Ts[s % 3];
            void *store;
            wmat W = make_w((dh_dtype)dt, rows, cols, &store);
            float *x = malloc((size_t)T * cols * 4), *y = malloc((size_t)T * rows * 4), *y1 = malloc((size_t)rows * 4);
            int8_t *q = malloc((size_t)T * cols);
            float *qd = malloc((size_t)T * cols / 32 * 4);
            for (int i = 0; i < T * cols; i++) x[i] = frand() * (i % 7 ? 1.0f : 30.0f);
            quantize_rows(x, T, cols, q, qd);
            int o0 = s % 2 ? 3 : 0; /* a range that starts inside a block, too */
            run_kernel(avx, y, x, q, qd, &W, T, o0, rows);
            for (int t = 0; t < T; t++) {
                run_kernel(avx, y1, x + (size_t)t * cols, q + (size_t)t * cols, qd + (size_t)t * (cols / 32), &W, 1,
                           o0, rows);
                for (int o = o0; o < rows; o++)
                    if (memcmp(y1 + o, y + (size_t)t * rows + o, 4) != 0 && bad++ < 3)
                        printf("\n  %s %dx%d: row %d of %d, output %d: %.9g alone, %.9g in the batch",
                               wt_dtype_name((dh_dtype)dt), rows, cols, t, T, o, y1[o], y[(size_t)t * rows + o]);
            }
            free(x), free(y), free(y1), free(q), free(qd), free(store);
        }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_threaded_quantized_matmul_equals_one_thread(void) {
    int rows = 300, cols = 512, T = 9;
    for (int dt = DT_Q8; dt <= DT_Q4K; dt++) {
        void *store;
        wmat W = make_w((dh_dtype)dt, rows, cols, &store);
        float *x = malloc((size_t)T * cols * 4), *y = malloc((size_t)T * rows * 4),
              *y1 = malloc((size_t)T * rows * 4);
        int8_t *q = malloc((size_t)T * cols);
        float *qd = malloc((size_t)T * cols / 32 * 4);
        for (int i = 0; i < T * cols; i++) x[i] = frand();
        for (int t = 0; t < T; t++)
            nn_kernels()->quantize(x + (size_t)t * cols, cols, q + (size_t)t * cols, qd + (size_t)t * (cols / 32));
        nn_reserve(T, cols);
        nn_matmul(y, x, &W, T);
        run_kernel(nn_kernels(), y1, x, q, qd, &W, T, 0, rows);
        CU_ASSERT_EQUAL(memcmp(y, y1, (size_t)T * rows * 4), 0);
        free(x), free(y), free(y1), free(q), free(qd), free(store);
    }
}

/* A gate product paired with its up product (nn_mm.up) in a pass with another product: the
 * gate's output is SwiGLU of the separate products, bit for bit, and the up's output is the up
 * product; every format, decode and prompt row counts (with the pool and on the caller). */
static void test_a_gate_paired_with_its_up_gives_swiglu_of_the_separate_products(void) {
    const dh_dtype dts[] = {DT_F32, DT_BF16, DT_Q8, DT_Q4K};
    const int Ts[] = {1, 3, 20}, shapes[][2] = {{300, 512}, {64, 256}}; /* the second, T = 1: on the caller */
    int bad = 0;
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++)
        for (size_t ti = 0; ti < sizeof Ts * 2 / sizeof Ts[0]; ti++) {
            int T = Ts[ti % 3], rows = shapes[ti / 3][0], cols = shapes[ti / 3][1];
            void *sg, *su, *so;
            wmat G = make_w(dts[d], rows, cols, &sg), U = make_w(dts[d], rows, cols, &su),
                 O = make_w(dts[d], 70, cols, &so);
            size_t ny = (size_t)T * rows;
            float *x = malloc((size_t)T * cols * 4), *g = malloc(ny * 4), *u = malloc(ny * 4), *o = malloc((size_t)T * 70 * 4),
                  *g1 = malloc(ny * 4), *u1 = malloc(ny * 4), *o1 = malloc((size_t)T * 70 * 4);
            for (int i = 0; i < T * cols; i++) x[i] = frand();
            nn_reserve(T, cols);
            nn_reserve_act((size_t)2 * T * cols);
            nn_matmul(g1, x, &G, T);
            nn_matmul(u1, x, &U, T);
            nn_swiglu(g1, u1, ny);
            nn_matmul(o1, x, &O, T);
            nn_mm mm[2] = {{g, rows, x, cols, &G, T, &U, u}, {o, 70, x, cols, &O, T, NULL, NULL}};
            nn_matmul_multi(mm, 2);
            nn_matmul(u1, x, &U, T); /* the up product alone, SwiGLU having overwritten g1 only */
            bad += memcmp(g, g1, ny * 4) != 0;
            bad += memcmp(u, u1, ny * 4) != 0;
            bad += memcmp(o, o1, (size_t)T * 70 * 4) != 0;
            free(x), free(g), free(u), free(o), free(g1), free(u1), free(o1), free(sg), free(su), free(so);
        }
    CU_ASSERT_EQUAL(bad, 0);
}

/* ---- quantizers ---- */

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Rows that exercise the quantizers' corners: zero blocks, exact ties of the rounding,
 * subnormals, huge values, one dominant value of either sign, repeated maxima, -0. */
static void corner_row(float *x, int cols, int kind) {
    for (int j = 0; j < cols; j++) {
        float v = frand();
        switch (kind % 8) {
        case 0: x[j] = v; break;
        case 1: x[j] = j % 64 < 32 ? 0.0f : v * 1e-3f; break;
        case 2: x[j] = j % 32 == 0 ? 127.0f : (float)((int)(v * 100)) + 0.5f; break; /* d = 1: ties */
        case 3: x[j] = v * 1e-39f; break;                                          /* subnormal */
        case 4: x[j] = v * 3e37f; break;
        case 5: x[j] = j % 32 == 7 ? -8.0f : v; break;                      /* dominant, negative */
        case 6: x[j] = j % 32 == 3 || j % 32 == 20 ? (j % 2 ? 5.0f : -5.0f) : v; break; /* tied max */
        case 7: x[j] = j % 3 ? -0.0f : v * 0.25f; break;
        }
        if (kind >= 8 && j == kind * 5 % cols) x[j] = kind % 2 ? NAN : -INFINITY; /* one bad value */
    }
}

static void test_avx512_quantize_equals_portable_bit_for_bit(void) {
    const kern_ops *avx = kern_avx512();
    if (!avx) return;
    int cols = 1024, bad = 0;
    float *x = malloc(cols * sizeof *x), d0[32], d1[32];
    int8_t q0[1024], q1[1024];
    for (int kind = 0; kind < 64; kind++) {
        corner_row(x, cols, kind);
        kern_portable()->quantize(x, cols, q0, d0);
        avx->quantize(x, cols, q1, d1);
        for (int b = 0; b < cols / 32; b++)
            if (fbits(d0[b]) != fbits(d1[b]) && bad++ < 3)
                printf("\n  row kind %d block %d: scale %.9g (avx512) vs %.9g (portable)", kind, b,
                       d1[b], d0[b]);
        for (int j = 0; j < cols; j++)
            if (q0[j] != q1[j] && bad++ < 3)
                printf("\n  row kind %d [%d] = %.9g: q %d (avx512) vs %d (portable), d %.9g", kind, j,
                       x[j], q1[j], q0[j], d0[j / 32]);
    }
    CU_ASSERT_EQUAL(bad, 0);
    free(x);
}

/* The definitions, written out again as the oracle of quant.c's vector code. */
static void q8_oracle(const float *xb, wt_q8_block *out) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
    float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
    if (isinf(id)) id = 0;
    out->d = wt_f32_to_f16(d);
    for (int j = 0; j < 32; j++) {
        volatile float p = xb[j] * id;
        out->q[j] = p == p ? (int8_t)roundf(p) : 0;
    }
}

static void q4_oracle(const float *xb, wt_q4_block *out) {
    float amax = 0, m = 0;
    for (int j = 0; j < 32; j++)
        if (fabsf(xb[j]) > amax) amax = fabsf(xb[j]), m = xb[j];
    float d = m / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    out->d = wt_f32_to_f16(d);
    for (int j = 0; j < 16; j++) {
        volatile float p0 = xb[j] * id, p1 = xb[j + 16] * id; /* one rounding each, no fusing */
        float v0 = p0 + 8.5f, v1 = p1 + 8.5f;
        int lo = v0 >= 16 ? 15 : v0 >= 0 ? (int)v0 : 0, hi = v1 >= 16 ? 15 : v1 >= 0 ? (int)v1 : 0;
        out->q[j] = (uint8_t)(lo | (hi << 4));
    }
}

static void test_weight_quantizers_match_their_definitions(void) {
    int cols = 2048, nb = cols / 32, bad = 0;
    float *x = malloc(cols * sizeof *x);
    wt_q8_block *a8 = malloc(nb * sizeof *a8), *o8 = malloc(nb * sizeof *o8);
    wt_q4_block *a4 = malloc(nb * sizeof *a4), *r4 = malloc(nb * sizeof *r4), *o4 = malloc(nb * sizeof *o4);
    for (int kind = 0; kind < 32; kind++) {
        corner_row(x, cols, kind);
        quant_q8_row(x, cols, a8);
        quant_q4_row(x, cols, a4);
        quant_q4_row_ref(x, cols, r4);
        for (int b = 0; b < nb; b++) {
            q8_oracle(x + b * 32, o8 + b);
            q4_oracle(x + b * 32, o4 + b);
        }
        for (int b = 0; b < nb; b++) {
            if (memcmp(a8 + b, o8 + b, sizeof *o8) && bad++ < 3)
                printf("\n  q8 row kind %d block %d differs from the definition (d 0x%04x vs 0x%04x)",
                       kind, b, a8[b].d, o8[b].d);
            if ((memcmp(a4 + b, o4 + b, sizeof *o4) || memcmp(r4 + b, o4 + b, sizeof *o4)) && bad++ < 3)
                printf("\n  q4 row kind %d block %d differs from the definition (d 0x%04x, ref 0x%04x,"
                       " oracle 0x%04x)", kind, b, a4[b].d, r4[b].d, o4[b].d);
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    free(x), free(a8), free(o8), free(a4), free(r4), free(o4);
}

/* |x - x'| per block: q8 within d/2 (plus what storing d as f16 moves: 127 |d - d16|); q4
 * within |d|/2 (plus 8 |d - d16|), except values beyond 7.5 d on the clamped side (the side
 * opposite the largest magnitude, which has one step fewer), within |d|. */
static void test_weight_quantizers_round_trip_within_half_a_step(void) {
    int cols = 4096, nb = cols / 32, bad = 0;
    float *x = malloc(cols * sizeof *x), *back = malloc(cols * sizeof *back);
    wt_q8_block *b8 = malloc(nb * sizeof *b8);
    wt_q4_block *b4 = malloc(nb * sizeof *b4);
    double worst8 = 0, worst4 = 0;
    for (int kind = 0; kind < 8; kind++) { /* finite rows only */
        if (kind == 3) continue; /* subnormal blocks: the f16 scale underflows, no bound */
        corner_row(x, cols, kind);
        for (int dt = DT_Q8; dt <= DT_Q4; dt++) {
            wmat W = {.dtype = (dh_dtype)dt, .rows = 1, .cols = cols};
            if (dt == DT_Q8) {
                quant_q8_row(x, cols, b8);
                W.p.q8 = b8;
            } else {
                quant_q4_row(x, cols, b4);
                W.p.q4 = b4;
            }
            wt_row(&W, 0, back);
            for (int b = 0; b < nb; b++) {
                float amax = 0, m = 0;
                for (int j = 0; j < 32; j++)
                    if (fabsf(x[b * 32 + j]) > amax) amax = fabsf(x[b * 32 + j]), m = x[b * 32 + j];
                double d = dt == DT_Q8 ? amax / 127.0 : fabs(m / 8.0);
                double d16 = fabs(wt_f16_to_f32(dt == DT_Q8 ? b8[b].d : b4[b].d));
                if (!isfinite(d16)) continue; /* beyond f16's range: the scale is inf */
                for (int j = b * 32; j < b * 32 + 32; j++) {
                    double err = fabs((double)x[j] - back[j]), tol;
                    if (dt == DT_Q8)
                        tol = d / 2 * (1 + 1e-4) + 127 * fabs(d - d16) + 1e-45;
                    else {
                        int clamped = d > 0 && (double)x[j] / (m / -8.0) > 7.5;
                        tol = (clamped ? d : d / 2) * (1 + 1e-4) + 8 * fabs(d - d16) + 1e-45;
                    }
                    double r = err / tol;
                    if (dt == DT_Q8 ? r > worst8 : r > worst4) *(dt == DT_Q8 ? &worst8 : &worst4) = r;
                    if (err > tol && bad++ < 3)
                        printf("\n  %s kind %d [%d] = %.9g comes back as %.9g (d %.9g), tol %.3g",
                               dt == DT_Q8 ? "q8" : "q4", kind, j, x[j], back[j], d, tol);
                }
            }
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT(worst8 > 0.5 && worst4 > 0.5); /* the bounds are tight, not vacuous */
    free(x), free(back), free(b8), free(b4);
}

/* q4k: every value comes back as the point of its sub-block's stored grid (d s_j q - dmin m_j,
 * q = 0..15) nearest to it (to the rounding of the dequantization); on rows uniform in [-1, 1)
 * the grid step is at most 2/15 (the fit only narrows it) so the RMS error is at most
 * (2/15)/sqrt(12) (with 5% for the 6-bit scales); and it is below q4's on the same rows, uniform
 * and bell-shaped (sums of four uniforms). cols 4192: 16 super-blocks and a tail of 3 sub-blocks. */
static void test_q4k_quantizer_round_trips_to_the_nearest_grid_point(void) {
    int cols = 4192, bad = 0;
    size_t rb = wt_q4k_row_bytes((size_t)cols);
    CU_ASSERT_EQUAL(rb, 16 * 144 + 16 + 3 * 16);
    float *x = malloc(cols * sizeof *x), *back = malloc(cols * sizeof *back), *back4 = malloc(cols * sizeof *back4);
    uint8_t *buf = malloc(rb);
    wt_q4_block *b4 = malloc(cols / 32 * sizeof *b4);
    wmat W = {.dtype = DT_Q4K, .rows = 1, .cols = cols}, W4 = {.dtype = DT_Q4, .rows = 1, .cols = cols};
    W.p.q4k = buf, W4.p.q4 = b4;
    for (int kind = 0; kind < 10; kind++) {
        if (kind == 3 || kind == 4) continue; /* subnormal or beyond f16: the scales do not hold them */
        if (kind < 8)
            corner_row(x, cols, kind);
        else /* 8: bell-shaped; 9: bell-shaped with a shifted mean (all positive blocks) */
            for (int j = 0; j < cols; j++)
                x[j] = (frand() + frand() + frand() + frand()) / 4 + (kind == 9 ? 1.0f : 0.0f);
        quant_q4k_row(x, cols, buf);
        quant_q4_row(x, cols, b4);
        wt_row(&W, 0, back);
        wt_row(&W4, 0, back4);
        double e2 = 0, e24 = 0, x2 = 0;
        for (int j = 0; j < cols; j++) {
            /* the grid of j's sub-block: d s_j q - dmin m_j, from the head via a nibble of 1 */
            int k0 = j / WT_KBLOCK * WT_KBLOCK, sb = (j - k0) / 32;
            const uint8_t *hp = buf + (size_t)(k0 / WT_KBLOCK) * 144;
            wt_q4k_head h;
            memcpy(&h, hp, sizeof h);
            int sj, mj;
            wt_q4k_scale(&h, sb, &sj, &mj);
            double a = (double)wt_f16_to_f32(h.d) * sj, o = (double)wt_f16_to_f32(h.dmin) * mj, near = INFINITY;
            for (int q = 0; q < 16; q++) near = fmin(near, fabs(x[j] - (a * q - o)));
            double err = fabs((double)x[j] - back[j]), tol = near + 1e-4 * a + 4 * 0x1p-24 * (15 * a + o) + 1e-30;
            if (err > tol && bad++ < 3)
                printf("\n  q4k kind %d [%d] = %.9g comes back as %.9g, the nearest grid point is %.3g away",
                       kind, j, x[j], back[j], near);
            e2 += err * err, e24 += ((double)x[j] - back4[j]) * ((double)x[j] - back4[j]), x2 += (double)x[j] * x[j];
        }
        if (kind == 0 || kind >= 8) {
            double rms = sqrt(e2 / cols), rms4 = sqrt(e24 / cols);
            printf("\n  kind %d: RMS error q4k %.4f, q4 %.4f (of RMS %.4f)", kind, rms, rms4, sqrt(x2 / cols));
            CU_ASSERT(rms < rms4);
            if (kind == 0) CU_ASSERT(rms <= 1.05 * (2.0 / 15) / sqrt(12.0));
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    free(x), free(back), free(back4), free(buf), free(b4);
}

/* WT_G16 (tensor.h) is a byte shuffle of a q8 or q4k matrix: every row reads back the same bytes,
 * and every table computes the same bits from either layout, for every T (the decode path, the
 * packed prompt path, and chunks of both) and every range of whole groups. */
static void packed_in_groups_of_16(dh_dtype dt) {
    static const int Ts[] = {1, 2, 3, 4, 5, 9, 17, 70};
    static const int qcols[] = {32, 96, 1024, 2048, 160, 640, 288, 4096}; /* q4k: tails of 1-7 sub-blocks */
    static const int ranges[][2] = {{0, 144}, {16, 80}, {64, 144}, {128, 144}, {0, 16}};
    const kern_ops *tables[2] = {kern_portable(), kern_avx512()};
    int rows = 144, bad = 0;
    for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
        int T = Ts[i], cols = qcols[i], nb = cols / 32;
        void *store;
        wmat W = make_w(dt, rows, cols, &store);
        if (dt == DT_Q8) ((wt_q8_block *)store)[0].q[0] = -128;
        size_t rb = dt == DT_Q8 ? (size_t)nb * sizeof(wt_q8_block) : wt_q4k_row_bytes((size_t)cols);
        CU_ASSERT_TRUE(wt_g16_packable(&W));
        void *packed = malloc(wt_bytes(dt, (size_t)rows, (size_t)cols));
        wmat P = wt_g16_pack(&W, packed);
        CU_ASSERT_EQUAL(P.layout, WT_G16);
        CU_ASSERT_FALSE(wt_g16_packable(&P));
        uint8_t *blk = malloc(rb);
        float *r0 = malloc((size_t)cols * 4), *r1 = malloc((size_t)cols * 4);
        for (int r = 0; r < rows; r++) {
            if (dt == DT_Q8)
                wt_q8_row_blocks(&P, r, (wt_q8_block *)blk);
            else
                wt_q4k_row_data(&P, r, blk);
            wt_row(&W, r, r0);
            wt_row(&P, r, r1);
            if (memcmp(blk, (const uint8_t *)W.p.bf16 + (size_t)r * rb, rb) || memcmp(r0, r1, (size_t)cols * 4)) bad++;
        }
        float *x = malloc((size_t)T * cols * 4), *qd = malloc((size_t)T * nb * 4);
        int8_t *q = malloc((size_t)T * cols);
        for (size_t j = 0; j < (size_t)T * cols; j++) x[j] = frand() * (j % 5 ? 1.0f : 40.0f);
        for (int t = 0; t < T; t++) kern_portable()->quantize(x + (size_t)t * cols, cols, q + (size_t)t * cols, qd + (size_t)t * nb);
        kern_act a = {.x = x, .ldx = cols, .q = q, .qd = qd};
        float *scratch = malloc(kern_scratch_floats(cols) * sizeof(float));
        float *y0 = malloc((size_t)T * rows * 4), *y1 = malloc((size_t)T * rows * 4);
        for (int k = 0; k < 2; k++) {
            if (!tables[k]) continue;
            for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
                int o0 = ranges[r][0], o1 = ranges[r][1];
                memset(y0, 0, (size_t)T * rows * 4);
                memset(y1, 0, (size_t)T * rows * 4);
                tables[k]->matmul(y0, rows, &a, &W, T, o0, o1, scratch);
                tables[k]->matmul(y1, rows, &a, &P, T, o0, o1, scratch);
                if (memcmp(y0, y1, (size_t)T * rows * 4) && bad++ < 3)
                    printf("\n  %s %s T=%d cols %d [%d,%d): packed differs from row-major", tables[k]->name, wt_dtype_name(dt), T, cols,
                           o0, o1);
            }
        }
        /* a view of whole groups reads the same rows */
        wmat Wv = wt_rows(&W, 32, 48), Pv = wt_rows(&P, 32, 48);
        for (int r = 0; r < 48; r++) {
            wt_row(&Wv, r, r0);
            wt_row(&Pv, r, r1);
            if (memcmp(r0, r1, (size_t)cols * 4)) bad++;
        }
        free(x), free(qd), free(q), free(scratch), free(y0), free(y1), free(blk), free(r0), free(r1), free(packed), free(store);
    }
    CU_ASSERT_EQUAL(bad, 0);
}

static void test_q8_packed_in_groups_of_16_gives_the_same_bits(void) { packed_in_groups_of_16(DT_Q8); }
static void test_q4k_packed_in_groups_of_16_gives_the_same_bits(void) { packed_in_groups_of_16(DT_Q4K); }

static int kern_init(void) {
    nn_init(2, 0);
    return 0;
}
static int kern_clean(void) {
    nn_shutdown();
    return 0;
}

static CU_TestInfo kern_tests[] = {
    {"f32 kernels match a naive loop", test_f32_kernels_match_a_naive_loop},
    {"bf16 kernels match a naive loop", test_bf16_kernels_match_a_naive_loop},
    {"f16 kernels match a naive loop", test_f16_kernels_match_a_naive_loop},
    {"q8 kernels match a naive loop", test_q8_kernels_match_a_naive_loop},
    {"q4 kernels match a naive loop", test_q4_kernels_match_a_naive_loop},
    {"q4k kernels match a naive loop", test_q4k_kernels_match_a_naive_loop},
    {"rows do not depend on the batch", test_rows_do_not_depend_on_the_batch},
    {"threaded matmul equals one thread", test_threaded_matmul_equals_one_thread},
    {"dot and axpy match naive", test_dot_and_axpy_match_naive},
    {"dot_rows and axpy_rows are dot and axpy bit for bit", test_dot_rows_and_axpy_rows_are_dot_and_axpy_bit_for_bit},
    {"f32, bf16 and f16 products are their documented sequences",
     test_float_products_are_their_documented_sequences},
    {"f32 products agree with openblas sgemm", test_f32_products_agree_with_openblas_sgemm},
    {"rmsnorm, softmax and swiglu match their formulas", test_rmsnorm_softmax_and_swiglu_match_their_formulas},
    {"exp_sub, swiglu and exp_scaled give libm's bits in every table", test_exp_sub_swiglu_and_exp_scaled_give_libm_bits_in_every_table},
    {"f32 kernels agree on every shape and range", test_f32_kernels_agree_on_every_shape_and_range},
    {"bf16 kernels agree on every shape and range", test_bf16_kernels_agree_on_every_shape_and_range},
    {"f16 kernels agree on every shape and range", test_f16_kernels_agree_on_every_shape_and_range},
    {"q8 kernels agree on every shape and range", test_q8_kernels_agree_on_every_shape_and_range},
    {"q4 kernels agree on every shape and range", test_q4_kernels_agree_on_every_shape_and_range},
    {"q4k kernels agree on every shape and range", test_q4k_kernels_agree_on_every_shape_and_range},
    {"quantized prompt rows equal decode rows", test_quantized_prompt_rows_equal_decode_rows},
    {"long rows do not depend on the batch", test_long_rows_do_not_depend_on_the_batch},
    {"threaded quantized matmul equals one thread", test_threaded_quantized_matmul_equals_one_thread},
    {"a gate paired with its up gives swiglu of the separate products",
     test_a_gate_paired_with_its_up_gives_swiglu_of_the_separate_products},
    {"avx512 quantize equals portable bit for bit", test_avx512_quantize_equals_portable_bit_for_bit},
    {"weight quantizers match their definitions", test_weight_quantizers_match_their_definitions},
    {"weight quantizers round-trip within half a step", test_weight_quantizers_round_trip_within_half_a_step},
    {"q4k quantizer round-trips to the nearest grid point", test_q4k_quantizer_round_trips_to_the_nearest_grid_point},
    {"q8 packed in groups of 16 gives the same bits", test_q8_packed_in_groups_of_16_gives_the_same_bits},
    {"q4k packed in groups of 16 gives the same bits", test_q4k_packed_in_groups_of_16_gives_the_same_bits},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo kern_suite = {"kern", kern_init, kern_clean, NULL, NULL, kern_tests};
