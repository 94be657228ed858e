/* cmd_simulate.c: `darkhorse simulate`: replay a routing trace against a placement plan.
 *
 * The replay, the metrics and the time model are sched/simulate.c's (docs/placement.md). This
 * file reads the inputs: the trace (proto/tracefile), the plan in the text format the cluster
 * reads, and the layer numbering. Without --model, a plan numbers the trace's MoE layers
 * 0..L-1; with --model DIR, the model's layers (dense ones host nothing, the MTP block last),
 * and model MoE layer j replays trace layer floor(j * L / M). stdout is one compact JSON line;
 * the per-worker table goes to stderr. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli/commands.h"
#include "core/common.h"
#include "core/config.h"
#include "proto/tracefile.h"
#include "sched/simulate.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: darkhorse simulate --trace FILE --plan PLAN --batch B --mode decode|prefill [options] --json\n\n"
            "  --trace FILE          routing trace (darkhorse trace import, or --trace-out of a run)\n"
            "  --plan PLAN           placement plan, text format 'darkhorse-placement 1'\n"
            "  --batch B             tokens per step (prefill) or concurrent sequences (decode)\n"
            "  --mode decode|prefill\n"
            "  --seqs first-half|second-half|all   sequences replayed (default all)\n"
            "  --dispatch smart|turns  replica choice (default smart)\n"
            "  --model DIR           the plan numbers DIR's layers; dims from DIR's config.json\n"
            "  --wire f32|bf16       activation format on the wire (default f32)\n"
            "  --worker-rate G,...   expert GFLOP/s of workers 1..W, or one value for all (default %g)\n"
            "  --link-gbps G         each worker's link bandwidth, Gbit/s (default %g)\n"
            "  --link-us U           one-way message latency, microseconds (default %g)\n"
            "  --json                stdout: one JSON line (always; accepted for the contract)\n"
            "The coordinator and the host (docs/cluster.md); any of these adds the coordinator's work:\n"
            "  --ranks-per-host R --cores-per-host C   all ranks share one host of C cores\n"
            "  --coord-threads T     the coordinator's threads (default C, or 1 without a host)\n"
            "  --coord-ms MS         its own work per step at one core (attention, dense, head)\n"
            "  --calibration FILE    an in-process `darkhorse bench --json` of --model: the expert rate\n"
            "                        per core and (unless --coord-ms) the coordinator's own work\n"
            "  --no-mtp              the MTP block does not run (plain decoding, as bench)\n"
            "  --worker-cores N      with --calibration: workers compute at N calibrated cores (default 1)\n"
            "  --coord-link-gbps G   the coordinator's own link, which all workers' bytes cross\n"
            "  --coord-gflops G      the coordinator's rate per core for the router and shared experts\n"
            "  --mem-gbs G           a host's weight read bandwidth, GB/s (shared by its workers): each\n"
            "                        distinct expert a worker uses in a (layer, step) is read once\n"
            "  --weight-bytes N      bytes per stored weight (default 2: bf16)\n"
            "Dims (hidden size, expert FFN width) come from --model, else from the trace header.\n",
            SIM_DEFAULT_GFLOPS, SIM_DEFAULT_LINK_GBPS, SIM_DEFAULT_LINK_US);
}

/* The worker count a plan file declares ('workers N'), or -1 with a message. */
static int plan_workers(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "darkhorse simulate: %s: cannot open the plan: %s\n", path, strerror(errno));
        return -1;
    }
    char line[8192];
    int w = -1;
    while (w < 0 && fgets(line, sizeof line, f))
        if (sscanf(line, " workers %d", &w) != 1) w = -1;
    fclose(f);
    if (w < 1 || w > 1024) {
        fprintf(stderr, "darkhorse simulate: %s: no 'workers N' line with N in 1..1024\n", path);
        return -1;
    }
    return w;
}

static int parse_pos(const char *name, const char *arg, double *v) {
    char *end;
    *v = strtod(arg, &end);
    if (*end || end == arg || !(*v > 0) || *v > 1e12) {
        fprintf(stderr, "darkhorse simulate: %s wants a positive number, not '%s'\n", name, arg);
        return -1;
    }
    return 0;
}

