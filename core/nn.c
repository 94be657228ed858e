/* nn.c: products on the thread pool, and the element-wise operations of the model.
 *
 * A product is split into tasks of whole KERN_OBLOCK-row blocks of the weight matrix; each
 * task computes all T rows for its block, so threads never share an output and the split does
 * not change any result. Small products run on the calling thread: waking the pool costs a
 * few microseconds, more than a 64 x 2048 router product. For q8/q4 weights the activations
 * are quantized once per call, before the product's tasks (on the pool for 16 rows or more),
 * into a buffer sized by nn_reserve, and once for two consecutive products of the same rows
 * (attention's two projections of h) or a gate product paired with its up product, whose
 * tasks also apply SwiGLU to their rows. nn_matmul_local runs a whole product inside a task of
 * the pool (attention per head), with a quantization buffer per thread.
 *
 * State is process-wide (one pool, one kernel table, the scratch), set up by nn_init and
 * nn_reserve before the engine runs and used by the engine thread only. */
#include "nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

static tp_pool *g_pool;
static const kern_ops *g_ops;
static float **g_scratch;        /* [threads][g_scratch_n] */
static size_t g_scratch_n;
static int8_t *g_q;              /* quantized activations [g_q_rows * g_q_cols] */
static float *g_qd;
static size_t g_q_cap;           /* elements of g_q */
static int8_t **g_lq;            /* [threads][g_lq_cap] quantized activations of nn_matmul_local */
static float **g_lqd;            /* [threads][g_lq_cap / 32 + 1] their scales */
static size_t g_lq_cap;

void nn_init(int n_threads, int force_portable) {
    DH_ASSERT(!g_pool);
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    g_pool = tp_new(n_threads);
    g_ops = force_portable ? NULL : kern_avx512();
    if (!g_ops) g_ops = kern_portable();
    g_scratch = xcalloc((size_t)n_threads, sizeof *g_scratch);
    g_scratch_n = 0;
    g_lq = xcalloc((size_t)n_threads, sizeof *g_lq);
    g_lqd = xcalloc((size_t)n_threads, sizeof *g_lqd);
    g_lq_cap = 0;
    nn_reserve(1, 1024);
}

void nn_shutdown(void) {
    if (!g_pool) return;
    for (int i = 0; i < tp_threads(g_pool); i++) free(g_scratch[i]), free(g_lq[i]), free(g_lqd[i]);
    free(g_scratch);
    free(g_lq);
    free(g_lqd);
    g_lq = NULL;
    g_lqd = NULL;
    g_lq_cap = 0;
    g_scratch = NULL;
    g_scratch_n = 0;
    free(g_q);
    free(g_qd);
    g_q = NULL;
    g_qd = NULL;
    g_q_cap = 0;
    tp_free(g_pool);
    g_pool = NULL;
    g_ops = NULL;
}

int nn_threads(void) { return tp_threads(g_pool); }
tp_pool *nn_pool(void) { return g_pool; }
const kern_ops *nn_kernels(void) { return g_ops; }

void nn_reserve(int rows, int cols) {
    DH_ASSERT(g_pool);
    size_t need = kern_scratch_floats(cols);
    if (need > g_scratch_n) {
        for (int i = 0; i < tp_threads(g_pool); i++) {
            free(g_scratch[i]);
            g_scratch[i] = xmalloc(xmul(need, sizeof(float)));
        }
        g_scratch_n = need;
    }
    nn_reserve_act(xmul((size_t)rows, (size_t)cols));
}

void nn_reserve_act(size_t qn) {
    DH_ASSERT(g_pool);
    if (qn > g_q_cap) {
        free(g_q);
        free(g_qd);
        g_q = xmalloc(qn);
        g_qd = xmalloc(xmul(qn / WT_QBLOCK + 1, sizeof(float)));
        g_q_cap = qn;
    }
}

void nn_reserve_local(size_t qn) {
    DH_ASSERT(g_pool);
    if (qn <= g_lq_cap) return;
    for (int i = 0; i < tp_threads(g_pool); i++) {
        free(g_lq[i]);
        free(g_lqd[i]);
        g_lq[i] = xmalloc(qn);
        g_lqd[i] = xmalloc(xmul(qn / WT_QBLOCK + 1, sizeof(float)));
    }
    g_lq_cap = qn;
}

static int is_quantized(dh_dtype t) { return t == DT_Q8 || t == DT_Q4 || t == DT_Q4K; }

/* the products of one pass: tasks are (product, run of blocks of KERN_OBLOCK output rows) */
typedef struct mm_job {
    const nn_mm *mms;
    kern_act *acts;   /* [n] */
    int n;
    int *first;       /* [n + 1] first task of each product */
    int *step;        /* [n] rows a task of each product */
} mm_job;

