/* cmd_serve.c: `darkhorse serve`: the OpenAI-compatible HTTP API over the continuous-batching
 * engine, in one process or as rank 0 of a cluster.
 *
 * The model, the cache and (under mpirun) the cluster come from rt_open_kv; worker ranks serve
 * the experts there and return. On the coordinator the HTTP server runs on a thread of its own
 * and the engine on this one: MPI is initialised FUNNELED and the forward pass calls MPI. The
 * server catches SIGTERM and SIGINT: it stops accepting, lets the requests in flight finish for
 * --shutdown-grace seconds, and engine_run returns; then the workers are stopped and the exit
 * status is 0. Worker ranks ignore SIGTERM and SIGINT, so that a signal forwarded by mpirun to
 * every rank leaves them serving until the coordinator shuts them down (see docs/serving.md
 * for stopping a cluster). When the cluster fails (a worker lost), the requests in flight get
 * their error responses, written out for up to 2 s, before the job is ended. In a cluster the
 * engine's tick drives live re-placement (coordinator/replan.h): every --replan-every steps,
 * and on POST /admin/replan. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "coordinator/engine.h"
#include "coordinator/metrics.h"
#include "core/common.h"
#include "core/tokenizer.h"
#include "frontend/backend.h"
#include "frontend/server.h"
#include "proto/exchange.h"

#define FLUSH_S 2.0 /* seconds to write out the last responses before the process ends */

typedef struct serve_opts {
    const char *host, *api_key, *served_name;
    long port, max_seqs, max_batch_tokens, max_queue, ctx, kv_tokens, max_body;
    long replan_every, replan_window, max_moves;
    double grace;
} serve_opts;

static void usage(FILE *f) {
    fprintf(f,
            "usage: darkhorse serve --model DIR [options]\n\n"
            "Serves the OpenAI-compatible API: POST /v1/completions, /v1/chat/completions (both with\n"
            "\"stream\": true), GET /v1/models, /health and /metrics (Prometheus). See docs/serving.md.\n\n"
            "  --host ADDR            address to bind (default 127.0.0.1)\n"
            "  --port N               port, 0 for any free one (default 8080)\n"
            "  --api-key KEY          require 'Authorization: Bearer KEY' on /v1/* (default: the\n"
            "                         environment's DARKHORSE_API_KEY, else none)\n"
            "  --served-name NAME     model name in responses (default: the model directory's name)\n"
            "  --max-seqs N           sequences running at once (default 16)\n"
            "  --max-batch-tokens N   rows per engine step, decode and prompt chunks (default 256)\n"
            "  --max-queue N          waiting requests before 429 (default 64)\n"
            "  --ctx N                prompt + max_tokens at most (default 4096, at most the model's)\n"
            "  --kv-tokens N          KV cache positions shared by all sequences (default\n"
            "                         max(ctx, 1024 x max-seqs))\n"
            "  --max-body N           request body limit in bytes, beyond it 413 (default 4194304)\n"
            "  --shutdown-grace S     seconds requests in flight may finish after SIGTERM (default 30)\n"
            "  --replan-every N       under mpirun: re-place the experts every N steps from the routing\n"
            "                         of the last --replan-window steps (default 0: only on\n"
            "                         POST /admin/replan, which needs --api-key)\n"
            "  --replan-window N      steps of routing a re-plan is made from (default 256, at most 4096)\n"
            "  --max-moves M          (layer, expert) placements one re-plan may add (default: no bound)\n"
            RT_HELP);
}

