/* bench_kern.c: a micro-benchmark of the matmul kernels (not a unit test; nothing is asserted).
 *
 * For each kernel table (portable, avx512), thread count (1, 2) and weight dtype it measures,
 * through nn_matmul as the model calls it (activation quantization and the thread pool
 * included):
 *   - matvec (T = 1) on a 640 x 2048 expert-sized matrix, "hot" (the same matrix again and
 *     again, so it sits in L2/L3) and "cold" (cycling through 640-row slices of a 1 GiB buffer,
 *     as decode does through the experts of successive layers), in GB/s of weight bytes;
 *   - matvec on a 129280 x 2048 lm_head-sized matrix, in GB/s;
 *   - T = 4 on the cold expert slices (multi-token decode, MTP verification), in GB/s;
 *   - T = 512 on a 2048 x 2048 matrix (prefill), in GFLOP/s (2 T rows cols / time).
 * and, before each dtype, the read bandwidth of a 1 GiB array on 1 and 2 threads, the ceiling
 * that the matvec figures should be compared with. Every figure is the median of --runs (default 7)
 * timed repetitions; the machine is shared, so medians rather than means or minima, and the
 * "cores" column says how many cores the process actually got during a row's measurements
 * (CPU time over wall time: well under 2 on 2 threads means another job held a core).
 *
 * --decode measures instead T = 1 and 2 on the matrices decode streams (genesis-1b's and -5b's
 * lm_head, 129280 x 1024 and x 2048, and their experts, 384 x 1024 and 640 x 2048), cold (q8
 * and q4k in both layouts when the kernels pack them: the "/g16" rows are WT_G16, tensor.h);
 * --segments measures the memory alone, no kernel: a decode pass's worth of bytes (2.5 MiB, as
 * genesis-1b q4k's routed experts' gate and up products) read through the pool as pieces of 32 KiB
 * to 1.25 MiB at scattered places of the 1 GiB buffer (a task a piece, each thread a contiguous
 * range of them, as nn_matmul_multi's tasks go), against 256 MiB passes read just before: what a
 * pass made of short streams can get from this machine's memory at best.
 * --sweep measures GFLOP/s against T from 1 to 512 on prefill and expert shapes, where the
 * kernels' small-T and packed paths meet. Both use the kernels nn_init picks, bf16 unless
 * --dtype says otherwise (f32, bf16, f16).
 *
 * --forkjoin measures the thread pool itself: what one tp_run (a fork-join) costs on 2 threads
 * with tasks that do nothing, back to back and with the caller busy for a gap between two
 * calls (a decode step's work on one thread: the workers spin for ~50 us after a job, then
 * sleep), and with two tasks of 10 us each. The overhead is the time per call minus the gap and
 * the work; the median of --runs runs of 2000 calls (200 for the longest gaps).
 *
 * For f32, an "openblas" row gives cblas_sgemm's GFLOP/s on the same T = 512 product (with the
 * core type OpenBLAS chose, printed first): the baseline the packed kernels are measured against.
 *
 * Usage: bench_kern [--runs N] [--quick] [--dtype f32|bf16|f16|q8|q4|q4k] [--portable-prefill]
 *                   [--decode | --sweep | --blas-invariance | --forkjoin | --segments]
 *   --quick skips the portable kernels; their T = 512 runs only with --portable-prefill (it
 *   takes seconds a run). The table goes to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "core/common.h"
#include "core/hugemem.h"
#include "core/kern.h"
#include "core/nn.h"
#include "core/threadpool.h"
#include "core/cpu.h"

#define BIG_BYTES ((size_t)1 << 30)
#define HIDDEN 2048
#define EXPERT_ROWS 640
#define LMHEAD_ROWS 129280
#define PREFILL_T 512
#define PREFILL_ROWS 2048

static int g_runs = 7;
static wt_layout g_layout = WT_ROWS; /* of the q8 and q4k matrices timed (WT_G16: as loaders pack them) */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next_u64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static float frand(void) { return (float)((next_u64() >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, dh_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Fill n bytes of weights of dtype dt with plausible values (no NaN, no subnormals). */
static void fill_weights(void *p, dh_dtype dt, size_t bytes) {
    switch (dt) {
    case DT_F32:
        for (size_t i = 0; i < bytes / 4; i++) ((float *)p)[i] = frand() * 0.05f;
        break;
    case DT_BF16:
    case DT_F16:
        for (size_t i = 0; i < bytes / 2; i++) {
            float f = frand() * 0.05f;
            ((uint16_t *)p)[i] = dt == DT_BF16 ? wt_f32_to_bf16(f) : wt_f32_to_f16(f);
        }
        break;
    case DT_Q8:
    case DT_Q4: {
        size_t bs = dt == DT_Q8 ? sizeof(wt_q8_block) : sizeof(wt_q4_block);
        uint8_t *b = p;
        for (size_t i = 0; i + bs <= bytes; i += bs) {
            uint16_t d = wt_f32_to_f16(0.001f + 0.001f * frand());
            memcpy(b + i, &d, 2);
            for (size_t j = 2; j < bs; j += 8) {
                uint64_t r = next_u64();
                memcpy(b + i + j, &r, DH_MIN(8, bs - j));
            }
        }
        break;
    }
    case DT_Q4K: /* super-blocks of 144 bytes (rows of whole 256s): f16 d and dmin, then random */
        for (size_t i = 0; i + 144 <= bytes; i += 144) {
            uint16_t d[2] = {wt_f32_to_f16(0.001f + 0.001f * frand()), wt_f32_to_f16(0.001f)};
            for (size_t j = 0; j < 144; j += 8) {
                uint64_t r = next_u64();
                memcpy((uint8_t *)p + i + j, &r, 8);
            }
            memcpy((uint8_t *)p + i, d, 4);
        }
        break;
    default: DH_ASSERT(0);
    }
}

/* ---- read bandwidth ---- */

/* Seconds of CPU used by the process, all threads. */
static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double read_bandwidth(const uint64_t *buf, int threads) {
    tp_pool *pool = tp_new(threads);
    double gbs = nn_read_bandwidth(pool, buf, BIG_BYTES, BIG_BYTES, g_runs, NULL);
    tp_free(pool);
    return gbs;
}

/* ---- products ---- */

/* Median seconds per call of nn_matmul(y, x, W_i, T) over `n` matrices W_i of [rows, cols] taken
 * in turn from `base` (consecutive slices), each run lasting at least min_s seconds. */
static double time_matmul_rc(dh_dtype dt, const void *base, int rows, int cols, int n_slices,
                             int T, const float *x, float *y, double min_s) {
    size_t slice = wt_bytes(dt, (size_t)rows, (size_t)cols);
    double t[64];
    int calls = 0;
    /* calibrate the number of calls per run */
    double t0 = dh_now();
    while (dh_now() - t0 < min_s || calls < 2) {
        wmat W = {.dtype = dt, .rows = rows, .cols = cols, .layout = dt == DT_Q8 || dt == DT_Q4K ? g_layout : WT_ROWS};
        W.p.bf16 = (const uint16_t *)((const char *)base + (size_t)(calls % n_slices) * slice);
        nn_matmul(y, x, &W, T);
        calls++;
    }
    for (int r = 0; r < g_runs; r++) {
        double s = dh_now();
        for (int c = 0; c < calls; c++) {
            wmat W = {.dtype = dt, .rows = rows, .cols = cols, .layout = dt == DT_Q8 || dt == DT_Q4K ? g_layout : WT_ROWS};
            W.p.bf16 = (const uint16_t *)((const char *)base + (size_t)(c % n_slices) * slice);
            nn_matmul(y, x, &W, T);
        }
        t[r] = (dh_now() - s) / calls;
    }
    return median(t, g_runs);
}

/* the same with cols = HIDDEN */
static double time_matmul(dh_dtype dt, const void *base, int rows, int n_slices, int T,
                          const float *x, float *y, double min_s) {
    return time_matmul_rc(dt, base, rows, HIDDEN, n_slices, T, x, y, min_s);
}

typedef struct bench_opts {
    int quick;
    int portable_prefill;
    int only_dtype; /* -1: all */
    int decode;     /* the decode-shape table instead of the main one */
    int sweep;      /* the T sweep instead of the main table */
    int forkjoin;   /* the thread pool's fork-join instead of any product */
    int segments;   /* a pass read in pieces, no kernel */
} bench_opts;

/* one table cell: the value, or "-" when not measured */
static void cell(double v, int width) {
    if (v > 0)
        fprintf(stderr, " %*.1f", width, v);
    else
        fprintf(stderr, " %*s", width, "-");
}

/* The f32 row of OpenBLAS's cblas_sgemm (Y = X W^T, the same shape and slices as the kernels'
 * T = 512 column), on its own threads: the baseline for the packed f32 path. */
static void bench_sgemm(const void *big, const float *x, float *y, int threads, size_t n_slices) {
    size_t slice = (size_t)PREFILL_ROWS * HIDDEN;
    openblas_set_num_threads(threads);
    double t[64];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, PREFILL_T, PREFILL_ROWS, HIDDEN, 1.0f, x,
                HIDDEN, big, HIDDEN, 0.0f, y, PREFILL_ROWS); /* warm-up: OpenBLAS's threads */
    for (int r = 0; r < g_runs; r++) {
        double s = dh_now();
        const float *w = (const float *)big + (size_t)r % n_slices * slice;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, PREFILL_T, PREFILL_ROWS, HIDDEN, 1.0f,
                    x, HIDDEN, w, HIDDEN, 0.0f, y, PREFILL_ROWS);
        t[r] = dh_now() - s;
    }
    double gf = 2.0 * PREFILL_T * PREFILL_ROWS * HIDDEN / median(t, g_runs) * 1e-9;
    fprintf(stderr, "%-5s %-9s %7d %5s", "f32", "openblas", threads, "-");
    for (int i = 0; i < 6; i++) cell(0, i == 1 ? 11 : i == 0 ? 10 : i == 3 ? 9 : i == 5 ? 10 : 6);
    cell(gf, 13);
    fprintf(stderr, "\n");
}

static void bench_dtype(dh_dtype dt, void *big, float *x, float *y, const bench_opts *o) {
    size_t big_bytes = BIG_BYTES - BIG_BYTES % wt_bytes(dt, EXPERT_ROWS, HIDDEN);
    fill_weights(big, dt, big_bytes);
    /* the ceiling, measured again for each dtype: other jobs come and go */
    double bw[2] = {read_bandwidth(big, 1), read_bandwidth(big, 2)};
    fprintf(stderr, "%-5s read bandwidth of a 1 GiB array: %.1f GB/s on 1 thread, %.1f on 2\n",
            wt_dtype_name(dt), bw[0], bw[1]);
    size_t expert = wt_bytes(dt, EXPERT_ROWS, HIDDEN), lmhead = wt_bytes(dt, LMHEAD_ROWS, HIDDEN),
           prefill = wt_bytes(dt, PREFILL_ROWS, HIDDEN);
    int n_slices = (int)(big_bytes / expert);
    for (int portable = 0; portable < 2; portable++) {
        if (portable && o->quick) continue;
        for (int threads = 1; threads <= 2; threads++) {
            nn_init(threads, portable);
            nn_reserve(PREFILL_T, HIDDEN);
            double c0 = cpu_seconds(), w0 = dh_now();
            double hot = expert / time_matmul(dt, big, EXPERT_ROWS, 1, 1, x, y, 0.05) * 1e-9;
            double cold = expert / time_matmul(dt, big, EXPERT_ROWS, n_slices, 1, x, y, 0.2) * 1e-9;
            double cold4 =
                expert / time_matmul(dt, big, EXPERT_ROWS, n_slices, 4, x, y, 0.2) * 1e-9;
            double lm = 0, gf = 0;
            if (lmhead <= big_bytes)
                lm = lmhead / time_matmul(dt, big, LMHEAD_ROWS, 1, 1, x, y, 0.3) * 1e-9;
            if (!portable || o->portable_prefill) {
                double s = time_matmul(dt, big, PREFILL_ROWS, (int)(big_bytes / prefill), PREFILL_T,
                                       x, y, 0.3);
                gf = 2.0 * PREFILL_T * PREFILL_ROWS * HIDDEN / s * 1e-9;
            }
            double cores = (cpu_seconds() - c0) / (dh_now() - w0);
            fprintf(stderr, "%-5s %-9s %7d %5.2f", wt_dtype_name(dt), nn_kernels()->name, threads,
                    cores);
            cell(hot, 10);
            cell(cold, 11);
            cell(100 * cold / bw[threads - 1], 6);
            cell(lm, 9);
            cell(lm > 0 ? 100 * lm / bw[threads - 1] : 0, 6);
            cell(cold4, 10);
            cell(gf, 13);
            fprintf(stderr, "\n");
            nn_shutdown();
            if (dt == DT_F32 && !portable) bench_sgemm(big, x, y, threads, big_bytes / prefill);
        }
    }
}

/* ---- decode shapes and the T sweep (--decode, --sweep) ---- */

/* the matrices decode streams: genesis-1b's and genesis-5b's lm_head, their routed experts'
 * gate and up, and their down products (short rows: 640 and 384 inputs) */
static const int decode_shapes[][2] = {{129280, 1024}, {129280, 2048}, {640, 2048}, {384, 1024}, {2048, 640}, {1024, 384}};

/* T = 1 and 2 on the decode shapes, cold (cycling through the 1 GiB buffer, several times the
 * 300 MB L3; an f32 129280 x 2048 matrix is 1 GB on its own), in GB/s of weights, with the
 * kernels nn_init picks, on 1 and 2 threads; and T = 1 hot when the matrix is at most
 * HOT_BYTES (in L2 or L3): the rate the kernel computes at, its ceiling on infinite bandwidth. */
#define HOT_BYTES ((size_t)4 << 20)
static void bench_decode(dh_dtype dt, void *big, float *x, float *y) {
    fill_weights(big, dt, BIG_BYTES);
    double bw[2] = {read_bandwidth(big, 1), read_bandwidth(big, 2)};
    fprintf(stderr, "%-5s read bandwidth of a 1 GiB array: %.1f GB/s on 1 thread, %.1f on 2\n",
            wt_dtype_name(dt), bw[0], bw[1]);
    for (int threads = 1; threads <= 2; threads++) {
        nn_init(threads, 0);
        nn_reserve(2, 2048);
        /* q8 and q4k in both layouts when the kernels pack them (kern_ops.g16): "/g16" rows */
        int layouts = (dt == DT_Q8 || dt == DT_Q4K) && nn_kernels()->g16 ? 2 : 1;
        for (int l = 0; l < layouts; l++)
            for (size_t i = 0; i < sizeof decode_shapes / sizeof decode_shapes[0]; i++) {
                int rows = decode_shapes[i][0], cols = decode_shapes[i][1];
                size_t bytes = wt_bytes(dt, (size_t)rows, (size_t)cols);
                int n = (int)(BIG_BYTES / bytes);
                if (n == 0) continue;
                char name[32];
                snprintf(name, sizeof name, "%s%s", nn_kernels()->name, l ? "/g16" : "");
                fprintf(stderr, "%-5s %-10s %6d %6d x %-5d", wt_dtype_name(dt), name, threads, rows, cols);
                g_layout = l ? WT_G16 : WT_ROWS;
                for (int T = 1; T <= 2; T++) {
                    double gbs = bytes / time_matmul_rc(dt, big, rows, cols, n, T, x, y, 0.3) * 1e-9;
                    cell(gbs, 8);
                    cell(100 * gbs / bw[threads - 1], 6);
                }
                /* hot: the one matrix again and again, when it is at most HOT_BYTES (in L2
                 * or L3: the kernel's own rate, with little memory to wait for) */
                cell(bytes <= HOT_BYTES ? bytes / time_matmul_rc(dt, big, rows, cols, 1, 1, x, y, 0.3) * 1e-9 : 0, 8);
                fprintf(stderr, "\n");
            }
        g_layout = WT_ROWS;
        nn_shutdown();
    }
}

/* GFLOP/s (2 T rows cols / time) against T on prefill and expert shapes, cold slices: where
 * the small-T and the packed paths of the kernels cross. */
static void bench_sweep(dh_dtype dt, void *big, float *x, float *y) {
    static const int shapes[][2] = {{2048, 2048}, {640, 2048}, {384, 1024}};
    static const int Ts[] = {1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64, 128, 512};
    enum { NT = sizeof Ts / sizeof Ts[0] };
    fill_weights(big, dt, BIG_BYTES);
    fprintf(stderr, "%-5s %-9s %7s %-14s", "dtype", "kernels", "threads", "shape");
    for (int i = 0; i < NT; i++) fprintf(stderr, " %6d", Ts[i]);
    fprintf(stderr, "   (T; GFLOP/s)\n");
    for (int threads = 1; threads <= 2; threads++) {
        nn_init(threads, 0);
        nn_reserve(PREFILL_T, HIDDEN);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int rows = shapes[s][0], cols = shapes[s][1];
            int n = (int)(BIG_BYTES / wt_bytes(dt, (size_t)rows, (size_t)cols));
            fprintf(stderr, "%-5s %-9s %7d %6d x %-5d", wt_dtype_name(dt), nn_kernels()->name,
                    threads, rows, cols);
            for (int i = 0; i < NT; i++) {
                double sec = time_matmul_rc(dt, big, rows, cols, n, Ts[i], x, y, 0.1);
                cell(2.0 * Ts[i] * rows * cols / sec * 1e-9, 6);
            }
            fprintf(stderr, "\n");
        }
        nn_shutdown();
    }
}

