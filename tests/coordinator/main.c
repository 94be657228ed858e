/* main.c: the coordinator test executable; one CUnit suite per coordinator module. */
#include "tests/runner.h"
#include "core/cpu.h"

extern CU_SuiteInfo forward_suite, family_suite, engine_suite;
extern CU_SuiteInfo api_suite;

int main(int argc, char **argv) {
    cpu_fix_openblas(argv); /* OpenBLAS's AVX-512 kernels, as darkhorse does (core/cpu.c) */
    CU_SuiteInfo suites[] = {forward_suite, family_suite, engine_suite, api_suite, CU_SUITE_INFO_NULL};
    return dh_test_main(argc, argv, suites);
}
