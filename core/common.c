/* common.c: error strings, the assertion handler, aborting allocators and the stderr logger.
 *
 * Logging builds each line in a local buffer and writes it with one fputs, so lines from
 * the engine and HTTP threads (or from several ranks sharing a terminal) never interleave
 * mid-line. The level is process-wide and read without a lock: it is set once at start-up
 * (DH_LOG_LEVEL or -v) before any thread exists. */
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int g_level = LOG_INFO;
static int g_rank = -1;

const char *dh_strerror(int code) {
    switch (code) {
    case DH_OK: return "success";
    case DH_EIO: return "input/output error";
    case DH_EFORMAT: return "malformed data";
    case DH_ENOTFOUND: return "not found";
    case DH_EINVAL: return "invalid argument";
    case DH_ENOMEM: return "over the memory budget";
    case DH_EBUSY: return "busy";
    case DH_EUNSUPPORTED: return "not supported";
    case DH_ETIMEOUT: return "deadline passed";
    case DH_ECANCELLED: return "cancelled";
    case DH_EPEER: return "a peer rank failed";
    case DH_EAGAIN: return "recovering from a failure; retry later";
    default: return "unknown error";
    }
}

_Noreturn void dh_assert_fail(const char *cond, const char *file, int line) {
    if (g_rank >= 0)
        fprintf(stderr, "[rank %d] %s:%d: assertion failed: %s\n", g_rank, file, line, cond);
    else
        fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, cond);
    fflush(stderr);
    abort();
}

static _Noreturn void oom(size_t n) {
    fprintf(stderr, "darkhorse: out of memory allocating %zu bytes\n", n);
    abort();
}

void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) oom(n * size);
    return p;
}

void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

void xappend(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        *cap = DH_MAX(2 * *cap, *len + n + 256);
        *buf = xrealloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
}

size_t xmul(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) {
        fprintf(stderr, "darkhorse: size overflow (%zu x %zu)\n", n, size);
        abort();
    }
    return n * size;
}

void log_set_level(int level) { g_level = level; }
int log_get_level(void) { return g_level; }
void log_set_rank(int rank) { g_rank = rank; }

void log_msg(int level, const char *file, int line, const char *fmt, ...) {
    if (level > g_level) return;
    static const char *names[] = {"error", "warning", "info", "debug"};
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    char buf[2048];
    int n;
    if (g_rank >= 0)
        n = snprintf(buf, sizeof buf, "[rank %d] %s: %s:%d: ", g_rank, names[level], base, line);
    else
        n = snprintf(buf, sizeof buf, "%s: %s:%d: ", names[level], base, line);
    if (n < 0) return;
    va_list ap;
    va_start(ap, fmt);
    if ((size_t)n < sizeof buf) vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = strlen(buf);
    if (len + 1 < sizeof buf) {
        buf[len] = '\n';
        buf[len + 1] = 0;
    } else {
        buf[sizeof buf - 2] = '\n';
    }
    fputs(buf, stderr);
}

int dh_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double dh_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t dh_rss_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024;
}
