/* refcase.h: a reference case of tests/data (expected.json and its float files). */
#ifndef DH_TEST_REFCASE_H
#define DH_TEST_REFCASE_H
#include <stddef.h>

#define REF_MAX 128

typedef struct ref_case {
    char dir[1024];
    int prompt[REF_MAX], T;
    int greedy[REF_MAX], n_gen;
    int next_after;
    double atol, rtol, hatol, hrtol;
    unsigned char ambiguous_prefill[REF_MAX];
} ref_case;

/* Load tests/data/<name>/expected.json: 0 or -1. */
int ref_load(ref_case *rc, const char *name);
/* The float32 file of the case, which must hold exactly n floats; NULL (and a message) if not. */
float *ref_floats(const ref_case *rc, const char *file, size_t n);
/* |got - want| <= atol + rtol |want| elementwise: the number of violations (worst printed). */
int ref_check(const char *what, const float *got, const float *want, size_t n, double atol, double rtol);
#endif
