/* cmd_trace.c: `darkhorse trace import` and `darkhorse trace info`.
 *
 * import --esft DIR reads the layout of DeepSeek's ESFT expert scores: every sub-folder of DIR
 * (in name order) is a domain holding expert_weights_<l>.txt for MoE layers l = 1..L; other
 * files are ignored. One line per sequence: T*K expert ids, two tabs, T*K gate weights, all
 * tab-separated. K and E are not in the files, so they come from the options (DeepSeek-V2-Lite's
 * 6 and 64 by default). Every layer must hold the same sequences with the same lengths, every
 * id must be in range and once per token, every weight finite: a bad file is an error naming
 * the file, the line and the token, and nothing is skipped. When every weight is written with
 * at most four decimals (as ESFT's are), the trace stores them exactly as integers of 1e-4.
 *
 * info prints the shape, the tokens per domain, each layer's skew (the most loaded expert's
 * tokens over the mean) and how strongly experts are chosen together: the share of a layer's
 * co-selected expert pairs that fall on its 5% most frequent pairs (0.05 if pairs were
 * chosen uniformly). */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "core/common.h"
#include "proto/tracefile.h"
#include "sched/trace.h"

#define ESFT_HIDDEN 2048 /* DeepSeek-V2-Lite's hidden size */
#define ESFT_FFN 1408    /* and its expert FFN width (moe_intermediate_size) */
#define ESFT_UNIT 1e-4f  /* the source's weights are rounded to 4 decimals */

/* ---- import ---- */

typedef struct esft_layer { /* one parsed layer file of one domain */
    int n_seqs;
    int *len;              /* [n_seqs] tokens per line */
    int16_t *ids;          /* [tokens, K] */
    float *w;              /* [tokens, K] */
    size_t n_tok;
} esft_layer;

typedef struct esft_opts {
    int K, E;
    int four_decimals;      /* every weight so far had at most 4 decimals */
} esft_opts;

static void layer_free(esft_layer *ly) { free(ly->len), free(ly->ids), free(ly->w); }

static char *read_text(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "darkhorse trace import: %s: cannot open: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 20, len = 0, r;
    char *s = xmalloc(cap + 1);
    while ((r = fread(s + len, 1, cap - len, f)) > 0)
        if ((len += r) == cap) s = xrealloc(s, (cap *= 2) + 1);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "darkhorse trace import: %s: read error\n", path);
        free(s);
        return NULL;
    }
    s[len] = 0;
    *n = len;
    return s;
}

/* Parse one line (NUL-terminated, no newline) into ly: 0, or -1 with a message naming the
 * file, line and token. */
static int parse_line(const char *path, int lineno, char *line, esft_opts *o, esft_layer *ly, size_t *cap) {
    char *sep = strstr(line, "\t\t");
    if (!sep) {
        fprintf(stderr, "darkhorse trace import: %s:%d: no two tabs between the expert ids and the weights "
                        "(a truncated line?)\n", path, lineno);
        return -1;
    }
    *sep = 0;
    char *wpart = sep + 2;
    size_t n_ids = 1, n_w = 1;
    for (char *p = line; *p; p++) n_ids += *p == '\t';
    for (char *p = wpart; *p; p++) n_w += *p == '\t';
    if (!*line || !*wpart || n_ids != n_w || n_ids % (size_t)o->K) {
        fprintf(stderr, "darkhorse trace import: %s:%d: %zu ids and %zu weights: not the same whole number of "
                        "tokens of %d (a truncated line? token %zu is incomplete)\n",
                path, lineno, *line ? n_ids : 0, *wpart ? n_w : 0, o->K, DH_MIN(n_ids, n_w) / (size_t)o->K);
        return -1;
    }
    size_t T = n_ids / (size_t)o->K;
    if (ly->n_tok + T > *cap) {
        *cap = (*cap + T) * 2;
        ly->ids = xrealloc(ly->ids, *cap * o->K * sizeof *ly->ids);
        ly->w = xrealloc(ly->w, *cap * o->K * sizeof *ly->w);
    }
    int16_t *ids = ly->ids + ly->n_tok * o->K;
    float *w = ly->w + ly->n_tok * o->K;
    char *p = line;
    for (size_t i = 0; i < n_ids; i++) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || (*end && *end != '\t') || errno || v < 0 || v >= o->E) {
            fprintf(stderr, "darkhorse trace import: %s:%d: token %zu, slot %zu: expert id '%.*s' is not an integer "
                            "in 0..%d\n", path, lineno, i / o->K, i % o->K, (int)strcspn(p, "\t"), p, o->E - 1);
            return -1;
        }
        ids[i] = (int16_t)v;
        for (size_t j = i - i % o->K; j < i; j++)
            if (ids[j] == ids[i]) {
                fprintf(stderr, "darkhorse trace import: %s:%d: token %zu: expert %ld appears twice\n", path, lineno,
                        i / o->K, v);
                return -1;
            }
        p = end + 1;
    }
    p = wpart;
    for (size_t i = 0; i < n_w; i++) {
        char *end;
        float v = strtof(p, &end);
        if (end == p || (*end && *end != '\t') || !isfinite(v)) {
            fprintf(stderr, "darkhorse trace import: %s:%d: token %zu, slot %zu: weight '%.*s' is not a finite "
                            "number\n", path, lineno, i / o->K, i % o->K, (int)strcspn(p, "\t"), p);
            return -1;
        }
        const char *dot = memchr(p, '.', (size_t)(end - p));
        if (memchr(p, 'e', (size_t)(end - p)) || memchr(p, 'E', (size_t)(end - p)) || (dot && end - dot - 1 > 4) ||
            v < 0)
            o->four_decimals = 0;
        w[i] = v;
        p = end + 1;
    }
    ly->n_tok += T;
    ly->len = xrealloc(ly->len, (size_t)(ly->n_seqs + 1) * sizeof *ly->len);
    ly->len[ly->n_seqs++] = (int)T;
    return 0;
}

