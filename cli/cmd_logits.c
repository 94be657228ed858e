/* cmd_logits.c: `darkhorse logits`: a prompt in one prefill (or, with --decode, the first token
 * as a prompt and the others as generated tokens, one step each); float32 logits to a file. */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "core/common.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: darkhorse logits --model DIR --ids 5,17,42 --out FILE [--mtp-out FILE2] [options]\n\n"
            "Runs the prompt in one prefill and writes float32 little-endian logits: T rows of\n"
            "vocab_size. With --mtp-out, the MTP head's logits for positions 0..T-2 (row i predicts\n"
            "token i+2 from the hidden state at i and token i+1).\n\n"
            "  --ids LIST       comma-separated token ids\n"
            "  --decode         the first id as a prompt, every later one as a generated token in a\n"
            "                   step of its own (the decode rows' attention form): the logits a\n"
            "                   generation computes (not with --mtp-out)\n"
            "  --out FILE       where the logits go\n"
            "  --mtp-out FILE2  where the MTP logits go\n" RT_HELP);
}

static int write_all(const char *path, const float *x, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(x, sizeof *x, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "darkhorse logits: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

int cmd_logits(int argc, char **argv) {
    static const struct option opts[] = {{"ids", required_argument, 0, 'i'}, {"out", required_argument, 0, 'o'},
                                         {"mtp-out", required_argument, 0, 'm'}, {"decode", no_argument, 0, 'd'},
                                         {"help", no_argument, 0, 'h'},
                                         RT_LONGOPTS, {0, 0, 0, 0}};
    rt_opts ro = rt_default_opts();
    const char *ids_s = NULL, *out = NULL, *mtp_out = NULL;
    int c, r, decode = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if ((r = rt_parse_opt(&ro, c, optarg)) < 0) return 2;
        if (r) continue;
        switch (c) {
        case 'i': ids_s = optarg; break;
        case 'o': out = optarg; break;
        case 'm': mtp_out = optarg; break;
        case 'd': decode = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !ids_s || !out || !ro.model_dir) {
        usage(stderr);
        return 2;
    }
    if (decode && mtp_out) {
        fprintf(stderr, "darkhorse logits: --mtp-out runs a prefill's hidden states, not --decode's\n");
        return 2;
    }
    int *ids, T = rt_parse_ids(ids_s, INT_MAX, &ids);
    if (T < 0) return 2;
    rt R;
    int orc = rt_open(&R, &ro, T, T + 1, 1);
    if (orc) {
        free(ids);
        return orc == RT_WORKER ? R.worker_rc : 1;
    }
    int V = R.m->cfg.vocab_size, D = R.m->cfg.hidden_size, rc = 1;
    for (int t = 0; t < T; t++)
        if (ids[t] >= V) {
            fprintf(stderr, "darkhorse logits: token id %d is not below the vocabulary size %d\n", ids[t], V);
            free(ids);
            rt_close(&R, 0);
            return 2;
        }
    fwd_row *rows = xmalloc((size_t)T * sizeof *rows);
    float *logits = xmalloc(xmul((size_t)T * V, sizeof(float)));
    float *hidden = xmalloc(xmul((size_t)T * D, sizeof(float)));
    int seq = kv_seq_open(R.kv);
    if (kv_seq_reserve(R.kv, seq, T) != 0) goto out;
    for (int t = 0; t < T; t++) rows[t] = (fwd_row){seq, t, ids[t], FWD_LOGITS | (decode && t ? 0 : FWD_NAIVE)};
    double t0 = dh_now();
    int frc = 0;
    for (int t = 0; t < T && !frc; t += decode ? 1 : T) { /* one step: the prompt, or each row */
        fwd_out fo = {.logits = logits + (size_t)t * V, .hidden = hidden + (size_t)t * D};
        frc = fwd_step(R.f, rows + t, decode ? 1 : T, &fo);
    }
    if (frc) {
        rt_step_failed(&R, frc);
        goto out;
    }
    log_info("%s of %d tokens: %.3f s", decode ? "one prompt token and decode steps" : "prefill", T, dh_now() - t0);
    if (write_all(out, logits, (size_t)T * V) != 0) goto out;
    if (mtp_out) {
        if (!R.m->has_mtp) {
            fprintf(stderr, "darkhorse logits: %s has no MTP layer for --mtp-out\n", ro.model_dir);
            goto out;
        }
        for (int t = 0; t + 1 < T; t++) rows[t] = (fwd_row){seq, t, ids[t + 1], FWD_NAIVE | FWD_LOGITS};
        if (T > 1 && (frc = fwd_mtp(R.f, rows, hidden, T - 1, logits)) != 0) {
            rt_step_failed(&R, frc);
            goto out;
        }
        if (write_all(mtp_out, logits, (size_t)(T - 1) * V) != 0) goto out;
    }
    rc = 0;
out:
    free(rows), free(logits), free(hidden), free(ids);
    rt_close(&R, 0);
    return rc;
}
