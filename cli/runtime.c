/* runtime.c: option handling and set-up shared by logits, generate, bench and serve. */
#include "cli/runtime.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "core/nn.h"
#include "proto/exchange.h"
#include "worker/worker.h"

rt_opts rt_default_opts(void) {
    return (rt_opts){.threads = 0, .weights = -1, .placement_algo = "contiguous", .worker_timeout = 10.0,
                     .prefill_cache_mib = (long)(FWD_PREFILL_CACHE_DEFAULT >> 20)};
}

int rt_parse_long(const char *name, const char *arg, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || end == arg || *end || v < lo || v > hi) {
        fprintf(stderr, "darkhorse: %s wants an integer in [%ld, %ld], not '%s'\n", name, lo, hi, arg);
        return -1;
    }
    *out = v;
    return 0;
}

int rt_parse_num(const char *name, const char *arg, double lo, double hi, double *out) {
    char *end;
    double v = strtod(arg, &end);
    if (*end || end == arg || !(v >= lo && v <= hi)) {
        fprintf(stderr, "darkhorse: %s wants a number in [%g, %g], not '%s'\n", name, lo, hi, arg);
        return -1;
    }
    *out = v;
    return 0;
}

int rt_parse_opt(rt_opts *o, int code, const char *arg) {
    char *end;
    long v;
    switch (code) {
    case 1000: o->model_dir = arg; return 1;
    case 1001:
        if (rt_parse_long("--threads", arg, 1, 1024, &v)) return -1;
        o->threads = (int)v;
        return 1;
    case 1002:
        o->weights = wt_dtype_parse(arg);
        if (o->weights < 0 || o->weights == DT_F16) {
            fprintf(stderr, "darkhorse: --weights wants f32, bf16, q8 or q4, not '%s'\n", arg);
            return -1;
        }
        return 1;
    case 1003: o->placement_algo = arg; return 1;
    case 1004: o->placement_file = arg; return 1;
    case 1005: o->placement_out = arg; return 1;
    case 1006:
        o->worker_timeout = strtod(arg, &end);
        if (*end || !(o->worker_timeout > 0)) {
            fprintf(stderr, "darkhorse: --worker-timeout wants seconds > 0, not '%s'\n", arg);
            return -1;
        }
        return 1;
    case 1007:
        if (strcmp(arg, "f32") && strcmp(arg, "bf16")) {
            fprintf(stderr, "darkhorse: --wire wants f32 or bf16, not '%s'\n", arg);
            return -1;
        }
        o->wire_bf16 = strcmp(arg, "bf16") == 0;
        return 1;
    case 1008: o->portable = 1; return 1;
    case 1015: o->mmap = 1; return 1;
    case 1016: return rt_parse_long("--prefill-cache", arg, 0, 1L << 24, &o->prefill_cache_mib) ? -1 : 1;
    case 1010: o->routing_stats = arg; return 1;
    case 1012: o->trace_out = arg; return 1;
    case 1013: o->routing_replay = arg; return 1;
    case 1014: {
        rpl_order ro;
        if (rpl_parse_order(arg, &ro)) {
            fprintf(stderr, "darkhorse: --replay-order wants turns or domain, not '%s'\n", arg);
            return -1;
        }
        o->replay_order = (int)ro, o->replay_order_set = 1;
        return 1;
    }
    case 1011: {
        double *cap = NULL;
        if (strcmp(arg, "measured") != 0 && place_parse_capacity(arg, &cap) < 0) return -1;
        free(cap);
        o->worker_capacity = arg;
        return 1;
    }
    default: return 0;
    }
}

/* Threads per rank: all cores in-process and on the coordinator (it works while the workers
 * wait and the reverse); the cores shared among the workers of this node otherwise. */
int rt_default_threads(int requested) {
    if (requested > 0) return requested;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    int cores = n > 0 ? (int)n : 1, P = xchg_size();
    if (P <= 1 || xchg_rank() == 0) return cores;
    int local_workers = xchg_local_ranks() - (P > 1 ? 1 : 0);
    return DH_MAX(1, cores / DH_MAX(1, local_workers));
}

int rt_open(rt *r, const rt_opts *o, int max_rows, int max_seq_len, int n_seqs) {
    return rt_open_kv(r, o, max_rows, max_seq_len, n_seqs, (size_t)max_seq_len * n_seqs + KV_BLOCK * (size_t)n_seqs);
}

