/* replan.c: live re-placement: a window of routing, a bounded new plan, a two-phase switch.
 *
 * The window. After every step the cumulative routed-token counts of the cluster's load
 * statistics (per layer and expert, kept by the forward pass) are copied into a ring of
 * window + 1 snapshots; the window's load is the newest minus the oldest: the (token, expert)
 * pairs of the last `window` steps, the load each expert puts on its worker. Copying 576
 * counters a step (genesis-1b) costs nothing measurable; the ring is 1.2 MB at 256 steps.
 *
 * A re-plan, on the engine thread between two steps: the `balanced` plan of the window's load
 * and the workers' capacities (placement.h) is the ideal; mig_limit keeps of its moves at most
 * --max-moves, those that gain the most (migrate.h). When nothing moves, or the imbalance falls
 * by less than min_gain (1%: a switch costs the workers a remap for no measurable gain), the
 * answer is "moved: 0" at once. Otherwise cluster_replan_begin sends the plan; each later
 * boundary polls the workers' answers (a few microseconds), and when all are ready the switch
 * happens there, for every layer at once, so no step mixes plans; when one failed, the switch
 * is cancelled and the old plan stays. Either way the requester gets its answer then.
 *
 * Step times. To show that a re-plan does not stall serving, the times of the last 128 steps
 * are kept (each with the time this module took at the boundary before it, so that the plan's
 * computation and the switch count); from the request to 20 steps after the switch the
 * longest step is compared with the median of the 100 steps before the request, logged with
 * every step's time, and exported as darkhorse_replan_step_ratio. A benchmark hook,
 * DH_REPLAN_STEP_LOG=FILE in the coordinator's environment, writes every step to FILE (its
 * number, its time in ms including this module's, R while a re-plan is prepared, S for the
 * steps watched after a switch, - otherwise, and the wall clock), so that a script can compare
 * the re-plan's windows with windows of the same length without one in the same run
 * (scripts/replan-steps.py). */
#include "replan.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "sched/migrate.h"

#define STEP_RING 128   /* step times kept */
#define MEDIAN_OF 100   /* steps before a re-plan that its step times are compared with */
#define WATCH_AFTER 20  /* steps after the switch still watched (the old plan's memory is freed) */

enum { RP_IDLE, RP_PREPARING };

struct rp {
    cluster *c;
    rp_params p;
    rp_done_fn done;
    void *ctx;
    /* shared with other threads, under mu */
    pthread_mutex_t mu;
    int asked;            /* rp_request has asked, not started yet */
    void *asked_user;
    int busy;             /* asked or running */
    rp_metrics met;
    /* engine thread only */
    size_t n;             /* n_layers * E */
    uint8_t *is_moe;      /* [n_layers] */
    uint64_t *snap;       /* [(window + 1) * n] ring of cumulative routed counts */
    int n_snap, head;     /* snapshots held; the newest */
    double *load;         /* [n] the window's load */
    uint64_t last_steps, next_auto;
    double times[STEP_RING];
    int n_times, t_head;
    double carry;         /* this module's time at the boundary, added to the next step */
    int state;            /* RP_* */
    void *user;           /* the requester, or NULL for a re-plan of its own (--replan-every) */
    double t_asked;
    rp_result res;
    double median_before, worst_before, worst; /* step times: before the request, and since */
    int watch_left;       /* steps still watched after a switch */
    char steps_log[2048]; /* the watched steps' times, ms */
    size_t log_len;
    FILE *step_log;       /* DH_REPLAN_STEP_LOG, or NULL */
};

rp_params rp_default_params(void) {
    return (rp_params){.window = 256, .every = 0, .max_moves = -1, .min_gain = 0.01};
}

static void push_snapshot(rp *r) {
    const ls_stats *st = r->c->stats;
    int slots = r->p.window + 1;
    r->head = (r->head + 1) % slots;
    memcpy(r->snap + (size_t)r->head * r->n, st->routed, r->n * sizeof *r->snap);
    r->n_snap = DH_MIN(r->n_snap + 1, slots);
}

