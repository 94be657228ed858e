/* hugemem.c: 2 MiB-aligned anonymous mappings with madvise(MADV_HUGEPAGE), and an arena of
 * them.
 *
 * A mapping is made 2 MiB bigger than asked and trimmed to a 2 MiB boundary at both ends, so
 * that every one of its huge pages can be one. madvise is a request: a kernel without THP, or
 * with THP "never", refuses or ignores it and the memory stays on small pages, which is no
 * error. The arena hands out buffers in order from its last slab and never reuses an address;
 * freeing gives the whole small pages inside a buffer back with MADV_DONTNEED (the kernel
 * splits a huge page for that) and unmaps a slab when nothing in it is live; the next buffer
 * then opens a new slab. Without mappings (HM_MAPPED 0) every buffer is a slab of its own,
 * malloc'd at its size, so the same bookkeeping frees it. */
#define _GNU_SOURCE
#include "core/hugemem.h"

#include "core/common.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HM_SLAB ((size_t)64 << 20)
#define HM_ALIGN ((size_t)64)

static size_t round_up(size_t n, size_t to) {
    DH_ASSERT(n <= SIZE_MAX - to);
    return (n + to - 1) / to * to;
}

_Noreturn static void hm_oom(size_t bytes, int err) {
    fprintf(stderr, "darkhorse: out of memory mapping %zu bytes: %s\n", bytes, strerror(err));
    abort();
}

void *hm_alloc(size_t bytes) {
    size_t n = round_up(bytes ? bytes : 1, HM_PAGE);
#if !HM_MAPPED
    void *m = NULL;
    if (posix_memalign(&m, 64, n) != 0) hm_oom(n, ENOMEM);
    memset(m, 0, n);
    return m;
#else
    char *m = mmap(NULL, n + HM_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) hm_oom(n + HM_PAGE, errno);
    char *p = (char *)round_up((uintptr_t)m, HM_PAGE);
    if (p > m) munmap(m, (size_t)(p - m));
    if (p + n < m + n + HM_PAGE) munmap(p + n, (size_t)(m + n + HM_PAGE - (p + n)));
#ifdef MADV_HUGEPAGE
    (void)madvise(p, n, MADV_HUGEPAGE); /* a request; small pages if refused */
#endif
    return p;
#endif
}

void hm_free(void *p, size_t bytes) {
    if (!p) return;
#if !HM_MAPPED
    (void)bytes;
    free(p);
#else
    munmap(p, round_up(bytes ? bytes : 1, HM_PAGE));
#endif
}

typedef struct slab {
    char *base;
    size_t size, used, live; /* live: bytes of buffers not yet freed */
} slab;

struct hm_arena {
    slab *slabs;
    int n, cap;
};

hm_arena *hm_arena_new(void) { return xcalloc(1, sizeof(hm_arena)); }

/* a new slab for a buffer of n bytes: 64 MiB, or a slab of its own for one over half that
 * (or, without mappings, for every buffer); the last slab stays last, still open */
static slab *slab_open(hm_arena *a, size_t n) {
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 16;
        a->slabs = xrealloc(a->slabs, (size_t)a->cap * sizeof *a->slabs);
    }
#if HM_MAPPED
    int own = n > HM_SLAB / 2;
    slab s = {.size = own ? round_up(n, HM_PAGE) : HM_SLAB};
    s.base = hm_alloc(s.size);
#else
    int own = 1;
    slab s = {.size = n};
    if (posix_memalign((void **)&s.base, HM_ALIGN, n) != 0) hm_oom(n, ENOMEM);
#endif
    int at = a->n;
    if (own && a->n > 0) at = a->n - 1, a->slabs[a->n] = a->slabs[at];
    a->slabs[at] = s;
    a->n++;
    return &a->slabs[at];
}

static void slab_close(slab *s) {
#if HM_MAPPED
    hm_free(s->base, s->size);
#else
    free(s->base);
#endif
}

/* the bytes a buffer takes in its slab: whole 64-byte lines, or (malloc'd) exactly its own */
static size_t carved(size_t bytes) { return HM_MAPPED ? round_up(bytes ? bytes : 1, HM_ALIGN) : bytes ? bytes : 1; }

void *hm_arena_alloc(hm_arena *a, size_t bytes) {
    size_t n = carved(bytes);
    slab *s = a->n ? &a->slabs[a->n - 1] : NULL;
    if (!s || s->size - s->used < n) s = slab_open(a, n);
    void *p = s->base + s->used;
    s->used += n;
    s->live += n;
    return p;
}

void hm_arena_free(hm_arena *a, void *p, size_t bytes) {
    if (!p) return;
    size_t n = carved(bytes);
    char *c = p;
    for (int i = 0; i < a->n; i++) {
        slab *s = &a->slabs[i];
        if (c < s->base || c >= s->base + s->size) continue;
        DH_ASSERT(c + n <= s->base + s->used && s->live >= n);
        s->live -= n;
        if (s->live == 0) {
            slab_close(s);
            a->slabs[i] = a->slabs[--a->n];
        } else {
            size_t pg = (size_t)sysconf(_SC_PAGESIZE);
            uintptr_t lo = round_up((uintptr_t)c, pg), hi = ((uintptr_t)c + bytes) / pg * pg;
            if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
        }
        return;
    }
    DH_ASSERT(!"hm_arena_free: a pointer from no slab of this arena");
}

void hm_arena_free_all(hm_arena *a) {
    if (!a) return;
    for (int i = 0; i < a->n; i++) slab_close(&a->slabs[i]);
    free(a->slabs);
    free(a);
}
