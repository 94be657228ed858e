/* cmd_bench.c: `darkhorse bench`: prompt processing and generation speed, as llama-bench
 * measures them, with the machine's read bandwidth measured in the same run.
 *
 * pp<P>: P prompt tokens (chunks of 512) from an empty context, naive attention.
 * tg<N>: N tokens one at a time from an empty context, absorbed attention, B sequences per
 *        step with --batch B (tok/s then counts all B).
 * With --depth D (pp<P>@d<D>, tg<N>@d<D>) each sequence first takes D context tokens as a
 * prompt, untimed, and the test's tokens follow them, as llama-bench's -d: a prompt's chunk
 * or a decode step at the cost of a long context's cache. The roofline counts the weights'
 * bytes alone, not the cache's.
 * Each test runs -r times (after one untimed warm-up run); the median, min and max are
 * reported. Generation's share of the bandwidth roofline is bytes of weights read per step
 * (attention, dense and shared FFNs, K routed experts per MoE layer and the head, at their
 * storage size) x steps/s / the two-thread read bandwidth measured here: the best pass of a
 * burst before the tests and of one after the warm-up and each timed tg run. Each timed run
 * also gets its own share, against the faster of the bursts just before and after it (12
 * passes each): on a machine whose memory changes speed during the test, a run is then judged
 * by the memory it met (JSON: tok_s_runs, bandwidth_gb_s_runs, roofline_share_runs and their
 * median roofline_share_runs_median). Under mpirun the
 * coordinator also reports the bytes on the wire per token and the share of time spent in the
 * expert exchange. Every table and JSON line names the CPU it was measured on. Tables go to stderr;
 * --json prints one JSON object per line and test; a tg test's object also has ms_per_step: the
 * forward pass's parts and the exchange per timed step (the simulator's calibration, docs/cluster.md),
 * and forks_per_step: the thread pool's fork-joins per timed step, in all and per part.
 * --passes adds, for tg, the timed runs' passes (nn_matmul_multi: one product, or several read
 * in one fork-join) by the bytes of weights each reads, classes of powers of two: passes and
 * time per step, and GB/s (the key `passes` in JSON). A pass's time includes quantizing its
 * activations and waking the pool, so a class far under the reader is where a step loses. */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "core/common.h"
#include "core/cpu.h"
#include "core/hugemem.h"
#include "core/nn.h"
#include "core/tensor.h"
#include "core/threadpool.h"

#define CHUNK 512

static void usage(FILE *f) {
    fprintf(f,
            "usage: darkhorse bench --model DIR [-p 512] [-n 64] [-t THREADS] [-r 5] [--weights W] [--json]\n\n"
            "  -p, --prompt N      prompt tokens of the pp test (0 skips it; default 512)\n"
            "  -n, --gen N         generated tokens of the tg test (0 skips it; default 64)\n"
            "  -b, --batch B       sequences decoding together in the tg test (default 1)\n"
            "  -d, --depth D       context tokens before each test's, prefilled untimed (default 0)\n"
            "  -t THREADS          same as --threads\n"
            "  -r, --repetitions R timed runs of each test (default 5)\n"
            "  --no-bandwidth      skip the read-bandwidth measurement\n"
            "  --passes            after tg, its products' passes by size: time, GB/s, share of the\n"
            "                      bandwidth (where a decode step falls short of its roofline)\n"
            "  --json              one JSON object per test on stdout\n" RT_HELP);
}

/* The read bandwidth of this rank's pool over a 1 GiB array: 80 passes of 256 MiB before the
 * tests (16 in each read pattern), and 20 more after the warm-up and after each timed run of
 * tg, so that a neighbour busy through the first passes alone cannot lower the figure the
 * roofline divides by (nn_read_bandwidth: why the best). best is the best pass of all; lo and
 * hi the lowest and highest best of a burst; pattern[k] the best pass of pattern k. With each
 * burst, the round trip of a cache line between the pool's threads (tp_round_trip_ns): on the
 * AMD EPYC Zen 4 VM whose two vCPUs are sometimes on one CCD and sometimes on two, it says which
 * the run met (docs/performance.md). */
typedef struct reader {
    uint64_t *a;
    size_t n;
    double best, lo, hi;
    double pattern[NN_READ_PATTERNS]; /* the best pass of each read pattern */
    int passes;
    double rt, rt_lo, rt_hi; /* ns: the last burst's round trip, the lowest and highest; NAN: none */
} reader;

