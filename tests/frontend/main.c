/* main.c: the front end test executable; one CUnit suite per frontend module. */
#include "tests/runner.h"

extern CU_SuiteInfo launch_suite;

int main(int argc, char **argv) {
    CU_SuiteInfo suites[] = {launch_suite, CU_SUITE_INFO_NULL};
    return dh_test_main(argc, argv, suites);
}
