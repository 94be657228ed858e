/* cmd_place.c: `darkhorse place`: plan which workers host which experts of every MoE layer,
 * from a routing trace (or, without one, from a checkpoint alone), and write the plan text
 * format that `serve --placement`, `simulate --plan` and the cluster read.
 *
 * The planning input is the selected sequences of the trace (--seqs, default all), reweighted
 * by --domain-mix; --model maps the trace's MoE layers onto the model's and numbers the plan
 * as the model does (docs/placement.md). --from PLAN --max-moves M re-plans from an existing
 * plan, adding at most M placements. The algorithms are in sched/ (planner.h). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "core/common.h"
#include "core/model.h"
#include "proto/tracefile.h"
#include "sched/planin.h"
#include "sched/planner.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: darkhorse place --trace FILE --workers W [--slots N] [--algo NAME] [--seqs first-half|second-half|all]\n"
            "                       [--model DIR] [--capacity S1,S2,...] [--domain-mix NAME=SHARE,...]\n"
            "                       [--from PLAN --max-moves M] [--batch B] [--lambda X] [--replicas hub|eplb] --out PLAN\n"
            "       darkhorse place --model DIR --workers W [--algo contiguous|round-robin|balanced] --out PLAN\n\n"
            "Writes a placement plan. Algorithms: contiguous, round-robin, balanced, eplb, affinity (the\n"
            "default); docs/placement.md says what each does. --slots N: at most N experts per\n"
            "worker and layer (default ceil(E/W)); every slot beyond that is room for a replica.\n"
            "--batch B (64), --lambda X (affinity's weight on balance against fan-out) and --replicas\n"
            "(which experts affinity replicates) are research knobs; the defaults are the tuned ones.\n");
}

typedef struct place_opts {
    const char *trace, *algo, *seqs, *model, *capacity, *mix, *from, *out, *replicas;
    int workers, slots, max_moves, batch;
    double lambda;
} place_opts;

/* The model's MoE layers and the trace layer each takes; is_moe, map malloc'd. 0 or -1. */
static int model_layers(const char *dir, int E, int L_trace, int *n_layers, uint8_t **is_moe, int **map) {
    model_params mp = model_default_params();
    model *m = model_load(dir, &mp);
    if (!m) return -1;
    int rc = 0;
    if (m->cfg.n_routed_experts != E) {
        log_error("%s: the model has %d experts a layer, the trace %d", dir, m->cfg.n_routed_experts, E);
        rc = -1;
    }
    int M = model_moe_layers(m);
    *n_layers = m->n_layers;
    *is_moe = xcalloc((size_t)m->n_layers, 1);
    *map = xmalloc((size_t)m->n_layers * sizeof **map);
    for (int l = 0, j = 0; l < m->n_layers; l++) {
        (*is_moe)[l] = (uint8_t)m->layers[l].is_moe;
        (*map)[l] = m->layers[l].is_moe ? trace_layer_for(j++, M, L_trace) : -1;
    }
    model_free(m);
    return rc;
}

/* Without a trace: a checkpoint's shape, and placement.c's algorithms (the bias is no load
 * prior: docs/placement.md, "What the ALF bias says"). */
static int place_from_model(const place_opts *o, const double *cap) {
    model_params mp = model_default_params();
    model *m = model_load(o->model, &mp);
    if (!m) return 1;
    uint8_t *is_moe = xcalloc((size_t)m->n_layers, 1);
    for (int l = 0; l < m->n_layers; l++) is_moe[l] = (uint8_t)m->layers[l].is_moe;
    place_input in = {.n_layers = m->n_layers, .n_experts = m->cfg.n_routed_experts, .n_workers = o->workers,
                      .is_moe = is_moe, .capacity = cap};
    place_plan *p = place_compute(o->algo ? o->algo : "balanced", &in);
    int rc = !p || place_save(p, o->out) != 0;
    if (!rc) fprintf(stderr, "place: %s for %d workers from %s alone written to %s\n", p->algo, o->workers, o->model, o->out);
    place_free(p), free(is_moe), model_free(m);
    return rc;
}

