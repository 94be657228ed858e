/* main.c: the proto test executable; one CUnit suite per proto module. */
#include "tests/runner.h"

extern CU_SuiteInfo tracefile_suite;
extern CU_SuiteInfo felink_suite;

int main(int argc, char **argv) {
    CU_SuiteInfo suites[] = {tracefile_suite, felink_suite, CU_SUITE_INFO_NULL};
    return dh_test_main(argc, argv, suites);
}
