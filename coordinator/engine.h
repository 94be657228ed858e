/* engine.h: continuous batching of many requests over the forward pass (engine_ prefix).
 *
 * Requests arrive from any thread (engine_submit); the engine thread runs engine_run, which
 * at every step boundary admits waiting requests (while KV-cache blocks and sequence slots
 * allow), and runs one forward step that mixes one decode row of every running sequence with
 * chunks of new prompts under a per-step token budget. The engine speaks token ids only: each
 * sampled token is reported through a callback on the engine thread, with its index in the
 * completion; text, stop strings and usage belong to the caller (frontend/request.h). A
 * request may be resumed: given the completion tokens it already produced, the engine feeds
 * them as decode rows (DESIGN.md's row forms), several per step, does not report them again,
 * and draws the next token exactly as the uninterrupted request would have. A cancelled
 * request frees its sequence at the next step boundary. */
#ifndef DH_ENGINE_H
#define DH_ENGINE_H
#include <stddef.h>
#include <stdint.h>

#include "coordinator/forward.h"
#include "core/sampler.h"
#include "sched/loadstats.h"

typedef struct engine engine;

typedef struct engine_params {
    int max_seqs;            /* sequences running at once */
    int max_batch_tokens;    /* rows a step may hold (decode rows first, then prompt chunks) */
    int max_queue;           /* waiting requests beyond which engine_submit answers DH_EBUSY */
    int max_context;         /* prompt + max_tokens at most */
} engine_params;

typedef struct engine_request {
    uint64_t id;             /* the caller's id (> 0), unique among its requests in flight: given
                                back with every event, and what engine_cancel takes */
    const int *prompt;       /* copied; fed as prompt rows */
    int n_prompt;
    const int *generated;    /* resume: completion tokens already produced (copied), fed as decode
                                rows and not reported again; NULL when n_generated is 0 */
    int n_generated;
    int max_tokens;          /* of the whole completion, the generated part included */
    sampler_params sampling; /* the seed decides every draw: a resumed request keeps its seed */
    int ignore_eos;
    int admitted;            /* accepted before (a request resumed after a failure): queued even
                                beyond max_queue, which limits new work only */
    void *user;              /* the caller's handle, given back with every event */
} engine_request;

enum { ENGINE_EV_TOKEN = 1, ENGINE_EV_DONE = 2, ENGINE_EV_ERROR = 3 };
/* EOS: the end-of-sentence token (not reported as a token); LENGTH: max_tokens reached;
 * STOP: the caller ended it (engine_cancel with finished = 1, e.g. on a stop string) */
enum { ENGINE_FINISH_EOS = 1, ENGINE_FINISH_LENGTH = 2, ENGINE_FINISH_STOP = 3 };

typedef struct engine_event {   /* pointers valid during the callback only */
    int kind;
    uint64_t id;                /* the request's engine_request.id */
    void *user;
    int token;                  /* TOKEN: the sampled id */
    int index;                  /* TOKEN: its index in the completion, from 0 (n_generated first
                                   after a resume) */
    int finish;                 /* DONE: ENGINE_FINISH_* */
    int prompt_tokens;          /* DONE */
    int completion_tokens;      /* DONE: tokens of the completion, the resumed part included */
    const double *domain_share; /* DONE: [CFG_N_DOMAINS] share of the request's routed choices in
                                   this engine (a resumed request's prefix counted again) */
    int code;                   /* ERROR: DH_E* (DH_ECANCELLED after engine_cancel) */
    const char *error;          /* ERROR: message */
} engine_event;

/* Called on the engine thread for every event, without the engine's lock held: it may call
 * engine_cancel and engine_stop, nothing else of the engine. */
typedef void (*engine_emit_fn)(void *ctx, const engine_event *ev);

#define ENGINE_HIST_BUCKETS 16
typedef struct engine_hist {    /* Prometheus-style histogram, seconds */
    double le[ENGINE_HIST_BUCKETS];
    uint64_t count[ENGINE_HIST_BUCKETS]; /* per bucket, not cumulative */
    uint64_t n;
    double sum;
} engine_hist;

typedef struct engine_metrics {
    uint64_t finished_stop;       /* EOS, or ended by the caller (a stop string) */
    uint64_t finished_length, failed, cancelled;
    uint64_t prompt_tokens;       /* prompt rows admitted (a resumed request's counted again) */
    uint64_t generated_tokens;    /* tokens sampled (not the resumed ones) */
    uint64_t resumed_tokens;      /* completion tokens given back by resumed requests */
    uint64_t steps;
    int waiting, running;
    size_t kv_used_tokens, kv_total_tokens;
    size_t prefill_cache_bytes;   /* the forward pass's prefill cache (fwd_prefill_cache_stats) */
    uint64_t prefill_cache_reused; /* positions read back from it, summed over layers */
    engine_hist ttft, tpot, step;   /* time to first token, per output token, step time */
    double domain_share[CFG_N_DOMAINS]; /* of all routed choices so far */
} engine_metrics;

/* An engine over the forward pass f with its cache kv and model m, routed counts in stats (all
 * kept; they must outlive it). NULL never. */
engine *engine_new(const model *m, fwd_ctx *f, kv_cache *kv, ls_stats *stats, const engine_params *p,
                   engine_emit_fn emit, void *ctx);
void engine_free(engine *e); /* after engine_run has returned; NULL ok */

/* Thread-safe. Queue a request: 0; or DH_EBUSY when the queue is full, DH_EINVAL when it
 * cannot fit the context or is malformed (err says why), DH_ECANCELLED when stopping. No event
 * comes for a refused request. */
int engine_submit(engine *e, const engine_request *r, char *err, size_t errsz);
/* Thread-safe. The request's sequence is freed at the next step boundary. Its last event is
 * then a DONE with ENGINE_FINISH_STOP when finished (the caller saw the end: a stop string),
 * else an ERROR with DH_ECANCELLED (the client went away). Unknown or finished ids are
 * ignored (their last event came or is coming). */
void engine_cancel(engine *e, uint64_t id, int finished);
/* Thread-safe. Stop admitting; requests in flight may finish for grace_s seconds, then fail.
 * A second call ends the grace at once. */
void engine_stop(engine *e, double grace_s);
/* Thread-safe. A copy of the counters. */
void engine_get_metrics(engine *e, engine_metrics *out);
/* Thread-safe. A copy of the load statistics as of the last step (routed tokens per (layer,
 * expert), per-worker counters) into out, made by ls_new with the same sizes as the engine's. */
void engine_get_stats(engine *e, ls_stats *out);

/* Called on the engine thread at every step boundary (before the next step is composed) and
 * about every 100 ms while idle, without the engine's lock: the place for work that must not
 * fall inside a step, such as switching the cluster's plan. steps: forward steps so far;
 * step_s: the last one's time. */
typedef void (*engine_tick_fn)(void *ctx, uint64_t steps, double step_s);
/* Before engine_run: tick (with ctx, kept) at every boundary. */
void engine_set_tick(engine *e, engine_tick_fn tick, void *ctx);
/* Thread-safe. Run the tick soon, even when idle. */
void engine_wake(engine *e);

/* Run on the engine thread until engine_stop and every request is finished. 0, or the forward
 * pass's error (a lost worker): every request in flight has then had an ERROR event. */
int engine_run(engine *e);
#endif