rp *rp_new(cluster *c, const rp_params *p, rp_done_fn done, void *ctx) {
    rp *r = xcalloc(1, sizeof *r);
    r->c = c, r->p = *p, r->done = done, r->ctx = ctx;
    DH_ASSERT(p->window >= 1 && p->every >= 0);
    pthread_mutex_init(&r->mu, NULL);
    const model *m = c->m;
    r->n = (size_t)m->n_layers * m->cfg.n_routed_experts;
    r->is_moe = xcalloc((size_t)m->n_layers, 1);
    for (int l = 0; l < m->n_layers; l++) r->is_moe[l] = (uint8_t)m->layers[l].is_moe;
    r->snap = xmalloc(xmul(((size_t)p->window + 1) * r->n, sizeof *r->snap) + 1);
    r->load = xmalloc((r->n + 1) * sizeof *r->load);
    r->head = -1;
    push_snapshot(r);
    r->next_auto = (uint64_t)p->every;
    r->met.generation = c->generation;
    const char *log_path = getenv("DH_REPLAN_STEP_LOG");
    if (log_path && *log_path && !(r->step_log = fopen(log_path, "w")))
        log_warn("DH_REPLAN_STEP_LOG=%s: cannot write it: %s; the step times are not logged", log_path,
                 strerror(errno));
    char every[64] = "";
    if (p->every) snprintf(every, sizeof every, "every %d steps and ", p->every);
    log_info("live re-placement %son POST /admin/replan, from the routing of the last %d steps, %d moves at most "
             "(-1: no bound)", every, p->window, p->max_moves);
    return r;
}

int rp_request(rp *r, void *user) {
    pthread_mutex_lock(&r->mu);
    int busy = r->busy;
    if (!busy) r->busy = 1, r->asked = 1, r->asked_user = user;
    pthread_mutex_unlock(&r->mu);
    return busy ? DH_EBUSY : 0;
}

void rp_get_metrics(rp *r, rp_metrics *out) {
    pthread_mutex_lock(&r->mu);
    *out = r->met;
    pthread_mutex_unlock(&r->mu);
}

/* the median of the last k step times; *worst their maximum */
static double median_of_last(const rp *r, int k, double *worst) {
    k = DH_MIN(k, r->n_times);
    *worst = 0;
    if (k == 0) return 0;
    double v[STEP_RING];
    for (int i = 0; i < k; i++) v[i] = r->times[(r->t_head - i + STEP_RING) % STEP_RING], *worst = DH_MAX(*worst, v[i]);
    for (int i = 1; i < k; i++) /* insertion sort: 100 numbers */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1], v[j - 1] = t;
        }
    return k % 2 ? v[k / 2] : 0.5 * (v[k / 2 - 1] + v[k / 2]);
}

/* the end of a watch: how the steps around the switch compare with those before */
static void watch_done(rp *r) {
    r->watch_left = 0;
    if (r->step_log) fflush(r->step_log);
    if (!r->log_len) return; /* no step ran meanwhile */
    double ratio = r->median_before > 0 ? r->worst / r->median_before : 0;
    log_info("re-plan step times, ms, from the request to %d steps after the switch: %.*s", WATCH_AFTER,
             (int)r->log_len, r->steps_log);
    log_info("re-plan: the longest step was %.1f ms, %.2fx the median %.1f ms of the %d steps before (the longest "
             "of those: %.1f ms, %.2fx)", r->worst * 1e3, ratio, r->median_before * 1e3, DH_MIN(MEDIAN_OF, r->n_times),
             r->worst_before * 1e3, r->median_before > 0 ? r->worst_before / r->median_before : 0);
    pthread_mutex_lock(&r->mu);
    r->met.step_ratio = ratio;
    pthread_mutex_unlock(&r->mu);
}