/* "G" or "G1,...,GW" into rates[W]: 0, or -1 with a message. */
static int parse_rates(const char *s, int W, double *rates) {
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || !(v > 0) || (*end && *end != ',') || n == W) {
            fprintf(stderr, "darkhorse simulate: --worker-rate wants one rate or %d positive rates, not '%s'\n", W, s);
            return -1;
        }
        rates[n++] = v;
        p = *end ? end + 1 : end;
    }
    if (n == 1)
        for (int w = 1; w < W; w++) rates[w] = rates[0];
    else if (n != W) {
        fprintf(stderr, "darkhorse simulate: --worker-rate has %d rates, the plan has %d workers\n", n, W);
        return -1;
    }
    return 0;
}

typedef struct sim_cli {
    const char *trace, *plan, *model, *rates, *calibration;
    sim_params sp;
    model_config cfg;   /* with --model */
    double rate;        /* the calibration's expert rate per core, GFLOP/s; 0 without */
    double worker_cores; /* with --calibration: each worker computes at this many calibrated cores */
    double weight_bytes; /* bytes per stored weight (--weight-bytes; default 2, bf16) */
} sim_cli;

static int parse_args(int argc, char **argv, sim_cli *a) {
    static const struct option opts[] = {
        {"trace", required_argument, 0, 't'},    {"plan", required_argument, 0, 'p'},
        {"batch", required_argument, 0, 'b'},    {"mode", required_argument, 0, 'm'},
        {"seqs", required_argument, 0, 's'},     {"dispatch", required_argument, 0, 'd'},
        {"model", required_argument, 0, 'M'},    {"wire", required_argument, 0, 'w'},
        {"worker-rate", required_argument, 0, 'r'}, {"link-gbps", required_argument, 0, 'g'},
        {"link-us", required_argument, 0, 'u'},  {"json", no_argument, 0, 'j'},
        {"ranks-per-host", required_argument, 0, 'R'}, {"cores-per-host", required_argument, 0, 'C'},
        {"coord-threads", required_argument, 0, 'T'}, {"coord-ms", required_argument, 0, 'c'},
        {"calibration", required_argument, 0, 'k'}, {"no-mtp", no_argument, 0, 'n'},
        {"coord-link-gbps", required_argument, 0, 'G'}, {"worker-cores", required_argument, 0, 'W'},
        {"mem-gbs", required_argument, 0, 'B'}, {"weight-bytes", required_argument, 0, 'Y'},
        {"coord-gflops", required_argument, 0, 'F'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    int c;
    double v;
    a->sp.batch = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': a->trace = optarg; break;
        case 'p': a->plan = optarg; break;
        case 'M': a->model = optarg; break;
        case 'r': a->rates = optarg; break;
        case 'j': break;
        case 'b':
            if (parse_pos("--batch", optarg, &v) || v != (int)v || v > 1 << 20) {
                fprintf(stderr, "darkhorse simulate: --batch wants a whole number of tokens\n");
                return 2;
            }
            a->sp.batch = (int)v;
            break;
        case 'm':
            if (strcmp(optarg, "decode") && strcmp(optarg, "prefill")) {
                fprintf(stderr, "darkhorse simulate: --mode wants decode or prefill, not '%s'\n", optarg);
                return 2;
            }
            a->sp.mode = strcmp(optarg, "prefill") ? SIM_DECODE : SIM_PREFILL;
            break;
        case 's':
            if (trace_parse_half(optarg, &a->sp.half)) {
                fprintf(stderr, "darkhorse simulate: --seqs wants first-half, second-half or all, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'd':
            if (disp_parse_rule(optarg, &a->sp.dispatch)) {
                fprintf(stderr, "darkhorse simulate: --dispatch wants smart or turns, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'w':
            if (strcmp(optarg, "f32") && strcmp(optarg, "bf16")) {
                fprintf(stderr, "darkhorse simulate: --wire wants f32 or bf16, not '%s'\n", optarg);
                return 2;
            }
            a->sp.wire_bytes = strcmp(optarg, "bf16") ? 4 : 2;
            break;
        case 'g': if (parse_pos("--link-gbps", optarg, &a->sp.link_gbps)) return 2; break;
        case 'u': if (parse_pos("--link-us", optarg, &a->sp.link_us)) return 2; break;
        case 'R': case 'C': case 'T':
            if (parse_pos(c == 'R' ? "--ranks-per-host" : c == 'C' ? "--cores-per-host" : "--coord-threads", optarg,
                          &v) || v != (int)v || v > 4096)
                return 2;
            *(c == 'R' ? &a->sp.ranks_per_host : c == 'C' ? &a->sp.cores_per_host : &a->sp.coord_threads) = (int)v;
            break;
        case 'c': if (parse_pos("--coord-ms", optarg, &a->sp.coord_ms)) return 2; break;
        case 'G': if (parse_pos("--coord-link-gbps", optarg, &a->sp.coord_link_gbps)) return 2; break;
        case 'W': if (parse_pos("--worker-cores", optarg, &a->worker_cores)) return 2; break;
        case 'B': if (parse_pos("--mem-gbs", optarg, &a->sp.mem_gbs)) return 2; break;
        case 'Y': if (parse_pos("--weight-bytes", optarg, &a->weight_bytes)) return 2; break;
        case 'F': if (parse_pos("--coord-gflops", optarg, &a->sp.coord_gflops)) return 2; break;
        case 'k': a->calibration = optarg; break;
        case 'n': a->sp.skip_last = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if ((a->sp.ranks_per_host > 0) != (a->sp.cores_per_host > 0) || (a->calibration && !a->model)) {
        fprintf(stderr, "darkhorse simulate: --ranks-per-host and --cores-per-host go together; --calibration "
                        "needs --model\n");
        return 2;
    }
    if (!a->trace || !a->plan || a->sp.batch < 1 || optind < argc) {
        fprintf(stderr, "darkhorse simulate: --trace, --plan and --batch are required\n");
        usage(stderr);
        return 2;
    }
    return -1;
}

/* The plan's layer numbering: the model's (--model) or the trace's. Sets *n_layers, *is_moe
 * (malloc'd) and the dims when the model gives them. 0 or -1. */
static int plan_layers(const sim_cli *a, const trace *t, int *n_layers, uint8_t **is_moe, sim_params *sp) {
    if (!a->model) {
        *n_layers = t->n_layers;
        *is_moe = xmalloc((size_t)t->n_layers);
        memset(*is_moe, 1, (size_t)t->n_layers);
        return 0;
    }
    char path[4200];
    model_config cfg;
    snprintf(path, sizeof path, "%s/config.json", a->model);
    if (cfg_load(&cfg, path) != 0) return -1;
    if (cfg.n_routed_experts != t->n_experts) {
        fprintf(stderr, "darkhorse simulate: %s has %d routed experts, the trace %d\n", path, cfg.n_routed_experts,
                t->n_experts);
        return -1;
    }
    *n_layers = cfg.num_hidden_layers + (cfg.num_nextn_predict_layers > 0 ? 1 : 0);
    *is_moe = xmalloc((size_t)*n_layers);
    for (int l = 0; l < *n_layers; l++) (*is_moe)[l] = (uint8_t)cfg_is_moe_layer(&cfg, l);
    sp->hidden_size = cfg.hidden_size, sp->ffn_size = cfg.moe_intermediate_size;
    ((sim_cli *)a)->cfg = cfg;
    sp->top_k = cfg.num_experts_per_tok; /* the K heaviest of the trace's, as --routing-replay */
    return 0;
}

/* --calibration FILE: the last JSON line of an in-process `darkhorse bench --json` of this
 * model. Its per-step times give the coordinator's own work at one core (attention, dense,
 * head; unless --coord-ms) and the expert rate per core: the MoE part's flops (router, K
 * routed and the shared experts of every MoE layer but the MTP block's, per token) over its
 * time. A run with T threads counts as T cores. 0, or -1 with a message. */
static int calibrate(sim_cli *a) {
    json_error_t err;
    FILE *f = fopen(a->calibration, "r");
    char line[8192], last[8192] = "";
    if (!f) {
        fprintf(stderr, "darkhorse simulate: %s: cannot open: %s\n", a->calibration, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f))
        if (line[0] == '{') memcpy(last, line, sizeof last);
    fclose(f);
    json_t *j = json_loads(last, 0, &err);
    double att = 0, dense = 0, head = 0, moe = 0;
    int B = 0, threads = 0, ranks = 0;
    if (!j || json_unpack_ex(j, &err, 0, "{s:i, s:i, s:i, s:{s:F, s:F, s:F, s:F}}", "batch", &B, "threads", &threads,
                             "ranks", &ranks, "ms_per_step", "attention", &att, "moe", &moe, "dense", &dense, "head",
                             &head) || B < 1 || threads < 1 || !(moe > 0) || ranks != 1) {
        fprintf(stderr, "darkhorse simulate: %s: not an in-process bench --json line with batch, threads and "
                        "ms_per_step (%s)\n", a->calibration, j ? err.text : "no JSON object");
        json_decref(j);
        return -1;
    }
    json_decref(j);
    const model_config *c = &a->cfg;
    int M = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) M += cfg_is_moe_layer(c, l) != 0;
    double D = c->hidden_size, F = c->moe_intermediate_size;
    double flops = (double)B * M * (2 * D * c->n_routed_experts + 6 * D * F * (c->num_experts_per_tok + c->n_shared_experts));
    a->rate = flops / (moe * 1e-3) / threads / 1e9;
    if (!(a->sp.coord_ms > 0)) a->sp.coord_ms = (att + dense + head) * threads;
    if (!(a->sp.coord_gflops > 0)) a->sp.coord_gflops = a->rate;
    fprintf(stderr, "simulate: calibration %s: expert rate %.2f GFLOP/s a core, coordinator's own work %.1f ms a "
                    "step at one core\n", a->calibration, a->rate, a->sp.coord_ms);
    return 0;
}

int cmd_simulate(int argc, char **argv) {
    sim_cli a = {.sp = sim_default_params()};
    int rc = parse_args(argc, argv, &a);
    if (rc >= 0) return rc;
    int W = plan_workers(a.plan);
    if (W < 0) return 1;
    double *rates = xcalloc((size_t)W, sizeof *rates);
    uint8_t *is_moe = NULL;
    place_plan *p = NULL;
    sim_result r = {0};
    trace *t = NULL;
    int n_layers = 0;
    rc = 1;
    if (a.rates && parse_rates(a.rates, W, rates)) goto out;
    if (!(t = tf_read(a.trace))) goto out;
    a.sp.hidden_size = t->hidden_size, a.sp.ffn_size = t->ffn_size;
    if (plan_layers(&a, t, &n_layers, &is_moe, &a.sp)) goto out;
    if (a.sp.hidden_size <= 0 || a.sp.ffn_size <= 0) {
        fprintf(stderr, "darkhorse simulate: %s does not give the hidden size and expert FFN width: use --model DIR\n",
                a.trace);
        goto out;
    }
    if (!(p = place_load(a.plan, n_layers, t->n_experts, W, is_moe))) goto out;
    if (a.calibration) {
        if (calibrate(&a)) goto out;
        if (!a.rates)
            for (int w = 0; w < W; w++) rates[w] = a.rate * (a.worker_cores > 0 ? a.worker_cores : 1);
        a.rates = "calibration";
    }
    a.sp.expert_bytes = 3.0 * a.sp.hidden_size * a.sp.ffn_size * (a.weight_bytes > 0 ? a.weight_bytes : 2);
    if (a.model && (a.calibration || a.sp.coord_ms > 0 || a.sp.ranks_per_host > 0))
        a.sp.shared_ffn = a.cfg.n_shared_experts * a.cfg.moe_intermediate_size;
    a.sp.is_moe = is_moe;
    a.sp.worker_gflops = a.rates ? rates : NULL;
    if (sim_run(t, p, &a.sp, &r) != 0) goto out;
    fprintf(stderr, "simulate: %s, %s, B %d, %s, dispatch %s, %d workers: %ld steps, %ld tokens (D %d, F %d)\n",
            a.trace, a.sp.mode == SIM_PREFILL ? "prefill" : "decode", a.sp.batch, trace_half_name(a.sp.half),
            disp_rule_name(a.sp.dispatch), W, r.steps, r.tokens, a.sp.hidden_size, a.sp.ffn_size);
    sim_print_workers(&r, stderr);
    json_t *j = json_object();
    json_object_set_new(j, "imbalance_mean", json_real(r.imbalance_mean));
    json_object_set_new(j, "imbalance_p99", json_real(r.imbalance_p99));
    json_object_set_new(j, "fanout_mean", json_real(r.fanout_mean));
    json_object_set_new(j, "bytes_per_token", json_real(r.bytes_per_token));
    json_object_set_new(j, "step_ms_mean", json_real(r.step_ms_mean));
    json_object_set_new(j, "exchange_ms_mean", json_real(r.exchange_ms_mean));
    json_object_set_new(j, "worker_compute_ms_mean", json_real(r.worker_compute_ms_mean));
    json_object_set_new(j, "coord_ms_mean", json_real(r.coord_ms_mean));
    json_object_set_new(j, "touched_mean", json_real(r.touched_mean));
    json_object_set_new(j, "steps", json_integer(r.steps));
    json_object_set_new(j, "tokens", json_integer(r.tokens));
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
    printf("%s\n", s);
    free(s);
    json_decref(j);
    rc = 0;
out:
    sim_result_free(&r);
    place_free(p);
    trace_free(t);
    free(is_moe), free(rates);
    return rc;
}
