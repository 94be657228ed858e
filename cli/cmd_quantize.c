/* cmd_quantize.c: `darkhorse quantize`: store a checkpoint with q8, q4 or q4k weights, so that a
 * server starts without re-quantizing billions of weights and maps half (q8) or a quarter (q4)
 * of the bytes.
 *
 * Every 2-D tensor is quantized (embedding, attention, dense and expert FFNs, MTP projections,
 * head) except the routers (`*.mlp.gate.weight`), which the engine computes as stored, and any matrix
 * whose rows are not a multiple of 32 wide; vectors (norms, the correction bias) are copied as
 * they are. A quantized matrix is stored as U8 [rows, blocks per row * block bytes] in the
 * block layout of core/tensor.h, and the file's __metadata__ says "darkhorse_weights": "q8",
 * "q4" or "q4k", which is how the loader recognises it. The conversion streams one row at a time, so it
 * needs no more memory than a row, whatever the model's size. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/common.h"
#include "core/quant.h"
#include "core/safetensors.h"

static void usage(FILE *f) {
    fprintf(f, "usage: darkhorse quantize --model DIR --out DIR2 --weights q8|q4|q4k\n\n"
               "Writes DIR2/model.safetensors with q8, q4 or q4k weights (norms, routers and biases stay as\n"
               "they are) and copies config.json and tokenizer.json. Load it like any checkpoint.\n");
}

static int quantized(const st_tensor *t) {
    size_t n = strlen(t->name), g = strlen(".mlp.gate.weight");
    return t->ndim == 2 && (t->dtype == ST_F32 || t->dtype == ST_BF16 || t->dtype == ST_F16) && t->shape[1] % 32 == 0 &&
           !(n >= g && strcmp(t->name + n - g, ".mlp.gate.weight") == 0);
}

static int copy_file(const char *from, const char *to, int required) {
    FILE *in = fopen(from, "rb");
    if (!in) {
        if (required) fprintf(stderr, "darkhorse quantize: cannot read %s\n", from);
        return required ? -1 : 0;
    }
    FILE *out = fopen(to, "wb");
    int rc = out ? 0 : -1;
    char buf[65536];
    size_t n;
    while (!rc && (n = fread(buf, 1, sizeof buf, in)) > 0) rc = fwrite(buf, 1, n, out) == n ? 0 : -1;
    fclose(in);
    if (out && fclose(out) != 0) rc = -1;
    if (rc) fprintf(stderr, "darkhorse quantize: cannot write %s\n", to);
    return rc;
}

/* the whole conversion: 0 or an error code (logged) */
static int convert(st_file *st, const char *out_path, dh_dtype q) {
    int n = st_count(st), rc = 0;
    stw_tensor *ts = xcalloc((size_t)n, sizeof *ts);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) {
        const st_tensor *t = st_at(st, i);
        ts[i] = (stw_tensor){.name = t->name, .dtype = t->dtype, .ndim = t->ndim};
        memcpy(ts[i].shape, t->shape, sizeof ts[i].shape);
        if (quantized(t)) {
            ts[i].dtype = ST_U8;
            ts[i].shape[1] = (int64_t)wt_bytes(q, 1, (size_t)t->shape[1]);
        }
        total += t->nbytes;
    }
    const char *keys[2] = {"darkhorse_weights", "format"}, *vals[2] = {wt_dtype_name(q), "pt"};
    st_writer *w = stw_open_meta(out_path, ts, n, keys, vals, 2);
    if (!w) {
        free(ts);
        return DH_EIO;
    }
    float *row = NULL;
    unsigned char *blocks = NULL;
    uint64_t done = 0;
    double t0 = dh_now(), last = t0;
    for (int i = 0; i < n && !rc; i++) {
        const st_tensor *t = st_at(st, i);
        const void *d = st_data(st, t);
        if (!d) {
            rc = DH_EIO;
            break;
        }
        if (!quantized(t)) {
            rc = stw_write(w, d, (size_t)t->nbytes);
        } else {
            int rows = (int)t->shape[0], cols = (int)t->shape[1];
            wmat src = {.dtype = t->dtype == ST_F32 ? DT_F32 : t->dtype == ST_BF16 ? DT_BF16 : DT_F16,
                        .rows = rows, .cols = cols};
            src.p.bf16 = d;
            size_t rb = wt_bytes(q, 1, (size_t)cols);
            row = xrealloc(row, (size_t)cols * sizeof *row);
            blocks = xrealloc(blocks, rb);
            for (int r = 0; r < rows && !rc; r++) {
                wt_row(&src, r, row);
                if (q == DT_Q8) quant_q8_row(row, cols, (wt_q8_block *)blocks);
                else if (q == DT_Q4K) quant_q4k_row(row, cols, blocks);
                else quant_q4_row(row, cols, (wt_q4_block *)blocks);
                rc = stw_write(w, blocks, rb);
            }
        }
        done += t->nbytes;
        if (dh_now() - last > (isatty(2) ? 0.5 : 5.0)) {
            fprintf(stderr, "%squantize: %.2f / %.2f GB read (%.0f%%)%s", isatty(2) ? "\r" : "", done / 1e9,
                    total / 1e9, 100.0 * done / total, isatty(2) ? "" : "\n");
            last = dh_now();
        }
    }
    int crc = stw_close(w);
    if (!rc) rc = crc;
    if (!rc)
        fprintf(stderr, "%squantize: %.2f GB in %.1f s\n", isatty(2) ? "\r" : "", total / 1e9, dh_now() - t0);
    free(row), free(blocks), free(ts);
    return rc;
}

int cmd_quantize(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'}, {"out", required_argument, 0, 'o'},
                                         {"weights", required_argument, 0, 'w'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *in = NULL, *out = NULL;
    int q = -1, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': in = optarg; break;
        case 'o': out = optarg; break;
        case 'w': q = wt_dtype_parse(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || !in || !out || (q != DT_Q8 && q != DT_Q4 && q != DT_Q4K)) {
        usage(stderr);
        return 2;
    }
    if (strcmp(in, out) == 0) {
        fprintf(stderr, "darkhorse quantize: --out must differ from --model\n");
        return 2;
    }
    int err;
    st_file *st = st_open(in, &err);
    if (!st) return 1;
    if (st_metadata(st, "darkhorse_weights")) {
        fprintf(stderr, "darkhorse quantize: %s is already quantized (%s)\n", in, st_metadata(st, "darkhorse_weights"));
        st_close(st);
        return 1;
    }
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "darkhorse quantize: cannot create %s: %s\n", out, strerror(errno));
        st_close(st);
        return 1;
    }
    char from[1200], to[1200], tmp[1200];
    snprintf(from, sizeof from, "%s/config.json", in);
    snprintf(to, sizeof to, "%s/config.json", out);
    int rc = copy_file(from, to, 1);
    snprintf(from, sizeof from, "%s/tokenizer.json", in);
    snprintf(to, sizeof to, "%s/tokenizer.json", out);
    if (!rc) rc = copy_file(from, to, 0);
    snprintf(tmp, sizeof tmp, "%s/model.safetensors.partial", out);
    snprintf(to, sizeof to, "%s/model.safetensors", out);
    if (!rc) rc = convert(st, tmp, (dh_dtype)q);
    if (!rc && rename(tmp, to) != 0) {
        fprintf(stderr, "darkhorse quantize: cannot rename %s: %s\n", tmp, strerror(errno));
        rc = 1;
    }
    if (rc) unlink(tmp);
    st_close(st);
    return rc ? 1 : 0;
}
