/* sched_test.h: helpers the sched test suites share. */
#ifndef DH_SCHED_TEST_H
#define DH_SCHED_TEST_H
#include "sched/placement.h"
/* Experts of layer l that rank w hosts (replicas included). */
int sched_test_count_on(const place_plan *p, int l, int w);
#endif