/* ---- the thread pool (--forkjoin) ---- */

/* busy for `us` microseconds on this thread (a clock loop: no sleeping, no yielding) */
static void busy_us(double us) {
    double t0 = dh_now();
    while ((dh_now() - t0) * 1e6 < us) {
    }
}

static void fj_task(void *ctx, int task, int thread) {
    (void)task, (void)thread;
    busy_us(*(const double *)ctx);
}

/* Median over g_runs of the microseconds a tp_run call costs beyond `gap_us` of the caller's own
 * work before it and `work_us` a task (two tasks on the 2 threads: one each when all goes well). */
static double fj_overhead(tp_pool *p, double gap_us, double work_us, int calls) {
    double t[64];
    for (int r = 0; r < g_runs; r++) {
        double s = dh_now();
        for (int c = 0; c < calls; c++) {
            busy_us(gap_us);
            tp_run(p, 2, fj_task, &work_us);
        }
        t[r] = (dh_now() - s) / calls * 1e6 - gap_us - work_us;
    }
    return median(t, g_runs);
}

static void bench_forkjoin(void) {
    static const double gaps[] = {0, 5, 20, 40, 100, 1000};
    tp_pool *p = tp_new(2);
    tp_run(p, 2, fj_task, &(double){0}); /* the worker started */
    fprintf(stderr, "fork-join of a 2-thread pool: microseconds a tp_run costs beyond the work, median of %d runs\n"
                    "%-22s %-12s %10s %8s\n", g_runs, "caller's gap before it", "task work", "overhead", "calls");
    for (size_t i = 0; i < sizeof gaps / sizeof gaps[0]; i++)
        for (int w = 0; w < 2; w++) {
            double work = w ? 10 : 0;
            int calls = gaps[i] >= 100 ? 200 : 2000;
            double ov = fj_overhead(p, gaps[i], work, calls);
            fprintf(stderr, "%17.0f us  %9.0f us %10.2f %8d\n", gaps[i], work, ov, calls);
        }
    tp_free(p);
}

