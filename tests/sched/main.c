/* main.c: the sched test executable; one CUnit suite per sched module. */
#include "tests/runner.h"
#include "core/cpu.h"

extern CU_SuiteInfo placement_suite;

int main(int argc, char **argv) {
    cpu_fix_openblas(argv); /* OpenBLAS's AVX-512 kernels, as darkhorse does (core/cpu.c) */
    CU_SuiteInfo suites[] = {placement_suite, CU_SUITE_INFO_NULL};
    return dh_test_main(argc, argv, suites);
}
