/* test_felink.c: the front end <-> rank 0 framing: messages of every kind cross a real socket
 * pair and come out equal, also when their bytes arrive one at a time; a frame longer than
 * FEL_MAX_MSG and bytes that are no FeMsg are refused; a real Unix socket path connects. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/common.h"
#include "proto/felink.h"
#include "tests/runner.h"

typedef struct seen {  /* what the drain callback saw */
    int n;
    int kinds[16];
    uint64_t ids[16];
    int tokens[16][8];
    int n_tokens[16];
    float temperature;
    char text[64];
    double share1;
} seen;

static int collect(void *ctx, const Darkhorse__FeMsg *m) {
    seen *s = ctx;
    if (s->n >= 16) return -1;
    int i = s->n++;
    s->kinds[i] = (int)m->body_case;
    switch (m->body_case) {
    case DARKHORSE__FE_MSG__BODY_SUBMIT:
        s->ids[i] = m->submit->id;
        s->n_tokens[i] = (int)(m->submit->n_prompt + m->submit->n_generated);
        for (size_t k = 0; k < m->submit->n_prompt && k < 8; k++) s->tokens[i][k] = m->submit->prompt[k];
        for (size_t k = 0; k < m->submit->n_generated && m->submit->n_prompt + k < 8; k++)
            s->tokens[i][m->submit->n_prompt + k] = m->submit->generated[k];
        s->temperature = m->submit->temperature;
        break;
    case DARKHORSE__FE_MSG__BODY_EVENT:
        s->ids[i] = m->event->id;
        s->tokens[i][0] = m->event->token, s->tokens[i][1] = m->event->index;
        if (m->event->n_domain_share > 1) s->share1 = m->event->domain_share[1];
        break;
    case DARKHORSE__FE_MSG__BODY_PLAN: snprintf(s->text, sizeof s->text, "%s", m->plan->text); break;
    case DARKHORSE__FE_MSG__BODY_CANCEL: s->ids[i] = m->cancel->id; break;
    default: break;
    }
    return 0;
}

/* three messages: a submit with prompt and generated tokens, a token event, a plan */
static void send_three(int fd) {
    int prompt[3] = {5, 17, 42}, gen[2] = {7, 129279};
    Darkhorse__FeSubmit sub = DARKHORSE__FE_SUBMIT__INIT;
    sub.id = 0x123456789aULL, sub.n_prompt = 3, sub.prompt = prompt, sub.n_generated = 2, sub.generated = gen;
    sub.temperature = 0.75f, sub.seed = 99;
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_SUBMIT, m.submit = &sub;
    CU_ASSERT_EQUAL(fel_send(fd, &m), 0);
    double share[3] = {0.25, 0.5, 0.25};
    Darkhorse__FeEvent ev = DARKHORSE__FE_EVENT__INIT;
    ev.id = 4, ev.kind = 1, ev.token = 1000, ev.index = 2, ev.n_domain_share = 3, ev.domain_share = share;
    m = (Darkhorse__FeMsg)DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_EVENT, m.event = &ev;
    CU_ASSERT_EQUAL(fel_send(fd, &m), 0);
    Darkhorse__FePlan plan = DARKHORSE__FE_PLAN__INIT;
    plan.text = "darkhorse-placement 1\n", plan.generation = 2;
    m = (Darkhorse__FeMsg)DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_PLAN, m.plan = &plan;
    CU_ASSERT_EQUAL(fel_send(fd, &m), 0);
}

static void check_three(const seen *s) {
    CU_ASSERT_EQUAL_FATAL(s->n, 3);
    CU_ASSERT_EQUAL(s->kinds[0], DARKHORSE__FE_MSG__BODY_SUBMIT);
    CU_ASSERT_EQUAL(s->ids[0], 0x123456789aULL);
    CU_ASSERT_EQUAL(s->n_tokens[0], 5);
    int want[5] = {5, 17, 42, 7, 129279};
    for (int k = 0; k < 5; k++) CU_ASSERT_EQUAL(s->tokens[0][k], want[k]);
    CU_ASSERT_EQUAL(s->temperature, 0.75f);
    CU_ASSERT_EQUAL(s->kinds[1], DARKHORSE__FE_MSG__BODY_EVENT);
    CU_ASSERT_EQUAL(s->ids[1], 4);
    CU_ASSERT_EQUAL(s->tokens[1][0], 1000);
    CU_ASSERT_EQUAL(s->tokens[1][1], 2);
    CU_ASSERT_EQUAL(s->share1, 0.5);
    CU_ASSERT_EQUAL(s->kinds[2], DARKHORSE__FE_MSG__BODY_PLAN);
    CU_ASSERT_STRING_EQUAL(s->text, "darkhorse-placement 1\n");
}