static int parse_long(const char *name, const char *arg, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || end == arg || *end || v < lo || v > hi) {
        fprintf(stderr, "darkhorse serve: %s wants an integer in [%ld, %ld], not '%s'\n", name, lo, hi, arg);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_args(int argc, char **argv, serve_opts *o, rt_opts *ro) {
    static const struct option opts[] = {
        {"host", required_argument, 0, 'H'},           {"port", required_argument, 0, 'p'},
        {"api-key", required_argument, 0, 'k'},        {"served-name", required_argument, 0, 'n'},
        {"max-seqs", required_argument, 0, 's'},       {"max-batch-tokens", required_argument, 0, 'b'},
        {"max-queue", required_argument, 0, 'q'},      {"ctx", required_argument, 0, 'c'},
        {"kv-tokens", required_argument, 0, 'K'},      {"max-body", required_argument, 0, 'B'},
        {"shutdown-grace", required_argument, 0, 'g'}, {"help", no_argument, 0, 'h'},
        {"replan-every", required_argument, 0, 'R'},   {"replan-window", required_argument, 0, 'W'},
        {"max-moves", required_argument, 0, 'M'},
        RT_LONGOPTS,                                   {0, 0, 0, 0}};
    int c, r = 0;
    char *end;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = rt_parse_opt(ro, c, optarg)) < 0) return 2;
        if (r) continue;
        switch (c) {
        case 'H': o->host = optarg; break;
        case 'p': r = parse_long("--port", optarg, 0, 65535, &o->port); break;
        case 'k': o->api_key = optarg; break;
        case 'n': o->served_name = optarg; break;
        case 's': r = parse_long("--max-seqs", optarg, 1, 4096, &o->max_seqs); break;
        case 'b': r = parse_long("--max-batch-tokens", optarg, 1, 65536, &o->max_batch_tokens); break;
        case 'q': r = parse_long("--max-queue", optarg, 1, 1000000, &o->max_queue); break;
        case 'c': r = parse_long("--ctx", optarg, 2, 1 << 24, &o->ctx); break;
        case 'K': r = parse_long("--kv-tokens", optarg, 16, 1L << 30, &o->kv_tokens); break;
        case 'B': r = parse_long("--max-body", optarg, 1024, 1L << 30, &o->max_body); break;
        case 'R': r = parse_long("--replan-every", optarg, 0, 1L << 40, &o->replan_every); break;
        case 'W': r = parse_long("--replan-window", optarg, 1, 4096, &o->replan_window); break;
        case 'M': r = parse_long("--max-moves", optarg, 0, 1 << 30, &o->max_moves); break;
        case 'g':
            o->grace = strtod(optarg, &end);
            if (*end || end == optarg || !(o->grace >= 0 && o->grace <= 86400)) {
                fprintf(stderr, "darkhorse serve: --shutdown-grace wants seconds in [0, 86400], not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return 2;
        }
        if (r) return 2;
    }
    if (optind < argc || !ro->model_dir) {
        fprintf(stderr, "darkhorse serve: give --model DIR%s\n", optind < argc ? " and no other arguments" : "");
        usage(stderr);
        return 2;
    }
    if (o->max_batch_tokens < o->max_seqs) {
        fprintf(stderr, "darkhorse serve: --max-batch-tokens (%ld) must be at least --max-seqs (%ld): every running "
                        "sequence takes a row of each step\n", o->max_batch_tokens, o->max_seqs);
        return 2;
    }
    return 0;
}

/* the last component of dir, without trailing slashes, into buf */
static const char *base_name(const char *dir, char *buf, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    snprintf(buf, cap, "%.*s", (int)(n - b), dir + b);
    return buf;
}