/* one burst of reps passes of each pattern; returns its best */
static double reader_burst(reader *r, int reps) {
    double g = nn_read_bandwidth(NULL, r->a, r->n, r->n / 4, reps, r->pattern);
    r->best = DH_MAX(r->best, g);
    r->lo = r->passes ? DH_MIN(r->lo, g) : g;
    r->hi = DH_MAX(r->hi, g);
    r->rt = tp_round_trip_ns(nn_pool(), 200, NULL);
    if (!isnan(r->rt)) {
        r->rt_lo = isnan(r->rt_lo) ? r->rt : DH_MIN(r->rt_lo, r->rt);
        r->rt_hi = isnan(r->rt_hi) ? r->rt : DH_MAX(r->rt_hi, r->rt);
    }
    r->passes += NN_READ_PATTERNS * reps;
    return g;
}

static void reader_open(reader *r) {
    *r = (reader){.n = (size_t)1 << 30, .rt = NAN, .rt_lo = NAN, .rt_hi = NAN};
    r->a = hm_alloc(r->n); /* on the pages the weights are on (hugemem.h) */
    for (size_t i = 0; i < r->n / 8; i++) r->a[i] = i * 0x9E3779B97F4A7C15ULL;
    reader_burst(r, 16);
}

static void reader_close(reader *r) { hm_free(r->a, r->n); }

typedef struct bench_args {
    int p, n, d, batch, reps, json, bandwidth, passes;
} bench_args;

/* the clocks bench reads: the forward's parts [0, FWD_T_COUNT), then these */
enum { BT_EXCHANGE = FWD_T_COUNT, BT_WAIT, BT_WORKER, BT_CLOCKS };

typedef struct result {
    char test[32];
    double med, mn, mx; /* tok/s */
    double step_ms;     /* median step time */
    double step_ms_mean; /* mean step time over the timed runs (what the pass table divides) */
    double part_ms[BT_CLOCKS]; /* per step of the timed runs: the forward's parts, the exchange,
                                  the part of it in finish (waiting, then combining), the slowest
                                  worker's compute in each exchange */
    double forks[BT_CLOCKS];   /* per step of the timed runs: the pool's fork-joins in each part
                                  of the forward pass, then in all (tp_forks around the steps) */
    nn_pass_class passes[NN_PASS_CLASSES]; /* tg with --passes: the timed runs' passes by size */
    /* tg with --passes and a reader: the seconds each class's bytes would take at the ceiling of
     * the run they were read in (run_bw), summed over the runs: its share is this over its time */
    double pass_ideal_s[NN_PASS_CLASSES];
    /* tg with a reader: each timed run's tok/s, in run order, and the faster of the reader
     * bursts just before and just after it (GB/s): the ceiling of the memory that run met.
     * Owned here (result_free); NULL otherwise. burst_rt[k]: the threads' round trip (ns)
     * measured with the burst after run k (0: the warm-up), so run r's are burst_rt[r] and
     * burst_rt[r + 1] (NAN: one thread). */
    double *run_tok_s, *run_bw, *burst_rt;
} result;

static void result_free(result *res) {
    free(res->run_tok_s), free(res->run_bw), free(res->burst_rt);
    res->run_tok_s = res->run_bw = res->burst_rt = NULL;
}

/* seconds so far in each part of the forward pass, in the exchange, and in the slowest
 * worker's compute of each exchange (as the workers report it) */
static void part_clock(const rt *R, double *t /* [BT_CLOCKS] */) {
    fwd_times(R->f, t);
    t[BT_EXCHANGE] = R->clustered ? R->stats->exchange_s : 0;
    t[BT_WAIT] = R->clustered ? R->stats->wait_s : 0;
    t[BT_WORKER] = R->clustered ? R->stats->slowest_s : 0;
}

/* the pool's fork-joins so far in each part of the forward pass (the other slots 0) */
static void fork_clock(const rt *R, unsigned long *n /* [BT_CLOCKS] */) {
    memset(n, 0, BT_CLOCKS * sizeof *n);
    fwd_forks(R->f, n);
}

/* the clocks' advance since t0 and n0 added to t and n (the timed steps of a run, without the
 * prefill of --depth before them) */
static void clocks_add(const rt *R, const double *t0, const unsigned long *n0, double *t, unsigned long *n) {
    double t1[BT_CLOCKS];
    unsigned long n1[BT_CLOCKS];
    part_clock(R, t1);
    fork_clock(R, n1);
    for (int i = 0; i < BT_CLOCKS; i++) t[i] += t1[i] - t0[i], n[i] += n1[i] - n0[i];
}

