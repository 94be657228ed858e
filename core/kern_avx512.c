/* kern_avx512.c: AVX-512 kernels for every weight dtype; VNNI int8 products for q8 and q4.
 *
 * f32, bf16, f16: one accumulator per output element, k ascending, one fused multiply-add a
 * step (kern.h), with 16 outputs in the 16 lanes of a register and x[t,k] broadcast. The
 * weights, stored [out, in], are transposed 16 rows x 64 bytes at a time in registers, the
 * 16-bit formats before they are widened (half the shuffles). Two paths give the same bits:
 *   - small T (decode, up to FSMALL_T rows): no packing; each group of 16 weight rows is
 *     transposed once for all T rows, streaming from memory with a software prefetch;
 *   - large T (prefill): each block of 64 rows is widened once into scratch as four 16-output
 *     panels [k][16], then register tiles of 6 rows x 64 outputs run over it (24 accumulators,
 *     a broadcast and 4 loads for 24 fused multiply-adds a k: near the FMA peak).
 * This replaced lanes over k with a horizontal sum per output (kern.h's dot order), whose
 * register tiles were bound by loads at ~66 GFLOP/s a core for bf16 at T = 512.
 *
 * q8, q4: see the section below; vpdpbusd does 64 int8 multiply-adds per instruction, and
 * the float work is a multiply and a fused multiply-add per output and block of 32.
 *
 * Per output element, every tile shape and every path performs the same operations in the
 * same order, so a row's result depends neither on T nor on the output range (kern.h).
 * Tuning figures in comments are from a 2-core Sapphire Rapids VM (tests/bench_kern.c).
 *
 * The file is compiled for AVX-512 with pragmas; nothing here runs unless kern_avx512()
 * found the features at run time (and the q8/q4 kernels only with AVX512_VNNI). */
#include "kern.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cpu.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
#include <immintrin.h>

/* Small loops over registers must be unrolled, or GCC -O2 keeps the arrays on the stack. */
#define UNROLL _Pragma("GCC unroll 16")
#define UNROLL32 _Pragma("GCC unroll 32")
#define AI static inline __attribute__((always_inline))

/* ---- f32, bf16 and f16 weights ----
 *
 * Per output element: acc = fma(x[t,k], w[o,k], acc) for k = 0, 1, ..., cols - 1, from +0.
 * Lanes run over outputs (16 weight rows in the 16 lanes of an accumulator), so x[t,k] is a
 * broadcast and no horizontal sum is needed; the weights, stored [out, in], are transposed 16
 * rows at a time (t16x16). A packed-path tile may leave a partial accumulator in y between two
 * passes over k: storing and reloading an f32 is exact, so that changes no operation.
 *
 * Against the lanes-over-k kernels before them (bench_kern, bf16, alternating runs): T = 512,
 * 2048 x 2048, 230-260 GFLOP/s on 2 threads (was 118-144); decode from memory on par (T = 1
 * and 2 on lm_head and expert shapes, 85-100% of the read bandwidth); T = 1 on weights hot in
 * L3 slower (18 GB/s a core, was 28: the chain of fused multiply-adds, see fsmall). */

#define FSMALL_T 8 /* up to this many activation rows the small path (one register tile of T
                      rows, no packing); measured: it beats packing up to T = 8-12 */
#define FTILE_R 6  /* a packed-path register tile: 6 activation rows by the 4 panels of a block, */
#define FTILE_G 4  /* 24 accumulators (measured ~12% faster than 12 x 2; 8 x 3 as fast, but it
                      leaves one panel of four to a narrower tile) */
#define FKC 2048   /* k per pass of the packed path: a pass's panel is 64 x 2048 floats, 512 KB, so
                      it stays in the 2 MB L2 (cols 8192 in one pass: ~30% slower) */
#define PREFETCH_BYTES 4096 /* how far ahead the small path prefetches (measured 2-16 KB: 4 KB,
                               by a few %; the old lanes-over-k kernels wanted 16 KB) */

/* Weights transposed per t16x16 call: 16 k of f32, 32 of bf16/f16 (64 bytes of each row). */
#define KSTEP(dt) ((dt) == DT_F32 ? 16 : 32)
#define ESIZE(dt) ((dt) == DT_F32 ? 4 : 2)

/* Lane i of v to y[i * ys] for the lanes in keep: a masked store when ys = 1, else a scatter
 * (yidx: lane i holds i * ys). The small paths' outputs, 16 weight rows side by side. */
AI void store_lanes(float *y, __mmask16 keep, int ys, __m512i yidx, __m512 v) {
    if (ys == 1)
        _mm512_mask_storeu_ps(y, keep, v);
    else
        _mm512_mask_i32scatter_ps(y, keep, yidx, v, 4);
}

/* 32 bytes of one weight row, or its first `words` 16-bit words (the rest zero) when masked */
AI __m256i load_row32(const char *p, int masked, __mmask16 words) {
    return masked ? _mm256_maskz_loadu_epi16(words, p) : _mm256_loadu_si256((const void *)p);
}

/* The 16 x 8 dword transpose: lane i of w[j] = dword j of the 32 bytes at p + min(i, n-1) * S
 * (lanes from n on repeat row n - 1: they exist only at the end of a range and are never
 * stored). Rows i and i + 4 (i < 4), 8 + i and 12 + i share a register (a masked broadcast
 * fills the top half: a blend, which runs on two ports where an insert runs on one); two unpack
 * rounds put 4 rows of one dword in a 128-bit lane; a lane shuffle finishes: 24 shuffles. */
AI void t16x8(const char *p, size_t S, int n, int masked, __mmask16 words, __m512i w[8]) {
    __m512i z[8], a[4], pq[2][4];
    UNROLL
    for (int h = 0; h < 2; h++)
        UNROLL
        for (int i = 0; i < 4; i++) {
            int lo = 8 * h + i, hi = 8 * h + i + 4;
            __m256i vl = load_row32(p + (size_t)DH_MIN(lo, n - 1) * S, masked, words);
            __m256i vh = load_row32(p + (size_t)DH_MIN(hi, n - 1) * S, masked, words);
            z[4 * h + i] = _mm512_mask_broadcast_i64x4(_mm512_castsi256_si512(vl), 0xf0, vh);
        }
    UNROLL
    for (int h = 0; h < 2; h++) {
        const __m512i *zh = z + 4 * h;
        a[0] = _mm512_unpacklo_epi32(zh[0], zh[1]);
        a[1] = _mm512_unpackhi_epi32(zh[0], zh[1]);
        a[2] = _mm512_unpacklo_epi32(zh[2], zh[3]);
        a[3] = _mm512_unpackhi_epi32(zh[2], zh[3]);
        pq[h][0] = _mm512_unpacklo_epi64(a[0], a[2]);
        pq[h][1] = _mm512_unpackhi_epi64(a[0], a[2]);
        pq[h][2] = _mm512_unpacklo_epi64(a[1], a[3]);
        pq[h][3] = _mm512_unpackhi_epi64(a[1], a[3]);
    }
    UNROLL
    for (int j = 0; j < 4; j++) {
        w[j] = _mm512_shuffle_i32x4(pq[0][j], pq[1][j], 0x88);
        w[j + 4] = _mm512_shuffle_i32x4(pq[0][j], pq[1][j], 0xdd);
    }
}

/* The same for 64 bytes of each row: lane i of w[j] = dword j (j < 16), masked to the first
 * `words` words. Both halves of a row's line are read together: rows 4 KB apart share an L1
 * set, 16 of them overflow its 12 ways, and a half read later would miss. (Two 16 x 8 halves
 * measured faster than a 16 x 16 transpose in four rounds of shuffles: 48 shuffles and 16
 * blends instead of 64 shuffles, all on one port.) */
AI void t16x16(const char *p, size_t S, int n, int masked, __mmask32 words, __m512i w[16]) {
    t16x8(p, S, n, masked, (__mmask16)words, w);
    t16x8(p + 32, S, n, masked, (__mmask16)(words >> 16), w + 8);
}

/* The 16 weights of k = k0 + j (j < KSTEP) in f32, from t16x16's output for k0. A bf16/f16
 * dword holds the pair k0 + 2i (low half) and k0 + 2i + 1; bf16 widens with a shift or a mask
 * (transposing the 16-bit pairs before widening halves the shuffles), f16 sorts the halves
 * (even k to the low 256 bits) and converts. Exact. */
AI __m512 wk(const __m512i *w, dh_dtype dt, int j) {
    switch (dt) {
    case DT_BF16: {
        const __m512i hi = _mm512_set1_epi32((int)0xffff0000u);
        return _mm512_castsi512_ps(j % 2 ? _mm512_and_si512(w[j / 2], hi)
                                         : _mm512_slli_epi32(w[j / 2], 16));
    }
    case DT_F16: {
        const __m512i idx = _mm512_setr_epi32(0x00020000, 0x00060004, 0x000a0008, 0x000e000c,
                                              0x00120010, 0x00160014, 0x001a0018, 0x001e001c,
                                              0x00030001, 0x00070005, 0x000b0009, 0x000f000d,
                                              0x00130011, 0x00170015, 0x001b0019, 0x001f001d);
        __m512i v = _mm512_permutexvar_epi16(idx, w[j / 2]);
        return _mm512_cvtph_ps(j % 2 ? _mm512_extracti64x4_epi64(v, 1) : _mm512_castsi512_si256(v));
    }
    default: return _mm512_castsi512_ps(w[j]);
    }
}

/* Small T: R <= FSMALL_T activation rows (ldx apart) against 16 weight rows, lane i's row at
 * p + i * ls (lanes from n on repeat lane n - 1's row and are not stored), written to
 * y[r*ldy + i*ys]. One accumulator a row: R chains of fused multiply-adds, whose latency
 * (4 cycles a k) bounds T = 1 at about 8 bytes of bf16 a cycle, above a core's share of
 * memory bandwidth. (Two groups side by side, 32 rows, were faster from L2 but slower from
 * memory: the 32 streams of a thread and its 32 registers of weights.)
 * With pf, each step prefetches, for each of the 16 rows, the line PREFETCH_BYTES further on
 * in the order the rows are read: 16 side by side, then the next 16 (rb bytes a row; with ls =
 * 4 rb the next group's row is the next row, so the address runs on by itself). Rows are short
 * (2-4 KB), and the hardware prefetcher, which does not cross 4 KB pages, keeps restarting. */
AI void fsmall(float *y, int ldy, const float *x, int ldx, const char *p, size_t ls, size_t rb,
               int n, int ys, dh_dtype dt, int cols, int R, int pf) {
    const int ks = KSTEP(dt), es = ESIZE(dt);
    const size_t pf_col = PREFETCH_BYTES / 16, wrap = ls == rb ? 15 * rb : 0;
    __m512 acc[FSMALL_T];
    UNROLL
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + ks <= cols; k += ks) {
        size_t c = (size_t)k * es;
        if (pf) {
            const char *q = p + c + pf_col + (c + pf_col >= rb ? wrap : 0);
            UNROLL
            for (int i = 0; i < 16; i++) _mm_prefetch(q + (size_t)i * ls, _MM_HINT_T0);
        }
        __m512i w[16];
        t16x16(p + c, ls, n, 0, 0, w);
        UNROLL32
        for (int j = 0; j < ks; j++) {
            __m512 wv = wk(w, dt, j);
            UNROLL
            for (int r = 0; r < R; r++)
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[(size_t)r * ldx + k + j]), wv, acc[r]);
        }
    }
    if (k < cols) { /* the last k < KSTEP: read masked, and only those k computed */
        int rem = cols - k;
        __m512i w[16];
        t16x16(p + (size_t)k * es, ls, n, 1, (__mmask32)((1u << (rem * es / 2)) - 1), w);
        for (int j = 0; j < rem; j++)
            UNROLL
            for (int r = 0; r < R; r++)
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(x[(size_t)r * ldx + k + j]), wk(w, dt, j),
                                         acc[r]);
    }
    __mmask16 keep = (__mmask16)((1u << n) - 1);
    __m512i yi = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                      14, 15),
                                    _mm512_set1_epi32(ys));
    UNROLL
    for (int r = 0; r < R; r++) store_lanes(y + (size_t)r * ldy, keep, ys, yi, acc[r]);
}

/* fsmall with dt and R constant, so that each combination is compiled on its own; whole groups
 * (n = 16, prefetched) apart from the last of a range, which clamp their row addresses */
