/* main.c: the front end test executable; one CUnit suite per front end module. */
#include "tests/runner.h"

extern CU_SuiteInfo api_suite, request_suite, launch_suite;

int main(int argc, char **argv) {
    CU_SuiteInfo suites[] = {api_suite, request_suite, launch_suite, CU_SUITE_INFO_NULL};
    return dh_test_main(argc, argv, suites);
}