static int parse(int argc, char **argv, place_opts *o) {
    static const struct option opts[] = {
        {"trace", required_argument, 0, 't'}, {"workers", required_argument, 0, 'w'},
        {"slots", required_argument, 0, 's'}, {"algo", required_argument, 0, 'a'},
        {"seqs", required_argument, 0, 'q'},  {"model", required_argument, 0, 'm'},
        {"capacity", required_argument, 0, 'c'}, {"domain-mix", required_argument, 0, 'x'},
        {"from", required_argument, 0, 'f'},  {"max-moves", required_argument, 0, 'M'},
        {"out", required_argument, 0, 'o'},   {"batch", required_argument, 0, 'b'},
        {"lambda", required_argument, 0, 'l'}, {"replicas", required_argument, 0, 'r'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    *o = (place_opts){.max_moves = -1, .batch = 64, .lambda = -1};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': o->trace = optarg; break;
        case 'w': o->workers = atoi(optarg); break;
        case 's': o->slots = atoi(optarg); break;
        case 'a': o->algo = optarg; break;
        case 'q': o->seqs = optarg; break;
        case 'm': o->model = optarg; break;
        case 'c': o->capacity = optarg; break;
        case 'x': o->mix = optarg; break;
        case 'f': o->from = optarg; break;
        case 'M': o->max_moves = atoi(optarg); break;
        case 'o': o->out = optarg; break;
        case 'b': o->batch = atoi(optarg); break;
        case 'l': o->lambda = atof(optarg); break;
        case 'r': o->replicas = optarg; break;
        case 'h': usage(stdout); return 1;
        default: usage(stderr); return -1;
        }
    }
    const char *bad = optind < argc ? "unexpected arguments"
                    : !o->out ? "--out is required"
                    : o->workers < 1 ? "--workers must be at least 1"
                    : !o->trace && !o->model ? "--trace (or --model alone) is required"
                    : o->slots < 0 ? "--slots must be positive"
                    : o->batch < 1 ? "--batch must be at least 1"
                    : !o->from != (o->max_moves < 0) ? "--from and --max-moves go together"
                    : o->replicas && strcmp(o->replicas, "hub") && strcmp(o->replicas, "eplb") ? "--replicas is hub or eplb"
                    : !o->trace && (o->from || o->mix || o->seqs || o->slots) ? "--from, --domain-mix, --seqs, --slots need --trace"
                    : NULL;
    if (bad) {
        fprintf(stderr, "darkhorse place: %s\n\n", bad);
        usage(stderr);
        return -1;
    }
    return 0;
}

int cmd_place(int argc, char **argv) {
    place_opts o;
    int rc = parse(argc, argv, &o);
    if (rc) return rc > 0 ? 0 : 2;
    double *cap = NULL;
    if (o.capacity && place_parse_capacity(o.capacity, &cap) != o.workers) {
        if (cap) fprintf(stderr, "darkhorse place: --capacity lists a speed per worker (%d)\n", o.workers);
        free(cap);
        return 2;
    }
    if (!o.trace) {
        rc = place_from_model(&o, cap);
        free(cap);
        return rc;
    }
    double t0 = dh_now();
    trace_half half = TRACE_SEQS_ALL;
    if (o.seqs && trace_parse_half(o.seqs, &half) != 0) {
        fprintf(stderr, "darkhorse place: --seqs is first-half, second-half or all\n");
        free(cap);
        return 2;
    }
    trace *t = tf_read(o.trace);
    plan_data *d = NULL;
    place_plan *from = NULL, *p = NULL;
    uint8_t *is_moe = NULL;
    int *map = NULL, n_layers = 0, made = 0;
    double *share = NULL;
    rc = 1;
    if (!t) goto out;
    if (o.mix) {
        share = xcalloc((size_t)t->n_domains + 1, sizeof *share);
        if (pin_parse_mix(t, o.mix, share) != 0) goto out;
    }
    if (o.model && model_layers(o.model, t->n_experts, t->n_layers, &n_layers, &is_moe, &map) != 0) goto out;
    if (!(d = pin_from_trace(t, half, share, o.batch))) goto out;
    if (d->n_decode == 0)
        log_warn("%s: fewer than %d sequences (%s): no decode steps to balance%s (a smaller --batch gives some)",
                 o.trace, o.batch, trace_half_name(half), d->n_steps ? "" : ", nor prefill steps");
    planner_params pp = planner_default_params(o.workers);
    pp.algo = o.algo, pp.slots = o.slots, pp.capacity = cap;
    pp.n_layers = n_layers, pp.is_moe = is_moe, pp.trace_layer = map;
    if (o.lambda >= 0) pp.aff.lambda = o.lambda;
    if (o.replicas) pp.aff.hub = !strcmp(o.replicas, "hub");
    if (o.from) {
        uint8_t *all = NULL;
        if (!is_moe) memset(all = xmalloc((size_t)t->n_layers), 1, (size_t)t->n_layers);
        from = place_load(o.from, is_moe ? n_layers : t->n_layers, t->n_experts, o.workers, is_moe ? is_moe : all);
        free(all);
        if (!from) goto out;
        p = planner_migrate(d, &pp, from, o.max_moves, &made);
    } else {
        p = planner_compute(d, &pp);
    }
    if (!p || place_save(p, o.out) != 0) goto out;
    fprintf(stderr, "place: %s, %d workers, %s sequences (%d tokens), %d layers, in %.2f s", p->algo, o.workers,
            trace_half_name(half), d->n_tokens, p->n_layers, dh_now() - t0);
    if (from) fprintf(stderr, "; %d placements added to workers (at most %d)", made, o.max_moves);
    fprintf(stderr, " -> %s\n", o.out);
    rc = 0;
out:
    place_free(p), place_free(from), pin_free(d), trace_free(t);
    free(cap), free(share), free(is_moe), free(map);
    return rc;
}
