/* placement.c: placement algorithms and the plan's text format.
 *
 * contiguous:  expert e of every layer on worker floor(e * W / E) + 1: ranges of nearly equal
 *              size, the layout a person would write by hand.
 * round-robin: expert e on worker e mod W + 1.
 * balanced:    per layer, experts in order of decreasing expected load, each to the worker whose
 *              load / capacity would be smallest after taking it (longest-processing-time
 *              greedy, within 4/3 of the optimum for equal workers). Ties go to the worker
 *              with fewer experts, then the lower rank, so uniform load gives equal counts.
 *
 * The text format is line-oriented so that a plan can be read and edited by hand:
 *
 *     darkhorse-placement 1
 *     workers 2
 *     experts 64
 *     algo balanced
 *     layer 1 worker 1: 0-15 32-47
 *     layer 1 worker 2: 16-31 48-63
 *
 * An expert listed under several workers of a layer has replicas; '#' starts a comment. */
#include "placement.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

const char *const place_algos[] = {"contiguous", "round-robin", "balanced", NULL};

place_plan *place_new(int n_layers, int n_experts, int n_workers) {
    place_plan *p = xcalloc(1, sizeof *p);
    p->n_layers = n_layers, p->n_experts = n_experts, p->n_workers = n_workers;
    p->offsets = xcalloc((size_t)n_layers * n_experts + 1, sizeof *p->offsets);
    p->workers = xmalloc(sizeof *p->workers);
    snprintf(p->algo, sizeof p->algo, "manual");
    return p;
}

void place_free(place_plan *p) {
    if (!p) return;
    free(p->offsets);
    free(p->workers);
    free(p);
}

const int *place_get(const place_plan *p, int l, int e, int *n) {
    size_t i = (size_t)l * p->n_experts + e;
    *n = p->offsets[i + 1] - p->offsets[i];
    return p->workers + p->offsets[i];
}

int place_added_at(const place_plan *from, const place_plan *to, int l, int e) {
    int na, nb, n = 0;
    const int *wa = place_get(from, l, e, &na), *wb = place_get(to, l, e, &nb);
    for (int j = 0; j < nb; j++) {
        int found = 0;
        for (int i = 0; i < na && !found; i++) found = wa[i] == wb[j];
        n += !found;
    }
    return n;
}

int place_added(const place_plan *from, const place_plan *to) {
    DH_ASSERT(from->n_layers == to->n_layers && from->n_experts == to->n_experts);
    int n = 0;
    for (int l = 0; l < to->n_layers; l++)
        for (int e = 0; e < to->n_experts; e++) n += place_added_at(from, to, l, e);
    return n;
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

void place_set(place_plan *p, int l, int e, const int *ws, int n) {
    int tmp[1024], m = 0;
    DH_ASSERT(n <= 1024);
    memcpy(tmp, ws, (size_t)n * sizeof *ws);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_int);
    for (int i = 0; i < n; i++)
        if (i == 0 || tmp[i] != tmp[i - 1]) tmp[m++] = tmp[i];
    size_t idx = (size_t)l * p->n_experts + e, total = (size_t)p->n_layers * p->n_experts;
    int old = p->offsets[idx + 1] - p->offsets[idx], delta = m - old, end = p->offsets[total];
    p->workers = xrealloc(p->workers, (size_t)(end + delta + 1) * sizeof *p->workers);
    memmove(p->workers + p->offsets[idx + 1] + delta, p->workers + p->offsets[idx + 1],
            (size_t)(end - p->offsets[idx + 1]) * sizeof *p->workers);
    memcpy(p->workers + p->offsets[idx], tmp, (size_t)m * sizeof *tmp);
    for (size_t i = idx + 1; i <= total; i++) p->offsets[i] += delta;
}

typedef struct ranked {
    double load;
    int e;
} ranked;

static int cmp_ranked(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->load != y->load) return x->load > y->load ? -1 : 1;
    return x->e - y->e;
}

void place_order_by_load(const double *load, int n, int *order) {
    ranked *r = xmalloc(((size_t)n + 1) * sizeof *r);
    for (int i = 0; i < n; i++) r[i] = (ranked){load[i], i};
    qsort(r, (size_t)n, sizeof *r, cmp_ranked);
    for (int i = 0; i < n; i++) order[i] = r[i].e;
    free(r);
}

static void balanced_layer(place_plan *p, const place_input *in, int l) {
    int E = in->n_experts, W = in->n_workers;
    double *ld = xmalloc((size_t)E * sizeof *ld), *wl = xcalloc((size_t)W, sizeof *wl);
    int *order = xmalloc((size_t)E * sizeof *order), *cnt = xcalloc((size_t)W, sizeof *cnt);
    for (int e = 0; e < E; e++) ld[e] = in->load ? in->load[(size_t)l * E + e] : 1.0;
    place_order_by_load(ld, E, order);
    for (int i = 0; i < E; i++) {
        int best = -1, e = order[i];
        double bt = 0;
        for (int w = 0; w < W; w++) {
            if (in->slots > 0 && cnt[w] >= in->slots && in->slots * W >= E) continue;
            double cap = in->capacity ? in->capacity[w] : 1.0;
            double t = (wl[w] + ld[e]) / (cap > 0 ? cap : 1e-9);
            if (best < 0 || t < bt || (t == bt && cnt[w] < cnt[best])) best = w, bt = t;
        }
        wl[best] += ld[e];
        cnt[best]++;
        int rank = best + 1;
        place_set(p, l, e, &rank, 1);
    }
    free(ld), free(wl), free(order), free(cnt);
}