static int parse_layer(const char *path, esft_opts *o, esft_layer *ly) {
    memset(ly, 0, sizeof *ly);
    size_t n, cap = 0;
    char *text = read_text(path, &n);
    if (!text) return -1;
    int lineno = 0, rc = 0;
    for (char *line = text; rc == 0 && line < text + n;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        lineno++;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r') line[--len] = 0;
        if (len == 0) {
            fprintf(stderr, "darkhorse trace import: %s:%d: empty line (a sequence with no tokens)\n", path, lineno);
            rc = -1;
        } else {
            rc = parse_line(path, lineno, line, o, ly, &cap);
        }
        line = nl ? nl + 1 : text + n;
    }
    if (rc == 0 && ly->n_seqs == 0) {
        fprintf(stderr, "darkhorse trace import: %s: no sequences\n", path);
        rc = -1;
    }
    free(text);
    if (rc) layer_free(ly);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sub-folders of dir, sorted by name: the count, or -1. names[] malloc'd. */
static int list_domains(const char *dir, char ***names) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "darkhorse trace import: %s: cannot open the folder: %s\n", dir, strerror(errno));
        return -1;
    }
    int n = 0;
    char **v = NULL;
    for (struct dirent *de; (de = readdir(d));) {
        if (de->d_name[0] == '.') continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        v = xrealloc(v, (size_t)(n + 1) * sizeof *v);
        v[n++] = xstrdup(de->d_name);
    }
    closedir(d);
    qsort(v, (size_t)n, sizeof *v, cmp_str);
    *names = v;
    return n;
}

/* The number of layer files of a domain folder: L with expert_weights_1..L all present, or
 * -1 naming the first missing one. */
static int count_layers(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "darkhorse trace import: %s: cannot open: %s\n", dir, strerror(errno));
        return -1;
    }
    int max = 0, n = 0;
    for (struct dirent *de; (de = readdir(d));) {
        int l, c = 0;
        if (sscanf(de->d_name, "expert_weights_%d.txt%n", &l, &c) == 1 && c && !de->d_name[c] && l >= 1)
            max = DH_MAX(max, l), n++;
    }
    closedir(d);
    for (int l = 1; l <= max; l++) {
        char path[8192];
        struct stat st;
        snprintf(path, sizeof path, "%s/expert_weights_%d.txt", dir, l);
        if (stat(path, &st) != 0) {
            fprintf(stderr, "darkhorse trace import: %s: missing (layers 1..%d are expected, the folder has %d)\n",
                    path, max, n);
            return -1;
        }
    }
    if (max == 0) fprintf(stderr, "darkhorse trace import: %s: no expert_weights_<l>.txt files\n", dir);
    return max ? max : -1;
}

typedef struct esft_domain {
    int n_seqs;
    int *len;               /* [n_seqs] */
    size_t n_tok;
    int16_t *ids;           /* [n_tok, L, K] */
    float *w;
} esft_domain;