static void fsmall_any(float *y, int ldy, const float *x, int ldx, const char *p, size_t ls,
                       size_t rb, int n, int ys, dh_dtype dt, int cols, int R) {
#define FS_CASE(DT, RR)                                                                          \
    case RR:                                                                                     \
        if (n == 16)                                                                             \
            fsmall(y, ldy, x, ldx, p, ls, rb, 16, ys, DT, cols, RR, 1);                          \
        else                                                                                     \
            fsmall(y, ldy, x, ldx, p, ls, rb, n, ys, DT, cols, RR, 0);                           \
        return;
#define FS_DT(DT)                                                                                \
    switch (R) {                                                                                 \
        FS_CASE(DT, 1) FS_CASE(DT, 2) FS_CASE(DT, 3) FS_CASE(DT, 4)                              \
        FS_CASE(DT, 5) FS_CASE(DT, 6) FS_CASE(DT, 7) FS_CASE(DT, 8)                              \
    default: break;                                                                              \
    }
    switch (dt) {
    case DT_F32: FS_DT(DT_F32) break;
    case DT_BF16: FS_DT(DT_BF16) break;
    case DT_F16: FS_DT(DT_F16) break;
    default: break;
    }
    DH_ASSERT(0);
#undef FS_DT
#undef FS_CASE
}

/* Large T: columns [k0, k1) of rows [o, o + n) (n <= 64) of W widened into pk[cg][k][16]
 * (panel cg holds rows o + 16 cg ..., one 64-byte vector per k, k1 - k0 vectors a panel).
 * Not prefetched: prefetches compete with the panel's stores for the L1 fill buffers
 * (measured ~10% slower with). (Fetching the next block into L2 during the tiles of this one,
 * when a call covers several, measured 0-8% at T = 16-32: not kept, nn.c calls a block at a
 * time.) */
AI void fpack(const wmat *W, dh_dtype dt, int o, int n, int k0, int k1, float *pk) {
    const int cols = W->cols, ks = KSTEP(dt), es = ESIZE(dt);
    size_t rb = (size_t)cols * es, kn = (size_t)(k1 - k0);
    const char *base = dt == DT_F32 ? (const char *)W->p.f32 : (const char *)W->p.bf16;
    for (int cg = 0; cg * 16 < n; cg++) {
        const char *p = base + (size_t)(o + 16 * cg) * rb;
        int ng = DH_MIN(16, n - 16 * cg);
        float *dst = pk + (size_t)cg * kn * 16;
        int k = k0;
        for (; k + ks <= k1; k += ks, dst += (size_t)ks * 16) {
            __m512i w[16];
            t16x16(p + (size_t)k * es, rb, ng, 0, 0, w);
            UNROLL32
            for (int j = 0; j < ks; j++) _mm512_store_ps(dst + (size_t)j * 16, wk(w, dt, j));
        }
        if (k < k1) {
            __m512i w[16];
            t16x16(p + (size_t)k * es, rb, ng, 1, (__mmask32)((1u << ((k1 - k) * es / 2)) - 1), w);
            for (int j = 0; j < k1 - k; j++) _mm512_store_ps(dst + (size_t)j * 16, wk(w, dt, j));
        }
    }
}

static void fpack_any(const wmat *W, int o, int n, int k0, int k1, float *pk) {
    switch (W->dtype) {
    case DT_F32: fpack(W, DT_F32, o, n, k0, k1, pk); return;
    case DT_BF16: fpack(W, DT_BF16, o, n, k0, k1, pk); return;
    case DT_F16: fpack(W, DT_F16, o, n, k0, k1, pk); return;
    default: DH_ASSERT(0);
    }
}

/* A register tile of the packed path: R activation rows (x: their first k of the pass) by G
 * panels (ps floats apart), over kn k; the accumulators start at +0 on the first pass, else
 * from y (the previous pass); the last panel stores only the lanes of `keep`. */
AI void ftile(float *y, int ldy, const float *x, int ldx, const float *pk, size_t ps, int kn,
              int first, int R, int G, __mmask16 keep) {
    __m512 acc[FTILE_R][FTILE_G];
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int g = 0; g < G; g++)
            acc[r][g] = first ? _mm512_setzero_ps()
                              : _mm512_maskz_loadu_ps(g == G - 1 ? keep : 0xffff,
                                                      y + (size_t)r * ldy + 16 * g);
    for (int k = 0; k < kn; k++) {
        __m512 w[FTILE_G];
        UNROLL
        for (int g = 0; g < G; g++) w[g] = _mm512_load_ps(pk + (size_t)g * ps + (size_t)k * 16);
        UNROLL
        for (int r = 0; r < R; r++) {
            __m512 xb = _mm512_set1_ps(x[(size_t)r * ldx + k]);
            UNROLL
            for (int g = 0; g < G; g++) acc[r][g] = _mm512_fmadd_ps(xb, w[g], acc[r][g]);
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int g = 0; g < G; g++)
            _mm512_mask_storeu_ps(y + (size_t)r * ldy + 16 * g, g == G - 1 ? keep : 0xffff,
                                  acc[r][g]);
}

static void ftile_any(float *y, int ldy, const float *x, int ldx, const float *pk, size_t ps,
                      int kn, int first, int R, int G, __mmask16 keep) {
#define FT_CASE(RR, GG) \
    case (RR) * 8 + (GG): ftile(y, ldy, x, ldx, pk, ps, kn, first, RR, GG, keep); return;
#define FT_R(RR) FT_CASE(RR, 1) FT_CASE(RR, 2) FT_CASE(RR, 3) FT_CASE(RR, 4)
    switch (R * 8 + G) {
        FT_R(1) FT_R(2) FT_R(3) FT_R(4) FT_R(5) FT_R(6)
    default: break;
    }
    DH_ASSERT(0);
#undef FT_R
#undef FT_CASE
}

/* Small T: no packing, each group of 16 weight rows transposed in registers once for all T
 * rows (one tile). In a whole block of 64 rows, lane i of group j takes row j + 4 i (as the
 * q8/q4 kernels do): measured a few % faster from memory than 16 consecutive rows. */
static void matmul_float_small(float *y, int ldy, const float *x, int ldx, const wmat *W, int T,
                               int o0, int o1) {
    dh_dtype dt = W->dtype;
    size_t rb = (size_t)W->cols * ESIZE(dt);
    const char *base = dt == DT_F32 ? (const char *)W->p.f32 : (const char *)W->p.bf16;
    for (int ob = o0; ob < o1; ob += KERN_OBLOCK) {
        int nb = DH_MIN(KERN_OBLOCK, o1 - ob);
        for (int j = 0; j < (nb + 15) / 16; j++) {
            if (nb == KERN_OBLOCK)
                fsmall_any(y + ob + j, ldy, x, ldx, base + (size_t)(ob + j) * rb, 4 * rb, rb, 16,
                           4, dt, W->cols, T);
            else
                fsmall_any(y + ob + 16 * j, ldy, x, ldx, base + (size_t)(ob + 16 * j) * rb, rb, rb,
                           DH_MIN(16, nb - 16 * j), 1, dt, W->cols, T);
        }
    }
}

/* Large T: each block of 64 rows is packed once a pass of FKC columns into scratch, then tiles
 * of FTILE_R activation rows run over the pass's panel, which stays in L2. */
static void matmul_float(float *y, int ldy, const float *x, int ldx, const wmat *W, int T, int o0,
                         int o1, float *scratch) {
    if (T <= FSMALL_T) {
        matmul_float_small(y, ldy, x, ldx, W, T, o0, o1);
        return;
    }
    int cols = W->cols;
    float *pk = (float *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    DH_ASSERT(pk + (size_t)KERN_OBLOCK * DH_MIN(cols, FKC) <= scratch + kern_scratch_floats(cols));
    for (int ob = o0; ob < o1; ob += KERN_OBLOCK) {
        int n = DH_MIN(KERN_OBLOCK, o1 - ob), np = (n + 15) / 16;
        __mmask16 keep = (__mmask16)((1u << (n - (np - 1) * 16)) - 1);
        for (int k0 = 0; k0 < cols; k0 += FKC) {
            int kn = DH_MIN(cols - k0, FKC);
            fpack_any(W, ob, n, k0, k0 + kn, pk);
            for (int t = 0; t < T; t += FTILE_R)
                ftile_any(y + (size_t)t * ldy + ob, ldy, x + (size_t)t * ldx + k0, ldx, pk,
                          (size_t)kn * 16, kn, k0 == 0, DH_MIN(FTILE_R, T - t), np, keep);
        }
    }
}

/* The order of kern.h's dot: 16 lanes over k, fused, the tail masked, then the halving tree of
 * _mm512_reduce_add_ps. */
static float dot_avx(const float *a, const float *b, int n) {
    __m512 acc = _mm512_setzero_ps();
    int k = 0;
    for (; k + 16 <= n; k += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), acc);
    if (k < n) {
        __mmask16 m = (__mmask16)((1u << (n - k)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + k), _mm512_maskz_loadu_ps(m, b + k),
                              acc);
    }
    return _mm512_reduce_add_ps(acc);
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

/* ---- expf in 16 lanes, with libm's bits ----
 *
 * A softmax's expf calls were the largest cost of a long prompt's attention after its products
 * (12.6% of genesis-1b q4k pp512@d2048's samples, perf, AMD EPYC Zen 4): one library call a
 * value. exp_sub_avx gives the same bits 16 at a time by the same algorithm as glibc's expf
 * (2.28 and later: e_expf.c, from ARM's optimized routines), with the operations glibc's x86-64
 * FMA variant performs, read from its machine code (objdump of Debian's libm 2.36): with
 * N = 32, z = x N / ln 2 as double, k = round(z), r = z - k, exp(x) = 2^(k/N) (C0 r^3 + C1 r^2 +
 * C2 r + 1), that is
 *   kd = fma(InvLn2N, xd, SHIFT), ki = bits(kd), kd -= SHIFT, r = fma(InvLn2N, xd, -kd),
 *   s = double of bits (T[ki % 32] + (ki << 47)),
 *   z = fma(r, C0, C1), r2 = r r, y = fma(r, C2, 1), y = fma(z, r2, y), y = y s, (float)y.
 * T[i] is 2^(i/32) rounded to double, less i << 47 in its bits (so that adding ki << 47
 * puts k / 32 in the exponent): computed exactly (Python's decimal, 80 digits) and equal to
 * libm's own table. The polynomial is glibc's (ARM's minimax fit, scaled by powers of N).
 * glibc takes this path for -103.28 <= x <= 88.72; below -103.97 (and -inf) it returns +0;
 * the lanes it treats otherwise (NaN, above 88.72, the band between) call expf itself.
 * kern_avx512() compares this with the libm it runs on before it uses it (exp_agrees); test_kern
 * compares it with expf on every float (DH_TEST_EXP_ALL=1; a stride of them by default).
 * 1.1-1.7 ns a value against 3.8-4.5 for the calls (1025 values, AMD EPYC Zen 4). */
static const uint64_t exp_tab[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};
#define EXP_FAST_LO -0x1.9d1d9ep6f /* glibc's own path from here (log(0x1p-149)) ... */
#define EXP_FAST_HI 0x1.62e42ep6f  /* ... to here (log(0x1p128)) */
#define EXP_ZERO_LO -0x1.9fe368p6f /* and +0 below this (log(0x1p-150)) */

/* 8 lanes of glibc's path, in double */
AI __m512d exp8(__m512d xd) {
    const __m512d inv = _mm512_set1_pd(0x1.71547652b82fep+5), shift = _mm512_set1_pd(0x1.8p52);
    __m512d kd = _mm512_fmadd_pd(inv, xd, shift);
    __m512i ki = _mm512_castpd_si512(kd);
    kd = _mm512_sub_pd(kd, shift);
    __m512d r = _mm512_fmsub_pd(inv, xd, kd);
    /* T[ki % 32]: entries 0-15 and 16-31 by ki's low 4 bits, then bit 4 picks */
    __m512i t0 = _mm512_permutex2var_epi64(_mm512_loadu_si512(exp_tab), ki, _mm512_loadu_si512(exp_tab + 8));
    __m512i t1 =
        _mm512_permutex2var_epi64(_mm512_loadu_si512(exp_tab + 16), ki, _mm512_loadu_si512(exp_tab + 24));
    __m512i t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)), t0, t1);
    __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64(ki, 47)));
    __m512d z =
        _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.c6af84b912394p-20), _mm512_set1_pd(0x1.ebfce50fac4f3p-13));
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.62e42ff0c52d6p-6), _mm512_set1_pd(1.0));
    return _mm512_mul_pd(_mm512_fmadd_pd(z, r2, y), s);
}

/* expf of 16 lanes; *slow gets the lanes that must call expf instead (NaN, above 88.72, and
 * the band where glibc sets errno and may return its smallest subnormal) */
AI __m512 exp16(__m512 x, __mmask16 *slow) {
    __mmask16 fast = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_FAST_LO), _CMP_GE_OQ) &
                     _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_FAST_HI), _CMP_LE_OQ);
    __mmask16 zero = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_ZERO_LO), _CMP_LT_OQ);
    *slow = (__mmask16)~(fast | zero);
    __m256 lo = _mm512_cvtpd_ps(exp8(_mm512_cvtps_pd(_mm512_castps512_ps256(x))));
    __m256 hi = _mm512_cvtpd_ps(exp8(_mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1))));
    return _mm512_maskz_mov_ps(fast, _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1));
}

