/* sampler.h: next-token choice from logits: greedy, or temperature, top-k, top-p (sampler_).
 *
 * Every random draw is a pure function of (seed, choice, position, purpose): Philox-4x32-10
 * keyed by the seed, counting over the other three. No state carries from one draw to the
 * next, so a resumed, speculated or batched request draws what it would draw alone. */
#ifndef DH_SAMPLER_H
#define DH_SAMPLER_H
#include <stdint.h>

typedef struct sampler_params {
    float temperature; /* 0: greedy (argmax, ties to the lower id) */
    float top_p;       /* keep the smallest set of best tokens whose probability reaches top_p; 1 = off */
    int top_k;         /* keep the k best tokens; 0 = off */
    uint64_t seed;     /* the request's seed: the generator's key */
} sampler_params;

/* What a draw is for. Two purposes at one (choice, position) draw independent numbers. */
typedef enum sampler_purpose {
    SAMPLER_TOKEN = 0,       /* the token at a position */
    SAMPLER_SPEC_ACCEPT = 1, /* speculative decoding: accept or reject a drafted token (not used yet) */
} sampler_purpose;

typedef struct sampler sampler; /* scratch for one thread; holds no random state */

sampler_params sampler_default_params(void); /* 0.8, 0.95, 40, a random seed */
/* A sampler over vocab ids; NULL never. */
sampler *sampler_new(int vocab, sampler_params p);
void sampler_free(sampler *s); /* NULL ok */
/* The token at `position` (absolute, in its sequence) of choice `choice` (0 for the first of
 * n completions), from logits [vocab] (not modified). Allocates nothing. */
int sampler_sample(sampler *s, const float *logits, int choice, int position, sampler_purpose purpose);
/* ids [vocab] = every token, best first: higher logit, then lower id (the order in which top-p
 * keeps tokens when it needs the whole vocabulary). Uses s's scratch. */
void sampler_order(sampler *s, const float *logits, int *ids);
/* argmax of x[n], ties to the lower index */
int sampler_argmax(const float *x, int n);
/* A seed from the clock and the process id, for when the user gives none. */
uint64_t sampler_random_seed(void);

/* The generator. A uniform double in [0, 1) with 53 random bits for the draw keyed by
 * (seed, choice, position, purpose); choice and position >= 0. */
double sampler_uniform(uint64_t seed, int choice, int position, sampler_purpose purpose);
/* Philox-4x32-10 (Salmon et al., SC 2011): out = the block of counter ctr under key. */
void sampler_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
#endif
