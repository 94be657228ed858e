/* runner.c: runs CUnit suites with the basic interface and turns failures into an exit code. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "runner.h"

#include <CUnit/Basic.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/cpu.h"

#ifndef DH_TEST_DATA
#error "DH_TEST_DATA must name tests/data"
#endif

const char *dh_test_data(const char *rel) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/%s", DH_TEST_DATA, rel);
    return buf;
}

/* the directories made by dh_test_tmpdir, removed when the tests end */
static char *g_tmp[256];
static int g_ntmp;

const char *dh_test_tmpdir(void) {
    static char buf[4096];
    const char *base = getenv("TMPDIR");
    snprintf(buf, sizeof buf, "%s/dhtest.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        abort();
    }
    if (g_ntmp < 256) g_tmp[g_ntmp++] = strdup(buf);
    return buf;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tmpdirs(void) {
    for (int i = 0; i < g_ntmp; i++) {
        nftw(g_tmp[i], rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        free(g_tmp[i]);
    }
    g_ntmp = 0;
}

void *dh_test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        fclose(f);
        return NULL;
    }
    p[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return p;
}

int dh_test_main(int argc, char **argv, CU_SuiteInfo *suites) {
    cpu_fix_openblas(argv); /* OpenBLAS's AVX-512 kernels, as darkhorse does (core/cpu.c) */
    if (CU_initialize_registry() != CUE_SUCCESS) return 2;
    if (argc > 1) {
        CU_SuiteInfo one[2] = {CU_SUITE_INFO_NULL, CU_SUITE_INFO_NULL};
        for (CU_SuiteInfo *s = suites; s->pName; s++)
            if (strcmp(s->pName, argv[1]) == 0) one[0] = *s;
        if (!one[0].pName) {
            fprintf(stderr, "no suite called %s\n", argv[1]);
            CU_cleanup_registry();
            return 2;
        }
        if (CU_register_suites(one) != CUE_SUCCESS) return 2;
    } else if (CU_register_suites(suites) != CUE_SUCCESS) {
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failures = CU_get_number_of_failures();
    unsigned run = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    remove_tmpdirs();
    if (run == 0) {
        fprintf(stderr, "no tests ran\n");
        return 1;
    }
    return failures ? 1 : 0;
}
