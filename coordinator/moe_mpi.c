/* moe_mpi.c: the expert backend that sends tokens to the worker ranks.
 *
 * start(): each chosen (token, expert) goes to a worker hosting that expert; for a replicated
 * expert, sched/dispatch.c chooses the replica (DISP_SMART: one on a worker this token already
 * visits, else the least loaded in this step; the same rule `simulate --dispatch smart`
 * replays), so that the choice is a pure function of the step and the plan. Each token is sent
 * once to each worker that got at least one of its slots, with the K slots (the expert id where
 * that worker computes it, -1 elsewhere), the K gate weights and the activation row. The
 * header all-to-all, the payload all-to-all-v and the status receives are posted, and start
 * returns: the coordinator computes the shared experts meanwhile.
 * finish(): post the reply all-to-all-v, wait for everything under one deadline, and add the
 * partial sums per token in ascending worker rank, so that the result is deterministic for a
 * given plan. The deadline is --worker-timeout plus eight times the time the slowest worker
 * should need for its tokens at the rate it measured at start-up, so a long prefill on a slow
 * machine is not mistaken for a lost worker; past it, the workers that have not reported are
 * named with the layer, and the step fails.
 *
 * Byte layout of a request to one worker for n tokens: int32 ids [n, K], float weights [n, K],
 * activations [n, D] (f32, or bf16 with --wire bf16). Reply: [n, D] in the same format. */
#include <stdlib.h>
#include <string.h>

#include "coordinator/cluster.h"
#include "core/common.h"
#include "proto/exchange.h"
#include "sched/dispatch.h"

typedef struct moe_mpi {
    moe_backend base;   /* first */
    cluster *c;
    FILE *log;          /* the exchange log (xchg_log_open), or NULL */
    double t_posted;    /* this exchange's requests posted (for the log) */
    const model *m;
    int P, W, K, D, E, R;   /* ranks, workers, slots, hidden, experts, max rows */
    size_t act;             /* bytes per activation on the wire */
    int layer, T;
    int64_t step;
    int *slot_w;            /* [R, K] worker of each slot */
    int *n_w;               /* [W + 1] tokens per worker */
    int *tok;               /* [W + 1][R] token indices per worker */
    unsigned char *sendbuf; /* requests, by worker */
    unsigned char *recvbuf; /* replies, by worker */
    int *sc, *sd, *rc, *rd; /* [P] byte counts and displacements */
    int *hcounts;           /* [4P] scratch of the header step */
    xchg_header *hs;        /* [P] */
    xchg_status *st;        /* [P] */
    MPI_Request *req;       /* [3 + P]: header, payload, reply, statuses 1..W */
    disp_state *disp;       /* the replica choice (sched/dispatch.h) */
    double t_start, deadline;
} moe_mpi;

static double expected_seconds(const moe_mpi *b, int w, int pairs) {
    double gf = b->c->worker_gflops[w] > 0 ? b->c->worker_gflops[w] : 1.0;
    return pairs * 6.0 * b->D * b->m->cfg.moe_intermediate_size / (gf * 1e9);
}

