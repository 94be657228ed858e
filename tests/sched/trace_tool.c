/* trace_tool.c: what the trace tests and docs/placement.md's first table need besides the
 * darkhorse commands:
 *   trace_tool plan TRACE W ALGO HALF OUT   the plan ALGO (contiguous, round-robin, balanced:
 *       sched/placement.c's place_compute) for W workers over the trace's MoE layers 0..L-1, with
 *       the expected load of each (layer, expert) counted on the sequences HALF (first-half,
 *       second-half, all); a minimal writer until `darkhorse place` exists.
 *   trace_tool dump TRACE   one line per (sequence, token, layer) on stdout:
 *       seq_id domain pos layer id_1..id_K w_1..w_K   (ids -1: not recorded). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "proto/tracefile.h"
#include "sched/placement.h"

static int dump(const char *path) {
    trace *t = tf_read(path);
    if (!t) return 1;
    int L = t->n_layers, K = t->top_k;
    for (int s = 0; s < t->n_seqs; s++) {
        const trace_seq *q = &t->seqs[s];
        for (int i = 0; i < q->n_tokens; i++)
            for (int l = 0; l < L; l++) {
                size_t o = ((q->first + (size_t)i) * L + l) * K;
                printf("%lld %d %d %d", (long long)q->id, q->domain, q->start_pos + i, l);
                for (int k = 0; k < K; k++) printf(" %d", t->ids[o + k]);
                for (int k = 0; k < K; k++) printf(" %.9g", t->weights[o + k]);
                printf("\n");
            }
    }
    trace_free(t);
    return 0;
}

int main(int argc, char **argv) {
    trace_half h;
    if (argc == 3 && !strcmp(argv[1], "dump")) return dump(argv[2]);
    argc--, argv++;
    if (argc != 6 || strcmp(argv[0], "plan") || atoi(argv[2]) < 1 || trace_parse_half(argv[4], &h)) {
        fprintf(stderr, "usage: trace_tool plan TRACE W ALGO first-half|second-half|all OUT\n"
                        "       trace_tool dump TRACE\n");
        return 2;
    }
    trace *t = tf_read(argv[1]);
    if (!t) return 1;
    int L = t->n_layers, E = t->n_experts, K = t->top_k;
    double *load = xcalloc((size_t)L * E, sizeof *load);
    int *order = xmalloc((size_t)t->n_seqs * sizeof *order), n = trace_select(t, h, order);
    for (int i = 0; i < n; i++) {
        const trace_seq *s = &t->seqs[order[i]];
        for (size_t tok = s->first; tok < s->first + (size_t)s->n_tokens; tok++)
            for (int l = 0; l < L; l++)
                for (int k = 0; k < K; k++) {
                    int e = t->ids[(tok * L + l) * K + k];
                    if (e >= 0) load[(size_t)l * E + e] += 1;
                }
    }
    uint8_t *is_moe = xmalloc((size_t)L);
    memset(is_moe, 1, (size_t)L);
    place_input in = {.n_layers = L, .n_experts = E, .n_workers = atoi(argv[2]), .is_moe = is_moe, .load = load};
    place_plan *p = place_compute(argv[3], &in);
    int rc = p && place_save(p, argv[5]) == 0 ? 0 : 1;
    place_free(p);
    free(is_moe), free(order), free(load);
    trace_free(t);
    return rc;
}