/* res->part_ms and res->forks from the timed steps' clocks t and n, over steps steps;
 * all_forks: the pool's fork-joins in those steps, counted around them (the reader's bursts
 * between the timed runs fork the pool too, and are not the steps') */
static void part_ms(const double *t, const unsigned long *n, unsigned long all_forks, double steps, result *res) {
    for (int i = 0; i < BT_CLOCKS; i++) {
        res->part_ms[i] = 1e3 * t[i] / steps;
        res->forks[i] = (double)n[i] / steps;
    }
    res->forks[FWD_T_COUNT] = (double)all_forks / steps;
}

static void summarize(result *res, double *toks, double *steps, int reps) {
    double sum = 0;
    for (int i = 0; i < reps; i++) sum += steps[i];
    res->step_ms_mean = sum / reps * 1e3;
    qsort(toks, (size_t)reps, sizeof *toks, dh_cmp_double);
    qsort(steps, (size_t)reps, sizeof *steps, dh_cmp_double);
    res->med = toks[reps / 2], res->mn = toks[0], res->mx = toks[reps - 1];
    res->step_ms = steps[reps / 2] * 1e3;
}

/* a test's name as llama-bench's: pp512, tg64, tg64@b16, pp512@d1024, tg64@b16@d1024 */
static void name_test(result *res, const char *kind, int tokens, int batch, int depth) {
    int len = snprintf(res->test, sizeof res->test, "%s%d", kind, tokens);
    if (batch > 1) len += snprintf(res->test + len, sizeof res->test - (size_t)len, "@b%d", batch);
    if (depth > 0) snprintf(res->test + len, sizeof res->test - (size_t)len, "@d%d", depth);
}

/* n prompt tokens into seq from position from (chunks of CHUNK rows, naive attention, the
 * last row's logits): pp's prompt, and --depth's context before a test; *steps gets the chunks */
static int prompt(rt *R, int seq, int from, int n, fwd_row *rows, float *logits, int *steps) {
    int V = R->m->cfg.vocab_size, rc = 0;
    *steps = 0;
    for (int t0 = from; t0 < from + n && !rc; t0 += CHUNK, ++*steps) {
        int m = DH_MIN(CHUNK, from + n - t0);
        for (int i = 0; i < m; i++) rows[i] = (fwd_row){seq, t0 + i, (t0 + i) * 7919 % V, FWD_NAIVE};
        rows[m - 1].flags |= FWD_LOGITS;
        fwd_out o = {.logits = logits};
        rc = fwd_step(R->f, rows, m, &o);
    }
    return rc;
}

/* pp: P tokens from an empty context, or after a.d tokens */
static int bench_pp(rt *R, const bench_args *a, result *res) {
    int V = R->m->cfg.vocab_size;
    fwd_row *rows = xmalloc((size_t)CHUNK * sizeof *rows);
    float *logits = xmalloc((size_t)V * sizeof *logits);
    double *toks = xmalloc((size_t)(a->reps + 1) * sizeof *toks), *steps = xmalloc((size_t)(a->reps + 1) * sizeof *steps);
    double clocks[BT_CLOCKS] = {0}, clock0[BT_CLOCKS];
    unsigned long forks[BT_CLOCKS] = {0}, forks0[BT_CLOCKS];
    int rc = 0, n_steps = 0;
    for (int r = 0; r <= a->reps && !rc; r++) { /* r == 0: warm-up */
        int seq = kv_seq_open(R->kv), chunks;
        kv_seq_reserve(R->kv, seq, a->d + a->p);
        rc = prompt(R, seq, 0, a->d, rows, logits, &chunks);
        if (rc) {
            kv_seq_close(R->kv, seq);
            break;
        }
        part_clock(R, clock0), fork_clock(R, forks0);
        double t0 = dh_now();
        rc = prompt(R, seq, a->d, a->p, rows, logits, &n_steps);
        double dt = dh_now() - t0;
        kv_seq_close(R->kv, seq);
        if (r > 0) toks[r - 1] = a->p / dt, steps[r - 1] = dt / n_steps, clocks_add(R, clock0, forks0, clocks, forks);
    }
    if (!rc) {
        name_test(res, "pp", a->p, 1, a->d);
        summarize(res, toks, steps, a->reps);
        part_ms(clocks, forks, 0, (double)a->reps * n_steps, res); /* for the shares */
    }
    free(rows), free(logits), free(toks), free(steps);
    return rc;
}

