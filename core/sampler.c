/* sampler.c: choosing the next token.
 *
 * Order as Hugging Face's generate applies it: temperature, then top-k, then top-p over the
 * softmax of what is left, then one draw. Nothing sorts the whole vocabulary in the common
 * cases: top-k takes the k best with a bounded min-heap; top-p without top-k first looks at the
 * 1024 best and sorts all 129280 only when those do not hold top_p of the probability (a very
 * flat distribution); plain temperature sampling draws from the softmax directly. Candidates
 * are sorted by heapsort in the sampler's own buffer: glibc's qsort would malloc a copy.
 *
 * Randomness (DESIGN.md): the uniform number behind a draw is Philox-4x32-10 of the counter
 * (position, choice, purpose, 0) under the key (seed low word, seed high word). Nothing else
 * goes in, and nothing is kept between draws, so the token at a position is the same whether
 * the request ran alone, batched, resumed after a failure or behind a speculative draft, and
 * however many draws came before it. Why Philox rather than a hash of the tuple (SplitMix64)
 * or Threefry: its 4x32 counter and 2x32 key hold the four fields and the 64-bit seed word for
 * word, so distinct keys are distinct inputs with no ad-hoc mixing that could collide, and a
 * fixed key is a bijection of counters; it passes TestU01's BigCrush (Salmon et al., "Parallel
 * random numbers: as easy as 1, 2, 3", SC 2011); it has published known-answer vectors to test
 * against (Random123's kat_vectors); and it is the generator of cuRAND and PyTorch's CUDA
 * backend, so a GPU could reproduce our draws. Threefry would do as well but costs 20 rounds of
 * 64-bit adds and rotations; Philox's 10 rounds of 32x32 multiplies are nothing next to a
 * forward step. */
#include "sampler.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "kern.h"
#include "nn.h"

typedef struct cand {
    float logit;
    int id;
} cand;

#define EXP_BLOCK 1024 /* logits whose exp a kernel call computes */

struct sampler {
    sampler_params p;
    int vocab;
    cand *c;   /* [vocab] */
    cand *c2;  /* [vocab] the radix sort's other buffer */
    float *pr; /* [vocab] */
    double e[EXP_BLOCK];
};

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Philox-4x32 constants: the round multipliers and the Weyl key increments (Salmon et al.) */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void sampler_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t x0 = ctr[0], x1 = ctr[1], x2 = ctr[2], x3 = ctr[3], k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) k0 += PHILOX_W0, k1 += PHILOX_W1; /* the key schedule: bumped before rounds 2..10 */
        uint64_t p0 = (uint64_t)PHILOX_M0 * x0, p1 = (uint64_t)PHILOX_M1 * x2;
        uint32_t y0 = (uint32_t)(p1 >> 32) ^ x1 ^ k0, y1 = (uint32_t)p1;
        uint32_t y2 = (uint32_t)(p0 >> 32) ^ x3 ^ k1, y3 = (uint32_t)p0;
        x0 = y0, x1 = y1, x2 = y2, x3 = y3;
    }
    out[0] = x0, out[1] = x1, out[2] = x2, out[3] = x3;
}

double sampler_uniform(uint64_t seed, int choice, int position, sampler_purpose purpose) {
    DH_ASSERT(choice >= 0 && position >= 0);
    uint32_t ctr[4] = {(uint32_t)position, (uint32_t)choice, (uint32_t)purpose, 0};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, out[4];
    sampler_philox4x32(ctr, key, out);
    uint64_t bits = (uint64_t)out[0] | (uint64_t)out[1] << 32;
    return (double)(bits >> 11) * (1.0 / 9007199254740992.0); /* the top 53 bits, times 2^-53 */
}

uint64_t sampler_random_seed(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
    return splitmix64(&x);
}

sampler_params sampler_default_params(void) {
    return (sampler_params){.temperature = 0.8f, .top_p = 0.95f, .top_k = 40, .seed = sampler_random_seed()};
}