static void record_step(rp *r, uint64_t step, double t) {
    if (r->step_log)
        fprintf(r->step_log, "%llu %.3f %c %.3f\n", (unsigned long long)step, t * 1e3,
                r->state == RP_PREPARING ? 'R' : r->watch_left > 0 ? 'S' : '-', dh_now());
    if (r->step_log && step % 256 == 0) fflush(r->step_log);
    r->t_head = (r->t_head + 1) % STEP_RING;
    r->times[r->t_head] = t;
    r->n_times = DH_MIN(r->n_times + 1, STEP_RING);
    if (r->state != RP_PREPARING && r->watch_left == 0) return;
    r->worst = DH_MAX(r->worst, t);
    if (r->log_len + 16 < sizeof r->steps_log)
        r->log_len += (size_t)snprintf(r->steps_log + r->log_len, sizeof r->steps_log - r->log_len, "%s%.1f",
                                       r->log_len ? " " : "", t * 1e3);
    if (r->watch_left > 0 && --r->watch_left == 0) watch_done(r);
}

/* the answer: counters, log, the requester's callback; back to idle */
static void finish(rp *r) {
    rp_result *res = &r->res;
    cluster *c = r->c;
    res->generation = c->generation;
    res->seconds = dh_now() - r->t_asked;
    pthread_mutex_lock(&r->mu);
    r->busy = 0;
    r->met.generation = c->generation;
    r->met.running = 0;
    if (res->code) {
        r->met.failed++;
        snprintf(r->met.last_error, sizeof r->met.last_error, "%s", res->reason);
    } else if (res->moved) {
        r->met.applied++;
        r->met.moves += (uint64_t)res->moved;
    } else {
        r->met.unchanged++;
    }
    r->met.last_moved = res->moved;
    if (res->imbalance_before > 0)
        r->met.imbalance_before = res->imbalance_before, r->met.imbalance_after = res->imbalance_after;
    pthread_mutex_unlock(&r->mu);
    if (res->code)
        log_error("re-plan failed, plan generation %llu stays in use: %s", (unsigned long long)res->generation,
                  res->reason);
    else if (res->moved)
        log_info("re-plan: plan generation %llu in use, %d placements moved, imbalance %.3f -> %.3f, %.2f s",
                 (unsigned long long)res->generation, res->moved, res->imbalance_before, res->imbalance_after,
                 res->seconds);
    else
        log_info("re-plan: nothing moved (%s)", res->reason);
    r->state = RP_IDLE;
    if (r->user) r->done(r->ctx, r->user, res);
    r->user = NULL;
}

/* the window's load into r->load; the total */
static double window_load(rp *r) {
    int slots = r->p.window + 1, oldest = (r->head - (r->n_snap - 1) + slots) % slots;
    const uint64_t *now = r->snap + (size_t)r->head * r->n, *then = r->snap + (size_t)oldest * r->n;
    double total = 0;
    for (size_t i = 0; i < r->n; i++) total += r->load[i] = (double)(now[i] - then[i]);
    return total;
}