/* tg: N tokens one at a time for B sequences from an empty context, or after a.d tokens each */
static int bench_tg(rt *R, const bench_args *a, result *res, reader *rd) {
    int V = R->m->cfg.vocab_size, B = a->batch;
    fwd_row *rows = xmalloc((size_t)DH_MAX(B, a->d > 0 ? CHUNK : 0) * sizeof *rows);
    float *logits = xmalloc(xmul((size_t)B * V, sizeof *logits));
    int *seqs = xmalloc((size_t)B * sizeof *seqs);
    double clocks[BT_CLOCKS] = {0}, clock0[BT_CLOCKS];
    unsigned long forks[BT_CLOCKS] = {0}, forks0[BT_CLOCKS];
    double *toks = xmalloc((size_t)(a->reps + 1) * sizeof *toks), *steps = xmalloc((size_t)(a->reps + 1) * sizeof *steps);
    /* freed by result_free, whatever happens here */
    res->run_tok_s = xmalloc((size_t)a->reps * sizeof *res->run_tok_s);
    res->run_bw = rd ? xmalloc((size_t)a->reps * sizeof *res->run_bw) : NULL;
    res->burst_rt = rd ? xmalloc((size_t)(a->reps + 1) * sizeof *res->burst_rt) : NULL;
    memset(res->passes, 0, sizeof res->passes);
    memset(res->pass_ideal_s, 0, sizeof res->pass_ideal_s);
    double burst = 0; /* the reader's best in the burst after the run before */
    unsigned long step_forks = 0; /* the pool's fork-joins in the timed runs' steps */
    int rc = 0;
    for (int r = 0; r <= a->reps && !rc; r++) {
        for (int b = 0; b < B; b++) {
            seqs[b] = kv_seq_open(R->kv);
            kv_seq_reserve(R->kv, seqs[b], a->d + a->n);
            int chunks;
            if (!rc) rc = prompt(R, seqs[b], 0, a->d, rows, logits, &chunks);
        }
        part_clock(R, clock0), fork_clock(R, forks0);
        nn_pass_stats(r > 0 && a->passes); /* the timed runs' steps only */
        unsigned long f0 = tp_forks(nn_pool());
        double t0 = dh_now();
        for (int i = 0; i < a->n && !rc; i++) {
            for (int b = 0; b < B; b++) rows[b] = (fwd_row){seqs[b], a->d + i, (i * 31 + b * 977 + 1) % V, FWD_LOGITS};
            fwd_out o = {.logits = logits};
            rc = fwd_step(R->f, rows, B, &o);
        }
        double dt = dh_now() - t0;
        if (r > 0) step_forks += tp_forks(nn_pool()) - f0, clocks_add(R, clock0, forks0, clocks, forks);
        nn_pass_stats(0);
        nn_pass_class run[NN_PASS_CLASSES];
        nn_pass_stats_take(run);
        for (int b = 0; b < B; b++) kv_seq_close(R->kv, seqs[b]);
        /* run r lies between the burst after run r - 1 (or the warm-up) and its own */
        double before = burst;
        if (rd) burst = reader_burst(rd, 4), res->burst_rt[r] = rd->rt;
        if (r == 0) continue;
        toks[r - 1] = res->run_tok_s[r - 1] = (double)a->n * B / dt, steps[r - 1] = dt / a->n;
        if (rd) res->run_bw[r - 1] = DH_MAX(before, burst);
        for (int k = 0; k < NN_PASS_CLASSES; k++) {
            res->passes[k].n += run[k].n, res->passes[k].bytes += run[k].bytes, res->passes[k].seconds += run[k].seconds;
            if (rd) res->pass_ideal_s[k] += run[k].bytes / (res->run_bw[r - 1] * 1e9);
        }
    }
    if (!rc) {
        name_test(res, "tg", a->n, B, a->d);
        summarize(res, toks, steps, a->reps); /* sorts toks: run_tok_s keeps the order */
        part_ms(clocks, forks, step_forks, (double)a->reps * a->n, res);
    }
    free(rows), free(logits), free(seqs), free(toks), free(steps);
    return rc;
}

static const char *weights_name(const rt *R) {
    if (R->o.weights >= 0) return wt_dtype_name((dh_dtype)R->o.weights);
    return wt_dtype_name(R->m->lm_head.dtype); /* the stored format */
}