static int mpi_start(moe_backend *base, int layer, const float *x, int T, const int *idx, const float *w) {
    moe_mpi *b = (moe_mpi *)base;
    DH_ASSERT(T <= b->R);
    const place_plan *plan = b->c->plan;
    int K = b->K, D = b->D, W = b->W;
    b->layer = layer, b->T = T;
    b->step++;
    b->t_start = dh_now();
    // choose a worker for every (token, slot); list each worker's tokens
    int *pairs = xcalloc((size_t)W + 1, sizeof *pairs);
    memset(b->n_w, 0, (size_t)(W + 1) * sizeof *b->n_w);
    disp_assign(b->disp, plan, layer, idx, T, K, b->slot_w);
    for (int t = 0; t < T; t++) {
        for (int k = 0; k < K; k++) pairs[b->slot_w[t * K + k]]++;
        for (int wk = 1; wk <= W; wk++)
            for (int k = 0; k < K; k++)
                if (b->slot_w[t * K + k] == wk) {
                    b->tok[(size_t)wk * b->R + b->n_w[wk]++] = t;
                    break;
                }
    }
    // pack each worker's request: ids [n, K], weights [n, K], activations [n, D]
    size_t off = 0;
    double worst = 0;
    memset(b->sc, 0, (size_t)b->P * sizeof *b->sc);
    memset(b->rc, 0, (size_t)b->P * sizeof *b->rc);
    memset(b->hs, 0, (size_t)b->P * sizeof *b->hs);
    size_t roff = 0;
    for (int wk = 1; wk <= W; wk++) {
        int n = b->n_w[wk];
        const int *tk = b->tok + (size_t)wk * b->R;
        int32_t *ids = (int32_t *)(b->sendbuf + off);
        float *wt = (float *)(ids + (size_t)n * K);
        unsigned char *xa = (unsigned char *)(wt + (size_t)n * K);
        for (int i = 0; i < n; i++) {
            int t = tk[i];
            for (int k = 0; k < K; k++) {
                int mine = b->slot_w[t * K + k] == wk;
                ids[i * K + k] = mine ? idx[t * K + k] : -1;
                wt[i * K + k] = mine ? w[t * K + k] : 0.0f;
            }
            const float *xr = x + (size_t)t * D;
            if (b->act == 2)
                for (int d = 0; d < D; d++) ((uint16_t *)xa)[(size_t)i * D + d] = wt_f32_to_bf16(xr[d]);
            else
                memcpy(xa + (size_t)i * D * 4, xr, (size_t)D * 4);
        }
        size_t bytes = (size_t)n * K * 8 + (size_t)n * D * b->act, reply = (size_t)n * D * b->act;
        b->hs[wk] = (xchg_header){.op = XCHG_OP_MOE, .layer = layer, .n_tokens = n, .top_k = K, .step = b->step,
                                  .bytes = (int64_t)bytes, .reply_bytes = (int64_t)reply,
                                  .wire = b->act == 2 ? XCHG_WIRE_BF16 : XCHG_WIRE_F32};
        b->sc[wk] = (int)bytes, b->sd[wk] = (int)off;
        b->rc[wk] = (int)reply, b->rd[wk] = (int)roff;
        off += bytes, roff += reply;
        ls_worker *lw = &b->c->stats->workers[wk];
        lw->tokens += (uint64_t)n;
        lw->bytes_in += bytes;
        lw->bytes_out += reply;
        lw->exchanges++;
        worst = DH_MAX(worst, expected_seconds(b, wk, pairs[wk]));
    }
    free(pairs);
    b->deadline = b->t_start + b->c->p.timeout + 8 * worst;
    // post: headers, requests, statuses
    xchg_iheader(b->hs, NULL, b->hcounts, &b->req[0]);
    int *zero = b->rc + b->P; /* P zeros after rc */
    MPI_Ialltoallv(b->sendbuf, b->sc, b->sd, MPI_BYTE, NULL, zero, zero, MPI_BYTE, MPI_COMM_WORLD, &b->req[1]);
    for (int wk = 1; wk <= W; wk++)
        MPI_Irecv(&b->st[wk], sizeof b->st[wk], MPI_BYTE, wk, XCHG_TAG_STATUS, MPI_COMM_WORLD, &b->req[2 + wk]);
    int flag;
    MPI_Testall(2, b->req, &flag, MPI_STATUSES_IGNORE); /* push the first messages out now */
    if (b->log) b->t_posted = dh_now();
    return 0;
}