/* ---- a pass read in pieces (--segments) ---- */

typedef struct seg_job {
    const kern_ops *k;
    const char *base;
    const size_t *off; /* [pieces] byte offsets of the pieces in base */
    size_t piece;
    uint64_t sums[2];  /* where the reads' sums go, so that the loads stay */
} seg_job;

static void seg_task(void *ctx, int task, int thread) {
    seg_job *j = ctx;
    j->sums[thread & 1] += j->k->read(j->base + j->off[task], j->piece, 1, 0, 0);
}

static void bench_segments(const void *big) {
    static const size_t pieces[] = {32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1280 << 10};
    enum { PASSES = 200 };
    const size_t pass = (size_t)2560 << 10; /* a whole number of each piece */
    size_t off[(2560 << 10) / (32 << 10)];   /* a pass of the smallest pieces */
    double t[PASSES];
    tp_pool *p = tp_new(2);
    seg_job j = {.k = kern_avx512() ? kern_avx512() : kern_portable(), .base = big, .off = off};
    fprintf(stderr, "a pass of %zu KiB read in pieces at scattered places (2 threads, a task a piece): median GB/s "
                    "of %d passes over the reader's (256 MiB passes, best of %d patterns just before)\n%9s",
            pass >> 10, PASSES, NN_READ_PATTERNS, "reader");
    for (size_t s = 0; s < sizeof pieces / sizeof pieces[0]; s++) fprintf(stderr, " %8zuK", pieces[s] >> 10);
    fprintf(stderr, "\n");
    for (int r = 0; r < g_runs; r++) {
        double ref = nn_read_bandwidth(p, big, BIG_BYTES, (size_t)256 << 20, 1, NULL);
        fprintf(stderr, "%9.1f", ref);
        for (size_t s = 0; s < sizeof pieces / sizeof pieces[0]; s++) {
            j.piece = pieces[s];
            int n = (int)(pass / pieces[s]);
            DH_ASSERT((size_t)n <= sizeof off / sizeof off[0]);
            for (int k = 0; k < PASSES; k++) {
                for (int i = 0; i < n; i++) off[i] = next_u64() % ((BIG_BYTES - pieces[s]) / 4096) * 4096;
                double t0 = dh_now();
                tp_run(p, n, seg_task, &j);
                t[k] = (double)pass / (dh_now() - t0) * 1e-9;
            }
            fprintf(stderr, " %9.2f", median(t, PASSES) / ref);
        }
        fprintf(stderr, "\n");
    }
    tp_free(p);
}

