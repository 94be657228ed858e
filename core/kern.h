/* kern.h: the inner loops, one table per instruction set (kern_ prefix).
 *
 * Every kernel computes each output element with the same sequence of floating-point
 * operations whatever the number of rows T, the output range, the tile or blocking path taken
 * or the thread that runs it. That makes a row's result independent of what else is in the
 * batch (the serving engine relies on it) and of the thread count. The order, per table:
 *
 * f32, bf16, f16 weights (bf16/f16 widened exactly): one sum per output element, over
 *   k = 0, 1, ..., cols - 1 in ascending order, from +0. AVX-512: acc = fma(x[t,k], w[o,k], acc),
 *   one rounding a step. Portable: acc = acc + x[t,k] * w[o,k], the product rounded, then the
 *   sum. Worst case |error| <= n u / (1 - n u) * sum_k |x[t,k] w[o,k]|, n = cols, u = 2^-24.
 * dot (and only dot): 16 lanes over the input dimension, lane l accumulating k = l, l + 16, ...
 *   in ascending order (the tail in the low lanes), then the lanes summed in a fixed halving
 *   tree (i with i+8, then i+4, i+2, i+1). The portable table multiplies and adds separately,
 *   the AVX-512 table fuses them. axpy is element-wise: y[i] + a * x[i], fused in AVX-512.
 * q8, q4 weights: the activations are quantized per row (quantize below, identical bits in
 *   both tables); s_b is the exact integer dot of block b (any order of integer additions is
 *   exact). Portable: acc[b % 16] += (d_x[b] * d_w[b]) * (float)s_b, separate multiply and add,
 *   then the halving tree over the 16 lanes. AVX-512: one accumulator per element,
 *   acc = fma((float)s_b, d_x[b] * d_w[b], acc) for b = 0, 1, ... in order, from acc = +0.
 * q4k weights (tensor.h): per sub-block b, sub-block j of its super-block (d, dmin), the exact
 *   integers I_b = s_j * (sum of nibble * xq) and M_b = m_j * (sum of xq) (both below 2^24,
 *   so exact in f32). Portable: acc[b % 16] += (d_x[b] * d) * (float)I_b, then
 *   acc[b % 16] += (d_x[b] * -dmin) * (float)M_b, then the tree. AVX-512:
 *   acc = fma((float)I_b, d_x[b] * d, acc); acc = fma((float)M_b, d_x[b] * -dmin, acc).
 *
 * So results are bit-identical within a table, and the two tables agree within rounding. */
#ifndef DH_KERN_H
#define DH_KERN_H
#include "tensor.h"

/* The activations of a product: T rows of cols floats, and for q8/q4 weights the same rows
 * quantized to int8 blocks of 32 with one f32 scale a block (kern_ops.quantize). */
typedef struct kern_act {
    const float *x;   /* [T, ldx] */
    int ldx;
    const int8_t *q;  /* [T, cols], NULL unless W is q8/q4/q4k */
    const float *qd;  /* [T, cols / 32] scales */
} kern_act;

