/* metrics.c: the engine side's Prometheus text: engine counters and histograms, routed tokens
 * per expert and domain, per-worker counters, live re-placement. Moved out of the HTTP server
 * so that rank 0 can render it for a front end in another process. */
#include "metrics.h"

#include <event2/buffer.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"

struct cmetrics {
    const model *m;
    engine *e;
    ls_stats *stats;       /* the engine's, copied at each render */
};

cmetrics *cmetrics_new(const model *m, engine *e, int n_layers, int n_experts, int n_workers) {
    cmetrics *c = xcalloc(1, sizeof *c);
    c->m = m, c->e = e;
    c->stats = ls_new(n_layers, n_experts, n_workers);
    return c;
}

void cmetrics_free(cmetrics *c) {
    if (!c) return;
    ls_free(c->stats);
    free(c);
}

void cmetrics_family(struct evbuffer *b, const char *name, const char *type, const char *help) {
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void cmetrics_label(char *out, size_t cap, const char *v) {
    size_t j = 0;
    for (; *v && j + 3 < cap; v++) {
        if (*v == '\\' || *v == '"') out[j++] = '\\', out[j++] = *v;
        else if (*v == '\n') out[j++] = '\\', out[j++] = 'n';
        else out[j++] = *v;
    }
    out[j] = 0;
}

void cmetrics_counter(struct evbuffer *b, const char *name, const char *help, unsigned long long v) {
    cmetrics_family(b, name, "counter", help);
    evbuffer_add_printf(b, "%s %llu\n", name, v);
}

void cmetrics_gauge(struct evbuffer *b, const char *name, const char *help, double v) {
    cmetrics_family(b, name, "gauge", help);
    evbuffer_add_printf(b, "%s %.9g\n", name, v);
}

static void hist(struct evbuffer *b, const char *name, const char *help, const engine_hist *h) {
    cmetrics_family(b, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < ENGINE_HIST_BUCKETS; i++) {
        cum += h->count[i];
        if (isinf(h->le[i])) evbuffer_add_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
        else evbuffer_add_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
    }
    evbuffer_add_printf(b, "%s_sum %.9g\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->n);
}

static void render_engine(cmetrics *s, struct evbuffer *b) {
    engine_metrics m;
    engine_get_metrics(s->e, &m);
    cmetrics_family(b, "darkhorse_requests_finished_total", "counter", "requests finished, by reason");
    evbuffer_add_printf(b, "darkhorse_requests_finished_total{reason=\"stop\"} %llu\n",
                        (unsigned long long)m.finished_stop);
    evbuffer_add_printf(b, "darkhorse_requests_finished_total{reason=\"length\"} %llu\n",
                        (unsigned long long)m.finished_length);
    cmetrics_counter(b, "darkhorse_requests_failed_total", "requests failed by the engine (shutdown, cluster failure)",
            m.failed);
    cmetrics_counter(b, "darkhorse_requests_cancelled_total", "requests cancelled (client gone)", m.cancelled);
    cmetrics_counter(b, "darkhorse_prompt_tokens_total", "prompt tokens admitted", m.prompt_tokens);
    cmetrics_counter(b, "darkhorse_generation_tokens_total", "tokens generated", m.generated_tokens);
    cmetrics_counter(b, "darkhorse_resumed_tokens_total",
                     "completion tokens resubmitted with resumed requests (fed again, not generated)",
                     m.resumed_tokens);
    cmetrics_counter(b, "darkhorse_engine_steps_total", "forward steps", m.steps);
    cmetrics_gauge(b, "darkhorse_queue_depth", "requests waiting for a sequence slot", m.waiting);
    cmetrics_gauge(b, "darkhorse_running_sequences", "sequences running", m.running);
    cmetrics_gauge(b, "darkhorse_kv_cache_used_tokens", "KV cache positions reserved", (double)m.kv_used_tokens);
    cmetrics_gauge(b, "darkhorse_kv_cache_capacity_tokens", "KV cache positions in all", (double)m.kv_total_tokens);
    cmetrics_gauge(b, "darkhorse_kv_cache_usage_ratio", "share of the KV cache reserved",
          m.kv_total_tokens ? (double)m.kv_used_tokens / (double)m.kv_total_tokens : 0);
    cmetrics_gauge(b, "darkhorse_prefill_cache_bytes",
                   "memory held by the expansions a chunked prompt keeps for its later chunks (--prefill-cache)",
                   (double)m.prefill_cache_bytes);
    cmetrics_counter(b, "darkhorse_prefill_cache_reused_total",
                     "prompt positions whose keys and values a chunk read back instead of expanding, summed over layers",
                     m.prefill_cache_reused);
    hist(b, "darkhorse_time_to_first_token_seconds", "from submission to the first token", &m.ttft);
    hist(b, "darkhorse_time_per_output_token_seconds", "between consecutive tokens of a request", &m.tpot);
    hist(b, "darkhorse_step_seconds", "forward step time", &m.step);
    cmetrics_family(b, "darkhorse_domain_share", "gauge", "share of all routed expert choices per domain");
    char lv[96];
    for (int d = 0; d < CFG_N_DOMAINS; d++) {
        cmetrics_label(lv, sizeof lv, s->m->cfg.domain_names[d]);
        evbuffer_add_printf(b, "darkhorse_domain_share{domain=\"%s\"} %.9g\n", lv, m.domain_share[d]);
    }
}

static void render_cluster(cmetrics *s, struct evbuffer *b) {
    ls_stats *st = s->stats;
    engine_get_stats(s->e, st);
    const model_config *c = &s->m->cfg;
    char lv[96];
    uint64_t by_domain[CFG_N_DOMAINS] = {0};
    cmetrics_family(b, "darkhorse_expert_tokens_total", "counter", "tokens routed to each expert of each MoE layer");
    for (int l = 0; l < st->n_layers; l++) {
        if (l >= s->m->n_layers || !s->m->layers[l].is_moe) continue;
        for (int e = 0; e < st->n_experts; e++) {
            uint64_t x = st->routed[(size_t)l * st->n_experts + e];
            int d = c->expert_domains[e];
            by_domain[d] += x;
            cmetrics_label(lv, sizeof lv, s->m->cfg.domain_names[d]);
            evbuffer_add_printf(b, "darkhorse_expert_tokens_total{layer=\"%d\",expert=\"%d\",domain=\"%s\"} %llu\n",
                                l, e, lv, (unsigned long long)x);
        }
    }
    cmetrics_family(b, "darkhorse_domain_routed_tokens_total", "counter", "routed expert choices per domain");
    for (int d = 0; d < CFG_N_DOMAINS; d++) {
        cmetrics_label(lv, sizeof lv, s->m->cfg.domain_names[d]);
        evbuffer_add_printf(b, "darkhorse_domain_routed_tokens_total{domain=\"%s\"} %llu\n", lv,
                            (unsigned long long)by_domain[d]);
    }
    static const struct { const char *name, *type, *help; } wf[] = {
        {"darkhorse_worker_tokens_total", "counter", "token rows sent to each rank (0: the coordinator)"},
        {"darkhorse_worker_expert_tokens_total", "counter", "(token, expert) pairs each rank computed"},
        {"darkhorse_worker_bytes_received_total", "counter", "activation bytes sent to each rank"},
        {"darkhorse_worker_bytes_sent_total", "counter", "result bytes each rank sent back"},
        {"darkhorse_worker_compute_seconds_total", "counter", "time each rank spent in its experts"},
        {"darkhorse_worker_resident_bytes", "gauge", "resident memory each rank last reported"},
        {"darkhorse_worker_experts_hosted", "gauge", "(layer, expert) pairs each rank hosts"},
    };
    for (int k = 0; k < 7; k++) {
        cmetrics_family(b, wf[k].name, wf[k].type, wf[k].help);
        for (int w = 0; w <= st->n_workers; w++) {
            const ls_worker *x = &st->workers[w];
            double v = k == 0 ? (double)x->tokens : k == 1 ? (double)x->expert_tokens : k == 2 ? (double)x->bytes_in
                     : k == 3 ? (double)x->bytes_out : k == 4 ? x->compute_s : k == 5 ? (double)x->rss_bytes
                     : (double)x->experts_hosted;
            evbuffer_add_printf(b, "%s{worker=\"%d\"} %.17g\n", wf[k].name, w, v);
        }
    }
    cmetrics_gauge(b, "darkhorse_worker_balancedness", "mean / max of the (token, expert) pairs of the workers (1 = even)",
          ls_balance(st));
    cmetrics_counter(b, "darkhorse_moe_exchanges_total", "MoE exchanges with the workers", st->steps);
    cmetrics_family(b, "darkhorse_moe_exchange_seconds_total", "counter", "coordinator time from dispatch to combine");
    evbuffer_add_printf(b, "darkhorse_moe_exchange_seconds_total %.9g\n", st->exchange_s);
    cmetrics_family(b, "darkhorse_moe_wait_seconds_total", "counter", "of which waiting for the workers");
    evbuffer_add_printf(b, "darkhorse_moe_wait_seconds_total %.9g\n", st->wait_s);
}

static void render_replan(rp *r, struct evbuffer *b) {
    rp_metrics m;
    rp_get_metrics(r, &m);
    cmetrics_gauge(b, "darkhorse_plan_generation", "placement plans put in use: 1 at start, +1 at every live re-plan",
          (double)m.generation);
    cmetrics_family(b, "darkhorse_replans_total", "counter",
           "live re-plans by outcome: applied, unchanged (nothing worth moving), failed (the old plan stayed)");
    evbuffer_add_printf(b, "darkhorse_replans_total{result=\"applied\"} %llu\n", (unsigned long long)m.applied);
    evbuffer_add_printf(b, "darkhorse_replans_total{result=\"unchanged\"} %llu\n", (unsigned long long)m.unchanged);
    evbuffer_add_printf(b, "darkhorse_replans_total{result=\"failed\"} %llu\n", (unsigned long long)m.failed);
    cmetrics_counter(b, "darkhorse_replan_moves_total", "(layer, expert) placements added to workers by live re-plans", m.moves);
    cmetrics_gauge(b, "darkhorse_replan_last_moved", "placements the last re-plan added", m.last_moved);
    cmetrics_gauge(b, "darkhorse_replan_imbalance_before",
          "last re-plan: its window's load under the old plan, max/mean worker load per MoE layer", m.imbalance_before);
    cmetrics_gauge(b, "darkhorse_replan_imbalance_after", "last re-plan: the same load under the new plan", m.imbalance_after);
    cmetrics_gauge(b, "darkhorse_replan_step_ratio",
          "last switch: longest step from the request to 20 steps after, over the median of the 100 before",
          m.step_ratio);
    cmetrics_gauge(b, "darkhorse_replan_in_progress", "1 while a re-plan is being mapped by the workers", m.running);
    cmetrics_family(b, "darkhorse_replan_last_error_info", "gauge", "why the last failed re-plan failed (absent if none did)");
    if (*m.last_error) {
        char lv[700];
        cmetrics_label(lv, sizeof lv, m.last_error);
        evbuffer_add_printf(b, "darkhorse_replan_last_error_info{reason=\"%s\"} 1\n", lv);
    }
}

void cmetrics_render(cmetrics *c, rp *r, struct evbuffer *out) {
    render_engine(c, out);
    render_cluster(c, out);
    if (r) render_replan(r, out);
}