static void test_felink_messages_cross_a_socket_whole(void) {
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    send_three(sv[0]);
    close(sv[0]);
    fel_reader *r = fel_reader_new();
    seen s = {0};
    int reads = 0;
    while (fel_read_fd(r, sv[1]) == 0 && reads++ < 100) CU_ASSERT_EQUAL(fel_reader_drain(r, collect, &s), 0);
    check_three(&s);
    fel_reader_free(r);
    close(sv[1]);
}

static void test_felink_messages_survive_bytes_arriving_one_at_a_time(void) {
    int sv[2];
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    send_three(sv[0]);
    close(sv[0]);
    unsigned char all[4096];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof all && (k = read(sv[1], all + n, sizeof all - n)) > 0) n += (size_t)k;
    close(sv[1]);
    fel_reader *r = fel_reader_new();
    seen s = {0};
    for (size_t i = 0; i < n; i++) {
        fel_reader_feed(r, all + i, 1);
        CU_ASSERT_EQUAL(fel_reader_drain(r, collect, &s), 0);
        if (i + 1 < n) CU_ASSERT(s.n < 3); /* the last message needs its last byte */
    }
    check_three(&s);
    fel_reader_free(r);
}

static void test_felink_refuses_oversized_and_garbage_frames(void) {
    fel_reader *r = fel_reader_new();
    seen s = {0};
    uint32_t big = FEL_MAX_MSG + 1;
    unsigned char hdr[4] = {(unsigned char)big, (unsigned char)(big >> 8), (unsigned char)(big >> 16),
                            (unsigned char)(big >> 24)};
    fel_reader_feed(r, hdr, 4); /* refused from the length alone, nothing more needed */
    CU_ASSERT_EQUAL(fel_reader_drain(r, collect, &s), DH_EFORMAT);
    fel_reader_free(r);
    /* field 1 (hello) as length-delimited with a length running past the frame */
    unsigned char bad[] = {4, 0, 0, 0, 0x0a, 0x7f, 0x01, 0x02};
    r = fel_reader_new();
    fel_reader_feed(r, bad, sizeof bad);
    CU_ASSERT_EQUAL(fel_reader_drain(r, collect, &s), DH_EFORMAT);
    CU_ASSERT_EQUAL(s.n, 0);
    fel_reader_free(r);
}

static void test_felink_connects_over_a_unix_socket_path(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s/fe.sock", dh_test_tmpdir());
    int l = fel_listen(path);
    CU_ASSERT_FATAL(l >= 0);
    int c = fel_connect(path);
    CU_ASSERT_FATAL(c >= 0);
    int a = accept(l, NULL, NULL);
    CU_ASSERT_FATAL(a >= 0);
    Darkhorse__FeCancel cn = DARKHORSE__FE_CANCEL__INIT;
    cn.id = 77;
    Darkhorse__FeMsg m = DARKHORSE__FE_MSG__INIT;
    m.body_case = DARKHORSE__FE_MSG__BODY_CANCEL, m.cancel = &cn;
    CU_ASSERT_EQUAL(fel_send(c, &m), 0);
    fel_reader *r = fel_reader_new();
    seen s = {0};
    CU_ASSERT_EQUAL(fel_read_fd(r, a), 0);
    CU_ASSERT_EQUAL(fel_reader_drain(r, collect, &s), 0);
    CU_ASSERT_EQUAL(s.n, 1);
    CU_ASSERT_EQUAL(s.ids[0], 77);
    close(c); /* the peer gone: the reader sees the end, a writer an error */
    CU_ASSERT_EQUAL(fel_read_fd(r, a), DH_EIO);
    CU_ASSERT_EQUAL(fel_send(a, &m), DH_EIO);
    fel_reader_free(r);
    close(a);
    close(l);
    CU_ASSERT(fel_connect("/nonexistent-dir/fe.sock") < 0);
}

static CU_TestInfo felink_tests[] = {
    {"messages cross a socket whole", test_felink_messages_cross_a_socket_whole},
    {"messages survive bytes arriving one at a time", test_felink_messages_survive_bytes_arriving_one_at_a_time},
    {"oversized and garbage frames are refused", test_felink_refuses_oversized_and_garbage_frames},
    {"connects over a Unix socket path", test_felink_connects_over_a_unix_socket_path},
    CU_TEST_INFO_NULL,
};
CU_SuiteInfo felink_suite = {"felink", NULL, NULL, NULL, NULL, felink_tests};
