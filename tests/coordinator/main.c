/* main.c: the coordinator test executable; one CUnit suite per coordinator module. */
#include "tests/runner.h"

extern CU_SuiteInfo forward_suite, family_suite, engine_suite, bridge_suite;

int main(int argc, char **argv) {
    CU_SuiteInfo suites[] = {forward_suite, family_suite, engine_suite, bridge_suite, CU_SUITE_INFO_NULL};
    return dh_test_main(argc, argv, suites);
}
