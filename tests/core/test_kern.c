/* test_kern.c: every kernel against a naive double-precision loop, the AVX-512 kernels against
 * the portable ones, and the batch invariance that the serving engine relies on. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/kern.h"
#include "core/nn.h"

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
    int quant = W->dtype == DT_Q8 || W->dtype == DT_Q4;
    for (int o = 0; o < W->rows; o++) {
        wt_row(W, o, w);
        for (int t = 0; t < T; t++) {
            double s = 0, m = 0;
            for (int k = 0; k < W->cols; k++) {
                double xv = quant ? (double)qd[t * (W->cols / 32) + k / 32] * q[(size_t)t * W->cols + k]
                                  : x[(size_t)t * W->cols + k];
                s += xv * w[k];
                m += fabs(xv * w[k]);
            }
            y[(size_t)t * W->rows + o] = s;
            mag[(size_t)t * W->rows + o] = m;
        }
    }
    free(w);
}

static int check_close(const char *what, const float *got, const double *want, const double *mag,
                       size_t n, int cols) {
    double worst = 0;
    size_t wi = 0;
    int bad = 0;
    double g = ((double)cols / 16 + 6) * 2.4e-7; /* f32 rounding over the lanes and the tree */
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
        if (dt == DT_Q8 || dt == DT_Q4) quantize_rows(x, T, cols, q, qd);
        double *want = malloc((size_t)T * rows * 8), *mag = malloc((size_t)T * rows * 8);
        naive(want, mag, x, q, qd, &W, T);
        for (int k = 0; k < 2; k++) {
            if (!tables[k]) continue;
            run_kernel(tables[k], y, x, q, qd, &W, T, 0, rows);
            char what[64];
            snprintf(what, sizeof what, "%s %s T=%d %dx%d", tables[k]->name, wt_dtype_name(dt), T, rows, cols);
            CU_ASSERT_EQUAL(check_close(what, y, want, mag, (size_t)T * rows, cols), 0);
        }
        free(x), free(y), free(q), free(qd), free(want), free(mag), free(store);
    }
}

static void test_f32_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_F32); }
static void test_bf16_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_BF16); }
static void test_f16_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_F16); }
static void test_q8_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_Q8); }
static void test_q4_kernels_match_a_naive_loop(void) { check_dtype_against_naive(DT_Q4); }

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
            static const int Ts[] = {2, 3, 4, 5, 8, 13, 64, 70};
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

static void test_threaded_matmul_equals_one_thread(void) {
    int rows = 300, cols = 256, T = 7;
    void *store;
    wmat W = make_w(DT_BF16, rows, cols, &store);
    float *x = malloc((size_t)T * cols * 4), *y = malloc((size_t)T * rows * 4), *y1 = malloc((size_t)T * rows * 4);
    for (int i = 0; i < T * cols; i++) x[i] = frand();
    nn_reserve(T, cols);
    nn_matmul(y, x, &W, T); /* large enough to run on the pool */
    run_kernel(nn_kernels(), y1, x, NULL, NULL, &W, T, 0, rows);
    CU_ASSERT_EQUAL(memcmp(y, y1, (size_t)T * rows * 4), 0);
    CU_ASSERT_EQUAL(nn_threads(), 2);
    free(x), free(y), free(y1), free(store);
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
    {"rows do not depend on the batch", test_rows_do_not_depend_on_the_batch},
    {"threaded matmul equals one thread", test_threaded_matmul_equals_one_thread},
    {"dot and axpy match naive", test_dot_and_axpy_match_naive},
    {"rmsnorm, softmax and swiglu match their formulas", test_rmsnorm_softmax_and_swiglu_match_their_formulas},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo kern_suite = {"kern", kern_init, kern_clean, NULL, NULL, kern_tests};