typedef struct kern_ops {
    const char *name; /* "portable", "avx512" */
    /* y[t*ldy + o] = sum_k x[t, k] * W[o, k] for t < T and o0 <= o < o1, in the order above.
     * scratch holds kern_scratch_floats(W->cols) floats, private to the calling thread. For
     * q8/q4 the sum runs over blocks: d_x[b] * d_w[b] * (exact integer dot of the block). */
    void (*matmul)(float *y, int ldy, const kern_act *a, const wmat *W, int T, int o0, int o1,
                   float *scratch);
    /* Quantize one row of cols (a multiple of 32) floats: d = max|x| / 127 per block (NaN
     * ignored), q = roundf(x * (1 / d)) (ties away from zero); q = 0 where d = 0, where 1 / d
     * overflows (max|x| < 3.7e-37) and where the product is NaN. Every table gives the same
     * bits. */
    void (*quantize)(const float *x, int cols, int8_t *q, float *d);
    /* sum_k a[k] * b[k], in dot's order above (16 lanes and a tree, not the product's) */
    float (*dot)(const float *a, const float *b, int n);
    /* y[i] += a * x[i], each element on its own */
    void (*axpy)(float *y, float a, const float *x, int n);
    /* out[i * ldo + r] = dot(q + i * ldq, x + r * ldx, n) for i < nq, r < rows: each the bits
     * dot gives, tiles of queries and rows at a time so that each q and each row of x is read
     * once for several (attention's scores of a run of heads over a block of keys) */
    void (*dot_rows)(float *out, size_t ldo, const float *q, size_t ldq, int nq, const float *x, size_t ldx,
                     int rows, int n);
    /* for each i < ny: axpy(y + i * ldy, a[i * lda + r], x + r * ldx, n) for r = 0, 1, ...,
     * rows - 1 in that order: the bits of those calls, y held in registers between them, each
     * row of x read once for several y (a run of heads' weighted sums of the same values) */
    void (*axpy_rows)(float *y, size_t ldy, const float *a, size_t lda, int ny, const float *x, size_t ldx,
                      int rows, int n);
    /* Reads bytes (a multiple of 256 * streams) at p as `streams`
     * interleaved sequential streams, as fast as this table can, prefetching `prefetch` bytes
     * ahead in each stream (0: no software prefetch), with `pace` dependent multiply-adds on
     * each 64-byte line's data before it is summed (0: bare loads; a kernel's compute between
     * its loads, which on some CPUs lets the memory serve more than bare loads do); returns a
     * value of the bytes (a sum of words, so that the loads stay). For measuring the read
     * bandwidth. */
    uint64_t (*read)(const void *p, size_t bytes, int streams, int prefetch, int pace);
    /* x[i] = expf(x[i] - m) for i < n: libm's bits in every table (the float difference, then
     * expf), so a softmax is the same whichever table runs it */
    void (*exp_sub)(float *x, int n, float m);
    /* g[i] = g[i] / (1 + expf(-g[i])) * u[i] for i < n (silu(g) * u), those operations in that
     * order, libm's expf in every table */
    void (*swiglu)(float *g, const float *u, size_t n);
    /* y[i] = exp(((double)x[i] - m) * s) for i < n: libm's exp (double) in every table (the
     * sampler's softmax) */
    void (*exp_scaled)(double *y, const float *x, int n, float m, double s);
    /* 1 when exp_sub and swiglu compute 16 values at a time and exp_scaled 8 (they gave
     * libm's bits on the table's check), 0 when they call libm for each value */
    int exp16;
    /* 1 when this table reads q8 and q4k matrices fastest packed as WT_G16 (tensor.h), so
     * loaders should pack them; every table reads both layouts, with the same results. */
    int g16;
    /* bytes ahead that the WT_G16 decode streams prefetch (0: the hardware prefetcher alone) */
    int g16_prefetch;
} kern_ops;

/* Output rows a kernel call handles as one block (a task of nn_matmul covers whole blocks). */
#define KERN_OBLOCK 64

/* Bytes ahead that the packed (WT_G16) q8 and q4k decode streams prefetch by default, except on
 * AMD family 25 (Zen 4) where they leave it to the hardware (DH_KERN_PREFETCH_G16 overrides
 * both), and so one of nn_read_bandwidth's read patterns: the bandwidth ceiling must be read at
 * least every way a kernel may read (its plain sequential pattern covers the hardware's). */
#define KERN_G16_PREFETCH 8192
/* Floats of per-thread scratch a matmul with `cols` inputs needs. */
size_t kern_scratch_floats(int cols);

const kern_ops *kern_portable(void);
/* NULL when the CPU (or the build) lacks AVX-512F/BW/VL/DQ. Its q8/q4 products need
 * AVX512_VNNI too; without it they fall back to the portable kernels (and order). */
const kern_ops *kern_avx512(void);
#endif
