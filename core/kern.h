/* kern.h: the inner loops, one table per instruction set (kern_ prefix).
 *
 * Every kernel computes each output element with the same sequence of operations whatever
 * the number of rows T, the output range or the thread that runs it: 16 lanes over the
 * input dimension in ascending order, then the lanes summed in a fixed halving tree
 * (i with i+8, then i+4, i+2, i+1). That makes a row's result independent of what else is
 * in the batch (the serving engine relies on it) and of the thread count. The portable table
 * and the AVX-512 table agree within rounding (one uses separate multiply and add, the
 * other fused), not bit for bit. */
#ifndef DH_KERN_H
#define DH_KERN_H
#include "tensor.h"

/* The activations of a product: T rows of cols floats, and for q8/q4 weights the same rows
 * quantized to int8 blocks of 32 with one f32 scale a block (kern_ops.quantize). */
typedef struct kern_act {
    const float *x;   /* [T, ldx] */
    int ldx;
    const int8_t *q;  /* [T, cols], NULL unless W is q8/q4 */
    const float *qd;  /* [T, cols / 32] scales */
} kern_act;

typedef struct kern_ops {
    const char *name; /* "portable", "avx512" */
    /* y[t*ldy + o] = sum_k x[t, k] * W[o, k] for t < T and o0 <= o < o1. scratch holds
     * kern_scratch_floats(W->cols) floats, private to the calling thread. For q8/q4 the sum
     * runs over blocks: d_x[b] * d_w[b] * (exact integer dot of the block). */
    void (*matmul)(float *y, int ldy, const kern_act *a, const wmat *W, int T, int o0, int o1,
                   float *scratch);
    /* Quantize one row of cols (a multiple of 32) floats: d = max|x| / 127 per block,
     * q = round(x / d) (ties away from zero). */
    void (*quantize)(const float *x, int cols, int8_t *q, float *d);
    /* sum_k a[k] * b[k], in the order above */
    float (*dot)(const float *a, const float *b, int n);
    /* y += a * x */
    void (*axpy)(float *y, float a, const float *x, int n);
} kern_ops;

/* Output rows a kernel call handles as one block (a task of nn_matmul covers whole blocks). */
#define KERN_OBLOCK 64
/* Floats of per-thread scratch a matmul with `cols` inputs needs. */
size_t kern_scratch_floats(int cols);

const kern_ops *kern_portable(void);
/* NULL when the CPU (or the build) lacks AVX-512F/BW/VL. */
const kern_ops *kern_avx512(void);
#endif
