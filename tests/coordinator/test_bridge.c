/* test_bridge.c: rank 0's end of the front end link, over a real Unix socket: what the front
 * end sends reaches the ops in order, what rank 0 sends arrives whole, the front end going away
 * calls lost once and makes later sends fail, and closing from rank 0's side calls nothing. */
#include <CUnit/CUnit.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/bridge.h"
#include "core/common.h"
#include "proto/felink.h"
#include "tests/runner.h"

typedef struct calls {     /* what the ops saw; the reader thread writes, the test reads */
    pthread_mutex_t mu;
    char log[512];
    int lost;
} calls;

static void note(calls *c, const char *s) {
    pthread_mutex_lock(&c->mu);
    snprintf(c->log + strlen(c->log), sizeof c->log - strlen(c->log), "%s;", s);
    pthread_mutex_unlock(&c->mu);
}
static void on_submit(void *ctx, const Darkhorse__FeSubmit *m) {
    char b[96];
    snprintf(b, sizeof b, "submit %llu %zu+%zu seed %llu", (unsigned long long)m->id, m->n_prompt, m->n_generated,
             (unsigned long long)m->seed);
    note(ctx, b);
}
static void on_cancel(void *ctx, uint64_t id, int finished) {
    char b[64];
    snprintf(b, sizeof b, "cancel %llu %d", (unsigned long long)id, finished);
    note(ctx, b);
}
static void on_stop(void *ctx, double grace) {
    char b[64];
    snprintf(b, sizeof b, "stop %.1f", grace);
    note(ctx, b);
}
static void on_replan(void *ctx, uint64_t tag) {
    char b[64];
    snprintf(b, sizeof b, "replan %llu", (unsigned long long)tag);
    note(ctx, b);
}
static void on_lost(void *ctx) {
    calls *c = ctx;
    pthread_mutex_lock(&c->mu);
    c->lost++;
    pthread_mutex_unlock(&c->mu);
}
static const br_ops ops = {on_submit, on_cancel, on_stop, on_replan, on_lost};

/* wait (at most 5 s) until the log has want, or lost reaches n */
static int wait_for(calls *c, const char *want, int lost) {
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&c->mu);
        int ok = want ? strcmp(c->log, want) == 0 : c->lost >= lost;
        pthread_mutex_unlock(&c->mu);
        if (ok) return 1;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

typedef struct got { int n, kinds[8], tokens[8]; char text[64]; int workers; } got;
static int collect(void *ctx, const Darkhorse__FeMsg *m) {
    got *g = ctx;
    if (g->n >= 8) return -1;
    g->kinds[g->n] = (int)m->body_case;
    if (m->body_case == DARKHORSE__FE_MSG__BODY_EVENT) g->tokens[g->n] = m->event->kind == 1 ? m->event->token : -m->event->kind;
    if (m->body_case == DARKHORSE__FE_MSG__BODY_HELLO) g->workers = m->hello->workers;
    if (m->body_case == DARKHORSE__FE_MSG__BODY_PLAN) snprintf(g->text, sizeof g->text, "%s", m->plan->text);
    g->n++;
    return 0;
}

