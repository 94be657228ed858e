/* cluster.h: the coordinator's side of the cluster: start-up handshake, placement, the MPI
 * expert backend, load reports and shutdown (cluster_ prefix). */
#ifndef DH_CLUSTER_H
#define DH_CLUSTER_H
#include "coordinator/moe_backend.h"
#include "core/model.h"
#include "sched/loadstats.h"
#include "sched/placement.h"

typedef struct cluster_params {
    const char *placement_algo;   /* contiguous | round-robin | balanced */
    const char *placement_file;   /* a plan to load instead (NULL) */
    const char *placement_out;    /* where to save the plan in use (NULL) */
    double timeout;               /* seconds a worker may take to answer */
    int wire_bf16;                /* activations as bf16 on the wire */
    int max_rows;                 /* tokens per MoE call at most */
    const double *load;           /* [n_layers * E] observed routed tokens for `balanced`, or NULL */
    const double *capacity;       /* [n_capacity] relative speeds of workers 1..W for `balanced`, or NULL */
    int n_capacity;
    int capacity_measured;        /* `balanced` weighs workers by the expert rates of their hellos */
} cluster_params;

typedef struct cluster {
    int n_workers;
    place_plan *plan;
    ls_stats *stats;              /* owned */
    moe_backend *moe;             /* the MPI expert backend, owned */
    const model *m;
    cluster_params p;
    double *worker_gflops;        /* [n_workers + 1] from the hellos */
    double *capacity;             /* [n_workers] speeds the placement weighed by, or NULL */
} cluster;

/* On rank 0 of an MPI job of size > 1, with the coordinator's model (routed experts not
 * loaded): gather the workers' hellos, check them, place the experts, start the workers and
 * print their memory table. 0, or 1 after every rank was told why the cluster cannot start. */
int cluster_start(cluster *c, const model *m, const cluster_params *p);
/* Whether the rank that sent hello h may join a cluster whose coordinator loaded the model at
 * model_dir with identity model_hash: 0, or 1 with the reason in err. These are the checks
 * cluster_start makes of every worker (its own error, the protocol version, the model). */
struct Darkhorse__Hello;
int cluster_check_hello(const struct Darkhorse__Hello *h, uint64_t model_hash, const char *model_dir, char *err,
                        size_t errsz);
/* Fetch every worker's counters into c->stats. 0 or DH_ETIMEOUT. */
int cluster_report(cluster *c);
/* Apply a new plan while serving (workers remap their experts). 0 or an error (logged). */
int cluster_replan(cluster *c, place_plan *plan);
/* Tell the workers to stop, free everything. */
void cluster_stop(cluster *c);

/* The MPI expert backend over plan (borrowed; may be swapped by cluster_replan). */
moe_backend *moe_mpi_new(const model *m, cluster *c);
#endif