/* a size class's bounds as text: (2^(k-1), 2^k] bytes */
static void class_name(int k, char *buf, size_t n) {
    static const char *unit[] = {"B", "KiB", "MiB", "GiB"};
    double lo = k > 0 ? (double)((uint64_t)1 << (k - 1)) : 0, hi = (double)((uint64_t)1 << k);
    int u = DH_MIN(k > 0 ? (k - 1) / 10 : 0, 3);
    double s = (double)((uint64_t)1 << (10 * u));
    snprintf(buf, n, "%g-%g %s", lo / s, hi / s, unit[u]);
}

/* --passes: the tg test's passes (nn_pass_stats) by size, per step of the timed runs, on
 * stderr; and as a JSON array when j */
static void report_passes(const bench_args *a, const result *res, double bw, json_t *j) {
    double steps = (double)a->reps * a->n, ms = 0;
    json_t *arr = j ? json_array() : NULL;
    if (bw > 0)
        fprintf(stderr, "passes of the timed tg runs by weight bytes (this rank's products; GB/s against the reader's "
                        "best, and against each run's own bursts as its share is):\n");
    else
        fprintf(stderr, "passes of the timed tg runs by weight bytes (this rank's products; no bandwidth measured):\n");
    fprintf(stderr, "| %-17s | %11s | %9s | %9s | %7s | %6s | %10s | %8s |\n", "weights a pass", "passes/step",
            "MB a pass", "us a pass", "ms/step", "GB/s", "of reader", "of runs'");
    for (int k = 0; k < NN_PASS_CLASSES; k++) {
        const nn_pass_class *c = &res->passes[k];
        if (!c->n) continue;
        char name[48];
        class_name(k, name, sizeof name);
        double gbs = c->seconds > 0 ? c->bytes / c->seconds * 1e-9 : 0;
        ms += c->seconds * 1e3 / steps;
        fprintf(stderr, "| %-17s | %11.1f | %9.3f | %9.1f | %7.3f | %6.1f |", name, c->n / steps, c->bytes / c->n / 1e6,
                c->seconds / c->n * 1e6, c->seconds * 1e3 / steps, gbs);
        double runs = c->seconds > 0 ? res->pass_ideal_s[k] / c->seconds : 0;
        if (bw > 0) fprintf(stderr, " %10.2f | %8.2f |\n", gbs / bw, runs);
        else fprintf(stderr, " %10s | %8s |\n", "-", "-");
        if (arr) {
            json_t *o = json_pack("{s:f, s:f, s:f, s:f, s:f}", "bytes_max", (double)((uint64_t)1 << k), "per_step",
                                  c->n / steps, "bytes_mean", c->bytes / c->n, "ms_per_step", c->seconds * 1e3 / steps,
                                  "gb_s", gbs);
            if (bw > 0) json_object_set_new(o, "share_runs", json_real(runs));
            json_array_append_new(arr, o);
        }
    }
    fprintf(stderr, "passes in all: %.2f ms a step, of the %.2f ms mean step (%.0f%%)\n", ms, res->step_ms_mean,
            100 * ms / res->step_ms_mean);
    if (j) json_object_set_new(j, "passes", arr);
}