int place_parse_capacity(const char *s, double **cap) {
    *cap = NULL;
    int n = 0;
    for (const char *q = s;; q++) {
        char *end;
        errno = 0;
        double v = strtod(q, &end);
        if (end == q || errno || !(v > 0) || v > 1e12 || (*end && *end != ',')) {
            log_error("worker capacity %d in '%s' is not a positive number (want speeds such as 2,1,1)", n + 1, s);
            free(*cap);
            *cap = NULL;
            return -1;
        }
        *cap = xrealloc(*cap, (size_t)(n + 1) * sizeof **cap);
        (*cap)[n++] = v;
        q = end;
        if (!*q) return n;
    }
}

place_plan *place_compute(const char *algo, const place_input *in) {
    int E = in->n_experts, W = in->n_workers;
    if (W < 1 || E < 1) {
        log_error("placement: needs at least one worker and one expert (have %d workers, %d experts)", W, E);
        return NULL;
    }
    if (W > E) {
        log_error("placement: %d workers but only %d experts a layer: some workers would host nothing", W, E);
        return NULL;
    }
    int kind = -1;
    for (int i = 0; place_algos[i]; i++)
        if (strcmp(algo, place_algos[i]) == 0) kind = i;
    if (kind < 0) {
        log_error("placement: unknown algorithm '%s' (contiguous, round-robin, balanced)", algo);
        return NULL;
    }
    place_plan *p = place_new(in->n_layers, E, W);
    snprintf(p->algo, sizeof p->algo, "%s", algo);
    for (int l = 0; l < in->n_layers; l++) {
        if (!in->is_moe[l]) continue;
        if (kind == 2) {
            balanced_layer(p, in, l);
            continue;
        }
        for (int e = 0; e < E; e++) {
            int w = kind == 0 ? (int)((long)e * W / E) + 1 : e % W + 1;
            place_set(p, l, e, &w, 1);
        }
    }
    return p;
}

int place_validate(const place_plan *p, const uint8_t *is_moe) {
    for (int l = 0; l < p->n_layers; l++)
        for (int e = 0; e < p->n_experts; e++) {
            int n;
            const int *ws = place_get(p, l, e, &n);
            if (is_moe[l] && n == 0) {
                log_error("placement: layer %d expert %d is hosted by no worker", l, e);
                return DH_EINVAL;
            }
            if (!is_moe[l] && n > 0) {
                log_error("placement: layer %d is not a MoE layer but has experts placed", l);
                return DH_EINVAL;
            }
            for (int i = 0; i < n; i++)
                if (ws[i] < 1 || ws[i] > p->n_workers) {
                    log_error("placement: layer %d expert %d on worker %d, outside 1..%d", l, e, ws[i], p->n_workers);
                    return DH_EINVAL;
                }
        }
    return 0;
}

/* expert list of (l, worker w) as ranges "0-15 32-47" */
static void write_list(FILE *f, const place_plan *p, int l, int w) {
    int start = -1, prev = -2;
    for (int e = 0; e <= p->n_experts; e++) {
        int on = 0;
        if (e < p->n_experts) {
            int n;
            const int *ws = place_get(p, l, e, &n);
            for (int i = 0; i < n; i++) on |= ws[i] == w;
        }
        if (on && prev == e - 1 && start >= 0) {
            prev = e;
            continue;
        }
        if (start >= 0) {
            if (prev > start) fprintf(f, " %d-%d", start, prev);
            else fprintf(f, " %d", start);
            start = -1;
        }
        if (on) start = prev = e;
    }
}

int place_write(const place_plan *p, FILE *f) {
    fprintf(f, "darkhorse-placement 1\n# layer L worker W: experts of layer L hosted by worker rank W\n");
    fprintf(f, "workers %d\nexperts %d\nalgo %s\n", p->n_workers, p->n_experts, p->algo);
    for (int l = 0; l < p->n_layers; l++)
        for (int w = 1; w <= p->n_workers; w++) {
            int any = 0;
            for (int e = 0; e < p->n_experts && !any; e++) {
                int n;
                const int *ws = place_get(p, l, e, &n);
                for (int i = 0; i < n; i++) any |= ws[i] == w;
            }
            if (!any) continue;
            fprintf(f, "layer %d worker %d:", l, w);
            write_list(f, p, l, w);
            fputc('\n', f);
        }
    return ferror(f) ? DH_EIO : 0;
}