int rt_open_kv(rt *r, const rt_opts *o, int max_rows, int max_seq_len, int n_seqs, size_t kv_tokens) {
    memset(r, 0, sizeof *r);
    r->o = *o;
    if (!o->model_dir) {
        fprintf(stderr, "darkhorse: --model DIR is required\n");
        return 1;
    }
    if (o->replay_order_set && !o->routing_replay) {
        fprintf(stderr, "darkhorse: --replay-order needs --routing-replay FILE\n");
        return 1;
    }
    nn_init(rt_default_threads(o->threads), o->portable);
    r->clustered = xchg_size() > 1;
    if (r->clustered && xchg_rank() > 0) {
        worker_opts wo = {.model_dir = o->model_dir, .weights = o->weights, .mmap = o->mmap};
        r->worker_rc = worker_main(&wo);
        nn_shutdown();
        return RT_WORKER;
    }
    double t0 = dh_now();
    model_params p = model_default_params();
    p.weights = o->weights;
    p.experts = !r->clustered;
    p.copy = !o->mmap;
    r->m = model_load(o->model_dir, &p);
    if (!r->m) {
        if (r->clustered) xchg_abort(1); /* the workers wait for a hello */
        rt_close(r, 0);
        return 1;
    }
    r->load_s = dh_now() - t0;
    const model_config *c = &r->m->cfg;
    r->max_rows = max_rows;
    r->kv = kv_new(r->m->n_layers, c->kv_lora_rank + c->qk_rope_head_dim, kv_tokens, n_seqs, max_seq_len);
    if (!r->kv) {
        fprintf(stderr, "darkhorse: cannot size the KV cache\n");
        if (r->clustered) xchg_abort(1);
        rt_close(r, 0);
        return 1;
    }
    if (r->clustered) {
        cluster_params cp = {.placement_algo = o->placement_algo, .placement_file = o->placement_file,
                             .placement_out = o->placement_out, .timeout = o->worker_timeout,
                             .wire_bf16 = o->wire_bf16, .max_rows = max_rows};
        double *load = NULL, *cap = NULL;
        if (o->worker_capacity && strcmp(o->worker_capacity, "measured") == 0) cp.capacity_measured = 1;
        else if (o->worker_capacity) cp.n_capacity = place_parse_capacity(o->worker_capacity, &cap);
        cp.capacity = cap;
        if (o->routing_stats) {
            load = xcalloc((size_t)r->m->n_layers * DH_MAX(c->n_routed_experts, 1), sizeof *load);
            int lrc = ls_load_routing(o->routing_stats, r->m->n_layers, c->n_routed_experts, load);
            if (lrc == DH_EFORMAT) xchg_abort(1); /* the workers wait for a hello */
            if (lrc == 0) {
                cp.load = load;
                log_info("%s: observed routing counts for the placement", o->routing_stats);
            }
        }
        int crc = cluster_start(&r->cl, r->m, &cp);
        free(load);
        free(cap);
        if (crc != 0) {
            rt_close(r, 0);
            return 1;
        }
        r->moe = r->cl.moe;
        r->stats = r->cl.stats;
    } else {
        r->moe = moe_local_new(r->m, max_rows);
        r->stats = ls_new(r->m->n_layers, c->n_routed_experts, 0);
    }
    r->f = fwd_new(r->m, r->kv, r->moe, max_rows);
    fwd_set_prefill_cache(r->f, (size_t)o->prefill_cache_mib << 20);
    fwd_set_route_counts(r->f, r->stats->routed);
    if (o->routing_replay) {
        if (!(r->replay = rpl_open(o->routing_replay, r->m, (rpl_order)o->replay_order))) {
            rt_close(r, 0);
            return 1;
        }
        fwd_set_replay(r->f, rpl_route, r->replay);
    }
    if (o->trace_out) {
        if (!(r->rec = trec_open(o->trace_out, r->m, max_rows))) {
            rt_close(r, 0);
            return 1;
        }
        fwd_set_route_hook(r->f, trec_route, r->rec);
    }
    log_info("loaded %s in %.2f s: %.2f GB of weights, %s kernels, %d threads", o->model_dir, r->load_s,
             model_weight_bytes(r->m) / 1e9, nn_kernels()->name, nn_threads());
    return 0;
}

/* the routing counts of this run added to those of the --routing-stats file */
static void save_routing(rt *r) {
    const char *path = r->o.routing_stats;
    ls_stats *all = ls_new(r->stats->n_layers, r->stats->n_experts, 0);
    size_t n = (size_t)all->n_layers * DH_MAX(all->n_experts, 1);
    double *old = xcalloc(n, sizeof *old);
    if (ls_load_routing(path, all->n_layers, all->n_experts, old) != DH_EFORMAT) {
        for (size_t i = 0; i < n; i++) all->routed[i] = (uint64_t)old[i] + r->stats->routed[i];
        if (ls_save_routing(all, path) == 0) log_info("%s: routing counts saved", path);
    }
    free(old);
    ls_free(all);
}

void rt_close(rt *r, int print_stats) {
    if (r->clustered && r->cl.stats) cluster_report(&r->cl);
    if (print_stats && r->stats && r->m) ls_print(r->stats, &r->m->cfg, stderr);
    if (r->o.routing_stats && r->stats && r->m) save_routing(r);
    trec_close(r->rec);
    if (r->replay) {
        long run, taken;
        rpl_counts(r->replay, &run, &taken);
        log_info("routing replay of %s: %ld sequences of the run took %ld trace sequences", r->o.routing_replay, run,
                 taken);
    }
    rpl_free(r->replay);
    fwd_free(r->f);
    if (r->clustered) {
        cluster_stop(&r->cl); /* frees the backend and the stats */
    } else {
        moe_free(r->moe);
        ls_free(r->stats);
    }
    kv_free(r->kv);
    model_free(r->m);
    nn_shutdown();
    memset(r, 0, sizeof *r);
}

void rt_step_failed(rt *r, int code) {
    log_error("the forward pass failed: %s", dh_strerror(code));
    if (r->clustered) {
        log_error("ending the job on every rank");
        xchg_abort(1);
    }
}

int rt_parse_ids(const char *s, int vocab, int **ids) {
    int n = 0, cap = 16;
    int *v = xmalloc((size_t)cap * sizeof *v);
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x >= vocab) {
            fprintf(stderr, "darkhorse: --ids: '%.*s' is not a token id in [0, %d)\n",
                    (int)strcspn(p, ","), p, vocab);
            free(v);
            return -1;
        }
        if (n == cap) v = xrealloc(v, (size_t)(cap *= 2) * sizeof *v);
        v[n++] = (int)x;
        p = end;
        if (*p == ',') p++;
        else if (*p) {
            fprintf(stderr, "darkhorse: --ids wants comma-separated integers, not '%s'\n", s);
            free(v);
            return -1;
        }
    }
    if (n == 0) {
        fprintf(stderr, "darkhorse: --ids is empty\n");
        free(v);
        return -1;
    }
    *ids = v;
    return n;
}