/* Rows a task of a product takes: whole blocks of KERN_OBLOCK rows, at most about 1 MiB of
 * weights, and at least DH_TASKS_PER_THREAD (8) tasks a thread in the pass (`blocks` of all its
 * products), so that a slow thread is waited for little. Each thread claims a contiguous range
 * of the tasks (threadpool.c), so its tasks read on as one stream whatever their size; on Zen 5,
 * 3 or 32 tasks a thread were no faster than 8 (genesis-5b q8 decode, docs/performance.md). A
 * pass of fewer blocks than threads (a router: 64 rows) is cut in runs of 16 rows instead, one
 * a thread, so that no thread reads it alone. The split changes no result: every output element
 * is computed alone. A block of a gate product paired with its up product (nn_mm.up) reads
 * both: mats = 2. */
static int rows_per_task(const wmat *W, int blocks, int threads, int mats) {
    static int per_thread = 0;
    if (!per_thread) {
        const char *e = getenv("DH_TASKS_PER_THREAD");
        per_thread = e && atoi(e) > 0 ? atoi(e) : 8;
    }
    if (blocks < threads) return DH_MAX(16, (W->rows + 16 * threads - 1) / (16 * threads) * 16);
    double block_bytes = (double)mats * KERN_OBLOCK * (double)wt_bytes(W->dtype, 1, (size_t)W->cols);
    int per = (int)DH_MIN((double)blocks / ((double)per_thread * threads * mats), (double)(1 << 20) / block_bytes);
    return KERN_OBLOCK * DH_MAX(per, 1);
}

static void mm_task(void *ctx, int task, int thread) {
    mm_job *j = ctx;
    int i = 0;
    while (task >= j->first[i + 1]) i++;
    const nn_mm *m = &j->mms[i];
    int o0 = (task - j->first[i]) * j->step[i];
    int o1 = DH_MIN(o0 + j->step[i], m->W->rows);
    g_ops->matmul(m->y, m->ldy, &j->acts[i], m->W, m->T, o0, o1, g_scratch[thread]);
    if (m->up) {
        g_ops->matmul(m->yu, m->ldy, &j->acts[i], m->up, m->T, o0, o1, g_scratch[thread]);
        for (int t = 0; t < m->T; t++)
            nn_swiglu(m->y + (size_t)t * m->ldy + o0, m->yu + (size_t)t * m->ldy + o0, (size_t)(o1 - o0));
    }
}

typedef struct q_job {
    const nn_mm *m;
    int8_t *q;
    float *qd;
    int per;
} q_job;

/* quantize rows [task * per, ...) of one product's activations */
static void q_task(void *ctx, int task, int thread) {
    (void)thread;
    q_job *j = ctx;
    int cols = j->m->W->cols, nb = cols / WT_QBLOCK;
    for (int t = task * j->per; t < DH_MIN(j->m->T, (task + 1) * j->per); t++)
        g_ops->quantize(j->m->x + (size_t)t * j->m->ldx, cols, j->q + (size_t)t * cols, j->qd + (size_t)t * nb);
}

#define MULTI_MAX 256

/* the pass table (nn_pass_stats): passes by weight bytes while it is on */
static int g_pass_on;
static nn_pass_class g_pass[NN_PASS_CLASSES];

void nn_pass_stats(int on) { g_pass_on = on; }

void nn_pass_stats_take(nn_pass_class out[NN_PASS_CLASSES]) {
    memcpy(out, g_pass, sizeof g_pass);
    memset(g_pass, 0, sizeof g_pass);
}