int place_save(const place_plan *p, const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) {
        log_error("%s: cannot write the placement plan: %s", path, strerror(errno));
        return DH_EIO;
    }
    int rc = place_write(p, f);
    if (fclose(f) != 0 || rc) {
        log_error("%s: write failed", path);
        return DH_EIO;
    }
    return 0;
}

/* Parse "0-15 32-47" (spaces or commas) into flags on[E]: 0 or -1 */
static int parse_list(const char *s, int E, uint8_t *on) {
    while (*s) {
        while (*s == ' ' || *s == ',' || *s == '\t') s++;
        if (!*s || *s == '\n' || *s == '#') break;
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s) return -1;
        s = end;
        if (*s == '-') {
            b = strtol(s + 1, &end, 10);
            if (end == s + 1) return -1;
            s = end;
        }
        if (a < 0 || b >= E || a > b) return -1;
        for (long e = a; e <= b; e++) on[e] = 1;
    }
    return 0;
}

place_plan *place_load(const char *path, int n_layers, int n_experts, int n_workers, const uint8_t *is_moe) {
    FILE *f = fopen(path, "r");
    if (!f) {
        log_error("%s: cannot open the placement plan: %s", path, strerror(errno));
        return NULL;
    }
    place_plan *p = place_new(n_layers, n_experts, n_workers);
    snprintf(p->algo, sizeof p->algo, "file");
    uint8_t *on = xmalloc((size_t)n_experts);
    char line[8192];
    int lineno = 0, header = 0, ok = 1;
    while (ok && fgets(line, sizeof line, f)) {
        lineno++;
        line[strcspn(line, "\r\n")] = 0;
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        if (!*s || *s == '#') continue;
        int v, l, w, n;
        char algo[32];
        if (sscanf(s, "darkhorse-placement %d", &v) == 1) {
            header = v == 1;
            if (!header) log_error("%s:%d: plan format version %d is not supported (1 is)", path, lineno, v);
            ok = header;
        } else if (!header) {
            log_error("%s:%d: not a placement plan (first line must be 'darkhorse-placement 1')", path, lineno);
            ok = 0;
        } else if (sscanf(s, "workers %d", &v) == 1) {
            if (v != n_workers) {
                log_error("%s:%d: the plan is for %d workers, this job has %d", path, lineno, v, n_workers);
                ok = 0;
            }
        } else if (sscanf(s, "experts %d", &v) == 1) {
            if (v != n_experts) {
                log_error("%s:%d: the plan is for %d experts a layer, the model has %d", path, lineno, v, n_experts);
                ok = 0;
            }
        } else if (sscanf(s, "algo %31s", algo) == 1) {
            snprintf(p->algo, sizeof p->algo, "%s", algo);
        } else if (sscanf(s, "layer %d worker %d:%n", &l, &w, &n) == 2) {
            if (l < 0 || l >= n_layers || !is_moe[l] || w < 1 || w > n_workers) {
                log_error("%s:%d: layer %d is not a MoE layer of this model, or worker %d is not in 1..%d", path,
                          lineno, l, w, n_workers);
                ok = 0;
                break;
            }
            memset(on, 0, (size_t)n_experts);
            if (parse_list(s + n, n_experts, on) != 0) {
                log_error("%s:%d: expected expert numbers or ranges in 0..%d", path, lineno, n_experts - 1);
                ok = 0;
                break;
            }
            for (int e = 0; e < n_experts; e++) {
                if (!on[e]) continue;
                int cnt, ws[1024];
                const int *cur = place_get(p, l, e, &cnt);
                memcpy(ws, cur, (size_t)cnt * sizeof *ws);
                ws[cnt++] = w;
                place_set(p, l, e, ws, cnt);
            }
        } else {
            log_error("%s:%d: cannot parse '%.60s'", path, lineno, s);
            ok = 0;
        }
    }
    fclose(f);
    free(on);
    if (ok && !header) {
        log_error("%s: empty placement plan", path);
        ok = 0;
    }
    if (ok && place_validate(p, is_moe) != 0) {
        log_error("%s: the plan does not cover every expert (see above)", path);
        ok = 0;
    }
    if (!ok) {
        place_free(p);
        return NULL;
    }
    return p;
}

double place_worker_load(const place_plan *p, const double *load, const double *capacity, double *wl) {
    memset(wl, 0, (size_t)p->n_workers * sizeof *wl);
    for (int l = 0; l < p->n_layers; l++)
        for (int e = 0; e < p->n_experts; e++) {
            int n;
            const int *ws = place_get(p, l, e, &n);
            double x = load ? load[(size_t)l * p->n_experts + e] : 1.0;
            for (int i = 0; i < n; i++) wl[ws[i] - 1] += x / n;
        }
    double mx = 0, sum = 0;
    for (int w = 0; w < p->n_workers; w++) {
        double t = capacity ? wl[w] / capacity[w] : wl[w];
        mx = DH_MAX(mx, t);
        sum += t;
    }
    return mx > 0 ? sum / p->n_workers / mx : 1.0;
}
