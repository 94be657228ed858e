/* runtime.h: what the commands that run the model share: common options, loading, the
 * forward pass with its cache and expert backend (rt_ prefix). */
#ifndef DH_RUNTIME_H
#define DH_RUNTIME_H
#include <getopt.h>

#include "coordinator/cluster.h"
#include "coordinator/forward.h"
#include "coordinator/replay.h"
#include "coordinator/trace_rec.h"
#include "core/model.h"
#include "sched/loadstats.h"

typedef struct rt_opts {
    const char *model_dir;
    int threads;               /* <= 0: all cores */
    int weights;               /* -1: compute on the stored values; else a dh_dtype */
    const char *placement_algo;
    const char *placement_file;
    const char *placement_out;
    double worker_timeout;     /* seconds */
    int wire_bf16;
    int portable;              /* force the portable kernels */
    const char *routing_stats; /* routed-token counts: read for `balanced`, updated at exit */
    const char *worker_capacity; /* "measured" or "S1,S2,...": worker speeds for `balanced` */
    const char *trace_out;     /* record the live routing into this trace file */
    const char *routing_replay; /* replace the router's choices with this trace's (off: NULL) */
    int replay_order;          /* rpl_order */
    int replay_order_set;
    int mmap;                  /* leave the weights mapped from the file (model_params.copy off) */
    long prefill_cache_mib;    /* the forward pass's prefill cache budget (fwd_set_prefill_cache) */
} rt_opts;

/* Long options every model command takes; codes from 1000 up. */
#define RT_LONGOPTS                                                         \
    {"model", required_argument, 0, 1000}, {"threads", required_argument, 0, 1001}, \
    {"weights", required_argument, 0, 1002}, {"placement-algo", required_argument, 0, 1003}, \
    {"placement", required_argument, 0, 1004}, {"placement-out", required_argument, 0, 1005}, \
    {"worker-timeout", required_argument, 0, 1006}, {"wire", required_argument, 0, 1007}, \
    {"portable-kernels", no_argument, 0, 1008}, {"routing-stats", required_argument, 0, 1010}, \
    {"worker-capacity", required_argument, 0, 1011}, {"trace-out", required_argument, 0, 1012}, \
    {"routing-replay", required_argument, 0, 1013}, {"replay-order", required_argument, 0, 1014}, \
    {"mmap", no_argument, 0, 1015}, {"prefill-cache", required_argument, 0, 1016}
#define RT_HELP                                                                                  \
    "  --model DIR            checkpoint directory (config.json, *.safetensors)\n"               \
    "  --threads N            threads per rank (default: all cores, shared among local ranks)\n" \
    "  --weights W            f32|bf16|q8|q4|q4k (default: compute in f32 on the stored values)\n"\
    "  --placement-algo NAME  contiguous|round-robin|balanced (cluster only)\n"                  \
    "  --placement FILE       load the expert placement plan from FILE\n"                        \
    "  --placement-out FILE   save the placement plan in use to FILE\n"                          \
    "  --worker-timeout S     seconds to wait for a worker before failing (default 10)\n"       \
    "  --wire f32|bf16        activation format between ranks (default f32)\n"                   \
    "  --portable-kernels     use the portable kernels, not AVX-512\n"                          \
    "  --routing-stats FILE   routed tokens per (layer, expert): the balanced placement reads it,\n" \
    "                         and this run's counts are added to it at exit\n"                  \
    "  --worker-capacity C    relative speeds of workers 1..W for the balanced placement:\n"      \
    "                         'measured' (each worker's expert rate) or a list such as 2,1,1\n"   \
    "  --trace-out FILE       record every MoE layer's routing into a trace (docs/placement.md;\n" \
    "                         gzip when FILE ends in .gz)\n"                                   \
    "  --routing-replay FILE  take every MoE layer's experts from this trace, not the router\n"    \
    "                         (off by default; docs/cluster.md)\n"                                \
    "  --replay-order O       turns (trace sequences in turn across domains, default) or domain\n" \
    "                         (one domain after the other: a traffic shift)\n"                  \
    "  --mmap                 compute on the file's pages, mapped, rather than on a copy of the\n" \
    "                         weights read in at load (faster load, memory the page cache can\n" \
    "                         share; slower steps on some machines: docs/performance.md)\n"      \
    "  --prefill-cache MIB    memory for a chunked prompt's expanded keys and values, kept for\n" \
    "                         its later chunks (default 1024; 0: expand them again each chunk)\n"

rt_opts rt_default_opts(void);
/* *out = arg as a decimal integer in [lo, hi]: 0; else -1 with a message naming the option */
int rt_parse_long(const char *name, const char *arg, long lo, long hi, long *out);
/* *out = arg as a decimal number in [lo, hi]: 0; else -1 with a message naming the option */
int rt_parse_num(const char *name, const char *arg, double lo, double hi, double *out);
/* Threads for this rank's pool: requested if > 0; else all cores on rank 0 (or alone), and the
 * cores shared among the local workers on the others. */
int rt_default_threads(int requested);
/* Handle a common option: 1 if it was one (0 otherwise), -1 on a bad value (message printed). */
int rt_parse_opt(rt_opts *o, int code, const char *arg);

typedef struct rt {
    rt_opts o;
    model *m;
    kv_cache *kv;
    moe_backend *moe;       /* the in-process backend, or the cluster's */
    fwd_ctx *f;
    int max_rows;
    double load_s;
    int clustered;          /* running as the coordinator of MPI workers */
    cluster cl;
    ls_stats *stats;        /* routing counts (and per-worker counters when clustered) */
    trec *rec;              /* --trace-out recorder, or NULL */
    rpl *replay;            /* --routing-replay source, or NULL */
    int worker_rc;          /* exit code of this rank when it ran as a worker */
} rt;

#define RT_WORKER 3 /* rt_open's answer on a worker rank: it has served and is done */

/* Start kernels and load the model. In-process (no MPI, or a single rank): everything here.
 * Under mpirun with several ranks: rank 0 loads all but the routed experts and starts the
 * cluster; other ranks run as expert workers until the coordinator stops them and return
 * RT_WORKER (their exit code in r->worker_rc). Then the cache (n_seqs sequences of
 * max_seq_len) and the forward pass for steps of max_rows rows. 0, RT_WORKER, or 1 with a
 * message. */
int rt_open(rt *r, const rt_opts *o, int max_rows, int max_seq_len, int n_seqs);
/* The same with the KV cache's size in positions (shared by all sequences, in blocks). */
int rt_open_kv(rt *r, const rt_opts *o, int max_rows, int max_seq_len, int n_seqs, size_t kv_tokens);
/* Stop the workers (if any), print the load table to stderr when print_stats, free all. */
void rt_close(rt *r, int print_stats);
/* After a failed step: in a cluster a lost worker ends the job on every rank (no return);
 * otherwise log and return. */
void rt_step_failed(rt *r, int code);

/* Parse "5,17,42" into *ids (malloc'd): the count, or -1 with a message when an id is not an
 * integer in [0, vocab). */
int rt_parse_ids(const char *s, int vocab, int **ids);
#endif