sampler *sampler_new(int vocab, sampler_params p) {
    sampler *s = xcalloc(1, sizeof *s);
    s->p = p;
    s->vocab = vocab;
    s->c = xmalloc((size_t)vocab * sizeof *s->c);
    s->c2 = xmalloc((size_t)vocab * sizeof *s->c2);
    s->pr = xmalloc((size_t)vocab * sizeof *s->pr);
    return s;
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->c);
    free(s->c2);
    free(s->pr);
    free(s);
}

int sampler_argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* better: higher logit, then lower id */
static int better(const cand *a, const cand *b) { return a->logit > b->logit || (a->logit == b->logit && a->id < b->id); }

/* min-heap on `better` of at most k entries: c[0] is the worst kept */
static void sift_down(cand *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && better(&h[m], &h[l])) m = l;
        if (r < n && better(&h[m], &h[r])) m = r;
        if (m == i) return;
        cand t = h[i];
        h[i] = h[m], h[m] = t, i = m;
    }
}

static void heapify(cand *h, int n) {
    for (int i = n / 2 - 1; i >= 0; i--) sift_down(h, n, i);
}

/* a heap of n, best first, in place: the worst kept goes to the end, n - 1 times */
static void heap_sort(cand *h, int n) {
    for (int i = n - 1; i > 0; i--) {
        cand t = h[0];
        h[0] = h[i], h[i] = t;
        sift_down(h, i, 0);
    }
}

/* the k best of logits into s->c[0..k), unsorted (a min-heap) */
static void best_k(sampler *s, const float *logits, int k) {
    for (int i = 0; i < k; i++) s->c[i] = (cand){logits[i], i};
    heapify(s->c, k);
    for (int i = k; i < s->vocab; i++) {
        cand x = {logits[i], i};
        if (better(&x, &s->c[0])) {
            s->c[0] = x;
            sift_down(s->c, k, 0);
        }
    }
}

/* A logit's place in `better`'s order as an unsigned key, ascending from the best: the float's
 * bits made monotonic (negatives reversed), then inverted; -0 taken as +0 (they compare equal) */
static uint32_t order_key(float x) {
    uint32_t u;
    if (x == 0) x = 0; /* -0 -> +0 */
    memcpy(&u, &x, 4);
    u = u & 0x80000000u ? ~u : u | 0x80000000u; /* ascending with x */
    return ~u;
}

#define RADIX_BITS 11
#define RADIX (1 << RADIX_BITS)

/* s->c[0..V) = every token, best first: a stable LSD radix sort of the tokens in id order on
 * order_key (three passes of 11 bits, a pass skipped when all keys share its digit), so equal
 * logits keep ascending ids, as `better` orders them; a heap sort when a logit is NaN (no
 * order to reproduce). A top-p draw that needs the whole of 129,280 flat logits took 16-17 ms
 * with the heap sort, 2.4-3.1 with this (AMD EPYC Zen 4; docs/perf-data-2026-12-07g). */
static void sort_all(sampler *s, const float *logits) {
    int V = s->vocab, nan = 0;
    for (int i = 0; i < V; i++) s->c[i] = (cand){logits[i], i}, nan |= isnan(logits[i]);
    if (nan) {
        heapify(s->c, V);
        heap_sort(s->c, V);
        return;
    }
    static_assert(3 * RADIX_BITS >= 32, "three passes cover the key");
    uint32_t cnt[3][RADIX] = {{0}};
    for (int i = 0; i < V; i++) {
        uint32_t k = order_key(logits[i]);
        for (int d = 0; d < 3; d++) cnt[d][k >> (d * RADIX_BITS) & (RADIX - 1)]++;
    }
    for (int d = 0; d < 3; d++) {
        uint32_t *h = cnt[d], sum = 0;
        int sh = d * RADIX_BITS;
        if (h[order_key(s->c[0].logit) >> sh & (RADIX - 1)] == (uint32_t)V) continue; /* one digit */
        for (int b = 0; b < RADIX; b++) {
            uint32_t n = h[b];
            h[b] = sum, sum += n;
        }
        for (int i = 0; i < V; i++) {
            cand x = s->c[i];
            s->c2[h[order_key(x.logit) >> sh & (RADIX - 1)]++] = x;
        }
        cand *t = s->c;
        s->c = s->c2, s->c2 = t;
    }
}

void sampler_order(sampler *s, const float *logits, int *ids) {
    sort_all(s, logits);
    for (int i = 0; i < s->vocab; i++) ids[i] = s->c[i].id;
}