/* expf of d's lanes in keep, every lane: the slow ones by expf itself */
AI __m512 exp16_all(__m512 d, __mmask16 keep) {
    __mmask16 slow;
    __m512 e = exp16(d, &slow);
    slow &= keep;
    if (slow) {
        float dl[16], el[16];
        _mm512_storeu_ps(dl, d);
        _mm512_storeu_ps(el, e);
        for (; slow; slow &= (__mmask16)(slow - 1)) {
            int l = __builtin_ctz(slow);
            el[l] = expf(dl[l]);
        }
        e = _mm512_loadu_ps(el);
    }
    return e;
}

/* x[i] = expf(x[i] - m) for 16 values at x, the lanes in keep */
AI void exp_sub16(float *x, float m, __mmask16 keep) {
    __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(keep, x), _mm512_set1_ps(m));
    _mm512_mask_storeu_ps(x, keep, exp16_all(d, keep));
}

static void exp_sub_avx(float *x, int n, float m) {
    int i = 0;
    for (; i + 16 <= n; i += 16) exp_sub16(x + i, m, 0xffff);
    if (i < n) exp_sub16(x + i, m, (__mmask16)((1u << (n - i)) - 1));
}

/* g = g / (1 + expf(-g)) * u for 16 values, the lanes in keep: nn_swiglu's operations */
AI void swiglu16(float *g, const float *u, __mmask16 keep) {
    __m512 gv = _mm512_maskz_loadu_ps(keep, g);
    __m512 e = exp16_all(_mm512_xor_ps(gv, _mm512_set1_ps(-0.0f)), keep); /* -g: the sign flipped */
    __m512 y = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_mask_storeu_ps(g, keep, _mm512_mul_ps(y, _mm512_maskz_loadu_ps(keep, u)));
}

static void swiglu_avx(float *g, const float *u, size_t n) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16) swiglu16(g + i, u + i, 0xffff);
    if (i < n) swiglu16(g + i, u + i, (__mmask16)((1u << (n - i)) - 1));
}

/* ---- exp in double, 8 lanes at a time, with libm's bits ----
 *
 * The sampler's softmax over 129,280 logits calls exp (double) once a logit, with a
 * temperature and no top-k: a draw took 1.21 ms, 0.73 with this (AMD EPYC Zen 4).
 * exp_scaled_avx gives glibc's bits the way exp_sub_avx gives expf's (above): glibc's exp
 * (2.28 and later: e_exp.c, from ARM's optimized routines) with the operations of its x86-64
 * FMA variant, read from its machine code (objdump of Debian's libm 2.36). With N = 128, for
 * 2^-54 <= |x| < 512:
 *   kd = fma(x, InvLn2N, SHIFT), ki = bits(kd), kd -= SHIFT,
 *   r = fma(kd, NegLn2loN, fma(kd, NegLn2hiN, x)), i = 2 (ki % 128),
 *   tail = double of T[i], sbits = T[i + 1] + (ki << 45), r2 = r r,
 *   tmp = fma(r2 r2, fma(r, C5, C4), fma(fma(r, C3, C2), r2, r + tail)),
 *   scale = double of sbits, exp(x) = fma(scale, tmp, scale);
 * below 2^-54 (zeros and subnormals too) glibc returns 1 + x. T holds, for each i < 128,
 * (2^(i/N) - d) / d for d = 2^(i/N) rounded to double, and d's bits less i << 45: computed
 * exactly (Python's decimal, 100 digits) and equal to libm's own table. Every other lane (|x|
 * >= 512, infinities, NaN) calls exp itself. Checked against the running libm before use. */
static const uint64_t expd_tab[256] = {
    0x0000000000000000, 0x3ff0000000000000, 0x3c9b3b4f1a88bf6e, 0x3feff63da9fb3335,
    0xbc7160139cd8dc5d, 0x3fefec9a3e778061, 0xbc905e7a108766d1, 0x3fefe315e86e7f85,
    0x3c8cd2523567f613, 0x3fefd9b0d3158574, 0xbc8bce8023f98efa, 0x3fefd06b29ddf6de,
    0x3c60f74e61e6c861, 0x3fefc74518759bc8, 0x3c90a3e45b33d399, 0x3fefbe3ecac6f383,
    0x3c979aa65d837b6d, 0x3fefb5586cf9890f, 0x3c8eb51a92fdeffc, 0x3fefac922b7247f7,
    0x3c3ebe3d702f9cd1, 0x3fefa3ec32d3d1a2, 0xbc6a033489906e0b, 0x3fef9b66affed31b,
    0xbc9556522a2fbd0e, 0x3fef9301d0125b51, 0xbc5080ef8c4eea55, 0x3fef8abdc06c31cc,
    0xbc91c923b9d5f416, 0x3fef829aaea92de0, 0x3c80d3e3e95c55af, 0x3fef7a98c8a58e51,
    0xbc801b15eaa59348, 0x3fef72b83c7d517b, 0xbc8f1ff055de323d, 0x3fef6af9388c8dea,
    0x3c8b898c3f1353bf, 0x3fef635beb6fcb75, 0xbc96d99c7611eb26, 0x3fef5be084045cd4,
    0x3c9aecf73e3a2f60, 0x3fef54873168b9aa, 0xbc8fe782cb86389d, 0x3fef4d5022fcd91d,
    0x3c8a6f4144a6c38d, 0x3fef463b88628cd6, 0x3c807a05b0e4047d, 0x3fef3f49917ddc96,
    0x3c968efde3a8a894, 0x3fef387a6e756238, 0x3c875e18f274487d, 0x3fef31ce4fb2a63f,
    0x3c80472b981fe7f2, 0x3fef2b4565e27cdd, 0xbc96b87b3f71085e, 0x3fef24dfe1f56381,
    0x3c82f7e16d09ab31, 0x3fef1e9df51fdee1, 0xbc3d219b1a6fbffa, 0x3fef187fd0dad990,
    0x3c8b3782720c0ab4, 0x3fef1285a6e4030b, 0x3c6e149289cecb8f, 0x3fef0cafa93e2f56,
    0x3c834d754db0abb6, 0x3fef06fe0a31b715, 0x3c864201e2ac744c, 0x3fef0170fc4cd831,
    0x3c8fdd395dd3f84a, 0x3feefc08b26416ff, 0xbc86a3803b8e5b04, 0x3feef6c55f929ff1,
    0xbc924aedcc4b5068, 0x3feef1a7373aa9cb, 0xbc9907f81b512d8e, 0x3feeecae6d05d866,
    0xbc71d1e83e9436d2, 0x3feee7db34e59ff7, 0xbc991919b3ce1b15, 0x3feee32dc313a8e5,
    0x3c859f48a72a4c6d, 0x3feedea64c123422, 0xbc9312607a28698a, 0x3feeda4504ac801c,
    0xbc58a78f4817895b, 0x3feed60a21f72e2a, 0xbc7c2c9b67499a1b, 0x3feed1f5d950a897,
    0x3c4363ed60c2ac11, 0x3feece086061892d, 0x3c9666093b0664ef, 0x3feeca41ed1d0057,
    0x3c6ecce1daa10379, 0x3feec6a2b5c13cd0, 0x3c93ff8e3f0f1230, 0x3feec32af0d7d3de,
    0x3c7690cebb7aafb0, 0x3feebfdad5362a27, 0x3c931dbdeb54e077, 0x3feebcb299fddd0d,
    0xbc8f94340071a38e, 0x3feeb9b2769d2ca7, 0xbc87deccdc93a349, 0x3feeb6daa2cf6642,
    0xbc78dec6bd0f385f, 0x3feeb42b569d4f82, 0xbc861246ec7b5cf6, 0x3feeb1a4ca5d920f,
    0x3c93350518fdd78e, 0x3feeaf4736b527da, 0x3c7b98b72f8a9b05, 0x3feead12d497c7fd,
    0x3c9063e1e21c5409, 0x3feeab07dd485429, 0x3c34c7855019c6ea, 0x3feea9268a5946b7,
    0x3c9432e62b64c035, 0x3feea76f15ad2148, 0xbc8ce44a6199769f, 0x3feea5e1b976dc09,
    0xbc8c33c53bef4da8, 0x3feea47eb03a5585, 0xbc845378892be9ae, 0x3feea34634ccc320,
    0xbc93cedd78565858, 0x3feea23882552225, 0x3c5710aa807e1964, 0x3feea155d44ca973,
    0xbc93b3efbf5e2228, 0x3feea09e667f3bcd, 0xbc6a12ad8734b982, 0x3feea012750bdabf,
    0xbc6367efb86da9ee, 0x3fee9fb23c651a2f, 0xbc80dc3d54e08851, 0x3fee9f7df9519484,
    0xbc781f647e5a3ecf, 0x3fee9f75e8ec5f74, 0xbc86ee4ac08b7db0, 0x3fee9f9a48a58174,
    0xbc8619321e55e68a, 0x3fee9feb564267c9, 0x3c909ccb5e09d4d3, 0x3feea0694fde5d3f,
    0xbc7b32dcb94da51d, 0x3feea11473eb0187, 0x3c94ecfd5467c06b, 0x3feea1ed0130c132,
    0x3c65ebe1abd66c55, 0x3feea2f336cf4e62, 0xbc88a1c52fb3cf42, 0x3feea427543e1a12,
    0xbc9369b6f13b3734, 0x3feea589994cce13, 0xbc805e843a19ff1e, 0x3feea71a4623c7ad,
    0xbc94d450d872576e, 0x3feea8d99b4492ed, 0x3c90ad675b0e8a00, 0x3feeaac7d98a6699,
    0x3c8db72fc1f0eab4, 0x3feeace5422aa0db, 0xbc65b6609cc5e7ff, 0x3feeaf3216b5448c,
    0x3c7bf68359f35f44, 0x3feeb1ae99157736, 0xbc93091fa71e3d83, 0x3feeb45b0b91ffc6,
    0xbc5da9b88b6c1e29, 0x3feeb737b0cdc5e5, 0xbc6c23f97c90b959, 0x3feeba44cbc8520f,
    0xbc92434322f4f9aa, 0x3feebd829fde4e50, 0xbc85ca6cd7668e4b, 0x3feec0f170ca07ba,
    0x3c71affc2b91ce27, 0x3feec49182a3f090, 0x3c6dd235e10a73bb, 0x3feec86319e32323,
    0xbc87c50422622263, 0x3feecc667b5de565, 0x3c8b1c86e3e231d5, 0x3feed09bec4a2d33,
    0xbc91bbd1d3bcbb15, 0x3feed503b23e255d, 0x3c90cc319cee31d2, 0x3feed99e1330b358,
    0x3c8469846e735ab3, 0x3feede6b5579fdbf, 0xbc82dfcd978e9db4, 0x3feee36bbfd3f37a,
    0x3c8c1a7792cb3387, 0x3feee89f995ad3ad, 0xbc907b8f4ad1d9fa, 0x3feeee07298db666,
    0xbc55c3d956dcaeba, 0x3feef3a2b84f15fb, 0xbc90a40e3da6f640, 0x3feef9728de5593a,
    0xbc68d6f438ad9334, 0x3feeff76f2fb5e47, 0xbc91eee26b588a35, 0x3fef05b030a1064a,
    0x3c74ffd70a5fddcd, 0x3fef0c1e904bc1d2, 0xbc91bdfbfa9298ac, 0x3fef12c25bd71e09,
    0x3c736eae30af0cb3, 0x3fef199bdd85529c, 0x3c8ee3325c9ffd94, 0x3fef20ab5fffd07a,
    0x3c84e08fd10959ac, 0x3fef27f12e57d14b, 0x3c63cdaf384e1a67, 0x3fef2f6d9406e7b5,
    0x3c676b2c6c921968, 0x3fef3720dcef9069, 0xbc808a1883ccb5d2, 0x3fef3f0b555dc3fa,
    0xbc8fad5d3ffffa6f, 0x3fef472d4a07897c, 0xbc900dae3875a949, 0x3fef4f87080d89f2,
    0x3c74a385a63d07a7, 0x3fef5818dcfba487, 0xbc82919e2040220f, 0x3fef60e316c98398,
    0x3c8e5a50d5c192ac, 0x3fef69e603db3285, 0x3c843a59ac016b4b, 0x3fef7321f301b460,
    0xbc82d52107b43e1f, 0x3fef7c97337b9b5f, 0xbc892ab93b470dc9, 0x3fef864614f5a129,
    0x3c74b604603a88d3, 0x3fef902ee78b3ff6, 0x3c83c5ec519d7271, 0x3fef9a51fbc74c83,
    0xbc8ff7128fd391f0, 0x3fefa4afa2a490da, 0xbc8dae98e223747d, 0x3fefaf482d8e67f1,
    0x3c8ec3bc41aa2008, 0x3fefba1bee615a27, 0x3c842b94c3a9eb32, 0x3fefc52b376bba97,
    0x3c8a64a931d185ee, 0x3fefd0765b6e4540, 0xbc8e37bae43be3ed, 0x3fefdbfdad9cbe14,
    0x3c77893b4d91cd9d, 0x3fefe7c1819e90d8, 0x3c5305c14160cc89, 0x3feff3c22b8f71f1,
};

