/* cluster.c: starting, reporting on and stopping the expert workers, from the coordinator.
 *
 * Start-up is the coordinator's half of worker/worker.c's sequence: gather Hellos, check them
 * (protocol version, model identity, errors, a rank count the model can use), place the
 * experts (an algorithm, or a plan file checked against the job), broadcast a Verdict that
 * either starts every rank or stops every rank with the same message, broadcast the plan,
 * gather Ready reports and print each rank's memory. A worker that does not answer within
 * the deadline aborts the job rather than leaving ranks waiting.
 *
 * A live re-plan is the same plan broadcast after a PREPARE header, but nothing waits for it:
 * each worker maps the new plan while serving the old one and sends its Ready on its own
 * (tag XCHG_TAG_READY), which cluster_replan_poll picks up between steps. Readies carry the
 * attempt number, so that a late answer to a cancelled attempt is recognised and dropped. The
 * old plan is freed only at commit, once every worker has said it is ready. */
#include "cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"
#include "darkhorse.pb-c.h"
#include "proto/exchange.h"
#include "proto/messages.h"

#define START_DEADLINE 120.0 /* seconds for every worker to say hello */
#define LOAD_DEADLINE 1800.0 /* seconds for every worker to map (or quantize) its experts */
#define REPLAN_DEADLINE 600.0 /* seconds for every worker to map a new plan while it serves */

static void send_verdict(const char *err) {
    Darkhorse__Verdict v = DARKHORSE__VERDICT__INIT;
    v.ok = err == NULL;
    v.error = (char *)(err ? err : "");
    size_t len = darkhorse__verdict__get_packed_size(&v);
    char *buf = xmalloc(len + 1);
    darkhorse__verdict__pack(&v, (uint8_t *)buf);
    int n = (int)len;
    xchg_bcast(&buf, &n, dh_now() + START_DEADLINE);
    free(buf);
}

int cluster_check_hello(const Darkhorse__Hello *h, uint64_t model_hash, const char *model_dir, char *err,
                        size_t errsz) {
    if (h->error_code) {
        snprintf(err, errsz, "rank %d (%.100s): %.400s", h->rank, h->hostname, h->error);
    } else if (h->protocol_version != XCHG_PROTOCOL) {
        snprintf(err, errsz, "rank %d (%.100s) speaks protocol %u, the coordinator %d: mixed darkhorse versions",
                 h->rank, h->hostname, h->protocol_version, XCHG_PROTOCOL);
    } else if (h->model_hash != model_hash) {
        snprintf(err, errsz,
                 "rank %d (%.100s) has a different model at %.300s (identity %016llx, the coordinator's %016llx): "
                 "the same checkpoint must be at that path on every host",
                 h->rank, h->hostname, model_dir, (unsigned long long)h->model_hash, (unsigned long long)model_hash);
    } else {
        return 0;
    }
    return 1;
}

/* Check the workers' hellos; an error message into err (empty if all is well). */
static void check_hellos(cluster *c, const char *all, const int *lens, char *err, size_t errsz) {
    size_t off = (size_t)lens[0];
    for (int r = 1; r <= c->n_workers; off += (size_t)lens[r], r++) {
        Darkhorse__Hello *h = darkhorse__hello__unpack(NULL, (size_t)lens[r], (const uint8_t *)all + off);
        if (!h) {
            if (!*err) snprintf(err, errsz, "rank %d sent a malformed hello", r);
            continue;
        }
        if (!*err) cluster_check_hello(h, c->m->config_hash, c->m->dir, err, errsz);
        c->worker_gflops[r] = h->expert_gflops;
        log_info("rank %d on %s: darkhorse %s, %d threads, %s kernels, expert FFN %.1f GFLOP/s, %.1f of %.1f GB free",
                 r, h->hostname, h->version, h->threads, h->kernels, h->expert_gflops, h->mem_available_bytes / 1e9,
                 h->mem_total_bytes / 1e9);
        darkhorse__hello__free_unpacked(h, NULL);
    }
}

/* The worker speeds `balanced` weighs by (c->capacity, W of them), or none; an error message
 * into err when --worker-capacity does not fit the job. */