/* Compute the new plan and, when it is worth it, have the workers map it. */
static void start(rp *r, void *user) {
    cluster *c = r->c;
    rp_result *res = &r->res;
    memset(res, 0, sizeof *res);
    r->user = user;
    r->t_asked = dh_now();
    if (r->watch_left) watch_done(r);
    r->median_before = median_of_last(r, MEDIAN_OF, &r->worst_before);
    r->worst = 0, r->log_len = 0;
    pthread_mutex_lock(&r->mu);
    r->met.running = 1;
    pthread_mutex_unlock(&r->mu);
    double total = window_load(r);
    if (total <= 0) {
        res->imbalance_before = res->imbalance_after = 1;
        snprintf(res->reason, sizeof res->reason, "no routed tokens in the window of the last %d steps yet", r->p.window);
        finish(r);
        return;
    }
    const model *m = c->m;
    place_input in = {.n_layers = m->n_layers, .n_experts = m->cfg.n_routed_experts, .n_workers = c->n_workers,
                      .is_moe = r->is_moe, .load = r->load, .capacity = c->capacity, .domain = m->cfg.expert_domains};
    place_plan *ideal = place_compute("balanced", &in);
    if (!ideal) {
        res->code = DH_EINVAL;
        snprintf(res->reason, sizeof res->reason, "the balanced placement failed on the window's load (see the log)");
        finish(r);
        return;
    }
    place_plan *next = mig_limit(c->plan, ideal, r->load, c->capacity, r->p.max_moves, &res->moved);
    place_free(ideal);
    res->imbalance_before = mig_imbalance(c->plan, r->load, c->capacity);
    res->imbalance_after = mig_imbalance(next, r->load, c->capacity);
    if (res->moved == 0 || res->imbalance_after > res->imbalance_before * (1 - r->p.min_gain)) {
        char bound[48] = "";
        if (r->p.max_moves >= 0) snprintf(bound, sizeof bound, " within %d moves", r->p.max_moves);
        snprintf(res->reason, sizeof res->reason,
                 "the best plan%s takes the imbalance of the last %d steps from %.4f to %.4f: less than the %.0f%% "
                 "worth a switch", bound, DH_MIN(r->n_snap - 1, r->p.window), res->imbalance_before,
                 res->imbalance_after, r->p.min_gain * 100);
        res->moved = 0;
        res->imbalance_after = res->imbalance_before;
        place_free(next);
        finish(r);
        return;
    }
    int rc = cluster_replan_begin(c, next); /* next is the cluster's now */
    if (rc) {
        res->code = rc;
        snprintf(res->reason, sizeof res->reason, "the workers did not take the new plan (see the log)");
        finish(r);
        return;
    }
    r->state = RP_PREPARING;
}

/* A re-plan in progress: switch when every worker is ready, cancel when one failed. */
static void poll_workers(rp *r) {
    char err[512] = "";
    int rc = cluster_replan_poll(r->c, err, sizeof err);
    if (rc == 0) return;
    if (rc == 1) {
        cluster_replan_commit(r->c);
        r->watch_left = WATCH_AFTER;
    } else {
        cluster_replan_cancel(r->c);
        r->res.code = rc;
        r->res.moved = 0;
        snprintf(r->res.reason, sizeof r->res.reason, "a worker could not map the new plan, which was cancelled: %s",
                 err);
    }
    finish(r);
}

void rp_tick(void *ctx, uint64_t steps, double step_s) {
    rp *r = ctx;
    double t0 = dh_now();
    if (steps != r->last_steps) {
        record_step(r, steps, step_s + r->carry);
        push_snapshot(r);
        r->last_steps = steps;
        r->carry = 0;
    }
    if (r->state == RP_PREPARING) {
        poll_workers(r);
    } else {
        pthread_mutex_lock(&r->mu);
        int go = r->asked, own = 0;
        void *user = r->asked_user;
        if (!go && r->p.every > 0 && steps >= r->next_auto && !r->busy) go = own = r->busy = 1;
        r->asked = 0;
        pthread_mutex_unlock(&r->mu);
        if (own) r->next_auto = steps + (uint64_t)r->p.every;
        if (go) start(r, own ? NULL : user);
    }
    r->carry += dh_now() - t0;
}

void rp_free(rp *r, int cluster_failed) {
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    int asked = r->asked;
    void *user = r->asked_user;
    r->asked = 0;
    pthread_mutex_unlock(&r->mu);
    if (r->state == RP_PREPARING || asked) {
        if (r->state == RP_PREPARING && !cluster_failed) cluster_replan_cancel(r->c);
        if (r->state != RP_PREPARING) memset(&r->res, 0, sizeof r->res), r->user = user, r->t_asked = dh_now();
        r->res.code = DH_ECANCELLED;
        r->res.moved = 0;
        snprintf(r->res.reason, sizeof r->res.reason, "the server stopped before the new plan was in use");
        finish(r);
    }
    pthread_mutex_destroy(&r->mu);
    if (r->step_log) fclose(r->step_log);
    free(r->is_moe), free(r->snap), free(r->load);
    free(r);
}