/* exp of 8 lanes; *slow gets the lanes that must call exp instead */
AI __m512d expd8(__m512d x, __mmask8 *slow) {
    __m512i top = _mm512_and_si512(_mm512_srli_epi64(_mm512_castpd_si512(x), 52), _mm512_set1_epi64(0x7ff));
    __mmask8 fast = _mm512_cmp_epu64_mask(_mm512_sub_epi64(top, _mm512_set1_epi64(0x3c9)), _mm512_set1_epi64(0x3e),
                                          _MM_CMPINT_LE);
    __mmask8 tiny = _mm512_cmp_epu64_mask(top, _mm512_set1_epi64(0x3c9), _MM_CMPINT_LT);
    *slow = (__mmask8)~(fast | tiny);
    const __m512d shift = _mm512_set1_pd(0x1.8p52);
    __m512d kd = _mm512_fmadd_pd(x, _mm512_set1_pd(0x1.71547652b82fep+7), shift);
    __m512i ki = _mm512_castpd_si512(kd);
    kd = _mm512_sub_pd(kd, shift);
    __m512d r = _mm512_fmadd_pd(kd, _mm512_set1_pd(-0x1.62e42fefa0000p-8), x);
    r = _mm512_fmadd_pd(kd, _mm512_set1_pd(-0x1.cf79abc9e3b3ap-47), r);
    __m512i i = _mm512_slli_epi64(_mm512_and_si512(ki, _mm512_set1_epi64(127)), 1);
    __m512d tail = _mm512_i64gather_pd(i, (const double *)expd_tab, 8);
    __m512i sbits = _mm512_i64gather_epi64(i, (const long long *)(expd_tab + 1), 8);
    __m512d scale = _mm512_castsi512_pd(_mm512_add_epi64(sbits, _mm512_slli_epi64(ki, 45)));
    __m512d p23 = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.555555555543cp-3), _mm512_set1_pd(0x1.ffffffffffdbdp-2));
    __m512d tmp = _mm512_add_pd(r, tail);
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d p45 = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.1111167a4d017p-7), _mm512_set1_pd(0x1.55555cf172b91p-5));
    tmp = _mm512_fmadd_pd(p23, r2, tmp);
    tmp = _mm512_fmadd_pd(_mm512_mul_pd(r2, r2), p45, tmp);
    __m512d y = _mm512_fmadd_pd(scale, tmp, scale);
    return _mm512_mask_blend_pd(tiny, y, _mm512_add_pd(x, _mm512_set1_pd(1.0)));
}

/* y[i] = exp(((double)x[i] - m) * s) for 8 values, the lanes in keep */
AI void exp_scaled8(double *y, const float *x, float m, double s, __mmask8 keep) {
    __m512d d = _mm512_mul_pd(_mm512_sub_pd(_mm512_cvtps_pd(_mm256_maskz_loadu_ps(keep, x)),
                                            _mm512_set1_pd((double)m)),
                              _mm512_set1_pd(s));
    __mmask8 slow;
    __m512d e = expd8(d, &slow);
    _mm512_mask_storeu_pd(y, keep, e);
    slow &= keep;
    if (slow) {
        double dl[8];
        _mm512_storeu_pd(dl, d);
        for (; slow; slow &= (__mmask8)(slow - 1)) {
            int l = __builtin_ctz(slow);
            y[l] = exp(dl[l]);
        }
    }
}

static void exp_scaled_avx(double *y, const float *x, int n, float m, double s) {
    int i = 0;
    for (; i + 8 <= n; i += 8) exp_scaled8(y + i, x + i, m, s, 0xff);
    if (i < n) exp_scaled8(y + i, x + i, m, s, (__mmask8)((1u << (n - i)) - 1));
}

/* 1 when exp_sub_avx gives expf's bits, and exp_scaled_avx exp's, on a sample: every 2^-7
 * step over [-110, 95] (all of their paths and their edges' neighbourhoods), the edges
 * themselves, their neighbours, and the special values. glibc 2.28 and later on an FMA CPU
 * does; another libm may not. */
static int exp_agrees(void) {
    enum { N = 205 * 128 + 32 };
    float *a = malloc(2 * N * sizeof *a);
    if (!a) return 0;
    int n = 0;
    for (int i = 0; i < 205 * 128; i++) a[n++] = -110.0f + (float)i / 128.0f;
    const float edge[] = {EXP_FAST_LO, EXP_FAST_HI, EXP_ZERO_LO, -88.0f, 88.0f};
    for (int i = 0; i < 5; i++)
        a[n++] = edge[i], a[n++] = nextafterf(edge[i], -INFINITY), a[n++] = nextafterf(edge[i], INFINITY);
    a[n++] = INFINITY, a[n++] = -INFINITY, a[n++] = NAN, a[n++] = 0.0f, a[n++] = -0.0f, a[n++] = 1e-30f;
    memcpy(a + N, a, (size_t)n * sizeof *a);
    exp_sub_avx(a, n, 0.0f);
    int ok = 1;
    for (int i = 0; i < n && ok; i++) {
        float e = expf(a[N + i]);
        ok = memcmp(&e, a + i, sizeof e) == 0;
    }
    /* exp_scaled_avx on the same values times 1 (its fast path), 7.5 (past 512 too), 1e-17
     * (around 2^-54) and 1e-20 (below) */
    double *y = malloc((size_t)n * sizeof *y), scale[] = {1.0, 7.5, 1e-17, 1e-20};
    ok = ok && y;
    for (int k = 0; k < 4 && ok; k++) {
        exp_scaled_avx(y, a + N, n, 0.0f, scale[k]);
        for (int i = 0; i < n && ok; i++) {
            double e = exp((double)a[N + i] * scale[k]); /* m = 0 */
            ok = memcmp(&e, y + i, sizeof e) == 0;
        }
    }
    free(y);
    free(a);
    return ok;
}

static pthread_once_t exp_once = PTHREAD_ONCE_INIT;
static int exp_agreed;
static void exp_check(void) { exp_agreed = exp_agrees(); }

/* Rows of x ahead that dot_tile prefetches, line by line as it loads its own: the rows of a
 * cache block are 2.3 KB apart on genesis-5b, and its blocks of 16 lie where the pool put them,
 * so the hardware prefetcher starts late on each. genesis-5b q4k decode after 1024 tokens:
 * attention 10.6-11.5 ms a step against 12.2-12.5 without (AMD EPYC Zen 4, alternated; 4 rows
 * ahead 11.1; measured on no other CPU). A hint past the last row is a hint, not a load. */
#define DOT_PF_ROWS 8

/* _mm512_reduce_add_ps of 16 accumulators at once, acc[i][r] to lane 4 i + r: its halving tree
 * (lanes l and l + 8, then l and l + 4, l and l + 2, l and l + 1), each level one add for two
 * accumulators' halves side by side, not 4 adds and 4 shuffles for each. Each lane adds only
 * its own accumulator's values, the same pairs at each level (an add is the same bits either
 * way round), so each result is _mm512_reduce_add_ps's: 15 adds and 30 shuffles for 16, where
 * a short dot (a prompt's keys, 96 wide on genesis-1b: 6 fused steps) spent more on its own
 * reduction than on its products. */