void nn_matmul_multi(const nn_mm *mms, int n) {
    DH_ASSERT(g_ops && n <= MULTI_MAX);
    double t0 = g_pass_on ? dh_now() : 0;
    kern_act acts[MULTI_MAX];
    int first[MULTI_MAX + 1], step[MULTI_MAX];
    double work = 0, wbytes = 0; /* multiply-adds, and bytes of the weights the pass reads */
    int pass_blocks = 0;         /* blocks of rows of all the pass's matrices */
    size_t qoff = 0;
    first[0] = 0;
    for (int i = 0; i < n; i++) {
        const nn_mm *m = &mms[i];
        const wmat *W = m->W;
        DH_ASSERT((size_t)kern_scratch_floats(W->cols) <= g_scratch_n);
        acts[i] = (kern_act){.x = m->x, .ldx = m->ldx};
        DH_ASSERT(!m->up || (m->yu && m->up->rows == W->rows && m->up->cols == W->cols && m->up->dtype == W->dtype &&
                             m->up->layout == W->layout));
        const nn_mm *pm = i > 0 ? &mms[i - 1] : NULL;
        if (pm && is_quantized(W->dtype) && is_quantized(pm->W->dtype) && pm->x == m->x && pm->ldx == m->ldx &&
            pm->T == m->T && pm->W->cols == W->cols) {
            /* the same rows as the product before (the experts of one decode row, experts.c): the same bits */
            acts[i].q = acts[i - 1].q, acts[i].qd = acts[i - 1].qd;
        } else if (is_quantized(W->dtype) && m->T > 0) {
            /* quantized once per product (each row on its own: the same bits whichever thread
             * does it), on the pool when there are many rows */
            DH_ASSERT(qoff + (size_t)m->T * W->cols <= g_q_cap && W->cols % WT_QBLOCK == 0);
            q_job qj = {.m = m, .q = g_q + qoff, .qd = g_qd + qoff / WT_QBLOCK};
            int tasks = m->T >= 16 ? 4 * tp_threads(g_pool) : 1;
            qj.per = (m->T + tasks - 1) / tasks;
            if (tasks > 1) tp_run(g_pool, tasks, q_task, &qj);
            else q_task(&qj, 0, 0);
            acts[i].q = qj.q, acts[i].qd = qj.qd;
            qoff += (size_t)m->T * W->cols;
        }
        if (m->T > 0) {
            int mats = m->up ? 2 : 1;
            work += (double)m->T * W->rows * W->cols * mats;
            wbytes += (double)wt_bytes(W->dtype, (size_t)W->rows, (size_t)W->cols) * mats;
            pass_blocks += (W->rows + KERN_OBLOCK - 1) / KERN_OBLOCK * mats;
        }
    }
    for (int i = 0; i < n; i++) {
        step[i] = rows_per_task(mms[i].W, pass_blocks, tp_threads(g_pool), mms[i].up ? 2 : 1);
        first[i + 1] = first[i] + (mms[i].T > 0 ? (mms[i].W->rows + step[i] - 1) / step[i] : 0);
    }
    mm_job j = {.mms = mms, .acts = acts, .n = n, .first = first, .step = step};
    /* small work runs on the calling thread: waking the pool costs more than a few
     * microseconds of it. Work is counted in multiply-adds and in weight bytes, and a thread
     * alone reads a small matrix's short rows slowly: genesis-5b's f32 router (64 x 2048, 512
     * KiB) took 26-30 us a layer of decode on one thread, 19-24 on two, and genesis-1b's bf16
     * router (64 x 1024, 128 KiB) about 10 us on one thread and 6-7 on two (AMD EPYC Zen 4;
     * docs/performance.md). */
    if (work < 256.0 * 1024 && wbytes < 64.0 * 1024) {
        for (int t = 0; t < first[n]; t++) mm_task(&j, t, 0);
    } else {
        tp_run(g_pool, first[n], mm_task, &j);
    }
    if (g_pass_on) {
        int k = 0; /* the class: wbytes in (2^(k-1), 2^k] */
        while (k < NN_PASS_CLASSES - 1 && (double)((uint64_t)1 << k) < wbytes) k++;
        g_pass[k].n++, g_pass[k].bytes += wbytes, g_pass[k].seconds += dh_now() - t0;
    }
}

void nn_matmul_local(const nn_mm *m, int thread) {
    const wmat *W = m->W;
    if (m->T <= 0) return;
    DH_ASSERT(g_ops && thread >= 0 && thread < tp_threads(g_pool) && (size_t)kern_scratch_floats(W->cols) <= g_scratch_n);
    kern_act a = {.x = m->x, .ldx = m->ldx};
    if (is_quantized(W->dtype)) {
        int8_t *q = g_lq[thread];
        float *qd = g_lqd[thread];
        int nb = W->cols / WT_QBLOCK;
        DH_ASSERT((size_t)m->T * W->cols <= g_lq_cap && W->cols % WT_QBLOCK == 0);
        for (int t = 0; t < m->T; t++)
            g_ops->quantize(m->x + (size_t)t * m->ldx, W->cols, q + (size_t)t * W->cols, qd + (size_t)t * nb);
        a.q = q, a.qd = qd;
    }
    g_ops->matmul(m->y, m->ldy, &a, W, m->T, 0, W->rows, g_scratch[thread]);
}

void nn_matmul_ld(float *y, int ldy, const float *x, int ldx, const wmat *W, int T) {
    if (T <= 0) return;
    nn_mm m = {.y = y, .ldy = ldy, .x = x, .ldx = ldx, .W = W, .T = T};
    nn_matmul_multi(&m, 1);
}

void nn_matmul(float *y, const float *x, const wmat *W, int T) {
    nn_matmul_ld(y, W->rows, x, W->cols, W, T);
}

typedef struct bw_job {
    const kern_ops *k; /* the fastest table the CPU has, whichever the products use */
    const char *p;
    size_t task_bytes;
    int streams, prefetch, pace;
    uint64_t sums[256];
} bw_job;

