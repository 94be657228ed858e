/* cmd_generate.c: `darkhorse generate`: a prompt (ids or text) in, tokens out, streamed.
 *
 * The prompt is prefilled in chunks of up to 512 rows (naive attention), then tokens are
 * decoded one at a time (absorbed attention) and sampled. With --print-ids stdout is one line:
 * the generated ids; otherwise the text streams as it is generated, a character at a time
 * once complete. Timing goes to stderr. */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "core/common.h"
#include "core/sampler.h"
#include "core/tokenizer.h"

#define PREFILL_CHUNK 512

static void usage(FILE *f) {
    fprintf(f,
            "usage: darkhorse generate --model DIR (--ids LIST | --prompt TEXT) [options]\n\n"
            "  --ids LIST        prompt as comma-separated token ids\n"
            "  --prompt TEXT     prompt as text (needs DIR/tokenizer.json)\n"
            "  --max-tokens N    tokens to generate (default 128)\n"
            "  --temperature T   0 is greedy (default 0.8)\n"
            "  --top-p P         nucleus sampling (default 0.95)\n"
            "  --top-k K         keep the K best tokens, 0 = all (default 40)\n"
            "  --seed S          sampling seed (default: random)\n"
            "  --ignore-eos      do not stop at the end-of-sentence token\n"
            "  --print-ids       print the generated ids on one line instead of the text\n" RT_HELP);
}

typedef struct gen_opts {
    const char *ids, *prompt;
    int max_tokens, ignore_eos, print_ids;
    sampler_params sp;
} gen_opts;