AI __m512 reduce16(__m512 acc[4][4]) {
    __m512 c[8], e[4], f[2];
    UNROLL
    for (int j = 0; j < 8; j++) { /* lanes l, l + 8: [a | b], 8 lanes each (numbered L = 4 r + i) */
        __m512 a = acc[2 * j % 4][2 * j / 4], b = acc[(2 * j + 1) % 4][(2 * j + 1) / 4];
        c[j] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    UNROLL
    for (int m = 0; m < 4; m++) /* l, l + 4: four accumulators of 4 lanes, in 128-bit blocks */
        e[m] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * m], c[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(c[2 * m], c[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    UNROLL
    for (int m = 0; m < 2; m++) /* l, l + 2 within each block: two lanes each */
        f[m] = _mm512_add_ps(_mm512_shuffle_ps(e[2 * m], e[2 * m + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(e[2 * m], e[2 * m + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* l, l + 1: block b holds e[0..3]'s block b: accumulators L = b, 4 + b, 8 + b, 12 + b, which
     * are acc[b][0..3] */
    return _mm512_add_ps(_mm512_shuffle_ps(f[0], f[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(f[0], f[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/* dot_avx of Q queries (q, ldq apart) with R rows of x at once (Q, R <= 4): each pair's
 * accumulator takes the same fused steps, k ascending, the tail masked, and the same reduction,
 * so each result is dot_avx's bits; each vector of q and of x is loaded once for the tile */
AI void dot_tile(float *out, size_t ldo, const float *q, size_t ldq, const float *x, size_t ldx, int n, int Q,
                 int R) {
    __m512 acc[4][4], xv[4];
    UNROLL
    for (int i = 0; i < 4; i++)
        UNROLL
        for (int r = 0; r < 4; r++) acc[i][r] = _mm512_setzero_ps(); /* the unused reduced too */
    for (int k = 0; k < n; k += 16) {
        __mmask16 m = n - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - k)) - 1);
        UNROLL
        for (int r = 0; r < R; r++) {
            xv[r] = _mm512_maskz_loadu_ps(m, x + (size_t)r * ldx + k);
            /* by address arithmetic: the row may lie past the end of x */
            _mm_prefetch((const char *)((uintptr_t)(x + (size_t)r * ldx + k) + DOT_PF_ROWS * ldx * sizeof(float)), _MM_HINT_T0);
        }
        UNROLL
        for (int i = 0; i < Q; i++) {
            __m512 qv = _mm512_maskz_loadu_ps(m, q + (size_t)i * ldq + k);
            UNROLL
            for (int r = 0; r < R; r++) acc[i][r] = _mm512_fmadd_ps(qv, xv[r], acc[i][r]);
        }
    }
    if (Q * R <= 2) { /* one or two: their own trees cost less */
        UNROLL
        for (int i = 0; i < Q; i++)
            UNROLL
            for (int r = 0; r < R; r++) out[(size_t)i * ldo + r] = _mm512_reduce_add_ps(acc[i][r]);
        return;
    }
    float s[16]; /* query i's R results at 4 i */
    _mm512_storeu_ps(s, reduce16(acc));
    UNROLL
    for (int i = 0; i < Q; i++) memcpy(out + (size_t)i * ldo, s + 4 * i, (size_t)R * sizeof *s);
}

static void dot_rows_avx(float *out, size_t ldo, const float *q, size_t ldq, int nq, const float *x, size_t ldx,
                         int rows, int n) {
    for (int i = 0; i < nq; i += 4)
        for (int r = 0; r < rows; r += 4) {
            int Q = DH_MIN(4, nq - i), R = DH_MIN(4, rows - r);
            float *o = out + (size_t)i * ldo + r;
            const float *qi = q + (size_t)i * ldq, *xr = x + (size_t)r * ldx;
            switch ((Q - 1) * 4 + R - 1) {
#define DT_CASE(QQ, RR)                                                                          \
    case (QQ - 1) * 4 + RR - 1: dot_tile(o, ldo, qi, ldq, xr, ldx, n, QQ, RR); break;
                DT_CASE(1, 1) DT_CASE(1, 2) DT_CASE(1, 3) DT_CASE(1, 4) DT_CASE(2, 1) DT_CASE(2, 2)
                DT_CASE(2, 3) DT_CASE(2, 4) DT_CASE(3, 1) DT_CASE(3, 2) DT_CASE(3, 3) DT_CASE(3, 4)
                DT_CASE(4, 1) DT_CASE(4, 2) DT_CASE(4, 3) DT_CASE(4, 4)
#undef DT_CASE
            default: DH_ASSERT(0);
            }
        }
}

/* axpy_avx for rows 0, 1, ... in order on NY outputs (y, ldy apart; weights a, lda apart) of V
 * vectors each (NY * V <= 16, the last vector masked by m) held in registers: NY * V
 * independent chains of fused steps, rows ascending; a row's vectors are loaded once for all
 * NY */
AI void axpy_rows_v(float *y, size_t ldy, const float *a, size_t lda, const float *x, size_t ldx, int rows, int NY,
                    int V, __mmask16 m) {
    __m512 acc[16], xv[8];
    UNROLL
    for (int i = 0; i < NY; i++)
        UNROLL
        for (int u = 0; u < V; u++) acc[i * V + u] = _mm512_maskz_loadu_ps(u == V - 1 ? m : 0xFFFF, y + i * ldy + 16 * u);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        UNROLL
        for (int u = 0; u < V; u++) xv[u] = _mm512_maskz_loadu_ps(u == V - 1 ? m : 0xFFFF, xr + 16 * u);
        UNROLL
        for (int i = 0; i < NY; i++) {
            __m512 av = _mm512_set1_ps(a[i * lda + r]);
            UNROLL
            for (int u = 0; u < V; u++) acc[i * V + u] = _mm512_fmadd_ps(av, xv[u], acc[i * V + u]);
        }
    }
    UNROLL
    for (int i = 0; i < NY; i++)
        UNROLL
        for (int u = 0; u < V; u++) _mm512_mask_storeu_ps(y + i * ldy + 16 * u, u == V - 1 ? m : 0xFFFF, acc[i * V + u]);
}

/* axpy_avx for rows 0, 1, ... in order: each element takes the same fused steps in the same
 * order, so the bits of the separate calls. One output at a time in blocks of up to 128
 * elements held in registers; a width under 128 (genesis-1b's 64-wide values) is one register
 * block too, not a vector at a time: one vector's chain of fused steps waits on each step's
 * latency, and on AMD EPYC Zen 4 that put 26% of genesis-1b q4k's pp512 samples (perf) in this
 * function. Two to four outputs go together in blocks of 64 elements, each row of x read once
 * for them (a run of heads over the same latents). */
static void axpy_rows_avx(float *y, size_t ldy, const float *a, size_t lda, int ny, const float *x, size_t ldx,
                          int rows, int n) {
    for (int i0 = 0; i0 < ny; i0 += 4) {
        int NY = DH_MIN(4, ny - i0), wb = NY == 1 ? 128 : 64;
        float *yi = y + i0 * ldy;
        const float *ai = a + i0 * lda;
        for (int i = 0; i < n; i += wb) {
            int left = DH_MIN(wb, n - i);
            __mmask16 m = (__mmask16)(left % 16 ? (1u << left % 16) - 1 : 0xFFFFu);
            switch ((NY - 1) * 8 + (left + 15) / 16 - 1) {
#define AXR_CASE(NN, V)                                                                          \
    case (NN - 1) * 8 + V - 1: axpy_rows_v(yi + i, ldy, ai, lda, x + i, ldx, rows, NN, V, m); break;
                AXR_CASE(1, 1) AXR_CASE(1, 2) AXR_CASE(1, 3) AXR_CASE(1, 4) AXR_CASE(1, 5) AXR_CASE(1, 6)
                AXR_CASE(1, 7) AXR_CASE(1, 8) AXR_CASE(2, 1) AXR_CASE(2, 2) AXR_CASE(2, 3) AXR_CASE(2, 4)
                AXR_CASE(3, 1) AXR_CASE(3, 2) AXR_CASE(3, 3) AXR_CASE(3, 4) AXR_CASE(4, 1) AXR_CASE(4, 2)
                AXR_CASE(4, 3) AXR_CASE(4, 4)
#undef AXR_CASE
            default: DH_ASSERT(0);
            }
        }
    }
}

/* ---- q8 and q4 weights: int8 products with VNNI ----
 *
 * vpdpbusd multiplies unsigned bytes by signed bytes. The weights are made the unsigned side
 * (q8: q + 128, an exact flip of the top bit; q4: the stored nibble, which is value + 8) and
 * the activations stay signed; the offset is taken back exactly in the integer sum, whose
 * accumulator starts at -128 (q8) or -8 (q4) times the block's activation sum. Each output
 * lane is one weight row, so 16 rows are computed at once with the activation broadcast; the
 * weights of a block are transposed into that layout (lane i of vector g = bytes 4g..4g+3 of
 * row i) in registers for small T, or once into a packed panel in scratch for large T.
 * Per output element the float work is, for b = 0 .. nb-1 in order,
 *     acc = fma((float)s_b, d_x[b] * d_w[b], acc)       (acc starting at +0)
 * with s_b the exact integer dot of block b, whichever path runs. */
#pragma GCC push_options
#pragma GCC target("avx512vnni")

#define QSMALL_T 4 /* up to this many rows: transpose in registers, no packing (measured best) */
#define QTCHUNK_BYTES (512 << 10) /* activation rows a pass of the packed path keeps in L2 */
#define QTILE_R 5      /* activation rows per register tile of the packed path (5 x 4 groups:
                          20 integer accumulators; the float ones spill, touched once a block) */

/* out[b] = mult * (sum of the 32 int8 of block b), b < nb. Sixteen blocks at a time: vpdpbusd
 * with ones gives 4-byte sums, and three rounds of pairwise permute-and-add gather each block's
 * eight partial sums into one lane. */
static void q_block_sums(const int8_t *q, int nb, int32_t mult, int32_t *out) {
    const __m512i ones = _mm512_set1_epi8(1);
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
    for (int b0 = 0; b0 < nb; b0 += 16) {
        int n = DH_MIN(16, nb - b0);
        __m512i v[8];
        UNROLL
        for (int i = 0; i < 8; i++) {
            int left = n - 2 * i;
            v[i] = _mm512_setzero_si512();
            if (left <= 0) continue;
            __mmask64 m = left >= 2 ? ~(__mmask64)0 : (__mmask64)0xffffffffu;
            __m512i x = _mm512_maskz_loadu_epi8(m, q + (size_t)(b0 + 2 * i) * WT_QBLOCK);
            v[i] = _mm512_dpbusd_epi32(v[i], ones, x);
        }
        for (int w = 8; w > 1; w /= 2)
            for (int i = 0; i < w / 2; i++)
                v[i] = _mm512_add_epi32(_mm512_permutex2var_epi32(v[2 * i], ie, v[2 * i + 1]),
                                        _mm512_permutex2var_epi32(v[2 * i], io, v[2 * i + 1]));
        __m512i s = _mm512_mullo_epi32(v[0], _mm512_set1_epi32(mult));
        _mm512_mask_storeu_epi32(out + b0, (__mmask16)((1u << n) - 1), s);
    }
}

/* 16 weight rows of one q8/q4 matrix, one a lane: lane i's row starts i * stride bytes after
 * lane 0's (all 16 readable: see q_src), and its output goes i * ystep floats after lane 0's. */
typedef struct qrows {
    size_t stride;  /* bytes from one lane's row to the next's */
    __m512i goff;   /* i * stride as int32, for the scale gather */
    __m512i yidx;   /* i * ystep, for the scattered store when ystep > 1 */
    int ystep;      /* output distance of lanes: 1 (contiguous rows) or 4 (see matmul_q) */
    __mmask16 keep; /* lanes that hold a row of the range: the first n */
} qrows;

static void qrows_init(qrows *r, size_t stride, int ystep, int n) {
    DH_ASSERT(stride <= INT32_MAX / 15); /* the gather's offsets are int32 */
    int32_t o[16], yi[16];
    for (int i = 0; i < 16; i++) {
        o[i] = (int32_t)((size_t)i * stride);
        yi[i] = i * ystep;
    }
    r->stride = stride;
    r->goff = _mm512_loadu_si512(o);
    r->yidx = _mm512_loadu_si512(yi);
    r->ystep = ystep;
    r->keep = (__mmask16)((1u << n) - 1);
}

/* Where the 16 contiguous rows o .. o + 15 of W can be read: in place, or, when they run past
 * the end of the matrix, from tail (16 rows of scratch) holding the n = rows - o rows that exist
 * and zeros (their lanes are computed and never stored). */
static const uint8_t *q_src(const wmat *W, int o, size_t rb, uint8_t *tail) {
    const uint8_t *base = W->dtype == DT_Q4    ? (const uint8_t *)W->p.q4
                          : W->dtype == DT_Q4K ? W->p.q4k
                                               : (const uint8_t *)W->p.q8;
    if (o + 16 <= W->rows) return base + (size_t)o * rb;
    memcpy(tail, base + (size_t)o * rb, (size_t)(W->rows - o) * rb);
    memset(tail + (size_t)(W->rows - o) * rb, 0, (size_t)(16 - (W->rows - o)) * rb);
    return tail;
}

/* The scales of one block of the 16 rows (p = the block's address in lane 0's row), in f32. */
AI __m512 q_scales(const uint8_t *p, const qrows *r) {
    __m512i s = _mm512_i32gather_epi32(r->goff, p, 1); /* the f16 scale is the first 2 bytes */
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(s));
}

/* w[g] = bytes 4g..4g+3 of one q8 block of the 16 rows, as unsigned q + 128: t16x8's
 * transpose of the 32 bytes of q in each row, the sign bits flipped. */
AI void q8_rows(const uint8_t *p, const qrows *r, __m512i w[8]) {
    t16x8((const char *)p + offsetof(wt_q8_block, q), r->stride, 16, 0, 0, w);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    UNROLL
    for (int j = 0; j < 8; j++) w[j] = _mm512_xor_si512(w[j], flip);
}

/* 4 x 4 dword transpose within each 128-bit lane: lane L of v[m] holds 4 dwords of row 4L + m;
 * lane L of w[j] gets dword j of rows 4L .. 4L + 3. */
AI void q_transpose4(const __m512i v[4], __m512i *w) {
    __m512i u0 = _mm512_unpacklo_epi32(v[0], v[1]), u1 = _mm512_unpackhi_epi32(v[0], v[1]);
    __m512i u2 = _mm512_unpacklo_epi32(v[2], v[3]), u3 = _mm512_unpackhi_epi32(v[2], v[3]);
    w[0] = _mm512_unpacklo_epi64(u0, u2);
    w[1] = _mm512_unpackhi_epi64(u0, u2);
    w[2] = _mm512_unpacklo_epi64(u1, u3);
    w[3] = _mm512_unpackhi_epi64(u1, u3);
}

/* Same for q4 (nib_rows: the 16 bytes of nibbles of each row at q + i * S; q4_rows: of a
 * wt_q4_block): the nibbles (hi16: w[4..7] hold 16 times them, one instruction fewer each;
 * the caller divides that sum by 16, exactly). The packed bytes are transposed first (half the
 * shuffles of transposing the nibbles): dword j of a row holds elements 4j..4j+3 in its low
 * nibbles and 16+4j..16+4j+3 in its high ones, so it gives w[j] and w[4 + j]. */
/* the 8 nibble vectors from the 4 transposed byte vectors t (lane i of t[j] = bytes 4j..4j+3
 * of row i) */
AI void nib_split(const __m512i t[4], __m512i w[8], int hi16) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    UNROLL
    for (int j = 0; j < 4; j++) {
        w[j] = _mm512_and_si512(t[j], m4);
        w[4 + j] = hi16 ? _mm512_andnot_si512(m4, t[j]) /* 16 * nibble */
                        : _mm512_and_si512(_mm512_srli_epi16(t[j], 4), m4);
    }
}

AI void nib_rows(const uint8_t *q, size_t S, __m512i w[8], int hi16) {
    __m512i x[4], t[4];
    UNROLL
    for (int m = 0; m < 4; m++) {
        x[m] = _mm512_castsi128_si512(_mm_loadu_si128((const void *)(q + m * S)));
        UNROLL
        for (int l = 1; l < 4; l++) { /* lane l <- row 4l + m */
            __m128i row = _mm_loadu_si128((const void *)(q + (4 * l + m) * S));
            x[m] = _mm512_mask_broadcast_i32x4(x[m], (__mmask16)(0xf << 4 * l), row);
        }
    }
    q_transpose4(x, t);
    nib_split(t, w, hi16);
}

/* nib_rows for 16 rows packed as WT_G16 (q4k): the transposed bytes are stored as they are */
AI void nib_g16(const uint8_t *q, __m512i w[8], int hi16) {
    __m512i t[4];
    UNROLL
    for (int j = 0; j < 4; j++) t[j] = _mm512_loadu_si512(q + 64 * j);
    nib_split(t, w, hi16);
}

AI void q4_rows(const uint8_t *p, const qrows *r, __m512i w[8], int hi16) {
    nib_rows(p + offsetof(wt_q4_block, q), r->stride, w, hi16);
}

/* *v, or the environment's `name` (bytes, 0 to max) or dflt when *v is still -1: a setting read
 * once (kern_avx512() reads them all before any thread uses them) */
static int env_bytes(int *v, const char *name, int dflt, int max) {
    if (*v < 0) {
        const char *e = getenv(name);
        *v = e ? DH_MAX(0, DH_MIN(atoi(e), max)) : dflt;
    }
    return *v;
}

/* How far ahead (bytes of each row) the q8/q4/q4k decode kernels prefetch, 0 for not at all:
 * a block of 64 rows is read as 16 interleaved streams a register (rows 4 apart), more than
 * the hardware prefetchers follow well. DH_KERN_PREFETCH=BYTES sets it (0 turns it off), for
 * tuning on a new CPU; read once. */
#define QPF_DEFAULT 512 /* measured 512-4096 on Zen 5 (bench_kern, q8 cold): 512 best, 2-2.5x none */
static int q_prefetch(void) {
    static int pf = -1;
    return env_bytes(&pf, "DH_KERN_PREFETCH", QPF_DEFAULT, 1 << 16);
}

/* How far ahead (bytes) the q8 and q4k decode kernels prefetch in the one stream of a WT_G16
 * matrix, 0 for not at all. On Zen 5 (AMD EPYC), without it the loads wait on memory (perf: the
 * time sits on the instructions after them): one thread computing on data in L2 reads a q8
 * expert at 96 GB/s, from memory at 20-25 where the plain reader gets 29, so computing and
 * loading barely overlap. q4k gained first (tg64 alternated 3 rounds: genesis-1b q4k 1.52x and
 * -5b q4k 1.58x at 8192). q8 did not while two threads took a product's tasks in turn (0.90x
 * genesis-1b at 8192): each thread's stream broke at every task. Since each thread reads one
 * contiguous range (threadpool.c), q8 gains too: switching at every step, genesis-5b q8's step
 * took 0.69-1.00 (median 0.84) of the time and genesis-1b q8's 0.75-1.02 (median 0.90), over
 * eight runs each; the busier the machine, the more. The default, KERN_G16_PREFETCH (kern.h),
 * was the best of 0-8192 for q4k in bench_kern --decode on Zen 5; for q8 2-8 KiB were alike
 * and 32 KiB worse. (Those q8 figures were taken while q_small also ran the row-major path's
 * prefetches on a WT_G16 group, a mistake that made q8 decode 1.3-1.8x slower on Zen 4; without
 * them, five rounds on Zen 4 looked alike.) On AMD family 25 (Zen 4) the hardware prefetcher
 * does better alone: q8 decode without the prefetch was faster in 40 of 44 alternated pairs of
 * runs (2-13% in a set's median), q4k the same either way (docs/performance.md, "q8 without
 * the software prefetch"), so there it is off by default; other CPUs keep KERN_G16_PREFETCH.
 * DH_KERN_PREFETCH_G16=BYTES sets it (0 turns it off), for tuning on a new CPU; read once. */
static int q_prefetch_g16(void) {
    static int pf = -1;
    if (pf < 0) { /* cpuid once: in a VM it traps to the host */
        unsigned fam, model;
        cpu_family_model(&fam, &model);
        env_bytes(&pf, "DH_KERN_PREFETCH_G16", cpu_is_amd() && fam == 25 ? 0 : KERN_G16_PREFETCH, 1 << 20);
    }
    return pf;
}

/* 4 activation bytes broadcast to the 16 lanes */
AI __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* Small T: R <= 4 activation rows (cols apart; y rows ldy apart) against the 16 weight rows
 * of rw starting at p, transposing each block in registers. */
AI void q_small(float *y, int ldy, const int8_t *xq, const float *xd, const int32_t *corr, int nb,
                const uint8_t *p, size_t bs, const qrows *rw, int q4, int g16, int R, int pf) {
    __m512 acc[4];
    size_t cols = (size_t)nb * WT_QBLOCK;
    UNROLL
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++, p += bs) {
        __m512i w[8];
        __m512 dw;
        if (g16) { /* WT_G16: the 16 scales, then the 8 vectors as q8_rows makes them */
            if (pf) /* the group's one stream: the lines of a block, pf bytes on */
                UNROLL
                for (int k = 0; k < 9; k++) _mm_prefetch((const char *)p + pf + 64 * k, _MM_HINT_T0);
            dw = _mm512_cvtph_ps(_mm256_loadu_si256((const void *)p));
            UNROLL
            for (int g = 0; g < 8; g++) w[g] = _mm512_loadu_si512(p + 2 * WT_G16_ROWS + 64 * g);
        } else {
            if (pf && (b & (q4 ? 3 : 1)) == 0) /* rows apart: a line ahead in each row every 68
                                                  (q8) or 72 (q4) bytes of it */
                UNROLL
                for (int i = 0; i < 16; i++) _mm_prefetch((const char *)p + pf + i * rw->stride, _MM_HINT_T0);
            if (q4)
                q4_rows(p, rw, w, 1);
            else
                q8_rows(p, rw, w);
            dw = q_scales(p, rw);
        }
        UNROLL
        for (int r = 0; r < R; r++) {
            const int8_t *xr = xq + r * cols + (size_t)b * WT_QBLOCK;
            /* two chains (integer sums are exact in any order): q8 even and odd groups; q4 the
             * low nibbles and 16 times the high ones, divided exactly by 16 at the end */
            __m512i s0 = _mm512_set1_epi32(corr[(size_t)r * nb + b]), s1 = _mm512_setzero_si512();
            UNROLL
            for (int g = 0; g < 4; g++) {
                int g0 = q4 ? g : 2 * g, g1 = q4 ? g + 4 : 2 * g + 1;
                s0 = _mm512_dpbusd_epi32(s0, w[g0], bcast4(xr + 4 * g0));
                s1 = _mm512_dpbusd_epi32(s1, w[g1], bcast4(xr + 4 * g1));
            }
            if (q4) s1 = _mm512_srai_epi32(s1, 4);
            __m512 sc = _mm512_mul_ps(_mm512_set1_ps(xd[(size_t)r * nb + b]), dw);
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), sc, acc[r]);
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        store_lanes(y + (size_t)r * ldy, rw->keep, rw->ystep, rw->yidx, acc[r]);
}

static void q_small_any(float *y, int ldy, const int8_t *xq, const float *xd, const int32_t *corr,
                        int nb, const uint8_t *p, size_t bs, const qrows *rw, int q4, int g16, int R, int pf) {
#define QS_CASE(RR)                                                                              \
    case RR:                                                                                     \
        if (q4)                                                                                  \
            q_small(y, ldy, xq, xd, corr, nb, p, bs, rw, 1, 0, RR, pf);                          \
        else if (g16)                                                                            \
            q_small(y, ldy, xq, xd, corr, nb, p, bs, rw, 0, 1, RR, pf);                          \
        else                                                                                     \
            q_small(y, ldy, xq, xd, corr, nb, p, bs, rw, 0, 0, RR, pf);                          \
        break;
    switch (R) {
        QS_CASE(1) QS_CASE(2) QS_CASE(3) QS_CASE(4)
    default: DH_ASSERT(0);
    }
#undef QS_CASE
}

/* Large T: rows [o, o + n) (n <= 64) packed as pk[cg][b][g] (groups cg of 16 rows, vectors as
 * q8_rows/q4_rows produce them) with their scales as sc[cg][b][16] floats. */
static void q_pack(const wmat *W, int o, int n, __m512i *pk, float *sc, uint8_t *tail) {
    int nb = W->cols / WT_QBLOCK, q4 = W->dtype == DT_Q4;
    size_t bs = q4 ? sizeof(wt_q4_block) : sizeof(wt_q8_block), rb = bs * (size_t)nb;
    if (W->layout == WT_G16) { /* already in this order: copy, widening the scales */
        const uint8_t *p = (const uint8_t *)(W->p.q8 + (size_t)o * nb);
        for (int gb = 0; gb < n / 16 * nb; gb++, p += 16 * bs) {
            _mm512_store_ps(sc + (size_t)gb * 16, _mm512_cvtph_ps(_mm256_loadu_si256((const void *)p)));
            for (int g = 0; g < 8; g++)
                _mm512_store_si512(pk + (size_t)gb * 8 + g, _mm512_loadu_si512(p + 2 * WT_G16_ROWS + 64 * g));
        }
        return;
    }
    for (int cg = 0; cg * 16 < n; cg++) {
        qrows rw;
        qrows_init(&rw, rb, 1, DH_MIN(16, n - cg * 16));
        const uint8_t *p = q_src(W, o + cg * 16, rb, tail);
        for (int b = 0; b < nb; b++, p += bs) {
            __m512i w[8];
            if (q4)
                q4_rows(p, &rw, w, 0);
            else
                q8_rows(p, &rw, w);
            __m512i *dst = pk + ((size_t)cg * nb + b) * 8;
            for (int g = 0; g < 8; g++) _mm512_store_si512(dst + g, w[g]);
            _mm512_store_ps(sc + ((size_t)cg * nb + b) * 16, q_scales(p, &rw));
        }
    }
}

/* s[r][c] += the exact integer dots of one block: activation row r (xq + r * cols, 32 bytes)
 * with packed group c (8 vectors at pb + c * gs), for R rows by C groups of a register tile */
AI void q_tile_dots(__m512i s[QTILE_R][4], const __m512i *pb, size_t gs, const int8_t *xq, size_t cols, int R,
                    int C) {
    UNROLL
    for (int g = 0; g < 8; g++) {
        __m512i w[4];
        UNROLL
        for (int c = 0; c < C; c++) w[c] = _mm512_load_si512(pb + c * gs + g);
        UNROLL
        for (int r = 0; r < R; r++) {
            __m512i xv = bcast4(xq + r * cols + 4 * g);
            UNROLL
            for (int c = 0; c < C; c++) s[r][c] = _mm512_dpbusd_epi32(s[r][c], w[c], xv);
        }
    }
}

/* The lanes of a packed q4k group and sub-block: scale and min as int32, d and -dmin as f32. */
enum { KL_SC, KL_MN, KL_D, KL_NMIN, KL_COUNT };

/* An R x C register tile of the packed path: R activation rows against C groups of 16 packed
 * weight rows; the last group stores only the lanes of `keep`. q8/q4 (k4 = 0): `sums` are the
 * blocks' corrections (the integer sums start there), `scl` the scales sc[cg][b][16]; then
 * one fused multiply-add a block. q4k (k4 = 1): `sums` are the blocks' activation sums,
 * `scl` the lanes[cg][b][KL_COUNT]; the sums start at 0, then I and M and the two fused
 * multiply-adds of k_small, in its order. */
AI void q_tile(float *y, int ldy, const int8_t *xq, const float *xd, const int32_t *sums, int nb,
               const __m512i *pk, const void *scl, int R, int C, __mmask16 keep, int k4) {
    __m512 acc[QTILE_R][4];
    size_t cols = (size_t)nb * WT_QBLOCK, gs = (size_t)nb * 8, ls = (size_t)nb * KL_COUNT;
    const float *sc = scl;
    const __m512i *lanes = scl;
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512i s[QTILE_R][4];
        UNROLL
        for (int r = 0; r < R; r++)
            UNROLL
            for (int c = 0; c < C; c++)
                s[r][c] = k4 ? _mm512_setzero_si512() : _mm512_set1_epi32(sums[(size_t)r * nb + b]);
        q_tile_dots(s, pk + (size_t)b * 8, gs, xq + (size_t)b * WT_QBLOCK, cols, R, C);
        __m512 dw[4];
        if (!k4)
            UNROLL
            for (int c = 0; c < C; c++) dw[c] = _mm512_load_ps(sc + ((size_t)c * nb + b) * 16);
        UNROLL
        for (int r = 0; r < R; r++) {
            __m512 dx = _mm512_set1_ps(xd[(size_t)r * nb + b]);
            __m512i bs = _mm512_set1_epi32(sums[(size_t)r * nb + b]);
            UNROLL
            for (int c = 0; c < C; c++) {
                if (!k4) {
                    acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r][c]), _mm512_mul_ps(dx, dw[c]), acc[r][c]);
                    continue;
                }
                const __m512i *l = lanes + (size_t)b * KL_COUNT + c * ls;
                __m512i I = _mm512_mullo_epi32(s[r][c], _mm512_load_si512(l + KL_SC));
                __m512i M = _mm512_mullo_epi32(bs, _mm512_load_si512(l + KL_MN));
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I),
                                            _mm512_mul_ps(dx, _mm512_castsi512_ps(_mm512_load_si512(l + KL_D))), acc[r][c]);
                acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(M),
                                            _mm512_mul_ps(dx, _mm512_castsi512_ps(_mm512_load_si512(l + KL_NMIN))),
                                            acc[r][c]);
            }
        }
    }
    UNROLL
    for (int r = 0; r < R; r++)
        UNROLL
        for (int c = 0; c < C; c++)
            _mm512_mask_storeu_ps(y + (size_t)r * ldy + 16 * c, c == C - 1 ? keep : 0xffff, acc[r][c]);
}

