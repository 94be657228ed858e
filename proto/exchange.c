/* exchange.c: MPI start-up, polled waits with deadlines, and the control-plane gathers.
 *
 * Waiting: MPI_Testall, then a sleep that starts at 5 us and grows by half each time, up to
 * 100 us while the cluster is busy (an operation completed within the last 100 ms: layers
 * follow each other within milliseconds, and each wake-up costs a few microseconds of CPU), up
 * to 1 ms when it has been idle (an idle worker then costs nothing measurable, and the first
 * request after a pause waits at most a millisecond). The timer slack is lowered to 1 us so
 * that short sleeps are short. */
#include "exchange.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "core/common.h"

static int g_active, g_rank, g_size = 1, g_local = 1;
static double g_last_done; /* when a wait last completed */

int xchg_init(int *argc, char ***argv) {
    const char *ws = getenv("OMPI_COMM_WORLD_SIZE");
    if (!ws) return 1;
    int provided;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    g_active = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &g_local);
    MPI_Comm_free(&node);
    if (g_size > 1) log_set_rank(g_rank);
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    return g_size;
}

int xchg_active(void) { return g_active; }
int xchg_rank(void) { return g_rank; }
int xchg_size(void) { return g_size; }
int xchg_local_ranks(void) { return g_local; }

void xchg_finalize(void) {
    if (g_active) MPI_Finalize();
    g_active = 0;
}

_Noreturn void xchg_abort(int code) {
    fflush(stdout);
    fflush(stderr);
    if (g_active) {
        /* mpirun forwards a rank's output through a pipe and may drop what is still in it when
         * it tears the job down: give the last messages a moment to get out first */
        struct timespec ts = {0, 300 * 1000000L};
        nanosleep(&ts, NULL);
        MPI_Abort(MPI_COMM_WORLD, code);
    }
    exit(code);
}

static void nap(long ns) {
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

void xchg_iheader(const xchg_header *hs, xchg_header *hr, int *counts, MPI_Request *req) {
    int P = g_size, *sc = counts, *sd = counts + P, *rc = counts + 2 * P, *rd = counts + 3 * P;
    memset(counts, 0, 4 * (size_t)P * sizeof *counts);
    if (g_rank == 0) {
        for (int r = 1; r < P; r++) sc[r] = (int)sizeof *hs, sd[r] = r * (int)sizeof *hs;
        MPI_Ialltoallv(hs, sc, sd, MPI_BYTE, NULL, rc, rd, MPI_BYTE, MPI_COMM_WORLD, req);
    } else {
        rc[0] = (int)sizeof *hr;
        MPI_Ialltoallv(NULL, sc, sd, MPI_BYTE, hr, rc, rd, MPI_BYTE, MPI_COMM_WORLD, req);
    }
}

int xchg_wait(MPI_Request *reqs, int n, double deadline) {
    long ns = 5000;
    for (int spins = 0;; spins++) {
        int done = 0;
        MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
        if (done) {
            g_last_done = dh_now();
            return 0;
        }
        double now = dh_now();
        if (deadline > 0 && now > deadline) return DH_ETIMEOUT;
        if (spins < 20) continue; /* a few quick polls first: replies often arrive at once */
        nap(ns);
        ns = DH_MIN(ns + ns / 2, now - g_last_done < 0.1 ? 100000L : 1000000L);
    }
}

void xchg_wait_idle(MPI_Request *req) { xchg_wait(req, 1, 0); }

FILE *xchg_log_open(int rank) {
    const char *dir = getenv("DH_EXCHANGE_LOG");
    if (!dir || !*dir) return NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/exchange-%d.tsv", dir, rank);
    FILE *f = fopen(path, "w");
    if (!f) {
        log_warn("DH_EXCHANGE_LOG: cannot write %s: %s; no exchange log on rank %d", path, strerror(errno), rank);
        return NULL;
    }
    fputs(rank == 0 ? "exchange\tlayer\ttokens\tstart\tposted\tfinish\tend\n"
                    : "exchange\tlayer\ttokens\theader\trequest\tcompute_start\tcompute_end\treplied\n",
          f);
    return f;
}

int xchg_gather(const void *mine, int len, char **all, int *lens, double deadline) {
    MPI_Request r;
    MPI_Igather(&len, 1, MPI_INT, lens, 1, MPI_INT, 0, MPI_COMM_WORLD, &r);
    if (xchg_wait(&r, 1, g_rank == 0 ? deadline : 0) != 0) return DH_ETIMEOUT;
    int *displs = NULL, total = 0;
    if (g_rank == 0) {
        displs = xmalloc((size_t)g_size * sizeof *displs);
        for (int i = 0; i < g_size; i++) displs[i] = total, total += lens[i];
        *all = xmalloc((size_t)total + 1);
    }
    MPI_Igatherv(mine, len, MPI_BYTE, g_rank == 0 ? *all : NULL, lens, displs, MPI_BYTE, 0, MPI_COMM_WORLD, &r);
    int rc = xchg_wait(&r, 1, g_rank == 0 ? deadline : 0);
    free(displs);
    return rc;
}

int xchg_bcast(char **buf, int *len, double deadline) {
    MPI_Request r;
    MPI_Ibcast(len, 1, MPI_INT, 0, MPI_COMM_WORLD, &r);
    if (xchg_wait(&r, 1, deadline) != 0) return DH_ETIMEOUT;
    if (g_rank != 0) *buf = xmalloc((size_t)*len + 1);
    MPI_Ibcast(*buf, *len, MPI_BYTE, 0, MPI_COMM_WORLD, &r);
    return xchg_wait(&r, 1, deadline);
}
