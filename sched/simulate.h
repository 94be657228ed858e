/* simulate.h: replay a routing trace against a placement plan, in steps (sim_ prefix).
 *
 * The replay (docs/placement.md): the sequences trace_select() takes, in its order.
 *   SIM_PREFILL  their tokens concatenated and cut into steps of B tokens;
 *   SIM_DECODE   B sequences at once, one token of each per step; the k-th of the first B starts
 *                at token floor(k * T_k / B) (a steady state), a finished sequence is replaced
 *                by the next, from its first token; the replay ends at the first step that
 *                cannot be filled.
 * In both modes a last partial step is dropped. Every (MoE layer, step) goes through
 * disp_assign(), the replica choice the coordinator makes.
 *
 * Metrics: a worker's load is its (token, expert) pairs in a (layer, step); imbalance is the
 * maximum over the mean of the W loads (mean and 99th percentile, linear interpolation, over
 * all (layer, step)); fan-out the distinct workers of a (token, layer), averaged; bytes what
 * coordinator/moe_mpi.c sends and receives; the step time a model of the exchange (sim_run).
 *
 * Dims legend: L trace layers, M MoE layers of the plan, E experts, K per token, W workers,
 * B batch, D hidden size, F expert FFN width. No MPI, no model: plain numbers in and out. */
#ifndef DH_SIMULATE_H
#define DH_SIMULATE_H
#include <stdint.h>
#include <stdio.h>

#include "sched/dispatch.h"
#include "sched/placement.h"
#include "sched/trace.h"

typedef enum { SIM_DECODE = 0, SIM_PREFILL = 1 } sim_mode;

#define SIM_DEFAULT_GFLOPS 50.0   /* per worker: about one AVX-512 core on the expert SwiGLU */
#define SIM_DEFAULT_LINK_GBPS 10.0 /* per worker link to the coordinator */
#define SIM_DEFAULT_LINK_US 50.0   /* one-way latency of a message */

typedef struct sim_params {
    int batch;                   /* B */
    sim_mode mode;
    trace_half half;
    disp_rule dispatch;
    int wire_bytes;              /* bytes per activation value: 4 (f32) or 2 (bf16) */
    int hidden_size;             /* D */
    int ffn_size;                /* F */
    const double *worker_gflops; /* [W] expert rate of each worker; NULL: SIM_DEFAULT_GFLOPS */
    double link_gbps;            /* per worker link bandwidth, Gbit/s */
    double link_us;              /* one-way latency, microseconds */
    const uint8_t *is_moe;       /* [plan n_layers]: the plan's MoE layers; NULL: all */
    int skip_last;               /* 1: the last MoE layer (the MTP block) does not run: plain decoding */
    int top_k;                   /* the model's K < the trace's: keep the K heaviest (as the replay); 0: all */
    /* The host and the coordinator (sim_run's time model; 0 everywhere: exchange only) */
    int ranks_per_host;          /* R > 0: every rank, the coordinator's too, on one host of C cores */
    int cores_per_host;          /* C */
    int coord_threads;           /* the coordinator's threads; 0: C (or 1 without a host) */
    double coord_ms;             /* coordinator's own work per step at one core: attention, dense, head */
    double coord_gflops;         /* its rate per core for the router and the shared experts; 0: the workers' */
    int shared_ffn;              /* width of the shared-expert pathway (n_shared * F); 0: none */
    double coord_link_gbps;      /* the coordinator's own link, which every worker's bytes cross; 0: no limit */
    double expert_bytes;         /* weights of one routed expert, read once per (layer, step) it is used */
    double mem_gbs;              /* a host's read bandwidth for weights, GB/s, shared by its ranks; 0: off */
} sim_params;

sim_params sim_default_params(void);

typedef struct sim_worker {      /* totals of one worker over the replay */
    uint64_t pairs;              /* (token, expert) pairs computed */
    uint64_t rows;               /* (token, layer) rows received */
    uint64_t bytes_in, bytes_out;/* request and reply bytes */
    int hosted;                  /* (layer, expert) entries the plan gives it */
    double busy_s;               /* link + compute time summed over (layer, step) */
} sim_worker;

typedef struct sim_result {
    double imbalance_mean, imbalance_p99;
    double fanout_mean;
    double bytes_per_token;      /* request + reply bytes, all layers, per token */
    double step_ms_mean;         /* predicted, all layers of a step (+ the coordinator's own work) */
    double exchange_ms_mean;     /* of which from dispatch to combine, all layers */
    double coord_ms_mean;        /* of which the coordinator's own work outside the exchange */
    double worker_compute_ms_mean; /* the slowest worker's compute in each layer (no link terms),
                                      all layers: what the cluster's worker_compute measures */
    double touched_mean;         /* distinct (worker, expert) of a (layer, step) with any pairs, averaged */
    long steps, tokens;
    int n_workers;
    sim_worker *workers;         /* [W + 1], index by rank; [0] unused */
} sim_result;

/* Replay t against p (its MoE layers take trace layers by trace_layer_for). 0, or
 * DH_EINVAL with a message (a plan without MoE layers, a bad batch, a plan for another E).
 * r->workers is malloc'd: sim_result_free. */
int sim_run(const trace *t, const place_plan *p, const sim_params *sp, sim_result *r);
void sim_result_free(sim_result *r);
/* The weight read bandwidth of one rank, GB/s: mem_gbs shared by the R - 1 workers of a host. */
double sim_read_gbs(const sim_params *sp);

/* The q-quantile (0..1) of v[n] (sorted in place), interpolating linearly between the two
 * nearest ranks: v[floor(h)] + (h - floor(h)) * (v[floor(h)+1] - v[floor(h)]), h = q * (n-1). */
double sim_quantile(double *v, size_t n, double q);

/* The per-worker table to f (stderr). */
void sim_print_workers(const sim_result *r, FILE *f);
#endif