/* every register tile shape of the packed q8/q4/q4k paths: R <= QTILE_R rows by C <= 4 groups */
#define QTILE_SHAPES(X)                                                                          \
    X(1, 1) X(1, 2) X(1, 3) X(1, 4) X(2, 1) X(2, 2) X(2, 3) X(2, 4) X(3, 1) X(3, 2) X(3, 3)     \
    X(3, 4) X(4, 1) X(4, 2) X(4, 3) X(4, 4) X(5, 1) X(5, 2) X(5, 3) X(5, 4)

static void q_tile_any(float *y, int ldy, const int8_t *xq, const float *xd, const int32_t *sums,
                       int nb, const __m512i *pk, const void *scl, int R, int C, __mmask16 keep, int k4) {
#define QT_CASE(RR, CC)                                                                          \
    case (RR) * 8 + (CC):                                                                        \
        if (k4)                                                                                  \
            q_tile(y, ldy, xq, xd, sums, nb, pk, scl, RR, CC, keep, 1);                          \
        else                                                                                     \
            q_tile(y, ldy, xq, xd, sums, nb, pk, scl, RR, CC, keep, 0);                          \
        break;
    switch (R * 8 + C) {
        QTILE_SHAPES(QT_CASE)
    default: DH_ASSERT(0);
    }
#undef QT_CASE
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* ---- q4k ----
 *
 * Decode: 16 weight rows a register, as for q4 (lane i = row i, rows 4 apart in a whole block of
 * 64). A super-block's 16-byte heads of the 16 rows are transposed like a block of nibbles (lane
 * i of h[0] = d | dmin << 16, of h[1..3] = sc[0..11] four bytes a vector), the scales and mins
 * of sub-block j pulled out with shifts and masks; per sub-block the nibbles are transposed as
 * q4's, vpdpbusd sums nibble * xq (nibbles are unsigned: no offset), and the integer I and M of
 * kern.h are two vpmulld. Each super-block prefetches q_prefetch() bytes ahead in each of the
 * 16 rows; packed as WT_G16, each piece of the group's one stream prefetches q_prefetch_g16()
 * bytes ahead of it, for the first of the row chunks of 4 activations.
 *
 * Prompt processing (more than QSMALL_T rows) packs each block of 64 rows once, as q8/q4 do:
 * per group of 16 rows and sub-block, the 8 vectors of nibbles (unsigned, both halves as they
 * are) and four vectors of lanes (s_j, m_j as int32, d and -dmin as f32), then register tiles
 * of QTILE_R activation rows by 4 groups run over the panel. Per output element the integer
 * sums are the same exact numbers and the float operations the same two fused multiply-adds
 * per sub-block, in the same order, as the decode kernel's (kern.h): the same bits. (Before,
 * prompts ran the decode kernel 4 rows at a time, unpacking the 16 rows again every 4 rows.) */

