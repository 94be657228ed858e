/* cmd_hosts.c: `darkhorse hosts`: check every rank of a pool before a real launch.
 *
 * Under mpirun every rank builds the hello it would send at start-up (worker_hello_pack: host,
 * version, model identity, cores, memory, threads, expert rate, or the error that keeps it from
 * serving) and rank 0 gathers them. Rank 0 then applies the checks the coordinator makes of
 * every worker at start-up (cluster_check_hello: the rank's own error, the protocol version,
 * the model identity against rank 0's) and prints one line per rank on stdout, in rank order:
 *
 *   rank=1 host=node-b version=0.1.0 role=worker model=3f0c9a7e12d4b856 cores=8 threads=8
 *   mem_free_gb=14.2 mem_total_gb=15.6 expert_gflops=41.3 serve=yes
 *
 * (one line each), `serve=no reason=...` (the reason runs to the end of the line) for a rank the
 * cluster would refuse, and exits 1 if there is one. As at start-up, the workers measure their
 * expert rate at the same time and the coordinator does not measure (expert_gflops=-), unless
 * it runs alone and hosts the experts itself. If rank 0 itself cannot load the model, the others
 * are checked for everything but the identity, which has nothing to be compared with.
 *
 * With --hostfile, and not under mpirun, it runs `mpirun --hostfile H [-np N] --bind-to none
 * <this binary> hosts --model DIR` in its place: the binary by its absolute path
 * (/proc/self/exe), which must be the same on every host, as for every cluster command. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/runtime.h"
#include "coordinator/cluster.h"
#include "core/common.h"
#include "core/nn.h"
#include "darkhorse.pb-c.h"
#include "proto/exchange.h"
#include "worker/worker.h"

#define HELLO_DEADLINE 120.0 /* seconds for every rank to load its checkpoint's index and measure */

typedef struct hosts_opts {
    rt_opts rt;           /* --model, --threads */
    const char *hostfile; /* run mpirun over it */
    const char *np;       /* ranks for mpirun (default: the hostfile's slots) */
} hosts_opts;

static void usage(FILE *f) {
    fprintf(f,
            "usage: mpirun [mpirun options] darkhorse hosts --model DIR [--threads N]\n"
            "       darkhorse hosts --hostfile FILE [-np N] --model DIR [--threads N]\n\n"
            "Checks every rank of a pool as the cluster's start-up would, and prints one line per\n"
            "rank on stdout: rank, host, darkhorse version, role, model identity, cores, threads,\n"
            "memory, measured expert rate (GFLOP/s) and serve=yes, or serve=no with the reason.\n"
            "Exits 1 if any rank would be refused at start-up.\n\n"
            "  --model DIR       the checkpoint, at the same path on every host\n"
            "  --threads N       threads per rank (default: as the cluster commands choose)\n"
            "  --hostfile FILE   run mpirun over this Open MPI hostfile (not under mpirun)\n"
            "  -np N, --np N     ranks to start with --hostfile (default: the hostfile's slots)\n"
            "  --help            this text\n");
}

/* 0, or the exit code of a usage error (2) or of --help (-1 for 0) */
static int parse_args(int argc, char **argv, hosts_opts *o) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 1000}, {"threads", required_argument, 0, 1001},
        {"hostfile", required_argument, 0, 'H'}, {"np", required_argument, 0, 'n'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0}};
    for (int i = 1; i < argc; i++) /* mpirun's spelling, -np, as --np */
        if (strcmp(argv[i], "-np") == 0) argv[i] = (char *)"--np";
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'H': o->hostfile = optarg; break;
        case 'n': { /* checked here, passed on to mpirun as written */
            long n;
            if (rt_parse_long("-np", optarg, 1, 65536, &n)) return 2;
            o->np = optarg;
            break;
        }
        case 'h': usage(stdout); return -1;
        default:
            if (rt_parse_opt(&o->rt, c, optarg) == 1) break;
            if (c == '?') usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "darkhorse: hosts: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o->rt.model_dir) {
        fprintf(stderr, "darkhorse: hosts: --model DIR is required\n");
        return 2;
    }
    if (o->hostfile && xchg_active()) {
        fprintf(stderr, "darkhorse: hosts: --hostfile is for running mpirun; this is already under mpirun\n");
        return 2;
    }
    if (o->np && !o->hostfile) {
        fprintf(stderr, "darkhorse: hosts: -np goes with --hostfile (under mpirun, give it to mpirun)\n");
        return 2;
    }
    return 0;
}

