/* messages.c: the placement plan's protobuf form (darkhorse.PlacementPlan, CSR layout). */
#include "messages.h"

#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "darkhorse.pb-c.h"

unsigned char *msg_plan_pack(const place_plan *p, size_t *len) {
    Darkhorse__PlacementPlan m = DARKHORSE__PLACEMENT_PLAN__INIT;
    size_t n = (size_t)p->n_layers * p->n_experts;
    m.worker_count = (uint32_t)p->n_workers;
    m.layers = (uint32_t)p->n_layers;
    m.experts = (uint32_t)p->n_experts;
    m.algo = (char *)p->algo;
    m.n_offsets = n + 1;
    m.offsets = xmalloc((n + 1) * sizeof *m.offsets);
    for (size_t i = 0; i <= n; i++) m.offsets[i] = (uint32_t)p->offsets[i];
    m.n_ranks = (size_t)p->offsets[n];
    m.ranks = xmalloc((m.n_ranks + 1) * sizeof *m.ranks);
    for (size_t i = 0; i < m.n_ranks; i++) m.ranks[i] = (uint32_t)p->workers[i];
    *len = darkhorse__placement_plan__get_packed_size(&m);
    unsigned char *buf = xmalloc(*len + 1);
    darkhorse__placement_plan__pack(&m, buf);
    free(m.offsets);
    free(m.ranks);
    return buf;
}

place_plan *msg_plan_unpack(const unsigned char *buf, size_t len) {
    Darkhorse__PlacementPlan *m = darkhorse__placement_plan__unpack(NULL, len, buf);
    if (!m) {
        log_error("placement plan message: not a valid PlacementPlan");
        return NULL;
    }
    place_plan *p = NULL;
    size_t n = (size_t)m->layers * m->experts;
    int ok = m->layers > 0 && m->experts > 0 && m->layers < 100000 && m->experts < 100000 &&
             m->n_offsets == n + 1 && m->offsets[0] == 0 && m->offsets[n] == m->n_ranks;
    for (size_t i = 0; ok && i < n; i++) ok = m->offsets[i] <= m->offsets[i + 1];
    for (size_t i = 0; ok && i < m->n_ranks; i++) ok = m->ranks[i] >= 1 && m->ranks[i] <= m->worker_count;
    if (ok) {
        p = place_new((int)m->layers, (int)m->experts, (int)m->worker_count);
        snprintf(p->algo, sizeof p->algo, "%s", m->algo);
        for (size_t i = 0; i <= n; i++) p->offsets[i] = (int)m->offsets[i];
        p->workers = xrealloc(p->workers, (m->n_ranks + 1) * sizeof *p->workers);
        for (size_t i = 0; i < m->n_ranks; i++) p->workers[i] = (int)m->ranks[i];
    } else {
        log_error("placement plan message: inconsistent sizes");
    }
    darkhorse__placement_plan__free_unpacked(m, NULL);
    return p;
}