/* The heads of a super-block of 16 rows (lane i's at p + i * S): d and -dmin in f32, and in
 * h[1..3] the 12 scale bytes of each row, four a vector (q_transpose4 of the 16-byte heads). */
/* d and -dmin in f32 from the transposed heads h */
AI void k_dmin(const __m512i h[4], __m512 *d, __m512 *nmin) {
    *d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h[0]));
    *nmin = _mm512_xor_ps(_mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(h[0], 16))), _mm512_set1_ps(-0.0f));
}

AI void k_heads(const uint8_t *p, size_t S, __m512 *d, __m512 *nmin, __m512i h[4]) {
    __m512i hv[4];
    UNROLL
    for (int m = 0; m < 4; m++) {
        hv[m] = _mm512_castsi128_si512(_mm_loadu_si128((const void *)(p + m * S)));
        UNROLL
        for (int l = 1; l < 4; l++)
            hv[m] = _mm512_mask_broadcast_i32x4(hv[m], (__mmask16)(0xf << 4 * l),
                                                _mm_loadu_si128((const void *)(p + (4 * l + m) * S)));
    }
    q_transpose4(hv, h);
    k_dmin(h, d, nmin);
}

/* k_heads for 16 rows packed as WT_G16: the transposed heads are stored as they are */
AI void k_heads_g16(const uint8_t *p, __m512 *d, __m512 *nmin, __m512i h[4]) {
    UNROLL
    for (int m = 0; m < 4; m++) h[m] = _mm512_loadu_si512(p + 64 * m);
    k_dmin(h, d, nmin);
}

/* s_j and m_j of sub-block j of the 16 rows of k_heads' h, as int32 lanes */
AI void k_scale_min(const __m512i h[4], int j, __m512i *sc, __m512i *mn) {
    const __m512i m63 = _mm512_set1_epi32(63), m3 = _mm512_set1_epi32(3), m15 = _mm512_set1_epi32(15);
    __m512i tb = h[1 + j / 4];
    unsigned sh = 8u * (unsigned)(j % 4);
    *sc = _mm512_and_si512(_mm512_srli_epi32(tb, sh), m63);
    *mn = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(tb, sh + 6), m3),
                          _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h[3], 4u * (unsigned)j), m15), 2));
}

AI void k_small(float *y, int ldy, const int8_t *xq, const float *xd, const int32_t *bsum, int cols,
                const uint8_t *p, const qrows *rw, int R, int pf, int g16) {
    /* a piece (head, or a sub-block's nibbles) is 16 bytes of a row, or 256 of a WT_G16 group */
    const size_t piece = g16 ? 16 * 16 : 16;
    __m512 acc[4];
    size_t S = rw->stride;
    int nb = cols / WT_QBLOCK;
    UNROLL
    for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
    for (int k0 = 0, b = 0; k0 < cols; k0 += WT_KBLOCK) {
        int ns = DH_MIN(cols - k0, WT_KBLOCK) / WT_QBLOCK;
        if (pf && g16) /* the group's one stream: its 16 heads here, each sub-block's below */
            UNROLL
            for (int l = 0; l < 4; l++) _mm_prefetch((const char *)p + pf + 64 * l, _MM_HINT_T0);
        else if (pf)
            for (int l = 0; l < 3; l++)
                UNROLL
                for (int i = 0; i < 16; i++) _mm_prefetch((const char *)p + pf + 64 * l + i * S, _MM_HINT_T0);
        __m512i h[4], sc, mn;
        __m512 d, nmin;
        if (g16)
            k_heads_g16(p, &d, &nmin, h);
        else
            k_heads(p, S, &d, &nmin, h);
        const uint8_t *q = p + piece;
        for (int j = 0; j < ns; j++, b++, q += piece) {
            if (pf && g16)
                UNROLL
                for (int l = 0; l < 4; l++) _mm_prefetch((const char *)q + pf + 64 * l, _MM_HINT_T0);
            k_scale_min(h, j, &sc, &mn);
            __m512i w[8];
            if (g16)
                nib_g16(q, w, 1);
            else
                nib_rows(q, S, w, 1);
            UNROLL
            for (int r = 0; r < R; r++) {
                const int8_t *xr = xq + (size_t)r * cols + (size_t)b * WT_QBLOCK;
                __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
                UNROLL
                for (int g = 0; g < 4; g++) {
                    s0 = _mm512_dpbusd_epi32(s0, w[g], bcast4(xr + 4 * g));
                    s1 = _mm512_dpbusd_epi32(s1, w[g + 4], bcast4(xr + 4 * (g + 4)));
                }
                __m512i is = _mm512_add_epi32(s0, _mm512_srai_epi32(s1, 4));
                __m512i I = _mm512_mullo_epi32(is, sc);
                __m512i M = _mm512_mullo_epi32(_mm512_set1_epi32(bsum[(size_t)r * nb + b]), mn);
                __m512 dx = _mm512_set1_ps(xd[(size_t)r * nb + b]);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(I), _mm512_mul_ps(dx, d), acc[r]);
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(M), _mm512_mul_ps(dx, nmin), acc[r]);
            }
        }
        p = q;
    }
    UNROLL
    for (int r = 0; r < R; r++) store_lanes(y + (size_t)r * ldy, rw->keep, rw->ystep, rw->yidx, acc[r]);
}

/* DH_KERN_Q4K_UNPACKED=1: prompts through the decode kernel as before the packed path (for
 * measuring one against the other in the same build); read once. */
static int k_unpacked(void) {
    static int u = -1;
    return env_bytes(&u, "DH_KERN_Q4K_UNPACKED", 0, 1);
}

static void k_small_any(float *y, int ldy, const int8_t *xq, const float *xd, const int32_t *bsum, int cols,
                        const uint8_t *p, const qrows *rw, int R, int pf, int g16) {
#define KS_CASE(RR)                                                                              \
    case RR:                                                                                     \
        if (g16)                                                                                 \
            k_small(y, ldy, xq, xd, bsum, cols, p, rw, RR, pf, 1);                               \
        else if (pf)                                                                             \
            k_small(y, ldy, xq, xd, bsum, cols, p, rw, RR, pf, 0);                               \
        else                                                                                     \
            k_small(y, ldy, xq, xd, bsum, cols, p, rw, RR, 0, 0);                                \
        break;
    switch (R) {
        KS_CASE(1) KS_CASE(2) KS_CASE(3) KS_CASE(4)
    default: DH_ASSERT(0);
    }
#undef KS_CASE
}

/* Large T: rows [o, o + n) (n <= 64) packed as pk[cg][b][g] (groups cg of 16 rows, the 8
 * nibble vectors of nib_rows) and lanes[cg][b][KL_COUNT] (one 16-lane vector each). */
static void k_pack(const wmat *W, int o, int n, __m512i *pk, __m512i *lanes, uint8_t *tail) {
    int cols = W->cols, nb = cols / WT_QBLOCK;
    size_t rb = wt_q4k_row_bytes((size_t)cols);
    int g16 = W->layout == WT_G16;
    for (int cg = 0; cg * 16 < n; cg++) {
        /* WT_G16: the group's pieces (tensor.h) are 16 times a row's, in the same order */
        const uint8_t *rows = g16 ? W->p.q4k + (size_t)(o + cg * 16) * rb : q_src(W, o + cg * 16, rb, tail);
        size_t u = g16 ? 16 : 1;
        for (int k0 = 0, b = 0; k0 < cols; k0 += WT_KBLOCK) {
            int ns = DH_MIN(cols - k0, WT_KBLOCK) / WT_QBLOCK;
            const uint8_t *p = rows + u * wt_q4k_row_bytes((size_t)k0); /* the super-block in row 0 */
            __m512i h[4], sc, mn;
            __m512 d, nmin;
            if (g16)
                k_heads_g16(p, &d, &nmin, h);
            else
                k_heads(p, rb, &d, &nmin, h);
            for (int j = 0; j < ns; j++, b++) {
                __m512i w[8], *dst = pk + ((size_t)cg * nb + b) * 8, *ln = lanes + ((size_t)cg * nb + b) * KL_COUNT;
                const uint8_t *q = p + u * (sizeof(wt_q4k_head) + (size_t)j * (WT_QBLOCK / 2));
                if (g16)
                    nib_g16(q, w, 0);
                else
                    nib_rows(q, rb, w, 0);
                UNROLL
                for (int g = 0; g < 8; g++) _mm512_store_si512(dst + g, w[g]);
                k_scale_min(h, j, &sc, &mn);
                _mm512_store_si512(ln + KL_SC, sc);
                _mm512_store_si512(ln + KL_MN, mn);
                _mm512_store_si512(ln + KL_D, _mm512_castps_si512(d));
                _mm512_store_si512(ln + KL_NMIN, _mm512_castps_si512(nmin));
            }
        }
    }
}