/* Read one domain folder's L layers into dom: 0, or -1 with a message. */
static int read_domain(const char *dir, int L, esft_opts *o, esft_domain *dom) {
    memset(dom, 0, sizeof *dom);
    int K = o->K;
    for (int l = 0; l < L; l++) {
        char path[8192];
        esft_layer ly;
        snprintf(path, sizeof path, "%s/expert_weights_%d.txt", dir, l + 1);
        if (parse_layer(path, o, &ly) != 0) return -1;
        if (l == 0) {
            dom->n_seqs = ly.n_seqs, dom->n_tok = ly.n_tok;
            dom->len = xmalloc((size_t)ly.n_seqs * sizeof *dom->len);
            memcpy(dom->len, ly.len, (size_t)ly.n_seqs * sizeof *dom->len);
            dom->ids = xmalloc(xmul(ly.n_tok * L, (size_t)K * sizeof *dom->ids));
            dom->w = xmalloc(xmul(ly.n_tok * L, (size_t)K * sizeof *dom->w));
        }
        int bad = ly.n_seqs != dom->n_seqs, line = 0;
        for (int s = 0; !bad && s < ly.n_seqs; s++)
            if (ly.len[s] != dom->len[s]) bad = 1, line = s;
        if (bad) {
            if (ly.n_seqs != dom->n_seqs)
                fprintf(stderr, "darkhorse trace import: %s: %d sequences, but %s/expert_weights_1.txt has %d\n", path,
                        ly.n_seqs, dir, dom->n_seqs);
            else
                fprintf(stderr, "darkhorse trace import: %s:%d: %d tokens, but line %d of %s/expert_weights_1.txt "
                                "has %d: the layers differ in length\n", path, line + 1, ly.len[line], line + 1, dir,
                        dom->len[line]);
            layer_free(&ly);
            return -1;
        }
        for (size_t t = 0; t < ly.n_tok; t++) {
            memcpy(dom->ids + (t * L + l) * K, ly.ids + t * K, (size_t)K * sizeof *dom->ids);
            memcpy(dom->w + (t * L + l) * K, ly.w + t * K, (size_t)K * sizeof *dom->w);
        }
        layer_free(&ly);
    }
    return 0;
}

static void domain_free(esft_domain *d) { free(d->len), free(d->ids), free(d->w); }

/* The whole ESFT folder as a trace; NULL with a message. */
static trace *import_esft(const char *dir, esft_opts *o) {
    char **names = NULL;
    int D = list_domains(dir, &names), L = 0, ok = D > 0;
    if (D == 0) fprintf(stderr, "darkhorse trace import: %s: no domain folders\n", dir);
    if (D > TRACE_MAX_DOMAINS) {
        fprintf(stderr, "darkhorse trace import: %s: %d domains, at most %d\n", dir, D, TRACE_MAX_DOMAINS);
        ok = 0;
    }
    esft_domain *doms = xcalloc((size_t)DH_MAX(D, 1), sizeof *doms);
    trace *t = NULL;
    int n_seqs = 0;
    size_t N = 0;
    for (int d = 0; ok && d < D; d++) {
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/%s", dir, names[d]);
        int Ld = count_layers(sub);
        if (Ld > 0 && d > 0 && Ld != L) {
            fprintf(stderr, "darkhorse trace import: %s: %d layers, but %s/%s has %d\n", sub, Ld, dir, names[0], L);
            Ld = -1;
        }
        if (Ld < 0 || (L = Ld, read_domain(sub, L, o, &doms[d])) != 0) ok = 0;
        else n_seqs += doms[d].n_seqs, N += doms[d].n_tok;
        fprintf(stderr, "\rimport: %d/%d domains read", d + 1, D);
    }
    if (D > 0) fprintf(stderr, "\n");
    if (ok) {
        t = trace_new(L, o->E, o->K, n_seqs, N);
        snprintf(t->source, sizeof t->source, "esft:%s", strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir);
        t->hidden_size = ESFT_HIDDEN, t->ffn_size = ESFT_FFN;
        t->weight_unit = o->four_decimals ? ESFT_UNIT : 0;
        t->n_domains = D;
        size_t first = 0;
        int s = 0;
        for (int d = 0; d < D; d++) {
            snprintf(t->domain_names[d], TRACE_NAME_MAX, "%s", names[d]);
            size_t n = doms[d].n_tok * L * o->K;
            memcpy(t->ids + first * L * o->K, doms[d].ids, n * sizeof *t->ids);
            memcpy(t->weights + first * L * o->K, doms[d].w, n * sizeof *t->weights);
            for (int i = 0; i < doms[d].n_seqs; i++) {
                t->seqs[s++] = (trace_seq){.id = i + 1, .domain = d, .start_pos = 0, .n_tokens = doms[d].len[i],
                                           .first = first};
                first += (size_t)doms[d].len[i];
            }
        }
    }
    for (int d = 0; d < D; d++) domain_free(&doms[d]), free(names[d]);
    free(doms), free(names);
    return t;
}