static void pick_capacity(cluster *c, char *err, size_t errsz) {
    const cluster_params *p = &c->p;
    int W = c->n_workers;
    if (!p->capacity && !p->capacity_measured) return;
    if (p->placement_file) {
        snprintf(err, errsz, "--worker-capacity weighs a computed placement, but --placement %.300s fixes it",
                 p->placement_file);
        return;
    }
    if (strcmp(p->placement_algo, "balanced") != 0) {
        snprintf(err, errsz, "--worker-capacity weighs the 'balanced' placement; '%.60s' would ignore it",
                 p->placement_algo);
        return;
    }
    if (p->capacity && p->n_capacity != W) {
        snprintf(err, errsz, "--worker-capacity gives %d speeds, but this job has %d workers (ranks 1..%d)",
                 p->n_capacity, W, W);
        return;
    }
    c->capacity = xmalloc((size_t)W * sizeof *c->capacity);
    char line[512];
    int at = 0;
    for (int w = 0; w < W; w++) {
        c->capacity[w] = p->capacity ? p->capacity[w] : c->worker_gflops[w + 1];
        if (at < (int)sizeof line - 32) at += snprintf(line + at, sizeof line - at, "%s%.4g", w ? ":" : "", c->capacity[w]);
    }
    if (!p->capacity)
        for (int w = 0; w < W; w++)
            if (!(c->capacity[w] > 0)) snprintf(err, errsz, "rank %d measured no expert rate to weigh by", w + 1);
    log_info("worker capacities for the placement, ranks 1..%d: %s%s", W, line,
             p->capacity ? " (given)" : " (measured expert GFLOP/s)");
}

static place_plan *make_plan(cluster *c, char *err, size_t errsz) {
    const model *m = c->m;
    int L = m->n_layers, E = m->cfg.n_routed_experts;
    pick_capacity(c, err, errsz);
    if (*err) return NULL;
    uint8_t *is_moe = xcalloc((size_t)L, 1);
    for (int l = 0; l < L; l++) is_moe[l] = (uint8_t)m->layers[l].is_moe;
    place_plan *plan;
    if (c->p.placement_file) {
        plan = place_load(c->p.placement_file, L, E, c->n_workers, is_moe);
        if (!plan) snprintf(err, errsz, "the placement plan %.300s cannot be used (see the coordinator's log)", c->p.placement_file);
    } else {
        place_input in = {.n_layers = L, .n_experts = E, .n_workers = c->n_workers, .is_moe = is_moe,
                          .domain = m->cfg.expert_domains, .load = c->p.load, .capacity = c->capacity};
        plan = place_compute(c->p.placement_algo, &in);
        if (!plan) snprintf(err, errsz, "cannot place %d experts a layer on %d workers with '%s' (see the coordinator's log)",
                            E, c->n_workers, c->p.placement_algo);
    }
    free(is_moe);
    return plan;
}

/* Gather Ready reports, print the memory table; an error message into err. */
static int gather_ready(cluster *c, char *err, size_t errsz) {
    Darkhorse__Ready mine = DARKHORSE__READY__INIT;
    size_t len = darkhorse__ready__get_packed_size(&mine);
    unsigned char own[64];
    darkhorse__ready__pack(&mine, own);
    int *lens = xcalloc((size_t)c->n_workers + 1, sizeof *lens);
    char *all = NULL;
    log_info("waiting for %d workers to map their experts", c->n_workers);
    if (xchg_gather(own, (int)len, &all, lens, dh_now() + LOAD_DEADLINE) != 0) {
        log_error("the workers did not all load their experts within %.0f s", LOAD_DEADLINE);
        xchg_abort(1);
    }
    fprintf(stderr, "%-6s %8s %12s %10s\n", "rank", "experts", "mapped_GB", "RSS_GB");
    size_t off = (size_t)lens[0];
    for (int r = 1; r <= c->n_workers; off += (size_t)lens[r], r++) {
        Darkhorse__Ready *rd = darkhorse__ready__unpack(NULL, (size_t)lens[r], (const uint8_t *)all + off);
        if (!rd) {
            if (!*err) snprintf(err, errsz, "rank %d sent a malformed ready report", r);
            continue;
        }
        if (rd->error_code && !*err) snprintf(err, errsz, "%.500s", rd->error);
        fprintf(stderr, "%-6d %8u %12.3f %10.3f\n", r, rd->experts_hosted, rd->mapped_bytes / 1e9, rd->rss_bytes / 1e9);
        c->stats->workers[r].rss_bytes = rd->rss_bytes;
        c->stats->workers[r].experts_hosted = rd->experts_hosted;
        darkhorse__ready__free_unpacked(rd, NULL);
    }
    free(all);
    free(lens);
    return *err ? 1 : 0;
}

static int broadcast_plan(cluster *c, char *err, size_t errsz) {
    size_t len;
    char *buf = (char *)msg_plan_pack(c->plan, &len);
    int n = (int)len;
    xchg_bcast(&buf, &n, dh_now() + START_DEADLINE);
    free(buf);
    return gather_ready(c, err, errsz);
}