static int mpi_finish(moe_backend *base, float *out) {
    moe_mpi *b = (moe_mpi *)base;
    int D = b->D, W = b->W, *zero = b->rc + b->P;
    double t0 = dh_now();
    MPI_Ialltoallv(NULL, zero, zero, MPI_BYTE, b->recvbuf, b->rc, b->rd, MPI_BYTE, MPI_COMM_WORLD, &b->req[2]);
    if (xchg_wait(b->req, 3 + W, b->deadline) != 0) {
        char ranks[256] = "";
        for (int wk = 1; wk <= W; wk++) {
            int flag = 0;
            MPI_Test(&b->req[2 + wk], &flag, MPI_STATUS_IGNORE);
            if (!flag) snprintf(ranks + strlen(ranks), sizeof ranks - strlen(ranks), "%s%d", *ranks ? ", " : "", wk);
        }
        log_error("worker rank %s did not answer within %.1f s at layer %d (exchange %lld, %d tokens): stopped, "
                  "overloaded or lost; failing the work in flight",
                  *ranks ? ranks : "(unknown: all reported, the exchange stalled)", b->deadline - b->t_start,
                  b->layer, (long long)b->step, b->T);
        return DH_ETIMEOUT;
    }
    for (int wk = 1; wk <= W; wk++)
        if (b->st[wk].error) {
            log_error("worker rank %d failed layer %d: %s (does its plan match?)", wk, b->layer,
                      dh_strerror(b->st[wk].error));
            return DH_EPEER;
        }
    // out[t] = sum of the workers' partial sums, in ascending rank
    memset(out, 0, (size_t)b->T * D * sizeof *out);
    double slowest = 0;
    for (int wk = 1; wk <= W; wk++) {
        const unsigned char *part = b->recvbuf + b->rd[wk];
        const int *tk = b->tok + (size_t)wk * b->R;
        for (int i = 0; i < b->n_w[wk]; i++) {
            float *o = out + (size_t)tk[i] * D;
            if (b->act == 2)
                for (int d = 0; d < D; d++) o[d] += wt_bf16_to_f32(((const uint16_t *)part)[(size_t)i * D + d]);
            else
                for (int d = 0; d < D; d++) o[d] += ((const float *)part)[(size_t)i * D + d];
        }
        b->c->stats->workers[wk].compute_s += b->st[wk].compute_s;
        b->c->stats->workers[wk].expert_tokens += (uint64_t)b->st[wk].n_pairs;
        slowest = DH_MAX(slowest, b->st[wk].compute_s);
    }
    b->c->stats->slowest_s += slowest;
    double t1 = dh_now();
    b->c->stats->wait_s += t1 - t0;
    b->c->stats->exchange_s += t1 - b->t_start;
    if (b->log)
        fprintf(b->log, "%lld\t%d\t%d\t%.6f\t%.6f\t%.6f\t%.6f\n", (long long)b->step, b->layer, b->T, b->t_start,
                b->t_posted, t0, t1);
    b->c->stats->steps++;
    return 0;
}

static void mpi_destroy(moe_backend *base) {
    moe_mpi *b = (moe_mpi *)base;
    free(b->slot_w), free(b->n_w), free(b->tok), free(b->sendbuf), free(b->recvbuf);
    free(b->sc), free(b->sd), free(b->rc), free(b->rd), free(b->hs), free(b->hcounts), free(b->st);
    free(b->req);
    disp_free(b->disp);
    if (b->log) fclose(b->log);
    free(b);
}

moe_backend *moe_mpi_new(const model *m, cluster *c) {
    moe_mpi *b = xcalloc(1, sizeof *b);
    b->base = (moe_backend){.name = "mpi", .start = mpi_start, .finish = mpi_finish, .destroy = mpi_destroy};
    b->c = c, b->m = m;
    b->P = xchg_size(), b->W = c->n_workers, b->K = m->cfg.num_experts_per_tok, b->D = m->cfg.hidden_size;
    b->E = m->cfg.n_routed_experts, b->R = c->p.max_rows;
    b->act = c->p.wire_bf16 ? 2 : 4;
    b->log = xchg_log_open(0);
    size_t R = (size_t)b->R, W = (size_t)b->W;
    b->slot_w = xmalloc(R * b->K * sizeof *b->slot_w);
    b->n_w = xcalloc(W + 1, sizeof *b->n_w);
    b->tok = xmalloc((W + 1) * R * sizeof *b->tok);
    size_t per_tok = (size_t)b->K * 8 + (size_t)b->D * b->act;
    b->sendbuf = xmalloc(xmul(W * R, per_tok) + 1);
    b->recvbuf = xmalloc(xmul(W * R, (size_t)b->D * b->act) + 1);
    DH_ASSERT(W * R * per_tok < (size_t)1 << 31); /* MPI counts are int */
    b->sc = xcalloc((size_t)b->P, sizeof(int)), b->sd = xcalloc((size_t)b->P, sizeof(int));
    b->rc = xcalloc(2 * (size_t)b->P, sizeof(int)), b->rd = xcalloc((size_t)b->P, sizeof(int));
    b->hs = xcalloc((size_t)b->P, sizeof *b->hs), b->hcounts = xcalloc(4 * (size_t)b->P, sizeof(int));
    b->st = xcalloc((size_t)b->P, sizeof *b->st);
    b->req = xcalloc(3 + (size_t)b->P, sizeof *b->req);
    b->disp = disp_new(DISP_SMART, m->n_layers, b->E, b->W);
    disp_set_capacity(b->disp, c->capacity); /* the speeds the plan weighed by, if any */
    return &b->base;
}
