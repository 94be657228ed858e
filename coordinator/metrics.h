/* metrics.h: the engine side's Prometheus families (cmetrics_ prefix).
 *
 * What the engine, the load statistics and the re-planner count, rendered as Prometheus text
 * (format 0.0.4) by whoever holds them: the HTTP server in one process, or rank 0 for a front
 * end in another process (which merges the text with its own families). Also the few
 * formatting helpers both sides use. Renders on any thread (it reads the engine's and the
 * re-planner's thread-safe copies), one thread at a time per cmetrics. */
#ifndef DH_METRICS_H
#define DH_METRICS_H
#include <stdint.h>

#include "coordinator/engine.h"
#include "coordinator/replan.h"
#include "core/model.h"

struct evbuffer;
typedef struct cmetrics cmetrics;

/* Over the engine e of model m, with routed counts of n_layers x n_experts and n_workers
 * workers (the sizes of the engine's ls_stats). Both kept; they must outlive it. NULL never. */
cmetrics *cmetrics_new(const model *m, engine *e, int n_layers, int n_experts, int n_workers);
void cmetrics_free(cmetrics *c); /* NULL ok */
/* Append the engine's and the cluster's families to out, and the re-planner r's (NULL: not a
 * cluster, or no longer re-planning: none). */
void cmetrics_render(cmetrics *c, rp *r, struct evbuffer *out);

/* "# HELP name help\n# TYPE name type\n" */
void cmetrics_family(struct evbuffer *b, const char *name, const char *type, const char *help);
void cmetrics_counter(struct evbuffer *b, const char *name, const char *help, unsigned long long v);
void cmetrics_gauge(struct evbuffer *b, const char *name, const char *help, double v);
/* v as a label value (\, " and newline escaped) into out[cap] */
void cmetrics_label(char *out, size_t cap, const char *v);
#endif