static void report(const rt *R, const bench_args *a, const result *res, int gen, const reader *rd, double wire_per_tok,
                   double xchg_share, const char *cpu) {
    double bw = rd ? rd->best : 0;
    /* the forward pass's time in each part, of the timed runs alone (not the warm-up's, nor
     * --depth's prompts) */
    double share[FWD_T_COUNT], tot = 0;
    for (int i = 0; i < FWD_T_COUNT; i++) tot += res->part_ms[i];
    for (int i = 0; i < FWD_T_COUNT; i++) share[i] = tot > 0 ? res->part_ms[i] / tot : 0;
    double bpw = 8.0 * model_active_bytes(R->m) / model_active_params(R->m);
    double bytes_per_step = model_active_bytes(R->m);
    double roof = gen && bw > 0 ? bytes_per_step * (res->med / a->batch) / (bw * 1e9) : NAN;
    fprintf(stderr, "| %-12s | %-8s | %7d | %10.2f | %10.2f | %10.2f | %9.2f |", res->test, weights_name(R),
            nn_threads(), res->med, res->mn, res->mx, res->step_ms);
    if (gen && bw > 0) fprintf(stderr, " roofline %.2f of %.1f GB/s", roof, bw);
    if (R->clustered) fprintf(stderr, " wire %.0f B/tok, exchange %.0f%%", wire_per_tok, 100 * xchg_share);
    fprintf(stderr, " [attention %.0f%%, MoE %.0f%%, dense %.0f%%, head %.0f%%]", 100 * share[FWD_T_ATTENTION],
            100 * share[FWD_T_MOE], 100 * share[FWD_T_DENSE], 100 * share[FWD_T_HEAD]);
    const double *fk = res->forks;
    if (gen)
        fprintf(stderr, " fork-joins/step %.1f [attention %.1f, MoE %.1f, dense %.1f, head %.1f]", fk[FWD_T_COUNT],
                fk[FWD_T_ATTENTION], fk[FWD_T_MOE], fk[FWD_T_DENSE], fk[FWD_T_HEAD]);
    fprintf(stderr, "\n");
    /* each run against the reader bursts beside it: a run made while the memory was slow is
     * not measured against the best of a fast moment, so a machine that changes speed during
     * the test (Zen 4's VM: 30-36 or 50-69 GB/s, every few seconds) still gives shares to trust */
    double *run_share = gen && res->run_bw ? xmalloc((size_t)a->reps * sizeof *run_share) : NULL, share_med = NAN;
    if (run_share) {
        fprintf(stderr, "each timed run's share, against the faster reader burst just before or after it:");
        for (int r = 0; r < a->reps; r++) {
            run_share[r] = bytes_per_step * (res->run_tok_s[r] / a->batch) / (res->run_bw[r] * 1e9);
            fprintf(stderr, "%s %.2f of %.1f GB/s", r ? "," : "", run_share[r], res->run_bw[r]);
            if (nn_threads() > 1) /* the threads' round trip before and after it */
                fprintf(stderr, " (round trip %.0f, %.0f ns)", res->burst_rt[r], res->burst_rt[r + 1]);
        }
        double *sorted = xmalloc((size_t)a->reps * sizeof *sorted);
        memcpy(sorted, run_share, (size_t)a->reps * sizeof *sorted);
        qsort(sorted, (size_t)a->reps, sizeof *sorted, dh_cmp_double);
        share_med = sorted[a->reps / 2];
        free(sorted);
        fprintf(stderr, "; median %.2f\n", share_med);
    }
    if (gen && a->passes && !a->json) report_passes(a, res, bw, NULL);
    if (!a->json) {
        free(run_share);
        return;
    }
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:i, s:f, s:f, s:f, s:f, s:f, s:i, s:i}", "test", res->test, "cpu",
                          cpu, "model", R->o.model_dir, "weights", weights_name(R), "threads", nn_threads(), "bits_per_weight",
                          bpw, "tok_s_median", res->med, "tok_s_min", res->mn, "tok_s_max", res->mx, "step_ms_median",
                          res->step_ms, "batch", gen ? a->batch : 1, "ranks", R->clustered ? R->cl.n_workers + 1 : 1);
    json_object_set_new(j, "depth", json_integer(a->d));
    if (gen && bw > 0) {
        json_object_set_new(j, "roofline_share", json_real(roof));
        json_object_set_new(j, "bandwidth_gb_s", json_real(bw));
        /* the lowest and highest best of a burst of passes: how much the machine moved */
        json_object_set_new(j, "bandwidth_gb_s_range", json_pack("[f, f]", rd->lo, rd->hi));
        json_object_set_new(j, "bandwidth_passes", json_integer(rd->passes));
        json_t *pat = json_object();
        for (int k = 0; k < NN_READ_PATTERNS; k++) json_object_set_new(pat, nn_read_pattern_name[k], json_real(rd->pattern[k]));
        json_object_set_new(j, "bandwidth_gb_s_patterns", pat);
        if (!isnan(rd->rt_lo)) json_object_set_new(j, "thread_round_trip_ns_range", json_pack("[f, f]", rd->rt_lo, rd->rt_hi));
    }
    if (run_share) {
        json_t *ts = json_array(), *bs = json_array(), *ss = json_array(), *rs = json_array();
        for (int r = 0; r < a->reps; r++) {
            json_array_append_new(ts, json_real(res->run_tok_s[r]));
            json_array_append_new(bs, json_real(res->run_bw[r]));
            json_array_append_new(ss, json_real(run_share[r]));
            json_t *pair = json_array(); /* before and after; null where no worker answered */
            for (int k = 0; k < 2; k++) {
                double v = res->burst_rt[r + k];
                json_array_append_new(pair, isnan(v) ? json_null() : json_real(v));
            }
            json_array_append_new(rs, pair);
        }
        if (nn_threads() > 1) json_object_set_new(j, "thread_round_trip_ns_runs", rs);
        else json_decref(rs);
        json_object_set_new(j, "tok_s_runs", ts);
        json_object_set_new(j, "bandwidth_gb_s_runs", bs);
        json_object_set_new(j, "roofline_share_runs", ss);
        json_object_set_new(j, "roofline_share_runs_median", json_real(share_med));
        free(run_share);
    }
    if (gen) json_object_set_new(j, "bytes_per_step", json_real(bytes_per_step));
    json_object_set_new(j, "time_share", json_pack("{s:f, s:f, s:f, s:f}", "attention", share[FWD_T_ATTENTION], "moe",
                                                   share[FWD_T_MOE], "dense", share[FWD_T_DENSE], "head",
                                                   share[FWD_T_HEAD]));
    /* tg: per step of the timed runs (the warm-up touches the mapped weights first), what the
     * simulator's calibration reads (docs/cluster.md) */
    const double *pm = res->part_ms;
    if (gen)
        json_object_set_new(j, "ms_per_step",
                            json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "attention", pm[FWD_T_ATTENTION],
                                      "moe", pm[FWD_T_MOE], "dense", pm[FWD_T_DENSE], "head", pm[FWD_T_HEAD],
                                      "exchange", pm[BT_EXCHANGE], "exchange_wait", pm[BT_WAIT], "worker_compute",
                                      pm[BT_WORKER]));
    if (gen)
        json_object_set_new(j, "forks_per_step",
                            json_pack("{s:f, s:f, s:f, s:f, s:f}", "attention", fk[FWD_T_ATTENTION], "moe",
                                      fk[FWD_T_MOE], "dense", fk[FWD_T_DENSE], "head", fk[FWD_T_HEAD], "total",
                                      fk[FWD_T_COUNT]));
    if (gen && a->passes) {
        json_object_set_new(j, "step_ms_mean", json_real(res->step_ms_mean));
        report_passes(a, res, bw, j);
    }
    if (R->clustered) {
        json_object_set_new(j, "wire_bytes_per_token", json_real(wire_per_tok));
        json_object_set_new(j, "exchange_share", json_real(xchg_share));
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    printf("%s\n", s);
    fflush(stdout);
    free(s);
    json_decref(j);
}