int cluster_start(cluster *c, const model *m, const cluster_params *p) {
    memset(c, 0, sizeof *c);
    c->m = m;
    c->p = *p;
    c->n_workers = xchg_size() - 1;
    c->worker_gflops = xcalloc((size_t)c->n_workers + 1, sizeof *c->worker_gflops);
    c->stats = ls_new(m->n_layers, m->cfg.n_routed_experts, c->n_workers);
    char err[1024] = "";
    // hellos
    Darkhorse__Hello mine = DARKHORSE__HELLO__INIT;
    unsigned char own[64];
    size_t len = darkhorse__hello__get_packed_size(&mine);
    darkhorse__hello__pack(&mine, own);
    int *lens = xcalloc((size_t)c->n_workers + 1, sizeof *lens);
    char *all = NULL;
    if (xchg_gather(own, (int)len, &all, lens, dh_now() + START_DEADLINE) != 0) {
        log_error("the workers did not all say hello within %.0f s", START_DEADLINE);
        xchg_abort(1);
    }
    check_hellos(c, all, lens, err, sizeof err);
    free(all);
    free(lens);
    // placement, then go or stop
    if (!*err && m->cfg.n_routed_experts == 0) snprintf(err, sizeof err, "the model has no routed experts to distribute");
    if (!*err) c->plan = make_plan(c, err, sizeof err);
    send_verdict(*err ? err : NULL);
    if (*err) {
        log_error("the cluster cannot start: %s", err);
        goto fail;
    }
    if (c->p.placement_out && place_save(c->plan, c->p.placement_out) != 0) log_warn("the plan was not saved");
    int rc = broadcast_plan(c, err, sizeof err);
    send_verdict(rc ? err : NULL);
    if (rc) {
        log_error("the cluster cannot start: %s", err);
        goto fail;
    }
    double wl[1024];
    if (c->n_workers <= 1024) {
        double bal = place_worker_load(c->plan, c->p.load, c->capacity, wl);
        log_info("placement '%s' on %d workers, expected balance %.3f (mean/max %s%s)", c->plan->algo, c->n_workers,
                 bal, c->p.load ? "routed tokens observed before" : "experts", c->capacity ? " per unit of speed" : "");
    }
    c->p.load = NULL, c->p.capacity = NULL; /* borrowed for the start only */
    c->generation = 1;
    c->next_ready = xcalloc((size_t)c->n_workers + 1, sizeof *c->next_ready);
    c->next_hosted = xcalloc((size_t)c->n_workers + 1, sizeof *c->next_hosted);
    c->moe = moe_mpi_new(m, c);
    return 0;
fail: /* the workers have stopped: nothing more is sent to them */
    place_free(c->plan);
    ls_free(c->stats);
    free(c->worker_gflops);
    free(c->capacity);
    memset(c, 0, sizeof *c);
    return 1;
}

static void send_op(int op, int64_t step) {
    int P = xchg_size();
    xchg_header *hs = xcalloc((size_t)P, sizeof *hs);
    int *counts = xcalloc(4 * (size_t)P, sizeof *counts);
    for (int r = 1; r < P; r++) hs[r].op = op, hs[r].step = step;
    MPI_Request req;
    xchg_iheader(hs, NULL, counts, &req);
    xchg_wait(&req, 1, 0);
    free(hs), free(counts);
}

int cluster_report(cluster *c) {
    send_op(XCHG_OP_REPORT, 0);
    Darkhorse__LoadReport mine = DARKHORSE__LOAD_REPORT__INIT;
    unsigned char own[64];
    size_t len = darkhorse__load_report__get_packed_size(&mine);
    darkhorse__load_report__pack(&mine, own);
    int *lens = xcalloc((size_t)c->n_workers + 1, sizeof *lens);
    char *all = NULL;
    if (xchg_gather(own, (int)len, &all, lens, dh_now() + c->p.timeout) != 0) {
        log_error("the workers did not all send their load reports within %.1f s", c->p.timeout);
        free(lens);
        return DH_ETIMEOUT;
    }
    size_t off = (size_t)lens[0];
    for (int r = 1; r <= c->n_workers; off += (size_t)lens[r], r++) {
        Darkhorse__LoadReport *lr = darkhorse__load_report__unpack(NULL, (size_t)lens[r], (const uint8_t *)all + off);
        if (!lr) continue;
        ls_worker *w = &c->stats->workers[r];
        w->compute_s = lr->compute_seconds;
        w->expert_tokens = lr->expert_tokens;
        w->rss_bytes = lr->rss_bytes;
        darkhorse__load_report__free_unpacked(lr, NULL);
    }
    free(all);
    free(lens);
    return 0;
}

int cluster_replan_begin(cluster *c, place_plan *plan) {
    DH_ASSERT(!c->next && plan->n_workers == c->n_workers);
    c->attempt++;
    send_op(XCHG_OP_PREPARE, c->attempt);
    size_t len;
    char *buf = (char *)msg_plan_pack(plan, &len);
    int n = (int)len, rc = xchg_bcast(&buf, &n, dh_now() + c->p.timeout);
    free(buf);
    if (rc) {
        log_error("the workers did not take the new plan within %.1f s", c->p.timeout);
        place_free(plan);
        return DH_ETIMEOUT;
    }
    c->next = plan;
    memset(c->next_ready, 0, (size_t)c->n_workers + 1);
    c->next_deadline = dh_now() + REPLAN_DEADLINE;
    log_info("plan attempt %lld: the workers map the new plan while serving", (long long)c->attempt);
    return 0;
}

