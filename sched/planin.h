/* planin.h: what the planners learn from a routing trace (pin_ prefix).
 *
 * From the sequences a replay would take (trace_select: a half or all), per trace MoE layer:
 * each token's chosen set as a bit mask, the (layer, expert) loads, each domain's loads, and
 * the steps that a replay at batch B would form (decode steps of B concurrent sequences, then
 * prefill steps of B consecutive tokens). Every token carries a weight, 1 unless a domain mix
 * reweights its domain, and every count below is a sum of those weights.
 *
 * Dims legend: L trace MoE layers, E experts (at most 64: a chosen set is a u64 mask), N
 * tokens of the selected sequences in replay order, D domains, S steps. */
#ifndef DH_PLANIN_H
#define DH_PLANIN_H
#include <stdint.h>

#include "sched/trace.h"

typedef struct plan_data {
    int n_layers, n_experts, top_k, n_domains; /* the trace's L, E, K, D */
    int n_tokens;        /* N */
    uint64_t *mask;      /* [L, N] chosen set of each token */
    float *weight;       /* [N] weight of each token: its domain's share over its token fraction */
    double *load;        /* [L, E] weighted (token, expert) counts */
    double *dom_load;    /* [D, L, E] unweighted counts per domain */
    int batch;           /* B of the steps */
    int n_decode;        /* steps 0..n_decode-1 are decode steps, the rest prefill steps */
    int n_steps;         /* S */
    int *step_first;     /* [S + 1]: step s takes tokens step_tok[step_first[s] .. step_first[s+1]) */
    int *step_tok;       /* token indices */
} plan_data;

/* The planning input from the sequences of t that half h selects, at batch B. share[D] (or
 * NULL: the trace's own mix) is the traffic share to plan for per domain; shares are
 * normalised, a domain with share 0 weighs nothing. NULL (and a message) if E > 64, the
 * selection is empty, or every selected token weighs 0. */
plan_data *pin_from_trace(const trace *t, trace_half h, const double *share, int batch);
void pin_free(plan_data *d); /* NULL ok */

/* Parse "NAME=SHARE,..." against t's domain names into share[D] (unlisted: 0): 0, or
 * DH_EINVAL with a message naming the unknown domain or bad number. */
int pin_parse_mix(const trace *t, const char *s, double *share);
#endif
