/* runner.h: the shared CUnit runner of the test executables. */
#ifndef DH_TEST_RUNNER_H
#define DH_TEST_RUNNER_H
#include <CUnit/CUnit.h>

/* Run every suite of `suites` (a CU_SuiteInfo array ended by CU_SUITE_INFO_NULL), or only the
 * one named by argv[1], first re-executing with OpenBLAS's AVX-512 kernels as darkhorse does
 * (cpu_fix_openblas). Returns 0 when every assertion passed, 1 otherwise: the exit code of the
 * test executable (CU_get_error() does not count failed assertions). */
int dh_test_main(int argc, char **argv, CU_SuiteInfo *suites);
/* tests/data/<rel> as an absolute path, in a static buffer overwritten by the next call. */
const char *dh_test_data(const char *rel);
/* A fresh empty directory under $TMPDIR for this test (removed by the caller's rm -r). */
const char *dh_test_tmpdir(void);
/* Read a whole file (NULL if absent); *len set. Caller frees. */
void *dh_test_read_file(const char *path, size_t *len);
#endif