/* One Ready from rank r (len bytes at buf): 1 if it says r mapped the current attempt, -1 if
 * it says r failed (err), 0 if it answers an earlier, cancelled attempt. */
static int take_ready(cluster *c, int r, const unsigned char *buf, int len, char *err, size_t errsz) {
    Darkhorse__Ready *rd = darkhorse__ready__unpack(NULL, (size_t)len, buf);
    if (!rd) {
        snprintf(err, errsz, "rank %d sent a malformed Ready", r);
        return -1;
    }
    int got = 0;
    if ((int64_t)rd->attempt != c->attempt) {
        log_info("rank %d answered plan attempt %llu late (now %lld): dropped", r, (unsigned long long)rd->attempt,
                 (long long)c->attempt);
    } else if (rd->error_code) {
        snprintf(err, errsz, "rank %d: %.400s", r, rd->error);
        got = -1;
    } else {
        c->next_hosted[r] = rd->experts_hosted;
        log_info("rank %d mapped the new plan: %u experts, %u new, in %.2f s", r, rd->experts_hosted,
                 rd->experts_gained, rd->map_seconds);
        got = 1;
    }
    darkhorse__ready__free_unpacked(rd, NULL);
    return got;
}

int cluster_replan_poll(cluster *c, char *err, size_t errsz) {
    DH_ASSERT(c->next);
    for (;;) {
        int flag = 0, len = 0;
        MPI_Status st;
        MPI_Iprobe(MPI_ANY_SOURCE, XCHG_TAG_READY, MPI_COMM_WORLD, &flag, &st);
        if (!flag) break;
        MPI_Get_count(&st, MPI_BYTE, &len);
        unsigned char *buf = xmalloc((size_t)len + 1);
        MPI_Recv(buf, len, MPI_BYTE, st.MPI_SOURCE, XCHG_TAG_READY, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        int got = take_ready(c, st.MPI_SOURCE, buf, len, err, errsz);
        free(buf);
        if (got < 0) return DH_EPEER;
        if (got > 0) c->next_ready[st.MPI_SOURCE] = 1;
    }
    char late[256] = "";
    for (int r = 1; r <= c->n_workers; r++)
        if (!c->next_ready[r]) snprintf(late + strlen(late), sizeof late - strlen(late), "%s%d", *late ? ", " : "", r);
    if (!*late) return 1;
    if (dh_now() <= c->next_deadline) return 0;
    snprintf(err, errsz, "rank %s did not map the new plan within %.0f s", late, REPLAN_DEADLINE);
    return DH_ETIMEOUT;
}

void cluster_replan_commit(cluster *c) {
    DH_ASSERT(c->next);
    for (int r = 1; r <= c->n_workers; r++) DH_ASSERT(c->next_ready[r]); /* never before every worker said so */
    send_op(XCHG_OP_COMMIT, c->attempt);
    place_free(c->plan);
    c->plan = c->next;
    c->next = NULL;
    c->generation++;
    for (int r = 1; r <= c->n_workers; r++) c->stats->workers[r].experts_hosted = c->next_hosted[r];
    log_info("plan generation %llu in use (attempt %lld)", (unsigned long long)c->generation, (long long)c->attempt);
}

void cluster_replan_cancel(cluster *c) {
    DH_ASSERT(c->next);
    send_op(XCHG_OP_CANCEL, c->attempt);
    place_free(c->next);
    c->next = NULL;
    log_info("plan attempt %lld cancelled: generation %llu stays in use", (long long)c->attempt,
             (unsigned long long)c->generation);
}

int cluster_replan(cluster *c, place_plan *plan) {
    int rc = cluster_replan_begin(c, plan);
    if (rc) return rc;
    char err[600] = "";
    struct timespec ms = {0, 1000000L};
    while ((rc = cluster_replan_poll(c, err, sizeof err)) == 0) nanosleep(&ms, NULL);
    if (rc == 1) {
        cluster_replan_commit(c);
        return 0;
    }
    log_error("the new plan was not applied: %s", err);
    cluster_replan_cancel(c);
    return rc;
}

void cluster_stop(cluster *c) {
    if (!c->stats) return;
    if (c->next) cluster_replan_cancel(c);
    send_op(XCHG_OP_SHUTDOWN, 0);
    moe_free(c->moe);
    place_free(c->plan);
    free(c->next_ready);
    free(c->next_hosted);
    ls_free(c->stats);
    free(c->worker_gflops);
    free(c->capacity);
    memset(c, 0, sizeof *c);
}
