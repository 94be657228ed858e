/* exchange.h: the MPI exchange that the coordinator and the workers both speak (xchg_ prefix).
 *
 * Every operation starts with a header from the coordinator to each worker (what comes next,
 * and how many bytes), posted by every rank as the same collective; a MoE operation then has an
 * all-to-all-v of payloads (requests from coordinators to workers) and one of replies (workers
 * back to coordinators). Only coordinator-worker pairs have non-zero counts, and Open MPI sends
 * nothing for a zero count, so workers never wait for each other. Non-blocking forms
 * are polled with a growing sleep so that a waiting rank does not hold a core (Open MPI
 * busy-polls otherwise), and the coordinator's waits have deadlines. For a MoE layer each
 * worker also sends the coordinator a small status message when its experts are done; when a
 * deadline passes, the workers whose status is missing are the ones named.
 *
 * A live re-plan has three operations. PREPARE (header step = the re-plan's attempt number,
 * then the new PlacementPlan as a broadcast): each worker maps the experts of the new plan in
 * the background while it goes on serving the old one, and sends a Ready (protobuf, tag
 * XCHG_TAG_READY, its `attempt` the header's step) when it is done or has failed, exactly one
 * per PREPARE, also after a CANCEL. COMMIT (same step): switch to the prepared plan before the
 * next operation, then drop what the old one held. CANCEL (same step): drop the prepared plan.
 * The coordinator sends COMMIT only after every worker's Ready said ready, and only between
 * two forward steps, so that no step mixes plans.
 *
 * Compatibility: operation codes and tags are never renumbered or reused, and the header's
 * layout does not change; a new operation or a new meaning bumps XCHG_PROTOCOL, which the
 * hellos compare, so that a mixed cluster stops at start rather than meeting an operation one
 * side does not know. Protobuf messages only gain fields, under new numbers. */
#ifndef DH_EXCHANGE_H
#define DH_EXCHANGE_H
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#define XCHG_PROTOCOL 2     /* 2: PREPARE, COMMIT and CANCEL replace protocol 1's PLAN */
#define XCHG_TAG_STATUS 101
#define XCHG_TAG_READY 102  /* a worker's Ready after a PREPARE */

/* 2 was protocol 1's PLAN (a new plan applied at once): retired, never reused */
enum { XCHG_OP_MOE = 1, XCHG_OP_REPORT = 3, XCHG_OP_SHUTDOWN = 4, XCHG_OP_PREPARE = 5, XCHG_OP_COMMIT = 6,
       XCHG_OP_CANCEL = 7 };
enum { XCHG_WIRE_F32 = 0, XCHG_WIRE_BF16 = 1 };

typedef struct xchg_header {  /* sent by every rank to every rank in each operation */
    int32_t op;               /* XCHG_OP_*, 0 from a rank with nothing to say */
    int32_t layer;
    int32_t n_tokens;         /* tokens in the payload */
    int32_t top_k;            /* slots per token */
    int64_t step;             /* MOE: the coordinator's exchange counter, for messages;
                                 PREPARE, COMMIT, CANCEL: the re-plan's attempt number */
    int64_t bytes;            /* payload bytes for this receiver */
    int64_t reply_bytes;      /* bytes the receiver sends back */
    int32_t wire;             /* XCHG_WIRE_* of activations */
    int32_t reserved;
} xchg_header;

typedef struct xchg_status {  /* a worker's report on one MoE layer, tag XCHG_TAG_STATUS */
    int32_t rank;
    int32_t n_tokens;
    int32_t n_pairs;          /* (token, expert) pairs computed */
    int32_t error;            /* 0, or a DH_E* code (e.g. an expert it does not host) */
    double compute_s;
} xchg_status;

/* Start MPI when launched by mpirun (OMPI_COMM_WORLD_SIZE set), with MPI_THREAD_FUNNELED:
 * only the thread that called this makes MPI calls. Returns the world size (1 without MPI). */
int xchg_init(int *argc, char ***argv);
int xchg_active(void);          /* MPI was started */
int xchg_rank(void);            /* 0 without MPI */
int xchg_size(void);            /* 1 without MPI */
int xchg_local_ranks(void);     /* ranks on this node, 1 without MPI */
void xchg_finalize(void);
_Noreturn void xchg_abort(int code); /* ends every rank of the job */

/* Post the header step of an operation. On rank 0: hs[P] holds one header per rank (hs[0]
 * unused); on a worker: *hr receives rank 0's header. It is an all-to-all-v whose only non-zero
 * counts are between the coordinator and each worker, so that a stopped worker delays no other
 * worker (a plain all-to-all would make every rank wait for every other). counts is scratch of
 * 4 * P ints, valid until the request completes. */
void xchg_iheader(const xchg_header *hs, xchg_header *hr, int *counts, MPI_Request *req);

/* Wait for n requests, polling with a growing sleep. deadline: absolute dh_now() time, or
 * <= 0 for none. 0, or DH_ETIMEOUT (the requests stay posted). */
int xchg_wait(MPI_Request *reqs, int n, double deadline);
/* Sleep-poll one request without a deadline; for workers waiting for the next operation. */
void xchg_wait_idle(MPI_Request *req);

/* The exchange log (DH_EXCHANGE_LOG=DIR, off when unset): this rank's file DIR/exchange-RANK.tsv,
 * opened for writing with its header line, or NULL (unset, or it cannot be opened: said once).
 * One line per MoE exchange, CLOCK_MONOTONIC seconds (dh_now), so that the ranks of one host
 * can be laid side by side (scripts/exchange-timeline.py; docs/cluster.md). Columns:
 *   coordinator (rank 0): exchange layer tokens start posted finish end
 *     start: dispatch begins; posted: headers and requests posted; finish: the coordinator's
 *     own work in the window (the shared experts) done, finish() entered; end: combined
 *   worker: exchange layer tokens header request compute_start compute_end replied
 *     (exchange: the coordinator's count of MoE exchanges, the same on every rank)
 *     header: the header seen; request: the payload in; replied: reply and status sent */
FILE *xchg_log_open(int rank);

/* Gather a byte string from every rank at rank 0: on rank 0 *all is the concatenation
 * (malloc'd) and lens[size] each length; elsewhere both untouched. 0 or DH_ETIMEOUT. */
int xchg_gather(const void *mine, int len, char **all, int *lens, double deadline);
/* Broadcast rank 0's *buf of *len bytes: elsewhere *buf is malloc'd and *len set. 0 or DH_ETIMEOUT. */
int xchg_bcast(char **buf, int *len, double deadline);
#endif
