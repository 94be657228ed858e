/* sampler.c: choosing the next token.
 *
 * Order as Hugging Face's generate applies it: temperature, then top-k, then top-p over the
 * softmax of what is left, then one draw. Nothing sorts the whole vocabulary in the common
 * cases: top-k takes the k best with a bounded min-heap; top-p without top-k first looks at the
 * 1024 best and sorts all 129280 only when those do not hold top_p of the probability (a very
 * flat distribution); plain temperature sampling draws from the softmax directly. The random stream is xoshiro256** seeded through splitmix64, so
 * a seed gives the same tokens on every machine. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

typedef struct cand {
    float logit;
    int id;
} cand;

struct sampler {
    sampler_params p;
    int vocab;
    uint64_t s[4];
    cand *c;   /* [vocab] */
    float *pr; /* [vocab] */
};

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(sampler *s) {
    uint64_t r = rotl(s->s[1] * 5, 7) * 9, t = s->s[1] << 17;
    s->s[2] ^= s->s[0], s->s[3] ^= s->s[1], s->s[1] ^= s->s[2], s->s[0] ^= s->s[3];
    s->s[2] ^= t, s->s[3] = rotl(s->s[3], 45);
    return r;
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
    uint64_t x = p.seed;
    for (int i = 0; i < 4; i++) s->s[i] = splitmix64(&x);
    s->c = xmalloc((size_t)vocab * sizeof *s->c);
    s->pr = xmalloc((size_t)vocab * sizeof *s->pr);
    return s;
}

void sampler_free(sampler *s) {
    if (!s) return;
    free(s->c);
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

static int cmp_cand(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

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

/* the k best of logits into s->c[0..k), unsorted (a min-heap) */
static void best_k(sampler *s, const float *logits, int k) {
    for (int i = 0; i < k; i++) s->c[i] = (cand){logits[i], i};
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(s->c, k, i);
    for (int i = k; i < s->vocab; i++) {
        cand x = {logits[i], i};
        if (better(&x, &s->c[0])) {
            s->c[0] = x;
            sift_down(s->c, k, 0);
        }
    }
}

/* one draw from weights w[0..n) of total tot; returns an index */
static int draw(sampler *s, const float *w, int n, double tot) {
    double r = (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0) * tot;
    for (int i = 0; i < n; i++) {
        r -= w[i];
        if (r < 0) return i;
    }
    return n - 1;
}

#define TOP_P_CANDIDATES 1024 /* without top-k, top-p looks here first */

int sampler_sample(sampler *s, const float *logits) {
    int V = s->vocab;
    if (s->p.temperature <= 0) return sampler_argmax(logits, V);
    double inv_t = 1.0 / s->p.temperature;
    int k = s->p.top_k > 0 && s->p.top_k < V ? s->p.top_k : 0;
    int top_p = s->p.top_p > 0 && s->p.top_p < 1;
    if (!k && !top_p) { /* plain temperature sampling: no candidates to sort */
        float mx = logits[sampler_argmax(logits, V)];
        double sum = 0;
        for (int i = 0; i < V; i++) sum += s->pr[i] = (float)exp(((double)logits[i] - mx) * inv_t);
        return draw(s, s->pr, V, sum);
    }
    // candidates: the k best; without top-k, the best TOP_P_CANDIDATES when they hold top_p of
    // the mass (almost always: distributions are peaked), else all of them
    int n = k ? k : DH_MIN(V, TOP_P_CANDIDATES);
    double all = 0;
    if (!k) {
        float mx = logits[sampler_argmax(logits, V)];
        for (int i = 0; i < V; i++) all += exp(((double)logits[i] - mx) * inv_t);
    }
    best_k(s, logits, n);
    qsort(s->c, (size_t)n, sizeof *s->c, cmp_cand);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += s->pr[i] = (float)exp(((double)s->c[i].logit - s->c[0].logit) * inv_t);
    double total = k ? sum : all; /* both relative to the best logit */
    if (!k && n < V && sum < s->p.top_p * total) { /* the mass is spread wide: use every token */
        n = V;
        for (int i = 0; i < V; i++) s->c[i] = (cand){logits[i], i};
        qsort(s->c, (size_t)n, sizeof *s->c, cmp_cand);
        sum = 0;
        for (int i = 0; i < n; i++) sum += s->pr[i] = (float)exp(((double)s->c[i].logit - s->c[0].logit) * inv_t);
        total = sum;
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
    return s->c[draw(s, s->pr, keep, tot)].id;
}
