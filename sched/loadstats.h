/* loadstats.h: load statistics of the cluster (ls_ prefix): tokens routed per (layer, expert),
 * and per worker the tokens received, compute time and bytes in and out. Kept by the
 * coordinator's engine thread; printed on exit of generate and bench, exported as metrics. */
#ifndef DH_LOADSTATS_H
#define DH_LOADSTATS_H
#include <stdint.h>
#include <stdio.h>

#include "core/config.h"

typedef struct ls_worker {
    uint64_t tokens;        /* (token, worker) rows sent to it */
    uint64_t expert_tokens; /* (token, expert) pairs it computed */
    uint64_t bytes_in;      /* activation bytes sent to it (ids and weights included) */
    uint64_t bytes_out;     /* result bytes it sent back */
    uint64_t exchanges;     /* MoE exchanges it took part in */
    double compute_s;       /* its own time in the experts, as it reported */
    uint64_t rss_bytes;     /* its resident memory, last reported */
    uint64_t experts_hosted;/* (layer, expert) pairs it hosts */
} ls_worker;

typedef struct ls_stats {
    int n_layers, n_experts, n_workers;
    uint64_t *routed;       /* [n_layers * E] tokens routed to each (layer, expert) */
    ls_worker *workers;     /* [n_workers + 1], by rank; [0] is the coordinator itself */
    double exchange_s;      /* coordinator time from dispatch to combine */
    double wait_s;          /* of which spent waiting for workers after its own work */
    double slowest_s;       /* the slowest worker's reported compute in each exchange, summed */
    uint64_t steps;         /* MoE exchanges */
} ls_stats;

ls_stats *ls_new(int n_layers, int n_experts, int n_workers);
void ls_free(ls_stats *s); /* NULL ok */
/* Balancedness of the work the workers received: mean / max of expert_tokens (1 = even). */
double ls_balance(const ls_stats *s);
/* Share of routed choices per domain: share[CFG_N_DOMAINS], summing to 1 (0s if none). */
void ls_domain_share(const ls_stats *s, const model_config *cfg, double *share);
/* The per-worker table (and a per-domain line) to f. */
void ls_print(const ls_stats *s, const model_config *cfg, FILE *f);

/* Routed-token counts per (layer, expert) as text ("darkhorse-routing 1", then one line
 * "layer expert tokens" per non-zero count): written to path, or added from path into
 * counts[n_layers * n_experts] (checking the sizes). 0, DH_ENOTFOUND (no file: nothing added),
 * or DH_EIO / DH_EFORMAT with a message naming the file and line. */
int ls_save_routing(const ls_stats *s, const char *path);
int ls_load_routing(const char *path, int n_layers, int n_experts, double *counts);
#endif
