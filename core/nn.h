/* nn.h: the model's arithmetic on f32 activations (nn_ prefix).
 *
 * Dims legend: T rows (tokens) this call, D width, V vocab.
 * nn_matmul(y, x, W, T) is y[T, out] = x[T, in] . W[out, in]^T, whatever W's storage, on the
 * process-wide thread pool. Every row's result is independent of T and of the thread count
 * (kern.h), so a token computes the same alone or in a batch. */
#ifndef DH_NN_H
#define DH_NN_H
#include "kern.h"
#include "tensor.h"
#include "threadpool.h"

/* Start the thread pool (n_threads <= 0: all online cores) and choose the kernels: AVX-512
 * when the CPU has it, unless force_portable. Call once, before any nn_ call; nn_shutdown
 * stops the pool. */
void nn_init(int n_threads, int force_portable);
void nn_shutdown(void);
int nn_threads(void);
tp_pool *nn_pool(void);
const kern_ops *nn_kernels(void);
/* Make room for products with up to `rows` activation rows of up to `cols` inputs (scratch
 * for widening and for quantized activations). Call at set-up, not per step: it may
 * allocate. */
void nn_reserve(int rows, int cols);
/* Make room for n activations in total across the products of one nn_matmul_multi (q8/q4). */
void nn_reserve_act(size_t n);
/* Make room for n activations of one nn_matmul_local product on each thread (q8/q4/q4k). */
void nn_reserve_local(size_t n);

/* One product of a batch for nn_matmul_multi: y[T, ldy] = x[T, ldx] . W^T. */
typedef struct nn_mm {
    float *y;
    int ldy;
    const float *x;
    int ldx;
    const wmat *W;
    int T;
    /* Optional: the up product of a SwiGLU whose gate product W is (the same shape, format
     * and rows of x), into yu (rows ldy apart). The task computing a run of W's rows also
     * computes up's and then y = silu(y) * yu on it (nn_swiglu's arithmetic, element by
     * element), so the activation is spread over the pool with the products. */
    const wmat *up;
    float *yu;
} nn_mm;

/* y[T, W.rows] = x[T, W.cols] . W^T (x rows contiguous, y rows contiguous). */
void nn_matmul(float *y, const float *x, const wmat *W, int T);
/* Same with strides: x rows ldx apart, y rows ldy apart. */
void nn_matmul_ld(float *y, int ldy, const float *x, int ldx, const wmat *W, int T);
/* n independent products in one pass of the pool (one fork-join instead of n): the many small
 * products of a decode step (per-head attention, the experts of a layer) keep both threads
 * busy. Each result equals its own nn_matmul_ld, bit for bit. For q8/q4 the products' rows
 * together must fit the nn_reserve'd rows x cols. */
void nn_matmul_multi(const nn_mm *mms, int n);

/* The pass table: while on, every nn_matmul_multi (a pass: one fork-join of the pool, or the
 * calling thread alone when the pass is small) is timed and counted in the class of the bytes of
 * weights it reads, class k holding passes of (2^(k-1), 2^k] bytes. `darkhorse bench --passes`
 * prints it for the timed decode runs: which sizes of product fall short of the bandwidth.
 * nn_pass_stats_take copies the table out and clears it. The engine thread only. */
#define NN_PASS_CLASSES 40
typedef struct nn_pass_class {
    unsigned long n; /* passes */
    double bytes;    /* weight bytes they read, in all */
    double seconds;  /* wall time they took, in all */
} nn_pass_class;
void nn_pass_stats(int on);
void nn_pass_stats_take(nn_pass_class out[NN_PASS_CLASSES]);
/* One product on the calling thread, from inside a task of the nn pool (tp_fn's `thread` picks
 * the scratch): what a task that fuses several steps (attention per head) uses between them.
 * The same bits as nn_matmul_ld. For q8/q4/q4k, T x W.cols must fit nn_reserve_local. */
void nn_matmul_local(const nn_mm *m, int thread);

/* Read bandwidth in GB/s of `pool` (NULL: the nn pool) over buf (bytes, a multiple of 4 MiB)
 * with the fastest kernel table's read (kern_ops.read): the best of NN_READ_PATTERNS * reps
 * passes after one warm-up over all of buf, pass r reading the pass_bytes slice
 * r / NN_READ_PATTERNS mod (bytes / pass_bytes) (pass_bytes a multiple of 4 MiB, at least 8
 * times the last-level cache to measure memory), in the patterns of nn_read_pattern_name in
 * turn (nn.c says what each is and why; machines differ in which they read fastest). The best,
 * not the median: whatever else runs on the machine can only make a pass slower, so the
 * fastest pass is the one least disturbed (docs/performance.md). When pattern_best is not
 * NULL, pattern_best[k] is raised to pattern k's best pass when that is higher. */
#define NN_READ_PATTERNS 5 /* passes of nn_read_bandwidth per rep: one in each pattern */
extern const char *const nn_read_pattern_name[NN_READ_PATTERNS];
double nn_read_bandwidth(tp_pool *pool, const void *buf, size_t bytes, size_t pass_bytes, int reps,
                         double *pattern_best);

/* y = x * rsqrt(mean(x^2) + eps) * w, per row of D (y may alias x). */
void nn_rmsnorm(float *y, const float *x, const float *w, int T, int D, float eps);
/* g = silu(g) * u, n elements */
void nn_swiglu(float *g, const float *u, size_t n);
/* softmax in place over n values (max subtracted first) */
void nn_softmax(float *x, int n);
/* x[i] = expf(x[i] - m) in place (kern_ops.exp_sub of the selected table: libm's bits, 16 at
 * a time with AVX-512), then returns s + x[0] + x[1] + ... in that order: the sum of a
 * softmax's weights, after an online softmax's earlier blocks (s) */
float nn_exp_sum(float *x, int n, float m, float s);
/* fmaxf(m, x) for a running maximum m that is never NaN: a NaN x leaves m, as fmaxf does. One
 * compare in the loop, where fmaxf is a library call (without -ffinite-math-only): 4.5% of
 * genesis-1b q4k's pp512@d4096 samples (perf, AMD EPYC Zen 4). Of two zeros it may keep the
 * other sign; a softmax subtracts the maximum and sees the same values either way. */
static inline float nn_max(float m, float x) { return x > m ? x : m; }
/* sum a[i]*b[i] in the kernels' fixed order */
float nn_dot(const float *a, const float *b, int n);
/* y += a * x */
void nn_axpy(float *y, float a, const float *x, int n);
/* kern_ops.dot_rows and axpy_rows of the selected table: the bits of nn_dot and nn_axpy row by
 * row, for nq queries (ny outputs) and rows at a time */
void nn_dot_rows(float *out, size_t ldo, const float *q, size_t ldq, int nq, const float *x, size_t ldx, int rows,
                 int n);
void nn_axpy_rows(float *y, size_t ldy, const float *a, size_t lda, int ny, const float *x, size_t ldx, int rows,
                  int n);
#endif