/* On the coordinator, after rt_open_kv: serve until a signal or a failure. The exit code. */
static int serve(rt *R, const serve_opts *o) {
    char path[1100], name[256];
    snprintf(path, sizeof path, "%s/tokenizer.json", R->o.model_dir);
    tokenizer *tok = tok_load(path);
    if (!tok) {
        fprintf(stderr, "darkhorse serve: the API takes and gives text: it needs %s\n", path);
        return 1;
    }
    const model_config *c = &R->m->cfg;
    int ctx = (int)DH_MIN((size_t)o->ctx, kv_total_tokens(R->kv));
    if (c->max_position_embeddings > 0) ctx = DH_MIN(ctx, c->max_position_embeddings);
    if (ctx < o->ctx) log_warn("the context is %d tokens (the model's limit or the KV cache's), not %ld", ctx, o->ctx);
    srv_params sp = {.host = o->host, .port = (int)o->port, .api_key = o->api_key,
                     .served_name = o->served_name ? o->served_name : base_name(R->o.model_dir, name, sizeof name),
                     .max_body = (size_t)o->max_body, .max_context = ctx, .shutdown_grace = o->grace,
                     .workers = R->stats->n_workers, .routing_replay = R->o.routing_replay,
                     .replay_order = rpl_order_name((rpl_order)R->o.replay_order)};
    fb_backend *b = fb_local_new();
    srv *s = srv_new(&sp, &R->m->cfg, tok, b);
    engine_params ep = {.max_seqs = (int)o->max_seqs, .max_batch_tokens = (int)o->max_batch_tokens,
                        .max_queue = (int)o->max_queue, .max_context = ctx};
    engine *e = engine_new(R->m, R->f, R->kv, R->stats, &ep, fb_local_emit, b);
    log_info("KV cache: %zu positions (%.2f GB), %ld sequences, %ld rows per step", kv_total_tokens(R->kv),
             kv_total_tokens(R->kv) * (double)kv_bytes_per_token(R->kv) / 1e9, o->max_seqs, o->max_batch_tokens);
    rp *replan = NULL;
    if (R->clustered) {
        rp_params rpp = rp_default_params();
        rpp.every = (int)DH_MIN(o->replan_every, INT_MAX), rpp.window = (int)o->replan_window;
        rpp.max_moves = (int)o->max_moves;
        replan = rp_new(&R->cl, &rpp, fb_local_replan_done, b);
        engine_set_tick(e, rp_tick, replan);
    } else if (o->replan_every) {
        log_warn("--replan-every is for a cluster (mpirun -np N, N >= 2): ignored in one process");
    }
    cmetrics *cm = cmetrics_new(R->m, e, R->stats->n_layers, R->stats->n_experts, R->stats->n_workers);
    fb_local_attach(b, e, replan, cm);
    int rc = 1;
    if (srv_start(s) == 0) {
        int erc = engine_run(e);
        fb_local_attach(b, e, NULL, cm); /* the HTTP thread lets go of the re-planner */
        rp_free(replan, erc != 0);       /* a re-plan in flight: cancelled, its requester answered */
        replan = NULL;
        srv_finish(s, erc, FLUSH_S);
        if (erc) rt_step_failed(R, erc); /* in a cluster: ends the job, no return */
        else log_info("stopped: every request answered");
        rc = erc ? 1 : 0;
    }
    rp_free(replan, 0);
    srv_free(s);
    cmetrics_free(cm);
    fb_local_free(b);
    engine_free(e);
    tok_free(tok);
    return rc;
}

int cmd_serve(int argc, char **argv) {
    serve_opts o = {.host = "127.0.0.1", .port = 8080, .max_seqs = 16, .max_batch_tokens = 256, .max_queue = 64,
                    .ctx = 4096, .max_body = 4 << 20, .grace = 30, .replan_window = 256, .max_moves = -1};
    rt_opts ro = rt_default_opts();
    int r = parse_args(argc, argv, &o, &ro);
    if (r) return r == 1 ? 0 : r;
    if (!o.api_key) o.api_key = getenv("DARKHORSE_API_KEY");
    if (!o.kv_tokens) o.kv_tokens = DH_MAX(o.ctx, 1024 * o.max_seqs);
    signal(SIGPIPE, SIG_IGN); /* a client gone: an error on the write, not the end of the process */
    if (xchg_size() > 1 && xchg_rank() > 0) {
        /* a worker outlives a SIGTERM that mpirun forwards to every rank: the coordinator,
         * stopping gracefully, stops the workers when its last request is answered */
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
    }
    rt R;
    int orc = rt_open_kv(&R, &ro, (int)o.max_batch_tokens, (int)o.ctx, (int)o.max_seqs, (size_t)o.kv_tokens);
    if (orc) return orc == RT_WORKER ? R.worker_rc : 1;
    int rc = serve(&R, &o);
    rt_close(&R, rc == 0); /* the load table after a session, not after a failed start */
    return rc;
}