/* --blas-invariance: is OpenBLAS's sgemm batch-invariant? For a few shapes [N, K], each of the
 * first M rows of X W^T computed in one call of M rows against the same row computed alone
 * (M = 1): how many of the M N outputs differ in any bit. Our kernels give 0 by construction
 * (test_kern checks it); this is why the engine does not compute through sgemm. */
static void bench_blas_invariance(void) {
    static const int shapes[][2] = {{2048, 2048}, {640, 7168}, {300, 1000}, {129, 2085}};
    static const int Ms[] = {2, 8, 37, 512};
    fprintf(stderr, "OpenBLAS %s, %d threads: outputs of a row in a call of M rows that differ "
                    "from the same row computed alone\n%-12s", openblas_get_corename(),
            openblas_get_num_threads(), "N x K");
    for (size_t m = 0; m < sizeof Ms / sizeof Ms[0]; m++) fprintf(stderr, "  M=%-10d", Ms[m]);
    fprintf(stderr, "\n");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int N = shapes[s][0], K = shapes[s][1], Mmax = 512;
        float *x = xmalloc((size_t)Mmax * K * sizeof *x), *w = xmalloc((size_t)N * K * sizeof *w);
        float *alone = xmalloc((size_t)Mmax * N * sizeof *alone), *y = xmalloc((size_t)Mmax * N * sizeof *y);
        for (size_t i = 0; i < (size_t)Mmax * K; i++) x[i] = frand();
        for (size_t i = 0; i < (size_t)N * K; i++) w[i] = frand();
        for (int r = 0; r < Mmax; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1, N, K, 1.0f, x + (size_t)r * K, K,
                        w, K, 0.0f, alone + (size_t)r * N, N);
        fprintf(stderr, "%5d x %-5d", N, K);
        for (size_t m = 0; m < sizeof Ms / sizeof Ms[0]; m++) {
            int M = Ms[m];
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
            size_t differ = 0;
            for (size_t i = 0; i < (size_t)M * N; i++) differ += memcmp(y + i, alone + i, 4) != 0;
            fprintf(stderr, "  %5.1f%% %-5s", 100.0 * differ / ((double)M * N), "");
        }
        fprintf(stderr, "\n");
        free(x), free(w), free(alone), free(y);
    }
}

