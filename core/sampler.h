/* sampler.h: next-token choice from logits: greedy, or temperature, top-k, top-p (sampler_). */
#ifndef DH_SAMPLER_H
#define DH_SAMPLER_H
#include <stdint.h>

typedef struct sampler_params {
    float temperature; /* 0: greedy (argmax, ties to the lower id) */
    float top_p;       /* keep the smallest set of best tokens whose probability reaches top_p; 1 = off */
    int top_k;         /* keep the k best tokens; 0 = off */
    uint64_t seed;
} sampler_params;

typedef struct sampler sampler; /* owned by one thread */

sampler_params sampler_default_params(void); /* 0.8, 0.95, 40, a random seed */
/* A sampler over vocab ids; NULL never. */
sampler *sampler_new(int vocab, sampler_params p);
void sampler_free(sampler *s); /* NULL ok */
/* The next token for logits [vocab] (not modified). */
int sampler_sample(sampler *s, const float *logits);
/* argmax of x[n], ties to the lower index */
int sampler_argmax(const float *x, int n);
/* A seed from the clock and the process id, for when the user gives none. */
uint64_t sampler_random_seed(void);
#endif