static int parse_args(int argc, char **argv, gen_opts *g, rt_opts *ro) {
    static const struct option opts[] = {
        {"ids", required_argument, 0, 'i'},         {"prompt", required_argument, 0, 'p'},
        {"max-tokens", required_argument, 0, 'n'},  {"temperature", required_argument, 0, 't'},
        {"top-p", required_argument, 0, 'P'},       {"top-k", required_argument, 0, 'k'},
        {"seed", required_argument, 0, 's'},        {"ignore-eos", no_argument, 0, 'e'},
        {"print-ids", no_argument, 0, 'I'},         {"help", no_argument, 0, 'h'},
        RT_LONGOPTS,                                {0, 0, 0, 0}};
    int c, r;
    double v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = rt_parse_opt(ro, c, optarg)) < 0) return 2;
        if (r) continue;
        switch (c) {
        case 'i': g->ids = optarg; break;
        case 'p': g->prompt = optarg; break;
        case 'n':
            if (rt_parse_num("--max-tokens", optarg, 0, 1 << 20, &v)) return 2;
            g->max_tokens = (int)v;
            break;
        case 't':
            if (rt_parse_num("--temperature", optarg, 0, 100, &v)) return 2;
            g->sp.temperature = (float)v;
            break;
        case 'P':
            if (rt_parse_num("--top-p", optarg, 0, 1, &v)) return 2;
            g->sp.top_p = (float)v;
            break;
        case 'k':
            if (rt_parse_num("--top-k", optarg, 0, INT_MAX, &v)) return 2;
            g->sp.top_k = (int)v;
            break;
        case 's':
            if (rt_parse_num("--seed", optarg, 0, 1.8e19, &v)) return 2;
            g->sp.seed = strtoull(optarg, NULL, 10);
            break;
        case 'e': g->ignore_eos = 1; break;
        case 'I': g->print_ids = 1; break;
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !ro->model_dir || (!g->ids == !g->prompt)) {
        fprintf(stderr, "darkhorse generate: give --model and one of --ids or --prompt\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

/* The prompt's ids: parsed, or the text encoded. -1 on error (message printed). */
static int prompt_ids(const gen_opts *g, const tokenizer *tok, int **ids) {
    if (g->ids) return rt_parse_ids(g->ids, INT_MAX, ids);
    size_t n = 0, off = 0;
    if (tok_encode(tok, g->prompt, strlen(g->prompt), ids, &n, &off) != 0) {
        fprintf(stderr, "darkhorse generate: --prompt is not valid UTF-8 (byte %zu)\n", off);
        return -1;
    }
    if (n == 0) {
        fprintf(stderr, "darkhorse generate: --prompt encodes to no tokens\n");
        free(*ids);
        return -1;
    }
    return (int)n;
}

/* Prefill the prompt in chunks; logits of the last position into `logits`. */
static int prefill(rt *R, int seq, const int *ids, int T, float *logits) {
    fwd_row *rows = xmalloc((size_t)R->max_rows * sizeof *rows);
    int rc = 0;
    for (int t0 = 0; t0 < T && !rc; t0 += R->max_rows) {
        int n = DH_MIN(R->max_rows, T - t0);
        for (int i = 0; i < n; i++)
            rows[i] = (fwd_row){seq, t0 + i, ids[t0 + i], FWD_NAIVE | (t0 + i == T - 1 ? FWD_LOGITS : 0)};
        fwd_out fo = {.logits = logits};
        rc = fwd_step(R->f, rows, n, &fo);
    }
    free(rows);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    gen_opts g = {.max_tokens = 128, .sp = sampler_default_params()};
    rt_opts ro = rt_default_opts();
    int r = parse_args(argc, argv, &g, &ro);
    if (r) return r == 1 ? 0 : r;
    tokenizer *tok = NULL;
    if (g.prompt || !g.print_ids) {
        char path[1100];
        snprintf(path, sizeof path, "%s/tokenizer.json", ro.model_dir);
        tok = tok_load(path);
        if (!tok) {
            fprintf(stderr, "darkhorse generate: text in or out needs %s (or use --ids with --print-ids)\n", path);
            return 1;
        }
    }
    int *ids = NULL, T = prompt_ids(&g, tok, &ids), rc = 1;
    if (T < 0) {
        tok_free(tok);
        return 2;
    }
    rt R;
    int orc = rt_open(&R, &ro, DH_MIN(T, PREFILL_CHUNK), T + g.max_tokens + 1, 1);
    if (orc) {
        free(ids);
        tok_free(tok);
        return orc == RT_WORKER ? R.worker_rc : 1;
    }
    const model_config *c = &R.m->cfg;
    int V = c->vocab_size, eos = c->eos_token_id;
    for (int t = 0; t < T; t++)
        if (ids[t] >= V) {
            fprintf(stderr, "darkhorse generate: token id %d is not below the vocabulary size %d\n", ids[t], V);
            rc = 2;
            goto out_ids;
        }
    float *logits = xmalloc((size_t)V * sizeof *logits);
    int *out_ids = xmalloc((size_t)(g.max_tokens + 1) * sizeof *out_ids), n_out = 0;
    sampler *smp = sampler_new(V, g.sp);
    tok_stream *ts = tok ? tok_stream_new(tok) : NULL;
    char text[4096];
    int seq = kv_seq_open(R.kv);
    if (kv_seq_reserve(R.kv, seq, T + g.max_tokens) != 0) {
        fprintf(stderr, "darkhorse generate: the KV cache cannot hold %d positions\n", T + g.max_tokens);
        goto out;
    }
    // prefill, then decode one token at a time
    double t0 = dh_now();
    int frc = prefill(&R, seq, ids, T, logits);
    if (frc) {
        rt_step_failed(&R, frc);
        goto out;
    }
    double t1 = dh_now(), t2 = t1;
    int steps = 0;
    for (int pos = T; n_out < g.max_tokens; pos++) {
        int next = sampler_sample(smp, logits, 0, pos, SAMPLER_TOKEN); /* the token at pos */
        if (next == eos && !g.ignore_eos) break;
        out_ids[n_out++] = next;
        if (!g.print_ids) {
            size_t k = tok_stream_push(ts, next, text, sizeof text);
            fwrite(text, 1, k, stdout);
            fflush(stdout);
        }
        if (n_out == g.max_tokens) break;
        fwd_row row = {seq, pos, next, FWD_LOGITS};
        fwd_out fo = {.logits = logits};
        if ((frc = fwd_step(R.f, &row, 1, &fo)) != 0) {
            rt_step_failed(&R, frc);
            goto out;
        }
        steps++;
        t2 = dh_now();
    }
    if (g.print_ids) {
        for (int i = 0; i < n_out; i++) printf("%s%d", i ? " " : "", out_ids[i]);
        printf("\n");
    } else {
        size_t k = tok_stream_flush(ts, text, sizeof text);
        fwrite(text, 1, k, stdout);
        printf("\n");
    }
    fflush(stdout);
    log_info("prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens, %.2f tok/s; load %.2f s; RSS %.2f GB",
             T, t1 - t0, T / (t1 - t0), n_out, steps > 0 ? steps / (t2 - t1) : 0.0, R.load_s, dh_rss_bytes() / 1e9);
    rc = 0;
out:
    tok_stream_free(ts);
    sampler_free(smp);
    free(logits);
    free(out_ids);
out_ids:
    free(ids);
    tok_free(tok);
    rt_close(&R, rc == 0);
    return rc;
}
