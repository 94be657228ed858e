/* test_hugemem.c: buffers for streamed data: aligned, zeroed, disjoint, keeping their bytes
 * while others come and go, and giving their memory back when freed (the last only where the
 * memory is mapped, not under AddressSanitizer, whose malloc keeps freed memory a while). */
#include <CUnit/CUnit.h>
#include <stdint.h>
#include <string.h>

#include "core/common.h"
#include "core/hugemem.h"

#define MIB ((size_t)1 << 20)

static void test_a_buffer_of_its_own_is_aligned_zeroed_and_writable(void) {
    size_t n = 3 * MIB + 5;
    unsigned char *p = hm_alloc(n);
    CU_ASSERT_EQUAL((uintptr_t)p % 64, 0);
    if (HM_MAPPED) CU_ASSERT_EQUAL((uintptr_t)p % HM_PAGE, 0);
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) nonzero += p[i] != 0;
    CU_ASSERT_EQUAL(nonzero, 0);
    memset(p, 0xab, n);
    CU_ASSERT_EQUAL(p[n - 1], 0xab);
    hm_free(p, n);
    hm_free(NULL, 0);
}

/* byte k of buffer i holds (i * 7 + k) & 0xff */
static void fill(unsigned char *p, size_t n, int i) {
    for (size_t k = 0; k < n; k++) p[k] = (unsigned char)(i * 7 + k);
}

static size_t wrong_bytes(const unsigned char *p, size_t n, int i) {
    size_t bad = 0;
    for (size_t k = 0; k < n; k++) bad += p[k] != (unsigned char)(i * 7 + k);
    return bad;
}

static void test_arena_buffers_are_disjoint_and_keep_their_bytes(void) {
    /* sizes that fill more than one 64 MiB slab, with one bigger than half a slab (a slab of
     * its own) between small ones */
    enum { N = 48 };
    unsigned char *p[N];
    size_t len[N];
    hm_arena *a = hm_arena_new();
    for (int i = 0; i < N; i++) {
        len[i] = i == 20 ? 40 * MIB : i % 3 == 0 ? 1 : i % 3 == 1 ? 3000 + (size_t)i : 2 * MIB + 4096 * (size_t)i;
        p[i] = hm_arena_alloc(a, len[i]);
        CU_ASSERT_EQUAL((uintptr_t)p[i] % 64, 0);
        fill(p[i], len[i], i);
    }
    /* every other buffer freed, then more allocated and written over whatever was freed */
    for (int i = 0; i < N; i += 2) hm_arena_free(a, p[i], len[i]);
    for (int i = 0; i < N; i += 2) {
        p[i] = hm_arena_alloc(a, len[i]);
        fill(p[i], len[i], i + 1000);
    }
    size_t bad = 0;
    for (int i = 0; i < N; i++) bad += wrong_bytes(p[i], len[i], i % 2 ? i : i + 1000);
    CU_ASSERT_EQUAL(bad, 0);
    for (int i = 0; i < N; i++) hm_arena_free(a, p[i], len[i]);
    hm_arena_free_all(a);
    hm_arena_free_all(NULL);
}

/* resident bytes gained since `base`, in MiB (negative when given back) */
static double rss_mib(uint64_t base) { return ((double)dh_rss_bytes() - (double)base) / (double)MIB; }

static void test_freed_buffers_give_their_memory_back(void) {
    if (!HM_MAPPED || dh_rss_bytes() == 0) return; /* ASan's malloc keeps what is freed */
    hm_arena *a = hm_arena_new();
    uint64_t base = dh_rss_bytes();
    /* a big buffer between two small ones, all in one slab, all touched */
    unsigned char *s1 = hm_arena_alloc(a, MIB), *big = hm_arena_alloc(a, 24 * MIB), *s2 = hm_arena_alloc(a, MIB);
    fill(s1, MIB, 1), fill(big, 24 * MIB, 2), fill(s2, MIB, 3);
    double held = rss_mib(base);
    CU_ASSERT(held >= 25.0);
    /* freed while its neighbours live: its pages go back, theirs keep their bytes */
    hm_arena_free(a, big, 24 * MIB);
    double after = rss_mib(base);
    CU_ASSERT(held - after >= 20.0);
    CU_ASSERT_EQUAL(wrong_bytes(s1, MIB, 1) + wrong_bytes(s2, MIB, 3), 0);
    /* the slab's last buffers freed: the slab goes */
    hm_arena_free(a, s1, MIB);
    hm_arena_free(a, s2, MIB);
    CU_ASSERT(rss_mib(base) <= after - 1.5);
    hm_arena_free_all(a);
}

/* what model_free does: the arena freed with its buffers still in it (under ASan, the leak
 * checker at exit sees any that stayed) */
static void test_freeing_the_arena_frees_the_buffers_still_in_it(void) {
    hm_arena *a = hm_arena_new();
    uint64_t base = dh_rss_bytes();
    for (int i = 0; i < 40; i++) fill(hm_arena_alloc(a, 3 * MIB + 100 * (size_t)i), 3 * MIB, i);
    fill(hm_arena_alloc(a, 40 * MIB), 40 * MIB, 99); /* a slab of its own */
    double held = rss_mib(base);
    hm_arena_free_all(a);
    if (HM_MAPPED && dh_rss_bytes() > 0) CU_ASSERT(held - rss_mib(base) >= 150.0);
}

static CU_TestInfo hugemem_tests[] = {
    {"a buffer of its own is aligned, zeroed and writable", test_a_buffer_of_its_own_is_aligned_zeroed_and_writable},
    {"arena buffers are disjoint and keep their bytes", test_arena_buffers_are_disjoint_and_keep_their_bytes},
    {"freed buffers give their memory back", test_freed_buffers_give_their_memory_back},
    {"freeing the arena frees the buffers still in it", test_freeing_the_arena_frees_the_buffers_still_in_it},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo hugemem_suite = {"hugemem", NULL, NULL, NULL, NULL, hugemem_tests};