int main(int argc, char **argv) {
    cpu_fix_openblas(argv); /* OpenBLAS's AVX-512 kernels, as darkhorse does (core/cpu.c) */
    bench_opts o = {.only_dtype = -1};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            o.quick = 1;
        } else if (!strcmp(argv[i], "--decode")) {
            o.decode = 1;
        } else if (!strcmp(argv[i], "--sweep")) {
            o.sweep = 1;
        } else if (!strcmp(argv[i], "--forkjoin")) {
            o.forkjoin = 1;
        } else if (!strcmp(argv[i], "--segments")) {
            o.segments = 1;
        } else if (!strcmp(argv[i], "--blas-invariance")) {
            bench_blas_invariance();
            return 0;
        } else if (!strcmp(argv[i], "--portable-prefill")) {
            o.portable_prefill = 1;
        } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
            g_runs = atoi(argv[++i]);
            if (g_runs < 1 || g_runs > 64) g_runs = 7;
        } else if (!strcmp(argv[i], "--dtype") && i + 1 < argc) {
            o.only_dtype = wt_dtype_parse(argv[++i]);
        } else {
            fprintf(stderr,
                    "usage: %s [--runs N] [--quick] [--dtype D] [--portable-prefill] "
                    "[--decode | --sweep | --blas-invariance | --forkjoin | --segments]\n",
                    argv[0]);
            return 2;
        }
    }
    char cpu[256];
    cpu_describe(cpu, sizeof cpu);
    fprintf(stderr, "cpu: %s\n", cpu); /* every figure is this CPU's */
    if (o.forkjoin) {
        bench_forkjoin();
        return 0;
    }
    void *big = hm_alloc(BIG_BYTES); /* on the pages model weights are on */
    memset(big, 1, BIG_BYTES);
    if (o.segments) {
        bench_segments(big);
        hm_free(big, BIG_BYTES);
        return 0;
    }
    float *x = xmalloc((size_t)PREFILL_T * HIDDEN * sizeof *x);
    float *y = xmalloc((size_t)DH_MAX(PREFILL_T * PREFILL_ROWS, 2 * LMHEAD_ROWS) * sizeof *y);
    for (size_t i = 0; i < (size_t)PREFILL_T * HIDDEN; i++) x[i] = frand();
    if (o.decode || o.sweep) {
        if (o.decode)
            fprintf(stderr, "T=1 and T=2, cold, in GB/s of weights and %%bw against the read "
                            "bandwidth on as many threads; T=1 hot (matrices of 4 MiB or less, again and again: in L2 or L3)\n"
                            "%-5s %-9s %7s %-14s %8s %6s %8s %6s %8s\n",
                    "dtype", "kernels", "threads", "shape", "T=1", "%bw", "T=2", "%bw", "T=1 hot");
        for (int dt = 0; dt < DT_COUNT; dt++) {
            if (o.only_dtype >= 0 ? o.only_dtype != dt : dt != DT_BF16) continue;
            if (o.decode) bench_decode((dh_dtype)dt, big, x, y);
            else bench_sweep((dh_dtype)dt, big, x, y);
        }
        free(x), free(y), hm_free(big, BIG_BYTES);
        return 0;
    }
    fprintf(stderr, "OpenBLAS core type: %s\n", openblas_get_corename());
    fprintf(stderr, "matvec (T=1) and T=4 in GB/s of weights, %%bw against the read bandwidth "
                    "on as many threads (measured before each dtype); T=512 in GFLOP/s\n");
    fprintf(stderr, "%-5s %-9s %7s %5s %10s %11s %6s %9s %6s %10s %13s\n", "dtype", "kernels",
            "threads", "cores", "expert-hot", "expert-cold", "%bw", "lm_head", "%bw", "T=4 cold",
            "T=512 GFLOP/s");
    for (int dt = 0; dt < DT_COUNT; dt++)
        if (o.only_dtype < 0 || o.only_dtype == dt) bench_dtype((dh_dtype)dt, big, x, y, &o);
    free(x);
    free(y);
    hm_free(big, BIG_BYTES);
    return 0;
}
