/* common.h: what every Darkhorse file needs: error codes, assertions, allocation, logging.
 * Prefixes: DH_ for macros and codes, x for the aborting allocators, log_ for logging. */
#ifndef DH_COMMON_H
#define DH_COMMON_H
#include <stddef.h>
#include <stdint.h>

/* 0 is success; failures are negative. */
enum {
    DH_OK = 0,
    DH_EIO = -1,       /* a file or socket could not be read or written */
    DH_EFORMAT = -2,   /* a file's contents are malformed */
    DH_ENOTFOUND = -3, /* a named tensor, key or file is absent */
    DH_EINVAL = -4,    /* an argument or a request is wrong */
    DH_ENOMEM = -5,    /* over a memory budget (allocation failures abort instead) */
    DH_EBUSY = -6,     /* no room now; try later */
    DH_EUNSUPPORTED = -7, /* valid, but a feature this build does not implement */
    DH_ETIMEOUT = -8,  /* a deadline passed */
    DH_ECANCELLED = -9, /* the work was cancelled */
    DH_EPEER = -10,    /* another rank failed or disagreed */
    DH_EAGAIN = -11,   /* the service is recovering from a failure: retry later */
};
const char *dh_strerror(int code);

/* A bug if false: always on, prints rank and file:line, aborts. No work inside. */
#define DH_ASSERT(cond)                                                                   \
    do {                                                                                  \
        if (!(cond)) dh_assert_fail(#cond, __FILE__, __LINE__);                           \
    } while (0)
_Noreturn void dh_assert_fail(const char *cond, const char *file, int line);

/* Allocation that aborts with a message on failure; sizes a client controls are checked first. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
/* Append n bytes of s to the growable string *buf (*len bytes used, *cap allocated; all three
 * zero to start), keeping it NUL-terminated. */
void xappend(char **buf, size_t *len, size_t *cap, const char *s, size_t n);
/* n * size, aborting on overflow */
size_t xmul(size_t n, size_t size);

/* Logging to stderr, prefixed with the rank (when under MPI) and file:line. */
enum { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };
void log_set_level(int level);
int log_get_level(void);
void log_set_rank(int rank); /* -1: not under MPI, no rank prefix */
void log_msg(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define log_error(...) log_msg(LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)

/* Monotonic seconds. */
double dh_now(void);
/* qsort's comparator for doubles, ascending. */
int dh_cmp_double(const void *a, const void *b);
/* Resident memory of this process in bytes (VmRSS), 0 if unknown. */
uint64_t dh_rss_bytes(void);

#define DH_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DH_MAX(a, b) ((a) > (b) ? (a) : (b))
#endif
