/* cmd_tokenize.c: `darkhorse tokenize`: text to token ids and back with a tokenizer.json.
 *
 * --jsonl is the batch form the tests and other tools drive: one JSON object with a "text"
 * string per stdin line, exactly one line out per line in, {"ids":[...]} or {"error":"..."},
 * flushed per line so a client may talk to it interactively. --text and --decode are for
 * people; --bench measures encode throughput (cold cache each run) for scripts/bench-tokenizer.sh.
 * Without --tokenizer the DeepSeek-V3 tokenizer built into the binary is used. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "core/common.h"
#include "core/tok_embedded.h"
#include "core/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: darkhorse tokenize [--tokenizer FILE] MODE\n\n"
            "modes:\n"
            "  --jsonl             read JSON lines with a \"text\" field on stdin, write one line\n"
            "                      {\"ids\":[...]} (or {\"error\":\"...\"}) per input line\n"
            "  --text TEXT         print the ids of TEXT, space-separated, on one line\n"
            "  --decode --ids LIST print the text of the comma-separated ids\n"
            "  --bench FILE        encode FILE line by line, cold cache each run, and report\n"
            "                      the median throughput on stderr; --runs N (default 5)\n\n"
            "options:\n"
            "  --tokenizer FILE    a Hugging Face tokenizer.json (default: the built-in\n"
            "                      DeepSeek-V3 tokenizer)\n"
            "  --help              this text\n\n"
            "No special tokens are added (as Hugging Face encodes with add_special_tokens=False);\n"
            "special tokens written in the text are matched.\n");
}

typedef struct tk_opts {
    const char *tokenizer, *text, *ids, *bench;
    int jsonl, decode, runs;
} tk_opts;

static int parse_args(int argc, char **argv, tk_opts *o) {
    static const struct option opts[] = {
        {"tokenizer", required_argument, 0, 'T'}, {"jsonl", no_argument, 0, 'j'},
        {"text", required_argument, 0, 't'},      {"decode", no_argument, 0, 'd'},
        {"ids", required_argument, 0, 'i'},       {"bench", required_argument, 0, 'b'},
        {"runs", required_argument, 0, 'r'},      {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    long v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'T': o->tokenizer = optarg; break;
        case 'j': o->jsonl = 1; break;
        case 't': o->text = optarg; break;
        case 'd': o->decode = 1; break;
        case 'i': o->ids = optarg; break;
        case 'b': o->bench = optarg; break;
        case 'r':
            if (rt_parse_long("--runs", optarg, 1, 1000, &v)) return 2;
            o->runs = (int)v;
            break;
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return 2;
        }
    }
    int modes = o->jsonl + !!o->text + o->decode + !!o->bench;
    if (optind < argc || modes != 1 || (o->decode != !!o->ids)) {
        fprintf(stderr, "darkhorse tokenize: give exactly one of --jsonl, --text, --decode "
                        "(with --ids) or --bench\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

static tokenizer *load(const char *path) {
    if (path) return tok_load(path);
    size_t len;
    const unsigned char *json = tok_embedded_json(&len);
    return tok_load_buffer((const char *)json, len, "built-in DeepSeek-V3 tokenizer.json");
}

/* A growable output line. */
typedef struct line_buf {
    char *p;
    size_t n, cap;
} line_buf;

static void lb_put(line_buf *b, const char *s, size_t len) {
    if (b->n + len > b->cap) {
        b->cap = 2 * (b->n + len) + 256;
        b->p = xrealloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
}

static void put_error(line_buf *b, const char *msg) {
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = json_dumps(o, JSON_COMPACT);
    lb_put(b, s, strlen(s));
    free(s);
    json_decref(o);
}

/* One input line to one output line (without its newline) in b. */
static void jsonl_line(const tokenizer *t, const char *line, size_t len, line_buf *b) {
    char msg[300];
    size_t bad = tok_utf8_check(line, len);
    if (bad < len) {
        snprintf(msg, sizeof msg, "invalid UTF-8 at byte %zu of the line", bad);
        put_error(b, msg);
        return;
    }
    json_error_t jerr;
    json_t *root = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
    if (!root) {
        snprintf(msg, sizeof msg, "not JSON: %s (column %d)", jerr.text, jerr.column);
        put_error(b, msg);
        return;
    }
    const json_t *text = json_is_object(root) ? json_object_get(root, "text") : NULL;
    if (!json_is_string(text)) {
        put_error(b, "no \"text\" string in the object");
        json_decref(root);
        return;
    }
    int *ids;
    size_t n, off = 0;
    int rc = tok_encode(t, json_string_value(text), json_string_length(text), &ids, &n, &off);
    json_decref(root);
    if (rc != 0) {
        if (rc == DH_EINVAL) snprintf(msg, sizeof msg, "invalid UTF-8 at byte %zu of text", off);
        else snprintf(msg, sizeof msg, "cannot encode: %s", dh_strerror(rc));
        put_error(b, msg);
        return;
    }
    lb_put(b, "{\"ids\":[", 8);
    for (size_t i = 0; i < n; i++) {
        char num[16];
        int k = snprintf(num, sizeof num, i ? ",%d" : "%d", ids[i]);
        lb_put(b, num, (size_t)k);
    }
    lb_put(b, "]}", 2);
    free(ids);
}

static int run_jsonl(const tokenizer *t) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    line_buf b = {0};
    while ((got = getline(&line, &cap, stdin)) >= 0) {
        size_t len = (size_t)got;
        if (len > 0 && line[len - 1] == '\n') len--;
        b.n = 0;
        jsonl_line(t, line, len, &b);
        lb_put(&b, "\n", 1);
        fwrite(b.p, 1, b.n, stdout);
        fflush(stdout);
    }
    free(line);
    free(b.p);
    if (ferror(stdin) || ferror(stdout)) {
        log_error("tokenize: input/output error");
        return 1;
    }
    return 0;
}

