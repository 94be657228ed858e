/* loadstats.c: counters of the cluster's load and their table. */
#include "loadstats.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

ls_stats *ls_new(int n_layers, int n_experts, int n_workers) {
    ls_stats *s = xcalloc(1, sizeof *s);
    s->n_layers = n_layers, s->n_experts = n_experts, s->n_workers = n_workers;
    s->routed = xcalloc((size_t)n_layers * (size_t)DH_MAX(n_experts, 1), sizeof *s->routed);
    s->workers = xcalloc((size_t)n_workers + 1, sizeof *s->workers);
    return s;
}

void ls_free(ls_stats *s) {
    if (!s) return;
    free(s->routed);
    free(s->workers);
    free(s);
}

double ls_balance(const ls_stats *s) {
    double mx = 0, sum = 0;
    for (int w = 1; w <= s->n_workers; w++) {
        double x = (double)s->workers[w].expert_tokens;
        mx = DH_MAX(mx, x);
        sum += x;
    }
    return mx > 0 ? sum / s->n_workers / mx : 1.0;
}

void ls_domain_share(const ls_stats *s, const model_config *cfg, double *share) {
    double tot = 0;
    memset(share, 0, CFG_N_DOMAINS * sizeof *share);
    for (int l = 0; l < s->n_layers; l++)
        for (int e = 0; e < s->n_experts; e++) {
            double x = (double)s->routed[(size_t)l * s->n_experts + e];
            share[cfg->expert_domains[e]] += x;
            tot += x;
        }
    if (tot > 0)
        for (int d = 0; d < CFG_N_DOMAINS; d++) share[d] /= tot;
}

void ls_print(const ls_stats *s, const model_config *cfg, FILE *f) {
    if (s->n_workers > 0) {
        fprintf(f, "%-6s %8s %10s %12s %10s %10s %10s %9s\n", "worker", "experts", "tokens", "expert-tok",
                "compute_s", "MB_in", "MB_out", "RSS_GB");
        for (int w = 1; w <= s->n_workers; w++) {
            const ls_worker *x = &s->workers[w];
            fprintf(f, "%-6d %8llu %10llu %12llu %10.3f %10.2f %10.2f %9.2f\n", w,
                    (unsigned long long)x->experts_hosted, (unsigned long long)x->tokens,
                    (unsigned long long)x->expert_tokens, x->compute_s, x->bytes_in / 1e6, x->bytes_out / 1e6,
                    x->rss_bytes / 1e9);
        }
        fprintf(f, "balance (mean/max expert tokens): %.3f; exchanges: %llu, %.3f s from dispatch to combine\n",
                ls_balance(s), (unsigned long long)s->steps, s->exchange_s);
    }
    double share[CFG_N_DOMAINS];
    ls_domain_share(s, cfg, share);
    fprintf(f, "routed choices by domain:");
    for (int d = 0; d < CFG_N_DOMAINS; d++) fprintf(f, " %s %.1f%%", cfg->domain_names[d], 100 * share[d]);
    fprintf(f, "\n");
}

int ls_save_routing(const ls_stats *s, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) {
        log_error("%s: cannot write the routing counts: %s", path, strerror(errno));
        return DH_EIO;
    }
    fprintf(f, "darkhorse-routing 1\nlayers %d\nexperts %d\n# layer expert tokens\n", s->n_layers, s->n_experts);
    for (int l = 0; l < s->n_layers; l++)
        for (int e = 0; e < s->n_experts; e++)
            if (s->routed[(size_t)l * s->n_experts + e])
                fprintf(f, "%d %d %llu\n", l, e, (unsigned long long)s->routed[(size_t)l * s->n_experts + e]);
    if (fclose(f) != 0) {
        log_error("%s: write failed", path);
        return DH_EIO;
    }
    return 0;
}

int ls_load_routing(const char *path, int n_layers, int n_experts, double *counts) {
    FILE *f = fopen(path, "r");
    if (!f) return DH_ENOTFOUND;
    char line[256];
    int lineno = 0, rc = 0, v, l, e;
    unsigned long long n;
    while (!rc && fgets(line, sizeof line, f)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n') continue;
        if (lineno == 1) {
            if (sscanf(line, "darkhorse-routing %d", &v) != 1 || v != 1) {
                log_error("%s:1: not a routing-count file (first line must be 'darkhorse-routing 1')", path);
                rc = DH_EFORMAT;
            }
        } else if (sscanf(line, "layers %d", &v) == 1) {
            if (v != n_layers) {
                log_error("%s:%d: counts for %d layers, the model has %d", path, lineno, v, n_layers);
                rc = DH_EFORMAT;
            }
        } else if (sscanf(line, "experts %d", &v) == 1) {
            if (v != n_experts) {
                log_error("%s:%d: counts for %d experts a layer, the model has %d", path, lineno, v, n_experts);
                rc = DH_EFORMAT;
            }
        } else if (sscanf(line, "%d %d %llu", &l, &e, &n) == 3 && l >= 0 && l < n_layers && e >= 0 && e < n_experts) {
            counts[(size_t)l * n_experts + e] += (double)n;
        } else {
            log_error("%s:%d: expected 'layer expert tokens'", path, lineno);
            rc = DH_EFORMAT;
        }
    }
    fclose(f);
    return rc;
}