static void test_bridge_carries_both_ways_and_notices_the_front_end_leaving(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s/fe.sock", dh_test_tmpdir());
    int l = fel_listen(path);
    CU_ASSERT_FATAL(l >= 0);
    calls c = {.mu = PTHREAD_MUTEX_INITIALIZER};
    br *b = br_open(path, &ops, &c);
    CU_ASSERT_FATAL(b != NULL);
    int fe = accept(l, NULL, NULL);
    CU_ASSERT_FATAL(fe >= 0);
    CU_ASSERT_EQUAL(br_send_hello(b, 4, 2048), 0);
    CU_ASSERT_EQUAL(br_start(b), 0);
    /* the front end's side: a submit with a resumed part, a cancel, a replan, a stop */
    int prompt[2] = {1, 2}, gen[3] = {3, 4, 5};
    Darkhorse__FeSubmit s = DARKHORSE__FE_SUBMIT__INIT;
    s.id = 9, s.n_prompt = 2, s.prompt = prompt, s.n_generated = 3, s.generated = gen, s.seed = 42;
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_SUBMIT, m.submit = &s;
    CU_ASSERT_EQUAL(fel_send(fe, &m), 0);
    Darkhorse__FeCancel cn = DARKHORSE__FE_CANCEL__INIT;
    cn.id = 9, cn.finished = 1;
    m = (Darkhorse__FeMsg)DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_CANCEL, m.cancel = &cn;
    CU_ASSERT_EQUAL(fel_send(fe, &m), 0);
    Darkhorse__FeReplan rp = DARKHORSE__FE_REPLAN__INIT;
    rp.tag = 5;
    m = (Darkhorse__FeMsg)DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_REPLAN, m.replan = &rp;
    CU_ASSERT_EQUAL(fel_send(fe, &m), 0);
    Darkhorse__FeStop st = DARKHORSE__FE_STOP__INIT;
    st.grace_seconds = 2.5;
    m = (Darkhorse__FeMsg)DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_STOP, m.stop = &st;
    CU_ASSERT_EQUAL(fel_send(fe, &m), 0);
    CU_ASSERT(wait_for(&c, "submit 9 2+3 seed 42;cancel 9 1;replan 5;stop 2.5;", 0));
    /* rank 0's side */
    double share[2] = {0.5, 0.5};
    CU_ASSERT_EQUAL(br_send_token(b, 9, 777, 3), 0);
    CU_ASSERT_EQUAL(br_send_done(b, 9, 1, 2, 4, share, 2), 0);
    CU_ASSERT_EQUAL(br_send_plan(b, "darkhorse-placement 1\n", 1), 0);
    fel_reader *r = fel_reader_new();
    got g = {0};
    for (int i = 0; i < 50 && g.n < 4 && fel_read_fd(r, fe) == 0; i++) CU_ASSERT_EQUAL(fel_reader_drain(r, collect, &g), 0);
    CU_ASSERT_EQUAL_FATAL(g.n, 4);
    CU_ASSERT_EQUAL(g.kinds[0], DARKHORSE__FE_MSG__BODY_HELLO);
    CU_ASSERT_EQUAL(g.workers, 4);
    CU_ASSERT_EQUAL(g.tokens[1], 777);
    CU_ASSERT_EQUAL(g.tokens[2], -2);
    CU_ASSERT_STRING_EQUAL(g.text, "darkhorse-placement 1\n");
    fel_reader_free(r);
    /* the front end goes away: lost once, then sends fail at once */
    close(fe);
    CU_ASSERT(wait_for(&c, NULL, 1));
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++) rc = br_send_token(b, 9, 1, 4); /* a write may still succeed once */
    CU_ASSERT_EQUAL(rc, DH_EIO);
    br_close(b);
    CU_ASSERT_EQUAL(c.lost, 1);
    /* closing from rank 0's side calls nothing */
    calls c2 = {.mu = PTHREAD_MUTEX_INITIALIZER};
    b = br_open(path, &ops, &c2);
    CU_ASSERT_FATAL(b != NULL);
    fe = accept(l, NULL, NULL);
    CU_ASSERT_EQUAL(br_start(b), 0);
    br_close(b);
    CU_ASSERT_EQUAL(c2.lost, 0);
    close(fe);
    close(l);
    CU_ASSERT_PTR_NULL(br_open("/nonexistent-dir/fe.sock", &ops, &c2));
}

static CU_TestInfo bridge_tests[] = {
    {"carries both ways and notices the front end leaving",
     test_bridge_carries_both_ways_and_notices_the_front_end_leaving},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo bridge_suite = {"bridge", NULL, NULL, NULL, NULL, bridge_tests};