static int run_text(const tokenizer *t, const char *text) {
    int *ids;
    size_t n, off = 0;
    if (tok_encode(t, text, strlen(text), &ids, &n, &off) != 0) {
        fprintf(stderr, "darkhorse tokenize: --text is not valid UTF-8 (byte %zu)\n", off);
        return 1;
    }
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    free(ids);
    return 0;
}

static int run_decode(const tokenizer *t, const char *list) {
    size_t n = 0, cap = 16;
    int *ids = xmalloc(cap * sizeof *ids);
    for (const char *p = list; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT_MAX || (*end && *end != ',')) {
            fprintf(stderr, "darkhorse tokenize: --ids wants comma-separated ids, not '%s'\n",
                    list);
            free(ids);
            return 2;
        }
        if (n == cap) ids = xrealloc(ids, (cap *= 2) * sizeof *ids);
        ids[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    char *text;
    size_t len;
    tok_decode(t, ids, n, &text, &len);
    fwrite(text, 1, len, stdout);
    printf("\n");
    free(text);
    free(ids);
    return 0;
}

/* Encode every line of the file (newlines excluded), runs times, cache emptied before each. */
static int run_bench(const tokenizer *t, const char *path, int runs) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        log_error("%s: cannot open: %s", path, strerror(errno));
        return 1;
    }
    line_buf file = {0};
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) lb_put(&file, chunk, got);
    fclose(f);
    double *mbs = xmalloc((size_t)runs * sizeof *mbs);
    size_t tokens = 0, lines = 0, bad = 0;
    for (int r = 0; r < runs; r++) {
        tok_cache_clear(t);
        tokens = lines = bad = 0;
        double t0 = dh_now();
        for (size_t at = 0; at < file.n;) {
            const char *nl = memchr(file.p + at, '\n', file.n - at);
            size_t len = nl ? (size_t)(nl - (file.p + at)) : file.n - at;
            int *ids;
            size_t n;
            if (tok_encode(t, file.p + at, len, &ids, &n, NULL) == 0) {
                tokens += n;
                free(ids);
            } else {
                bad++;
            }
            lines++;
            at += len + 1;
        }
        mbs[r] = file.n / 1e6 / (dh_now() - t0);
    }
    double *sorted = xmalloc((size_t)runs * sizeof *sorted);
    memcpy(sorted, mbs, (size_t)runs * sizeof *sorted);
    qsort(sorted, (size_t)runs, sizeof *sorted, dh_cmp_double);
    fprintf(stderr, "tokenize bench: %s: %zu bytes, %zu lines (%zu invalid), %zu tokens\n",
            path, file.n, lines, bad, tokens);
    fprintf(stderr, "tokenize bench: runs (MB/s):");
    for (int r = 0; r < runs; r++) fprintf(stderr, " %.2f", mbs[r]);
    fprintf(stderr, "\ntokenize bench: median %.2f MB/s\n", sorted[runs / 2]);
    free(sorted);
    free(mbs);
    free(file.p);
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    tk_opts o = {.runs = 5};
    int rc = parse_args(argc, argv, &o);
    if (rc) return rc == 1 ? 0 : rc;
    tokenizer *t = load(o.tokenizer);
    if (!t) return 1;
    if (o.jsonl) rc = run_jsonl(t);
    else if (o.text) rc = run_text(t, o.text);
    else if (o.decode) rc = run_decode(t, o.ids);
    else rc = run_bench(t, o.bench, o.runs);
    tok_free(t);
    return rc;
}
