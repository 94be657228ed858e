/* main.c: the sched test executable; one CUnit suite per sched module. */
#include "tests/runner.h"

extern CU_SuiteInfo placement_suite, trace_suite, simulate_suite, planner_suite, migrate_suite;

int main(int argc, char **argv) {
    CU_SuiteInfo suites[] = {placement_suite, trace_suite, simulate_suite, planner_suite, migrate_suite, CU_SUITE_INFO_NULL};
    return dh_test_main(argc, argv, suites);
}
