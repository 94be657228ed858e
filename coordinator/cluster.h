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
    place_plan *plan;             /* in use (owned); read by the MPI backend at every layer */
    uint64_t generation;          /* plans put in use: 1 at start, +1 at every switch */
    place_plan *next;             /* being prepared by the workers (owned), or NULL */
    int64_t attempt;              /* number of the last PREPARE (a cancelled one included) */
    uint8_t *next_ready;          /* [n_workers + 1] the worker has mapped next */
    uint32_t *next_hosted;        /* [n_workers + 1] experts it hosts under next */
    double next_deadline;
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
/* A live re-plan in two phases, on the thread that drives the forward pass, between steps:
 * begin sends the plan (taken, owned by c from now on, freed on every path), each worker maps
 * it while serving the old one; poll (non-blocking, at every step boundary) gathers their
 * answers: 1 when every worker is ready, 0 while some are mapping, DH_EPEER when one failed or
 * DH_ETIMEOUT when one took longer than the re-plan deadline (err says which rank and why).
 * Then commit switches every layer to the new plan at once and frees the old one, or cancel
 * keeps the old one and frees the new one. Exactly one of them ends every begun re-plan;
 * begin returns 0, or DH_ETIMEOUT (logged) when the workers did not take the plan, and the
 * plan is then freed and nothing is to be ended. */
int cluster_replan_begin(cluster *c, place_plan *plan);
int cluster_replan_poll(cluster *c, char *err, size_t errsz);
void cluster_replan_commit(cluster *c);
void cluster_replan_cancel(cluster *c);
/* The four in one, waiting: 0 once plan (taken) is in use; else an error (logged) and the old
 * plan stays in use. */
int cluster_replan(cluster *c, place_plan *plan);
/* Tell the workers to stop (cancelling a re-plan in progress), free everything. */
void cluster_stop(cluster *c);

/* The MPI expert backend over plan (borrowed; may be swapped by cluster_replan). */
moe_backend *moe_mpi_new(const model *m, cluster *c);
#endif