static void import_usage(FILE *f) {
    fprintf(f, "usage: darkhorse trace import --esft DIR --out FILE [--top-k K] [--experts E]\n\n"
               "  --esft DIR      ESFT expert scores: one sub-folder per domain with expert_weights_<l>.txt\n"
               "  --out FILE      the trace (gzip-compressed Darkhorse trace format, docs/placement.md)\n"
               "  --top-k K       experts per token in the files (default 6, DeepSeek-V2-Lite's)\n"
               "  --experts E     routed experts of the model (default 64)\n");
}

static int cmd_trace_import(int argc, char **argv) {
    static const struct option opts[] = {{"esft", required_argument, 0, 'd'}, {"out", required_argument, 0, 'o'},
                                         {"top-k", required_argument, 0, 'k'}, {"experts", required_argument, 0, 'e'},
                                         {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *dir = NULL, *out = NULL;
    esft_opts o = {.K = 6, .E = 64, .four_decimals = 1};
    int c;
    long v;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'o': out = optarg; break;
        case 'k': if (rt_parse_long("--top-k", optarg, 1, 64, &v)) return 2; o.K = (int)v; break;
        case 'e': if (rt_parse_long("--experts", optarg, 1, 32767, &v)) return 2; o.E = (int)v; break;
        case 'h': import_usage(stdout); return 0;
        default: import_usage(stderr); return 2;
        }
    }
    if (!dir || !out || optind < argc || o.K > o.E) {
        fprintf(stderr, "darkhorse trace import: --esft DIR and --out FILE are required (and K <= E)\n");
        import_usage(stderr);
        return 2;
    }
    trace *t = import_esft(dir, &o);
    if (!t) return 1;
    int rc = tf_write(t, out);
    if (rc == 0)
        fprintf(stderr, "import: %s: %d domains, %d sequences, %zu tokens, %d layers, E %d, K %d (weights %s)\n", out,
                t->n_domains, t->n_seqs, t->n_tokens, t->n_layers, t->n_experts, t->top_k,
                t->weight_unit > 0 ? "exact in units of 1e-4" : "as floats");
    trace_free(t);
    return rc ? 1 : 0;
}

/* ---- info ---- */

typedef struct layer_stats {
    double skew;        /* max / mean expert load */
    double pair_top5;   /* share of co-selected pairs on the 5% most frequent pairs */
} layer_stats;

static int cmp_desc_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Skew and pair concentration of layer l. load [E] and pairs [E*E] are scratch. */
static layer_stats layer_info(const trace *t, int l, uint64_t *load, uint64_t *pairs) {
    int E = t->n_experts, K = t->top_k, L = t->n_layers;
    memset(load, 0, (size_t)E * sizeof *load);
    memset(pairs, 0, (size_t)E * E * sizeof *pairs);
    uint64_t total = 0, n_pairs = 0;
    for (size_t tok = 0; tok < t->n_tokens; tok++) {
        const int16_t *id = t->ids + (tok * L + l) * K;
        for (int a = 0; a < K; a++) {
            if (id[a] < 0) continue;
            load[id[a]]++, total++;
            for (int b = a + 1; b < K; b++)
                if (id[b] >= 0) pairs[DH_MIN(id[a], id[b]) * E + DH_MAX(id[a], id[b])]++, n_pairs++;
        }
    }
    layer_stats s = {0, 0};
    uint64_t mx = 0;
    for (int e = 0; e < E; e++) mx = DH_MAX(mx, load[e]);
    if (total) s.skew = (double)mx / ((double)total / E);
    // the distinct pairs e < f, most frequent first; the top 5% of them
    size_t np = 0;
    for (int a = 0; a < E; a++)
        for (int b = a + 1; b < E; b++) pairs[np++] = pairs[a * E + b];
    qsort(pairs, np, sizeof *pairs, cmp_desc_u64);
    size_t top = (size_t)ceil(0.05 * (double)np);
    uint64_t in_top = 0;
    for (size_t i = 0; i < top; i++) in_top += pairs[i];
    if (n_pairs) s.pair_top5 = (double)in_top / (double)n_pairs;
    return s;
}

