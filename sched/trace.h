/* trace.h: a routing trace in memory (trace_ prefix): which experts every token chose, in
 * every MoE layer, for a set of sequences labelled with domains. The simulator and the
 * planners read it; proto/tracefile.c reads and writes it on disk (docs/placement.md).
 *
 * Dims legend: L MoE layers of the trace, E routed experts, K experts per token, N tokens in
 * all (the sequences' tokens concatenated in sequence order).
 *
 * Layers are the trace's own MoE layers, numbered 0..L-1. Mapping them onto a model's layers
 * (model MoE layer j takes trace layer floor(j * L / M)) is trace_layer_for(). */
#ifndef DH_TRACE_H
#define DH_TRACE_H
#include <stddef.h>
#include <stdint.h>

#define TRACE_MAX_DOMAINS 64
#define TRACE_NAME_MAX 64

typedef struct trace_seq {
    int64_t id;         /* sequence id as recorded (line number for imports, request id live) */
    int domain;         /* index into trace.domain_names */
    int start_pos;      /* position of its first recorded token */
    int n_tokens;       /* T of this sequence */
    size_t first;       /* index of its first token in the trace's token arrays */
} trace_seq;

typedef struct trace {
    char source[128];   /* "esft:<dir>", "live:<model dir>" ... */
    int n_layers;       /* L */
    int n_experts;      /* E */
    int top_k;          /* K */
    int hidden_size;    /* D of the model that routed, 0 if unknown */
    int ffn_size;       /* expert FFN width, 0 if unknown */
    float weight_unit;  /* > 0: the weights are multiples of it (stored as integers on disk) */
    int n_domains;
    char domain_names[TRACE_MAX_DOMAINS][TRACE_NAME_MAX];
    int n_seqs;
    trace_seq *seqs;    /* [n_seqs], in file order */
    size_t n_tokens;    /* N */
    int16_t *ids;       /* [N, L, K]: ids[(t * L + l) * K + k]; -1: not recorded */
    float *weights;     /* [N, L, K] gate weights, same order */
} trace;

/* A trace of the given shape with room for n_tokens tokens and n_seqs sequences, all zero;
 * the caller fills seqs, ids and weights. */
trace *trace_new(int n_layers, int n_experts, int top_k, int n_seqs, size_t n_tokens);
void trace_free(trace *t); /* NULL ok */

/* Which sequences a replay takes. */
typedef enum { TRACE_SEQS_ALL = 0, TRACE_SEQS_FIRST_HALF, TRACE_SEQS_SECOND_HALF } trace_half;
/* Parse "all", "first-half", "second-half": 0, or -1. */
int trace_parse_half(const char *s, trace_half *h);
const char *trace_half_name(trace_half h);

/* The sequences a replay takes, in replay order: the first floor(n_d / 2) of each domain d
 * (first half), the rest (second half) or all, taken in turn across the domains (the first of
 * each domain, then the second of each, ...), in file order within a domain; domains in index
 * order. Writes up to t->n_seqs indices into order[] and returns the count. */
int trace_select(const trace *t, trace_half h, int *order);

/* The trace layer that model MoE layer j of M takes: floor(j * L / M). */
int trace_layer_for(int j, int M, int L);

/* The K heaviest of a record's Kt experts (K <= Kt <= 64), by weight, ties to the earlier one
 * in the record: ids into idx [K] and their weights into w [K] (NULL: not wanted), heaviest
 * first. The rule of a replay onto a model with fewer experts per token than the trace. */
void trace_keep_heaviest(const int16_t *ids, const float *weights, int Kt, int K, int *idx, float *w);
#endif