static void matmul_q4k(float *y, int ldy, const kern_act *a, const wmat *W, int T, int o0, int o1,
                       float *scratch) {
    int cols = W->cols, nb = cols / WT_QBLOCK;
    DH_ASSERT(a->q && a->qd && cols % WT_QBLOCK == 0);
    DH_ASSERT(W->layout == WT_ROWS || (o0 % WT_G16_ROWS == 0 && o1 % WT_G16_ROWS == 0));
    size_t rb = wt_q4k_row_bytes((size_t)cols);
    /* scratch: the packed panel and its lanes, 16 rows for the matrix's tail, then the block
     * sums of up to tchunk rows (64 + 32 + 9 + up to 128 bytes a column of the 256) */
    __m512i *pk = (__m512i *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    __m512i *lanes = pk + (size_t)KERN_OBLOCK / 16 * nb * 8;
    uint8_t *tail = (uint8_t *)(lanes + (size_t)KERN_OBLOCK / 16 * nb * KL_COUNT);
    int32_t *bsum = (int32_t *)(tail + align64(16 * rb));
    int tchunk = DH_MIN(1024, DH_MAX(64, QTCHUNK_BYTES / cols));
    DH_ASSERT((char *)(bsum + (size_t)tchunk * nb) <= (char *)(scratch + kern_scratch_floats(cols)));
    for (int tc = 0; tc < T; tc += tchunk) {
        int tn = DH_MIN(tchunk, T - tc);
        const int8_t *xq = a->q + (size_t)tc * cols;
        const float *xd = a->qd + (size_t)tc * nb;
        float *yc = y + (size_t)tc * ldy;
        for (int t = 0; t < tn; t++) q_block_sums(xq + (size_t)t * cols, nb, 1, bsum + (size_t)t * nb);
        if (tn > QSMALL_T && !k_unpacked()) {
            for (int ob = o0; ob < o1; ob += KERN_OBLOCK) {
                int n = DH_MIN(KERN_OBLOCK, o1 - ob), ncg = (n + 15) / 16;
                __mmask16 keep = (__mmask16)((1u << (n - (ncg - 1) * 16)) - 1);
                k_pack(W, ob, n, pk, lanes, tail);
                for (int t = 0; t < tn; t += QTILE_R)
                    q_tile_any(yc + (size_t)t * ldy + ob, ldy, xq + (size_t)t * cols, xd + (size_t)t * nb,
                               bsum + (size_t)t * nb, nb, pk, lanes, DH_MIN(QTILE_R, tn - t), ncg, keep, 1);
            }
            continue;
        }
        if (W->layout == WT_G16) { /* one sequential stream, as for q8 */
            qrows rw;
            qrows_init(&rw, rb, 1, 16);
            int pf = q_prefetch_g16();
            for (int o = o0; o < o1; o += 16)
                for (int t = 0; t < tn; t += 4)
                    k_small_any(yc + (size_t)t * ldy + o, ldy, xq + (size_t)t * cols, xd + (size_t)t * nb,
                                bsum + (size_t)t * nb, cols, W->p.q4k + (size_t)o * rb, &rw, DH_MIN(4, tn - t),
                                t == 0 ? pf : 0, 1);
            continue;
        }
        for (int ob = o0; ob < o1; ob += KERN_OBLOCK) {
            int n = DH_MIN(KERN_OBLOCK, o1 - ob), full = n == KERN_OBLOCK;
            for (int j = 0; j < (full ? 4 : (n + 15) / 16); j++) {
                qrows rw;
                int o = full ? ob + j : ob + 16 * j;
                if (full)
                    qrows_init(&rw, 4 * rb, 4, 16);
                else
                    qrows_init(&rw, rb, 1, DH_MIN(16, ob + n - o));
                const uint8_t *p = q_src(W, o, rb, tail);
                for (int t = 0; t < tn; t += 4)
                    k_small_any(yc + (size_t)t * ldy + o, ldy, xq + (size_t)t * cols, xd + (size_t)t * nb,
                                bsum + (size_t)t * nb, cols, p, &rw, DH_MIN(4, tn - t), full && t == 0 ? q_prefetch() : 0, 0);
            }
        }
    }
}

static void matmul_q(float *y, int ldy, const kern_act *a, const wmat *W, int T, int o0, int o1,
                     float *scratch) {
    int cols = W->cols, nb = cols / WT_QBLOCK, q4 = W->dtype == DT_Q4;
    DH_ASSERT(a->q && a->qd && cols % WT_QBLOCK == 0);
    DH_ASSERT(W->layout == WT_ROWS || (!q4 && o0 % WT_G16_ROWS == 0 && o1 % WT_G16_ROWS == 0));
    size_t bs = q4 ? sizeof(wt_q4_block) : sizeof(wt_q8_block), rb = bs * (size_t)nb;
    /* scratch: the packed panel, its scales, 16 rows for the matrix's tail, the block sums of
     * up to tchunk rows (72 + 17 + 128 bytes a column of the 256 there are) */
    char *s0 = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    __m512i *pk = (__m512i *)s0;
    float *sc = (float *)(s0 + align64((size_t)KERN_OBLOCK * cols));
    uint8_t *tail = (uint8_t *)sc + align64((size_t)KERN_OBLOCK / 16 * nb * 64);
    int32_t *corr = (int32_t *)(tail + align64(16 * rb));
    int tchunk = DH_MIN(1024, DH_MAX(64, QTCHUNK_BYTES / cols));
    DH_ASSERT((char *)(corr + (size_t)tchunk * nb) <=
              (char *)(scratch + kern_scratch_floats(cols)));
    for (int tc = 0; tc < T; tc += tchunk) {
        int tn = DH_MIN(tchunk, T - tc);
        const int8_t *xq = a->q + (size_t)tc * cols;
        const float *xd = a->qd + (size_t)tc * nb;
        float *yc = y + (size_t)tc * ldy;
        for (int t = 0; t < tn; t++)
            q_block_sums(xq + (size_t)t * cols, nb, q4 ? -8 : -128, corr + (size_t)t * nb);
        if (tn <= QSMALL_T && W->layout == WT_G16) {
            /* one sequential stream: 16 rows a group, 544 bytes a block, prefetched as q4k's */
            qrows rw;
            qrows_init(&rw, rb, 1, 16);
            int pf = q_prefetch_g16();
            for (int o = o0; o < o1; o += 16)
                for (int t = 0; t < tn; t += 4)
                    q_small_any(yc + (size_t)t * ldy + o, ldy, xq + (size_t)t * cols, xd + (size_t)t * nb,
                                corr + (size_t)t * nb, nb, (const uint8_t *)(W->p.q8 + (size_t)o * nb), 16 * bs,
                                &rw, 0, 1, DH_MIN(4, tn - t), t == 0 ? pf : 0);
            continue;
        }
        if (tn <= QSMALL_T) {
            /* In a full block of 64 rows, lane i of group j takes row j + 4i: 16 consecutive
             * rows (2 KB apart at cols 2048) share pages, which the hardware prefetcher follows
             * badly; rows 4 apart stream from pages of their own, ~30% faster from memory. */
            for (int ob = o0; ob < o1; ob += KERN_OBLOCK) {
                int n = DH_MIN(KERN_OBLOCK, o1 - ob), full = n == KERN_OBLOCK;
                for (int j = 0; j < (full ? 4 : (n + 15) / 16); j++) {
                    qrows rw;
                    int o = full ? ob + j : ob + 16 * j;
                    const uint8_t *p;
                    if (full) {
                        qrows_init(&rw, 4 * rb, 4, 16);
                        p = q_src(W, o, rb, tail); /* in place: the block is whole */
                    } else {
                        qrows_init(&rw, rb, 1, DH_MIN(16, ob + n - o));
                        p = q_src(W, o, rb, tail);
                    }
                    for (int t = 0; t < tn; t += 4)
                        q_small_any(yc + (size_t)t * ldy + o, ldy, xq + (size_t)t * cols,
                                    xd + (size_t)t * nb, corr + (size_t)t * nb, nb, p, bs, &rw, q4, 0,
                                    DH_MIN(4, tn - t), full && t == 0 ? q_prefetch() : 0);
                }
            }
            continue;
        }
        for (int ob = o0; ob < o1; ob += KERN_OBLOCK) {
            int n = DH_MIN(KERN_OBLOCK, o1 - ob), ncg = (n + 15) / 16;
            __mmask16 keep = (__mmask16)((1u << (n - (ncg - 1) * 16)) - 1);
            q_pack(W, ob, n, pk, sc, tail);
            for (int t = 0; t < tn; t += QTILE_R) {
                int R = DH_MIN(QTILE_R, tn - t);
                q_tile_any(yc + (size_t)t * ldy + ob, ldy, xq + (size_t)t * cols,
                           xd + (size_t)t * nb, corr + (size_t)t * nb, nb, pk, sc, R, ncg, keep, 0);
            }
        }
    }
}
#pragma GCC pop_options

static void matmul_avx(float *y, int ldy, const kern_act *a, const wmat *W, int T, int o0, int o1,
                       float *scratch) {
    if (W->dtype == DT_Q8 || W->dtype == DT_Q4 || W->dtype == DT_Q4K) {
        if (!__builtin_cpu_supports("avx512vnni"))
            kern_portable()->matmul(y, ldy, a, W, T, o0, o1, scratch);
        else if (W->dtype == DT_Q4K)
            matmul_q4k(y, ldy, a, W, T, o0, o1, scratch);
        else
            matmul_q(y, ldy, a, W, T, o0, o1, scratch);
        return;
    }
    matmul_float(y, ldy, a->x, a->ldx, W, T, o0, o1, scratch);
}

/* roundf (ties away from zero) of 16 floats, exactly: truncate, then step away from zero
 * when the dropped fraction (exact: v - trunc(v)) is at least one half. */
AI __m512 round_away(__m512 v) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_andnot_ps(sign, _mm512_sub_ps(v, t));
    __mmask16 up = _mm512_cmp_ps_mask(f, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    __m512 step = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(v, sign));
    return _mm512_mask_add_ps(t, up, t, step);
}

/* As quantize_ref, bit for bit: max|x| ignores NaN as fmaxf does, 1/d and x * (1/d) are the
 * same single roundings, round_away is roundf, and the products are at most 127 in magnitude
 * (or NaN), so the saturating narrowing never saturates. */
static void quantize_avx(const float *x, int cols, int8_t *q, float *d) {
    DH_ASSERT(cols % WT_QBLOCK == 0);
    const __m512 sign = _mm512_set1_ps(-0.0f), zero = _mm512_setzero_ps();
    for (int b = 0; b < cols / WT_QBLOCK; b++) {
        const float *xb = x + b * WT_QBLOCK;
        __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        /* max(|v|, 0) turns NaN into 0: maxps returns its second operand when one is NaN */
        __m512 m = _mm512_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), zero),
                                 _mm512_max_ps(_mm512_andnot_ps(sign, v1), zero));
        float amax = _mm512_reduce_max_ps(m);
        float db = amax / 127.0f, id = db > 0 ? 1.0f / db : 0.0f;
        if (isinf(id)) id = 0;
        d[b] = db;
        __m512 vid = _mm512_set1_ps(id), p0 = _mm512_mul_ps(v0, vid), p1 = _mm512_mul_ps(v1, vid);
        /* NaN products (x NaN or inf) give 0, as in quantize_ref */
        __mmask16 n0 = _mm512_cmp_ps_mask(p0, p0, _CMP_ORD_Q);
        __mmask16 n1 = _mm512_cmp_ps_mask(p1, p1, _CMP_ORD_Q);
        __m512i i0 = _mm512_maskz_cvttps_epi32(n0, round_away(p0));
        __m512i i1 = _mm512_maskz_cvttps_epi32(n1, round_away(p1));
        _mm_storeu_si128((void *)(q + b * WT_QBLOCK), _mm512_cvtsepi32_epi8(i0));
        _mm_storeu_si128((void *)(q + b * WT_QBLOCK + 16), _mm512_cvtsepi32_epi8(i1));
    }
}

/* four 64-byte loads in flight per stream step, the same four lines `prefetch` bytes ahead
 * when asked, and `pace` rounds of multiply-adds chaining the four (AVX-512 BW's, which every
 * CPU of this table has; docs/performance.md, "How the bandwidth is measured") */
static uint64_t read_avx(const void *p, size_t bytes, int streams, int prefetch, int pace) {
    const char *c = p;
    size_t per = bytes / (size_t)streams;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, m3 = _mm512_set1_epi16(3);
    for (size_t i = 0; i < per; i += 256)
        for (int s = 0; s < streams; s++) {
            const char *q = c + (size_t)s * per + i;
            if (prefetch)
                for (int l = 0; l < 4; l++) _mm_prefetch(q + prefetch + 64 * l, _MM_HINT_T0);
            __m512i x0 = _mm512_loadu_si512(q), x1 = _mm512_loadu_si512(q + 64);
            __m512i x2 = _mm512_loadu_si512(q + 128), x3 = _mm512_loadu_si512(q + 192);
            for (int k = 0; k < pace; k++) {
                x0 = _mm512_add_epi32(x0, _mm512_madd_epi16(x1, m3));
                x1 = _mm512_add_epi32(x1, _mm512_madd_epi16(x2, m3));
                x2 = _mm512_add_epi32(x2, _mm512_madd_epi16(x3, m3));
                x3 = _mm512_add_epi32(x3, _mm512_madd_epi16(x0, m3));
            }
            a0 = _mm512_add_epi64(a0, x0);
            a1 = _mm512_add_epi64(a1, x1);
            a2 = _mm512_add_epi64(a2, x2);
            a3 = _mm512_add_epi64(a3, x3);
        }
    /* summed as unsigned words: the intrinsic _mm512_reduce_add_epi64 adds signed long longs,
     * whose wrap-around is undefined (UBSan stops on it) */
    uint64_t w[8], sum = 0;
    _mm512_storeu_si512(w, _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
    for (int k = 0; k < 8; k++) sum += w[k];
    return sum;
}

static kern_ops avx_ops = {
    .name = "avx512",
    .matmul = matmul_avx,
    .quantize = quantize_avx,
    .dot = dot_avx,
    .axpy = axpy_avx,
    .dot_rows = dot_rows_avx,
    .axpy_rows = axpy_rows_avx,
    .read = read_avx,
    .exp_sub = exp_sub_avx,
};

const kern_ops *kern_avx512(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        (void)q_prefetch(); /* read the settings now, before the threads use them */
        avx_ops.g16_prefetch = q_prefetch_g16();
        (void)k_unpacked();
        pthread_once(&exp_once, exp_check); /* once, whichever thread asks first */
        int agrees = exp_agreed;
        /* the vectors where they gave libm's bits, else the portable table's loops */
        const kern_ops *p = kern_portable();
        avx_ops.exp_sub = agrees ? exp_sub_avx : p->exp_sub;
        avx_ops.swiglu = agrees ? swiglu_avx : p->swiglu;
        avx_ops.exp_scaled = agrees ? exp_scaled_avx : p->exp_scaled;
        avx_ops.exp16 = agrees;
        /* the packed decode paths are the VNNI ones; DH_KERN_ROWS=1 keeps q8 and q4k row-major
         * (the previous paths, for measuring one against the other) */
        const char *e = getenv("DH_KERN_ROWS");
        avx_ops.g16 = __builtin_cpu_supports("avx512vnni") && !(e && atoi(e) > 0);
        return &avx_ops;
    }
    return NULL;
}
#else
const kern_ops *kern_avx512(void) { return NULL; }
#endif