/* wire bytes per token and exchange share since the last call */
static void cluster_delta(rt *R, uint64_t tokens, double wall, double *wire, double *share) {
    static uint64_t last_bytes;
    static double last_x;
    if (!R->clustered) return;
    uint64_t bytes = 0;
    for (int w = 1; w <= R->cl.n_workers; w++) bytes += R->stats->workers[w].bytes_in + R->stats->workers[w].bytes_out;
    *wire = tokens ? (double)(bytes - last_bytes) / tokens : 0;
    *share = wall > 0 ? (R->stats->exchange_s - last_x) / wall : 0;
    last_bytes = bytes, last_x = R->stats->exchange_s;
}

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {
        {"prompt", required_argument, 0, 'p'}, {"gen", required_argument, 0, 'n'},
        {"batch", required_argument, 0, 'b'},  {"repetitions", required_argument, 0, 'r'},
        {"depth", required_argument, 0, 'd'},
        {"json", no_argument, 0, 'j'},         {"no-bandwidth", no_argument, 0, 'B'},
        {"passes", no_argument, 0, 'P'},       {"help", no_argument, 0, 'h'},
        RT_LONGOPTS,
        {0, 0, 0, 0}};
    rt_opts ro = rt_default_opts();
    bench_args a = {.p = 512, .n = 64, .batch = 1, .reps = 5, .bandwidth = 1};
    int c, r;
    while ((c = getopt_long(argc, argv, "p:n:b:d:r:t:h", opts, NULL)) != -1) {
        if ((r = rt_parse_opt(&ro, c == 't' ? 1001 : c, optarg)) < 0) return 2;
        if (r) continue;
        switch (c) {
        case 'p': a.p = atoi(optarg); break;
        case 'n': a.n = atoi(optarg); break;
        case 'b': a.batch = atoi(optarg); break;
        case 'd': a.d = atoi(optarg); break;
        case 'r': a.reps = atoi(optarg); break;
        case 'j': a.json = 1; break;
        case 'B': a.bandwidth = 0; break;
        case 'P': a.passes = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !ro.model_dir || a.p < 0 || a.n < 0 || a.d < 0 || a.batch < 1 || a.batch > 4096 ||
        a.reps < 1 || a.reps > 1000 || a.p > 1 << 20 || a.n > 1 << 20 || a.d > 1 << 20) {
        usage(stderr);
        return 2;
    }
    rt R;
    int rows = DH_MAX(DH_MIN(DH_MAX(a.p, a.d), CHUNK), a.batch), len = a.d + DH_MAX(a.p, a.n);
    int orc = rt_open_kv(&R, &ro, rows, len + 1, a.batch, (size_t)(len + KV_BLOCK) * a.batch);
    if (orc) return orc == RT_WORKER ? R.worker_rc : 1;
    char cpu[256];
    cpu_describe(cpu, sizeof cpu);
    fprintf(stderr, "cpu: %s, %d threads; %s kernels", cpu, nn_threads(), nn_kernels()->name);
    if (nn_kernels()->g16)
        fprintf(stderr, ", packed decode streams prefetching %d bytes ahead (DH_KERN_PREFETCH_G16)",
                nn_kernels()->g16_prefetch);
    fprintf(stderr, "\n");
    reader rdr, *rd = NULL;
    if (a.bandwidth) reader_open(rd = &rdr);
    if (rd) {
        fprintf(stderr, "read bandwidth (%d threads, best of %d passes of 256 MiB, %d read patterns): %.1f GB/s",
                nn_threads(), rd->passes, NN_READ_PATTERNS, rd->best);
        if (!isnan(rd->rt)) fprintf(stderr, "; a cache line's round trip between the threads: %.0f ns", rd->rt);
        fprintf(stderr, "\n");
    }
    fprintf(stderr, "model %s: %.3f GB of weights read per step (%.3fB active parameters, %.2f bits each)\n",
            R.o.model_dir, model_active_bytes(R.m) / 1e9, model_active_params(R.m) / 1e9,
            8 * model_active_bytes(R.m) / model_active_params(R.m));
    fprintf(stderr, "| %-12s | %-8s | %7s | %10s | %10s | %10s | %9s |\n", "test", "weights", "threads", "tok/s med",
            "tok/s min", "tok/s max", "step ms");
    int rc = 0;
    result res = {0};
    double wire = 0, share = 0;
    cluster_delta(&R, 0, 0, &wire, &share);
    if (a.p > 0) {
        double t0 = dh_now();
        rc = bench_pp(&R, &a, &res);
        if (!rc) {
            cluster_delta(&R, (uint64_t)a.p * (a.reps + 1), dh_now() - t0, &wire, &share);
            report(&R, &a, &res, 0, rd, wire, share, cpu);
        }
    }
    if (!rc && a.n > 0) {
        double t0 = dh_now();
        rc = bench_tg(&R, &a, &res, rd);
        if (!rc) {
            cluster_delta(&R, (uint64_t)a.n * a.batch * (a.reps + 1), dh_now() - t0, &wire, &share);
            if (rd) {
                fprintf(stderr, "read bandwidth, best of %d passes (before the tests and after each timed tg run): "
                                "%.1f GB/s (bursts %.1f-%.1f); best of each pattern:", rd->passes, rd->best, rd->lo, rd->hi);
                for (int k = 0; k < NN_READ_PATTERNS; k++)
                    fprintf(stderr, "%s %s %.1f", k ? "," : "", nn_read_pattern_name[k], rd->pattern[k]);
                if (!isnan(rd->rt_lo))
                    fprintf(stderr, "; the threads' round trip %.0f-%.0f ns", rd->rt_lo, rd->rt_hi);
                fprintf(stderr, "\n");
            }
            if (rd && rd->hi > 1.25 * rd->lo) /* e.g. Zen 4's VM: 30-36 or 50-69 GB/s, every few seconds */
                fprintf(stderr, "note: the bursts' best ranged over %.1f-%.1f GB/s: the machine's memory changed speed "
                                "during the run, so the roofline share (against the best) reads low for the steps run "
                                "while it was slow; each run's own share follows the table\n", rd->lo, rd->hi);
            report(&R, &a, &res, 1, rd, wire, share, cpu);
        }
        result_free(&res);
    }
    if (rd) reader_close(rd);
    if (rc) rt_step_failed(&R, rc);
    rt_close(&R, 1);
    return rc ? 1 : 0;
}
