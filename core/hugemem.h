/* hugemem.h: memory for data that every decode step streams (converted weights, the bandwidth
 * reader's array), on 2 MiB pages where the kernel allows it. Prefix hm_.
 *
 * A step reads about a gigabyte of genesis-5b's weights once. On 4 KiB pages that is 250,000
 * TLB misses a step; in a VM each walks two page tables. Transparent huge pages in the kernel's
 * "madvise" mode (Debian's default) are used only where madvise(MADV_HUGEPAGE) asks: this
 * module asks, for 2 MiB-aligned mappings. Where the kernel has no THP the memory is the same,
 * on small pages. Under AddressSanitizer everything comes from malloc, so the sanitizer still
 * sees every buffer's bounds. */
#ifndef DH_HUGEMEM_H
#define DH_HUGEMEM_H
#include <stddef.h>

#define HM_PAGE ((size_t)2 << 20)

/* 1 when buffers are mappings of their own (2 MiB-aligned, madvised); 0 under
 * AddressSanitizer, where they come from malloc at their exact size so that the sanitizer
 * sees each one's bounds. */
#if defined(__SANITIZE_ADDRESS__)
#define HM_MAPPED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HM_MAPPED 0
#endif
#endif
#ifndef HM_MAPPED
#define HM_MAPPED 1
#endif

/* One buffer of its own: bytes rounded up to 2 MiB, 2 MiB-aligned, zero-filled on first touch.
 * Aborts with a message when the memory cannot be had. Freed with hm_free(p, bytes). */
void *hm_alloc(size_t bytes);
void hm_free(void *p, size_t bytes); /* hm_free(NULL, .) does nothing */

/* Many buffers carved one after the other from 64 MiB slabs (a bigger buffer gets a slab of
 * its own), each 64-byte aligned, so that small matrices share huge pages. Not thread-safe: one
 * thread at a time allocates from or frees into an arena. */
typedef struct hm_arena hm_arena;
hm_arena *hm_arena_new(void);
void *hm_arena_alloc(hm_arena *a, size_t bytes); /* aborts with a message when out of memory */
/* Give back buffer p of bytes (as allocated): its whole small pages return to the system at
 * once, its slab when the slab's last buffer is freed. Its addresses are not reused. */
void hm_arena_free(hm_arena *a, void *p, size_t bytes);
/* Frees the arena and every buffer still allocated from it, without giving them back one by
 * one. hm_arena_free_all(NULL) does nothing. */
void hm_arena_free_all(hm_arena *a);
#endif