/* the index that u in [0, 1) picks from weights w[0..n) of total tot */
static int draw(double u, const float *w, int n, double tot) {
    double r = u * tot;
    for (int i = 0; i < n; i++) {
        r -= w[i];
        if (r < 0) return i;
    }
    return n - 1;
}

/* s->e[i] = exp(((double)x[i0 + i] - m) * inv_t) for the block of up to EXP_BLOCK of x[0..n) at
 * i0 (kern_ops.exp_scaled: libm's bits, 8 at a time with AVX-512, where a call a logit made a
 * temperature-1 draw over 129,280 logits take 1.21 ms, 0.73 with it, AMD EPYC Zen 4); returns
 * the block's length */
static int exp_block(sampler *s, const float *x, int n, int i0, float m, double inv_t) {
    const kern_ops *k = nn_kernels(); /* NULL before nn_init: the portable table */
    int nb = DH_MIN(EXP_BLOCK, n - i0);
    (k ? k : kern_portable())->exp_scaled(s->e, x + i0, nb, m, inv_t);
    return nb;
}

/* s->pr[i] = (float)exp(((double)x[i] - m) * inv_t) for i < n (x may be s->pr); returns their
 * sum, in order, in double */
static double weights(sampler *s, const float *x, int n, float m, double inv_t) {
    double sum = 0;
    for (int i0 = 0; i0 < n; i0 += EXP_BLOCK) {
        int nb = exp_block(s, x, n, i0, m, inv_t);
        for (int i = 0; i < nb; i++) sum += s->pr[i0 + i] = (float)s->e[i];
    }
    return sum;
}

/* weights of the n candidates s->c[0..n), best first, relative to the best */
static double cand_weights(sampler *s, int n, double inv_t) {
    for (int i = 0; i < n; i++) s->pr[i] = s->c[i].logit;
    return weights(s, s->pr, n, s->c[0].logit, inv_t);
}

#define TOP_P_CANDIDATES 1024 /* without top-k, top-p looks here first */

int sampler_sample(sampler *s, const float *logits, int choice, int position, sampler_purpose purpose) {
    int V = s->vocab;
    if (s->p.temperature <= 0) return sampler_argmax(logits, V);
    double u = sampler_uniform(s->p.seed, choice, position, purpose);
    double inv_t = 1.0 / s->p.temperature;
    int k = s->p.top_k > 0 && s->p.top_k < V ? s->p.top_k : 0;
    int top_p = s->p.top_p > 0 && s->p.top_p < 1;
    if (!k && !top_p) { /* plain temperature sampling: no candidates to sort */
        double sum = weights(s, logits, V, logits[sampler_argmax(logits, V)], inv_t);
        return draw(u, s->pr, V, sum);
    }
    // candidates: the k best; without top-k, the best TOP_P_CANDIDATES when they hold top_p of
    // the mass (almost always: distributions are peaked), else all of them
    int n = k ? k : DH_MIN(V, TOP_P_CANDIDATES);
    double all = 0;
    if (!k) {
        float mx = logits[sampler_argmax(logits, V)];
        for (int i0 = 0; i0 < V; i0 += EXP_BLOCK) {
            int nb = exp_block(s, logits, V, i0, mx, inv_t);
            for (int i = 0; i < nb; i++) all += s->e[i];
        }
    }
    best_k(s, logits, n);
    heap_sort(s->c, n);
    double sum = cand_weights(s, n, inv_t);
    double total = k ? sum : all; /* both relative to the best logit */
    if (!k && n < V && sum < s->p.top_p * total) { /* the mass is spread wide: use every token */
        n = V;
        sort_all(s, logits);
        total = cand_weights(s, n, inv_t);
    }
    // p = softmax(logit / T); keep the smallest prefix holding top_p of the mass
    int keep = n;
    if (top_p) {
        double acc = 0;
        for (int i = 0; i < n; i++) {
            acc += s->pr[i] / total;
            if (acc >= s->p.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    double tot = 0;
    for (int i = 0; i < keep; i++) tot += s->pr[i];
    return s->c[draw(u, s->pr, keep, tot)].id;
}