static void info_usage(FILE *f) {
    fprintf(f, "usage: darkhorse trace info FILE [--json]\n\n"
               "  shape, tokens per domain, per-layer skew (max over mean expert load) and pair concentration\n"
               "  (share of co-selected expert pairs on a layer's 5%% most frequent pairs; 0.05 if uniform)\n"
               "  --json   one JSON object on stdout instead of the text report\n");
}

static int cmd_trace_info(int argc, char **argv) {
    static const struct option opts[] = {{"json", no_argument, 0, 'j'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c, as_json = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'j') as_json = 1;
        else if (c == 'h') return info_usage(stdout), 0;
        else return info_usage(stderr), 2;
    }
    if (optind != argc - 1) return info_usage(stderr), 2;
    trace *t = tf_read(argv[optind]);
    if (!t) return 1;
    int D = t->n_domains, L = t->n_layers, E = t->n_experts;
    int *dseq = xcalloc((size_t)D, sizeof *dseq);
    size_t *dtok = xcalloc((size_t)D, sizeof *dtok);
    for (int s = 0; s < t->n_seqs; s++) {
        dseq[t->seqs[s].domain]++;
        dtok[t->seqs[s].domain] += (size_t)t->seqs[s].n_tokens;
    }
    uint64_t *load = xmalloc((size_t)E * sizeof *load), *pairs = xmalloc((size_t)E * E * sizeof *pairs);
    layer_stats *ls = xmalloc((size_t)L * sizeof *ls);
    double skew_mean = 0, pair_mean = 0;
    for (int l = 0; l < L; l++) {
        ls[l] = layer_info(t, l, load, pairs);
        skew_mean += ls[l].skew / L, pair_mean += ls[l].pair_top5 / L;
    }
    json_t *j = json_object(), *doms = json_array(), *sk = json_array(), *pt = json_array();
    json_object_set_new(j, "source", json_string(t->source));
    json_object_set_new(j, "layers", json_integer(L));
    json_object_set_new(j, "experts", json_integer(E));
    json_object_set_new(j, "top_k", json_integer(t->top_k));
    json_object_set_new(j, "hidden_size", json_integer(t->hidden_size));
    json_object_set_new(j, "ffn_size", json_integer(t->ffn_size));
    json_object_set_new(j, "sequences", json_integer(t->n_seqs));
    json_object_set_new(j, "tokens", json_integer((json_int_t)t->n_tokens));
    for (int d = 0; d < D; d++) {
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(t->domain_names[d]));
        json_object_set_new(o, "sequences", json_integer(dseq[d]));
        json_object_set_new(o, "tokens", json_integer((json_int_t)dtok[d]));
        json_array_append_new(doms, o);
    }
    json_object_set_new(j, "domains", doms);
    for (int l = 0; l < L; l++) {
        json_array_append_new(sk, json_real(ls[l].skew));
        json_array_append_new(pt, json_real(ls[l].pair_top5));
    }
    json_object_set_new(j, "skew", sk);
    json_object_set_new(j, "skew_mean", json_real(skew_mean));
    json_object_set_new(j, "pair_top5_share", pt);
    json_object_set_new(j, "pair_top5_share_mean", json_real(pair_mean));
    if (as_json) {
        char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6));
        printf("%s\n", s);
        free(s);
    } else {
        printf("trace %s: source %s\n", argv[optind], t->source);
        printf("shape: %d MoE layers, %d experts, top-%d; hidden %d, expert FFN %d (0: unknown)\n", L, E, t->top_k,
               t->hidden_size, t->ffn_size);
        printf("%d sequences, %zu tokens\n", t->n_seqs, t->n_tokens);
        printf("%-24s %9s %9s\n", "domain", "sequences", "tokens");
        for (int d = 0; d < D; d++) printf("%-24s %9d %9zu\n", t->domain_names[d], dseq[d], dtok[d]);
        printf("layer  skew   pairs-top5%%\n");
        for (int l = 0; l < L; l++) printf("%5d  %5.2f  %5.3f\n", l, ls[l].skew, ls[l].pair_top5);
        printf(" mean  %5.2f  %5.3f   (uniform pairs: 0.05)\n", skew_mean, pair_mean);
    }
    json_decref(j);
    free(dseq), free(dtok), free(load), free(pairs), free(ls);
    trace_free(t);
    return 0;
}

int cmd_trace(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "import")) return cmd_trace_import(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "info")) return cmd_trace_info(argc - 1, argv + 1);
    FILE *f = argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) ? stdout : stderr;
    fprintf(f, "usage: darkhorse trace import --esft DIR --out FILE [--top-k K] [--experts E]\n"
               "       darkhorse trace info FILE [--json]\n");
    return f == stdout ? 0 : 2;
}
