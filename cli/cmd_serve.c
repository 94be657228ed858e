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
 * and on POST /admin/replan.
 *
 * With --launch "mpirun -np N ...", this process is the front end instead: it loads only the
 * config and the tokenizer, serves HTTP over the remote backend (frontend/remote.h), and runs
 * the MPI job as its child (frontend/launch.h) with this binary's `serve --engine-socket PATH`
 * and the engine's options; it restarts the job when it fails. Under --engine-socket, rank 0
 * runs the engine for that front end (coordinator/bridge.h) instead of an HTTP server, and
 * every rank dies with its parent (mpirun, or its orted). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "coordinator/bridge.h"
#include "coordinator/engine.h"
#include "coordinator/metrics.h"
#include "core/common.h"
#include "core/tokenizer.h"
#include "frontend/backend.h"
#include "frontend/launch.h"
#include "frontend/remote.h"
#include "frontend/server.h"
#include "proto/exchange.h"

#define FLUSH_S 2.0 /* seconds to write out the last responses before the process ends */

typedef struct serve_opts {
    const char *host, *api_key, *served_name;
    long port, max_seqs, max_batch_tokens, max_queue, ctx, kv_tokens, max_body;
    long replan_every, replan_window, max_moves;
    double grace;
    const char *launch;          /* the front end: the MPI job's prefix */
    const char *hostfile;        /* the front end: the hosts it launches on */
    long min_workers;
    double recovery_wait;
    const char *engine_socket;   /* rank 0 of a front end's job: where the front end listens */
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
            "  --launch \"mpirun -np N [opts]\"  be a front end: run the MPI job as a child (the prefix\n"
            "                         split on whitespace, this binary's engine appended) and restart\n"
            "                         it when it fails, resuming every request (docs/serving.md)\n"
            "  --recovery-wait S      with --launch: seconds a request may wait for a serving job,\n"
            "                         then 503 with Retry-After (default 30)\n"
            "  --hostfile H           with --launch: the hosts to run on; one that fails twice in a\n"
            "                         row is left out, down to --min-workers (default 1)\n"
            "  --engine-socket PATH   (set by --launch) run the engine for the front end at PATH\n"
            RT_HELP);
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
        {"launch", required_argument, 0, 'L'},         {"hostfile", required_argument, 0, 'F'},
        {"min-workers", required_argument, 0, 'm'},    {"recovery-wait", required_argument, 0, 'w'},
        {"engine-socket", required_argument, 0, 'E'},
        RT_LONGOPTS,                                   {0, 0, 0, 0}};
    int c, r = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = rt_parse_opt(ro, c, optarg)) < 0) return 2;
        if (r) continue;
        switch (c) {
        case 'H': o->host = optarg; break;
        case 'p': r = rt_parse_long("--port", optarg, 0, 65535, &o->port); break;
        case 'k': o->api_key = optarg; break;
        case 'n': o->served_name = optarg; break;
        case 's': r = rt_parse_long("--max-seqs", optarg, 1, 4096, &o->max_seqs); break;
        case 'b': r = rt_parse_long("--max-batch-tokens", optarg, 1, 65536, &o->max_batch_tokens); break;
        case 'q': r = rt_parse_long("--max-queue", optarg, 1, 1000000, &o->max_queue); break;
        case 'c': r = rt_parse_long("--ctx", optarg, 2, 1 << 24, &o->ctx); break;
        case 'K': r = rt_parse_long("--kv-tokens", optarg, 16, 1L << 30, &o->kv_tokens); break;
        case 'B': r = rt_parse_long("--max-body", optarg, 1024, 1L << 30, &o->max_body); break;
        case 'R': r = rt_parse_long("--replan-every", optarg, 0, 1L << 40, &o->replan_every); break;
        case 'W': r = rt_parse_long("--replan-window", optarg, 1, 4096, &o->replan_window); break;
        case 'M': r = rt_parse_long("--max-moves", optarg, 0, 1 << 30, &o->max_moves); break;
        case 'L': o->launch = optarg; break;
        case 'F': o->hostfile = optarg; break;
        case 'm': r = rt_parse_long("--min-workers", optarg, 1, 1 << 20, &o->min_workers); break;
        case 'E': o->engine_socket = optarg; break;
        case 'w': r = rt_parse_num("--recovery-wait", optarg, 0, 86400, &o->recovery_wait); break;
        case 'g': r = rt_parse_num("--shutdown-grace", optarg, 0, 86400, &o->grace); break;
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
    if (o->launch && o->engine_socket) {
        fprintf(stderr, "darkhorse serve: --launch and --engine-socket exclude each other\n");
        return 2;
    }
    if (o->hostfile && !o->launch) {
        fprintf(stderr, "darkhorse serve: --hostfile is for --launch (under mpirun, give it to mpirun)\n");
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

/* prompt + max_tokens at most: --ctx, bounded by the KV cache and the model */
static int context_of(const model_config *c, const serve_opts *o, size_t kv_tokens) {
    int ctx = (int)DH_MIN((size_t)o->ctx, kv_tokens);
    if (c->max_position_embeddings > 0) ctx = DH_MIN(ctx, c->max_position_embeddings);
    if (ctx < o->ctx) log_warn("the context is %d tokens (the model's limit or the KV cache's), not %ld", ctx, o->ctx);
    return ctx;
}

/* The cluster's live re-planner answering through done(ctx, ...); NULL in one process. */
static rp *replanner_new(rt *R, const serve_opts *o, rp_done_fn done, void *ctx) {
    if (!R->clustered) {
        if (o->replan_every) log_warn("--replan-every is for a cluster (mpirun -np N, N >= 2): ignored in one process");
        return NULL;
    }
    rp_params rpp = rp_default_params();
    rpp.every = (int)DH_MIN(o->replan_every, INT_MAX), rpp.window = (int)o->replan_window;
    rpp.max_moves = (int)o->max_moves;
    return rp_new(&R->cl, &rpp, done, ctx);
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
    int ctx = context_of(&R->m->cfg, o, kv_total_tokens(R->kv));
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
    rp *replan = replanner_new(R, o, fb_local_replan_done, b);
    if (replan) engine_set_tick(e, rp_tick, replan);
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

/* --- --engine-socket: rank 0 runs the engine for a front end --- */

/* On the coordinator of a front end's job, after rt_open_kv: run what the front end submits
 * until it stops us or goes away. The exit code; a failed cluster ends the job (no return). */
static int serve_engine(rt *R, const serve_opts *o) {
    br_engine *g = br_engine_open(o->engine_socket);
    if (!g) return 1;
    int ctx = context_of(&R->m->cfg, o, kv_total_tokens(R->kv));
    engine_params ep = {.max_seqs = (int)o->max_seqs, .max_batch_tokens = (int)o->max_batch_tokens,
                        .max_queue = (int)o->max_queue, .max_context = ctx};
    engine *e = engine_new(R->m, R->f, R->kv, R->stats, &ep, br_engine_emit, g);
    rp *replan = replanner_new(R, o, br_engine_replan_done, g);
    cmetrics *cm = cmetrics_new(R->m, e, R->stats->n_layers, R->stats->n_experts, R->stats->n_workers);
    br_engine_attach(g, e, replan, cm, R->clustered ? &R->cl : NULL);
    engine_set_tick(e, br_engine_tick, g);
    int erc = DH_EIO;
    if (br_engine_start(g, ctx) == 0) {
        log_info("serving the front end at %s", o->engine_socket);
        erc = engine_run(e);
    }
    if (erc) br_engine_failed(g, erc);
    rp_free(replan, erc != 0);
    br_engine_attach(g, e, NULL, cm, NULL);
    if (erc && erc != DH_EIO) rt_step_failed(R, erc); /* in a cluster: ends the job, no return */
    br_engine_close(g); /* its reader thread may still call the engine: before engine_free */
    cmetrics_free(cm);
    engine_free(e);
    return erc ? 1 : 0;
}

/* --- --launch: the front end --- */

/* serve's options that the front end keeps to itself (each takes a value) */
static int frontend_only(const char *a, size_t n) {
    static const char *const names[] = {"launch", "hostfile", "min-workers", "recovery-wait", "host", "port",
                                        "api-key", "served-name", "max-body", "placement", "engine-socket"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strlen(names[i]) == n && !strncmp(a, names[i], n)) return 1;
    return 0;
}

/* The engine's command line: this binary by its absolute path, `serve --engine-socket sock`,
 * and serve's arguments (argv[1..argc), as given) without the front end's own. NULL-ended,
 * strings borrowed but the array (and exe) the caller frees with free(). */
static const char **engine_argv(int argc, char **argv, const char *sock, char *exe, size_t cap) {
    ssize_t n = readlink("/proc/self/exe", exe, cap - 1);
    if (n <= 0) return NULL;
    exe[n] = '\0';
    const char **v = xcalloc((size_t)argc + 8, sizeof *v);
    int k = 0;
    v[k++] = exe, v[k++] = "serve", v[k++] = "--engine-socket", v[k++] = sock;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--", 2) && frontend_only(a + 2, strcspn(a + 2, "="))) {
            if (!strchr(a, '=')) i++; /* and its value */
            continue;
        }
        v[k++] = a;
    }
    v[k] = NULL;
    return v;
}

/* The front end: the port, the requests, and the MPI job as a child. The exit code. */
static int serve_frontend(const serve_opts *o, const rt_opts *ro, int argc, char **argv) {
    char path[1100], name[256], exe[4096];
    model_config cfg;
    snprintf(path, sizeof path, "%s/config.json", ro->model_dir);
    if (cfg_load(&cfg, path)) return 1;
    snprintf(path, sizeof path, "%s/tokenizer.json", ro->model_dir);
    tokenizer *tok = tok_load(path);
    if (!tok) {
        fprintf(stderr, "darkhorse serve: the API takes and gives text: it needs %s\n", path);
        return 1;
    }
    const char *base = getenv("TMPDIR");
    char dir[512], sock[600], plan[600];
    snprintf(dir, sizeof dir, "%s/darkhorse-fe.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        log_error("%s: cannot make the front end's directory (%s)", dir, strerror(errno));
        tok_free(tok);
        return 1;
    }
    snprintf(sock, sizeof sock, "%s/engine.sock", dir);
    snprintf(plan, sizeof plan, "%s/plan.txt", dir);
    int rc = 1;
    const char **eargv = engine_argv(argc, argv, sock, exe, sizeof exe);
    char err[512] = "";
    fl_params lp = {.launch = o->launch, .engine = eargv, .hostfile = o->hostfile, .min_workers = (int)o->min_workers,
                    .work_dir = dir};
    fl *job = eargv ? fl_new(&lp, err, sizeof err) : NULL;
    if (!job) {
        fprintf(stderr, "darkhorse serve: %s\n", eargv ? err : "cannot find this binary's path (/proc/self/exe)");
        goto out;
    }
    fr_params fp = {.job = job, .socket_path = sock, .plan_path = plan, .placement = ro->placement_file,
                    .recovery_wait = o->recovery_wait, .start_timeout = 600};
    fb_backend *b = fr_new(&fp);
    if (!b) goto out_job;
    srv_params sp = {.host = o->host, .port = (int)o->port, .api_key = o->api_key,
                     .served_name = o->served_name ? o->served_name : base_name(ro->model_dir, name, sizeof name),
                     .max_body = (size_t)o->max_body, .max_context = context_of(&cfg, o, (size_t)o->kv_tokens),
                     .shutdown_grace = o->grace, .workers = DH_MAX(fl_workers(job), 0),
                     .routing_replay = ro->routing_replay,
                     .replay_order = rpl_order_name((rpl_order)ro->replay_order)};
    srv *s = srv_new(&sp, &cfg, tok, b);
    if (srv_start(s) == 0) {
        int frc = fr_run(b);
        srv_finish(s, frc, FLUSH_S);
        rc = frc ? 1 : 0;
        if (!frc) log_info("stopped: every request answered, the job ended");
    }
    srv_free(s);
    fr_free(b);
out_job:
    fl_free(job); /* kills a job still running */
out:
    free(eargv);
    char f[700];
    snprintf(f, sizeof f, "%s/hostfile", dir);
    unlink(f), unlink(plan), unlink(sock);
    rmdir(dir);
    tok_free(tok);
    return rc;
}

int cmd_serve(int argc, char **argv) {
    serve_opts o = {.host = "127.0.0.1", .port = 8080, .max_seqs = 16, .max_batch_tokens = 256, .max_queue = 64,
                    .ctx = 4096, .max_body = 4 << 20, .grace = 30, .replan_window = 256, .max_moves = -1,
                    .min_workers = 1, .recovery_wait = 30};
    rt_opts ro = rt_default_opts();
    char **given = xcalloc((size_t)argc + 1, sizeof *given); /* getopt_long permutes argv */
    memcpy(given, argv, (size_t)argc * sizeof *argv);
    int r = parse_args(argc, argv, &o, &ro);
    if (r) {
        free(given);
        return r == 1 ? 0 : r;
    }
    if (!o.api_key) o.api_key = getenv("DARKHORSE_API_KEY");
    if (!o.kv_tokens) o.kv_tokens = DH_MAX(o.ctx, 1024 * o.max_seqs);
    signal(SIGPIPE, SIG_IGN); /* a client gone: an error on the write, not the end of the process */
    if (o.launch) {
        int frc = xchg_size() > 1 ? 2 : serve_frontend(&o, &ro, argc, given);
        if (frc == 2) fprintf(stderr, "darkhorse serve: --launch starts mpirun itself: run it without mpirun\n");
        free(given);
        return frc;
    }
    free(given);
    if (o.engine_socket) {
        /* every rank of a front end's job dies with its parent (mpirun here, orted elsewhere),
         * so that nothing outlives a job the front end killed; SIGINT (a terminal's ^C) is the
         * front end's to handle */
        pid_t parent = getppid();
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        if (getppid() != parent) return 1;
        signal(SIGINT, SIG_IGN);
    }
    if (xchg_size() > 1 && xchg_rank() > 0) {
        /* a worker outlives a SIGTERM that mpirun forwards to every rank: the coordinator,
         * stopping gracefully, stops the workers when its last request is answered */
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
    }
    rt R;
    int orc = rt_open_kv(&R, &ro, (int)o.max_batch_tokens, (int)o.ctx, (int)o.max_seqs, (size_t)o.kv_tokens);
    if (orc) return orc == RT_WORKER ? R.worker_rc : 1;
    int rc = o.engine_socket ? serve_engine(&R, &o) : serve(&R, &o);
    rt_close(&R, rc == 0); /* the load table after a session, not after a failed start */
    return rc;
}
