/* placement.h: which workers host each (layer, expert) (place_ prefix).
 *
 * A plan maps every routed expert of every MoE layer to one or more worker ranks (1..W); an
 * expert with several workers has replicas, and the coordinator splits its tokens between
 * them. A worker may host any number of experts: nothing assumes equal slots or that E divides
 * by W. Plans are computed from the expected load of each (layer, expert): observed routing
 * counts when there are any, else uniform; worker capacities weight the balance. */
#ifndef DH_PLACEMENT_H
#define DH_PLACEMENT_H
#include <stdint.h>
#include <stdio.h>

typedef struct place_plan {
    int n_workers;      /* W: worker ranks 1..W */
    int n_layers;       /* layers of the model (MTP included); dense layers host nothing */
    int n_experts;      /* E */
    char algo[32];      /* how it was made: "contiguous", ..., "file" */
    int *offsets;       /* [n_layers * E + 1]: workers of (l, e) are workers[offsets[i] .. offsets[i+1]) */
    int *workers;       /* ranks, ascending within an entry */
} place_plan;

typedef struct place_input {
    int n_layers, n_experts, n_workers;
    const uint8_t *is_moe;    /* [n_layers] */
    const double *load;       /* [n_layers * E] expected tokens per (layer, expert); NULL: uniform */
    const double *capacity;   /* [W] relative speed of each worker; NULL: equal */
    const float *bias;        /* [n_layers * E] e_score_correction_bias (may be NULL) */
    const int *domain;        /* [E] domain id per expert (may be NULL) */
    int slots;                /* balanced: at most this many experts per worker; 0: no limit */
} place_input;

/* Algorithm names, NULL-terminated. */
extern const char *const place_algos[];

/* Parse worker speeds "S1,S2,...,SW" (positive numbers, relative: only ratios matter) into
 * *cap (malloc'd): the count, or -1 with a message naming the bad item. */
int place_parse_capacity(const char *s, double **cap);

/* Indices 0..n-1 by decreasing load[i], ties to the lower index, into order[n]: the order
 * in which the greedy packings take experts. */
void place_order_by_load(const double *load, int n, int *order);

/* Compute a plan. NULL (and a message) for an unknown algorithm or impossible input
 * (more workers than experts, no workers). */
place_plan *place_compute(const char *algo, const place_input *in);
void place_free(place_plan *p); /* NULL ok */
/* An empty plan of the given size for building by hand: every range empty. */
place_plan *place_new(int n_layers, int n_experts, int n_workers);
/* Replace the workers of (l, e) by ws[n] (sorted, deduplicated). */
void place_set(place_plan *p, int l, int e, const int *ws, int n);
/* Workers of (l, e): *n of them; borrowed until the plan changes. */
const int *place_get(const place_plan *p, int l, int e, int *n);

/* Placements of `to` missing from `from` for (l, e): the workers that would have to map that
 * expert to go from one plan to the other. place_added sums it over every (layer, expert): the
 * moves of a migration, as --max-moves counts them (the plans must have the same sizes). */
int place_added_at(const place_plan *from, const place_plan *to, int l, int e);
int place_added(const place_plan *from, const place_plan *to);

/* 0 if every expert of every MoE layer has at least one worker in 1..W and dense layers have
 * none; else DH_EINVAL with a message naming the first bad (layer, expert). */
int place_validate(const place_plan *p, const uint8_t *is_moe);

/* The text format (see docs/placement.md): write to f; read from path. Reading checks the
 * format and the sizes against the model's (n_layers, n_experts) and the job's n_workers, and
 * validates; NULL with a message naming the file and line otherwise. */
int place_write(const place_plan *p, FILE *f);
int place_save(const place_plan *p, const char *path);
place_plan *place_load(const char *path, int n_layers, int n_experts, int n_workers, const uint8_t *is_moe);

/* Expected load per worker under the plan: load[W] (replicas share their expert's load
 * equally). Returns the balance in [0, 1] (1 = perfectly even): mean/max of the load, or of
 * load / capacity[w] when capacity (W speeds) is given. */
double place_worker_load(const place_plan *p, const double *expert_load, const double *capacity,
                         double *worker_load);
#endif