static void bw_task(void *ctx, int task, int thread) {
    bw_job *j = ctx;
    /* keeps the loads from being optimised away */
    j->sums[thread & 255] += j->k->read(j->p + (size_t)task * j->task_bytes, j->task_bytes, j->streams, j->prefetch, j->pace);
}

const char *const nn_read_pattern_name[NN_READ_PATTERNS] = {"plain", "prefetch 8 KiB", "8 streams", "paced 2",
                                                             "paced 4"};

double nn_read_bandwidth(tp_pool *pool, const void *buf, size_t bytes, size_t pass_bytes, int reps,
                         double *pattern_best) {
    size_t mib4 = (size_t)4 << 20;
    DH_ASSERT(bytes % mib4 == 0 && pass_bytes % mib4 == 0 && pass_bytes > 0 && pass_bytes <= bytes &&
              reps > 0);
    if (!pool) pool = g_pool;
    int nt = tp_threads(pool);
    bw_job *j = xcalloc(1, sizeof *j);
    j->k = kern_avx512();
    if (!j->k) j->k = kern_portable();
    j->p = buf, j->task_bytes = mib4, j->streams = 1;
    tp_run(pool, (int)(bytes / mib4), bw_task, j); /* warm the pages */
    /* the ways of reading a pass, taken in turn (docs/performance.md, "How the bandwidth is
     * measured"): each thread a contiguous share in one stream (how a packed q8 or q4k product
     * reads), the same prefetching 8 KiB ahead (the packed streams' software prefetch), 4 MiB
     * tasks of 8 interleaved streams each (how a product reading 16 rows at once does), and the
     * contiguous share with 2 and with 4 rounds of multiply-adds on each line (a kernel's
     * compute between its loads: on AMD Zen 4 bare loads read less than that) */
    static const struct { int contiguous, prefetch, streams, pace; } pat[NN_READ_PATTERNS] = {
        {1, 0, 1, 0}, {1, KERN_G16_PREFETCH, 1, 0}, {0, 0, 8, 0}, {1, 0, 1, 2}, {1, 0, 1, 4}};
    size_t share = pass_bytes / (size_t)nt / mib4 * mib4;
    size_t n_slices = bytes / pass_bytes;
    double best = 0;
    for (int r = 0; r < NN_READ_PATTERNS * reps; r++) {
        int k = r % NN_READ_PATTERNS, contiguous = pat[k].contiguous && share > 0;
        j->task_bytes = contiguous ? share : mib4;
        j->streams = contiguous ? 1 : pat[k].streams;
        j->prefetch = contiguous ? pat[k].prefetch : 0;
        j->pace = pat[k].pace;
        int n_tasks = (int)(contiguous ? (size_t)nt : pass_bytes / mib4);
        /* pass r reads slice r / NN_READ_PATTERNS of the buffer: never in cache from the last pass */
        j->p = (const char *)buf + (size_t)(r / NN_READ_PATTERNS) % n_slices * pass_bytes;
        double t0 = dh_now();
        tp_run(pool, n_tasks, bw_task, j);
        double gbs = (double)j->task_bytes * n_tasks / (dh_now() - t0) * 1e-9;
        if (gbs > best) best = gbs;
        if (pattern_best && gbs > pattern_best[k]) pattern_best[k] = gbs;
    }
    free(j);
    return best;
}

void nn_rmsnorm(float *y, const float *x, const float *w, int T, int D, float eps) {
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * D;
        float *yr = y + (size_t)t * D;
        float ss = nn_dot(xr, xr, D);
        float r = 1.0f / sqrtf(ss / (float)D + eps);
        for (int i = 0; i < D; i++) yr[i] = xr[i] * r * w[i];
    }
}

void nn_swiglu(float *g, const float *u, size_t n) { g_ops->swiglu(g, u, n); }

void nn_softmax(float *x, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) m = nn_max(m, x[i]);
    float inv = 1.0f / nn_exp_sum(x, n, m, 0);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

float nn_exp_sum(float *x, int n, float m, float s) {
    g_ops->exp_sub(x, n, m);
    for (int i = 0; i < n; i++) s += x[i];
    return s;
}

float nn_dot(const float *a, const float *b, int n) { return g_ops->dot(a, b, n); }
void nn_axpy(float *y, float a, const float *x, int n) { g_ops->axpy(y, a, x, n); }
void nn_dot_rows(float *out, size_t ldo, const float *q, size_t ldq, int nq, const float *x, size_t ldx, int rows,
                 int n) {
    g_ops->dot_rows(out, ldo, q, ldq, nq, x, ldx, rows, n);
}
void nn_axpy_rows(float *y, size_t ldy, const float *a, size_t lda, int ny, const float *x, size_t ldx, int rows,
                  int n) {
    g_ops->axpy_rows(y, ldy, a, lda, ny, x, ldx, rows, n);
}