/* Replace this process by mpirun over the hostfile; returns only on failure (exit code 1). */
static int exec_mpirun(const hosts_opts *o) {
    char self[PATH_MAX], absdir[PATH_MAX], cwd[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
        fprintf(stderr, "darkhorse: hosts: cannot read /proc/self/exe: %s\n", strerror(errno));
        return 1;
    }
    self[n] = 0;
    /* the ranks resolve a relative path from their own directory: make it absolute here */
    const char *dir = o->rt.model_dir;
    if (dir[0] != '/' && getcwd(cwd, sizeof cwd) &&
        snprintf(absdir, sizeof absdir, "%s/%s", cwd, dir) < (int)sizeof absdir)
        dir = absdir;
    char threads[16];
    snprintf(threads, sizeof threads, "%d", o->rt.threads);
    const char *args[20];
    int k = 0;
    args[k++] = "mpirun", args[k++] = "--hostfile", args[k++] = o->hostfile;
    if (o->np) args[k++] = "-np", args[k++] = o->np;
    args[k++] = "--bind-to", args[k++] = "none";
    args[k++] = self, args[k++] = "hosts", args[k++] = "--model", args[k++] = dir;
    if (o->rt.threads > 0) args[k++] = "--threads", args[k++] = threads;
    args[k] = NULL;
    /* as deploy/launch.sh: Open MPI refuses root unless told it is meant */
    if (geteuid() == 0) setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0), setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    fflush(NULL);
    execvp("mpirun", (char *const *)args); /* no PATH: glibc searches /bin:/usr/bin */
    fprintf(stderr, "darkhorse: hosts: cannot run mpirun: %s (is openmpi-bin installed?)\n", strerror(errno));
    return 1;
}

/* Print rank r's line; 1 if it would be refused (its reason copied into first if still empty). */
static int print_rank(const Darkhorse__Hello *h, int r, int P, uint64_t want_hash, const char *dir, char *first,
                      size_t firstsz) {
    char err[1024] = "", ident[24] = "-", rate[32] = "-";
    int refused = cluster_check_hello(h, want_hash, dir, err, sizeof err);
    if (!h->error_code) snprintf(ident, sizeof ident, "%016llx", (unsigned long long)h->model_hash);
    if (h->expert_gflops > 0) snprintf(rate, sizeof rate, "%.1f", h->expert_gflops);
    printf("rank=%d host=%s version=%s role=%s model=%s cores=%d threads=%d mem_free_gb=%.1f mem_total_gb=%.1f "
           "expert_gflops=%s serve=%s%s%s\n",
           r, h->hostname, *h->version ? h->version : "?", P == 1 ? "alone" : r == 0 ? "coordinator" : "worker", ident,
           h->cores, h->threads, h->mem_available_bytes / 1e9, h->mem_total_bytes / 1e9, rate,
           refused ? "no" : "yes", refused ? " reason=" : "", err);
    if (refused && !*first) snprintf(first, firstsz, "%s", err);
    return refused;
}

/* On rank 0: check and print the P hellos in all (lens[P] bytes each); the exit code. */
static int report(const char *all, const int *lens, int P, const char *dir) {
    Darkhorse__Hello **h = xcalloc((size_t)P, sizeof *h);
    size_t off = 0;
    int refused = 0, hosts = 0;
    char first[1024] = "";
    for (int r = 0; r < P; off += (size_t)lens[r], r++) {
        h[r] = darkhorse__hello__unpack(NULL, (size_t)lens[r], (const uint8_t *)all + off);
        if (!h[r]) {
            printf("rank=%d serve=no reason=its hello is malformed\n", r);
            if (!*first) snprintf(first, sizeof first, "rank %d sent a malformed hello", r);
            refused++;
            continue;
        }
        int seen = 0;
        for (int q = 0; q < r; q++) seen |= h[q] && strcmp(h[q]->hostname, h[r]->hostname) == 0;
        hosts += !seen;
        /* the identity is checked against rank 0's; without one, only each rank's own state */
        uint64_t want = h[0] && !h[0]->error_code ? h[0]->model_hash : h[r]->model_hash;
        refused += print_rank(h[r], r, P, want, dir, first, sizeof first);
    }
    if (refused)
        fprintf(stderr, "darkhorse: hosts: %d of %d ranks would be refused at start-up; the first: %s\n", refused, P,
                first);
    else
        fprintf(stderr, "darkhorse: hosts: %d rank%s on %d host%s, every one can serve %s\n", P, P > 1 ? "s" : "", hosts,
                hosts > 1 ? "s" : "", dir);
    for (int r = 0; r < P; r++) darkhorse__hello__free_unpacked(h[r], NULL);
    free(h);
    return refused ? 1 : 0;
}

int cmd_hosts(int argc, char **argv) {
    hosts_opts o = {.rt = rt_default_opts()};
    int prc = parse_args(argc, argv, &o);
    if (prc) return prc < 0 ? 0 : prc;
    if (o.hostfile) return exec_mpirun(&o);
    int rank = xchg_rank(), P = xchg_size();
    // this rank's hello: the workers (or a rank alone) measure their expert rate, as at start-up
    nn_init(rt_default_threads(o.rt.threads), 0);
    size_t len;
    unsigned char *mine = worker_hello_pack(o.rt.model_dir, P == 1 || rank > 0, &len);
    nn_shutdown();
    // gathered at rank 0
    int *lens = xcalloc((size_t)P, sizeof *lens);
    char *all = NULL;
    if (!xchg_active()) {
        all = (char *)mine, lens[0] = (int)len, mine = NULL;
    } else if (xchg_gather(mine, (int)len, &all, lens, dh_now() + HELLO_DEADLINE) != 0) {
        log_error("not every rank sent its hello within %.0f s", HELLO_DEADLINE);
        xchg_abort(1);
    }
    int rc = rank == 0 ? report(all, lens, P, o.rt.model_dir) : 0;
    free(mine);
    free(all);
    free(lens);
    return rc;
}
