#!/usr/bin/env bash
# bench-sim-vs-cluster.sh: docs/cluster.md's predicted-against-measured table.
#   measure  RUNS rounds of: for batch 16 and 64 and the plans contiguous and balanced (the
#            default plan here: balanced on routing counts recorded once, in process, from the
#            replayed trace), an in-process run at one thread (the calibration: the coordinator's
#            own parts and the expert rate of one core) and right after it the same under
#            `mpirun -np 3 --oversubscribe`, both replaying the vendored ESFT trace. Side by side,
#            because the machine is shared with other jobs whose load changes by the minute.
#            The plans' order alternates between rounds (drift within a round would otherwise
#            be charged to the plan measured last). Then the same pairs at batch 1
#            (contiguous): the latency calibration. Raw JSON,
#            plans, load tables and the load average before each pair into DATA. Each round
#            also measures the read bandwidth (darkhorse bench's vector reader) on one thread
#            and on as many threads as the workers (bandwidth.txt): the calibration's expert
#            rate is one thread's, and the simulator's --mem-gbs is what the host's workers
#            read together.
#   predict  `darkhorse simulate` of each cluster run with the host model (3 ranks on this
#            machine's cores) and its own calibration, and the table of medians on stdout. The one
#            host's read bandwidth for weights is the fitted one-thread rate times the measured
#            ratio of the workers' threads' bandwidth to one thread's (bandwidth.txt). The one
#            fitted figure is the per-message latency: the batch-1 exchange measured, less what
#            the simulator predicts for it with no latency, over 2 messages and 8 MoE layers.
#            Link bandwidth (shared memory) is taken as 40 Gbit/s: at batch 64, 8 MB a step,
#            2 ms of a step near a second, so its exact value does not matter here.
#            When the cluster runs kept their exchange logs (DATA/xlog-*, DH_EXCHANGE_LOG), a
#            second table: the rest of the exchange beside its compute, measured and predicted,
#            and the phases of it the log times (scripts/exchange-timeline.py).
#   bandwidth  RUNS passes of the read bandwidth only, added to DATA/bandwidth.txt (for data
#            measured before the script took it)
#   scripts/bench-sim-vs-cluster.sh [measure|latency|bandwidth|predict|all]   (default all)
# Env: MODEL (default /work/models-local/genesis-1b, made if missing), DATA (default
# docs/cluster-data), RUNS (3), N (generated tokens per run, 16), REPS (timed runs per bench, 1).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
. scripts/build-darkhorse.sh sim-vs-cluster
model=${MODEL:-/work/models-local/genesis-1b}
data=${DATA:-docs/cluster-data}
RUNS=${RUNS:-3} N=${N:-16} REPS=${REPS:-1}
trace=data/traces/esft.dhtrace
ensure_model genesis-1b "$model"
mkdir -p "$data"
cores=$(nproc)
ranks=3                # mpirun -np: the coordinator and its workers, all on this host
workers=$((ranks - 1)) # one thread each when there are as many as cores (rt_default_threads)

# one in-process calibration run (1 thread) then one cluster run, side by side, so that both
# meet the same load from other jobs: NAME B [cluster options...]
pair() {
  local name=$1 B=$2
  shift 2
  uptime >>"$data/load.txt"
  "$bin" bench --model "$model" -p 0 -n "$N" -b "$B" -r "$REPS" --no-bandwidth --json --threads 1 \
    --routing-replay "$trace" >"$data/inproc-$name.json" 2>"$data/inproc-$name.err"
  # the exchange log of the cluster run (scripts/exchange-timeline.py): where the exchange goes
  rm -rf "$data/xlog-$name" && mkdir -p "$data/xlog-$name"
  DH_EXCHANGE_LOG="$data/xlog-$name" mpirun -np "$ranks" --oversubscribe -x DH_EXCHANGE_LOG "$bin" bench \
    --model "$model" -p 0 -n "$N" -b "$B" -r "$REPS" --no-bandwidth --json \
    --routing-replay "$trace" "$@" >"$data/np3-$name.json" 2>"$data/np3-$name.err"
}

# "THREADS GB/s" of the engine's read bandwidth on 1 thread and on the workers' threads together
bandwidth() {
  local t
  for t in 1 "$workers"; do
    echo "$t $("$bin" bench --model "$model" -p 0 -n 0 --threads "$t" 2>&1 |
      sed -n 's/^read bandwidth.*: \([0-9.]*\) GB\/s$/\1/p')" >>"$data/bandwidth.txt"
  done
}
measure() {
  lscpu | grep 'Model name' | sed 's/  */ /g' >"$data/cpu.txt"
  : >"$data/load.txt"
  : >"$data/bandwidth.txt"
  echo "routing counts for balanced: in process, batch 64, $N steps twice" >&2
  rm -f "$data/routing.txt"
  "$bin" bench --model "$model" -p 0 -n "$N" -b 64 -r 1 --no-bandwidth --routing-replay "$trace" \
    --routing-stats "$data/routing.txt" >/dev/null 2>"$data/routing.err"
  for i in $(seq 1 "$RUNS"); do
    bandwidth
    # the plans' order alternates from round to round: the machine's speed drifts within a round,
    # and a plan always measured last would carry the drift as if it were the plan's
    algos="contiguous balanced"
    [ $((i % 2)) -eq 0 ] && algos="balanced contiguous"
    for B in 16 64; do
      for algo in $algos; do
        echo "run $i of $RUNS: batch $B, $algo (in process, then np 3)" >&2
        extra=()
        if [ "$algo" = balanced ]; then
          cp "$data/routing.txt" "$data/routing-run.txt" # bench adds its counts at exit: a copy per run
          extra=(--routing-stats "$data/routing-run.txt")
        fi
        pair "$algo-b$B-$i" "$B" --placement-algo "$algo" --placement-out "$data/$algo-b$B.plan" "${extra[@]}"
      done
    done
  done
  rm -f "$data/routing-run.txt"
  latency
}

latency() {
  for i in $(seq 1 "$RUNS"); do
    echo "latency calibration: batch 1, contiguous, run $i of $RUNS (in process, then np 3)" >&2
    pair "contiguous-b1-$i" 1 --placement-out "$data/contiguous-b1.plan"
  done
}

predict() {
  python3 - "$bin" "$data" "$trace" "$model" "$cores" "$RUNS" "$ranks" "$N" <<'PY'
import json, os, statistics, subprocess, sys
bin_, data, trace, model, cores, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
ranks, N = int(sys.argv[7]), int(sys.argv[8])
workers = ranks - 1
def load(path): return json.loads(open(path).read().strip().split("\n")[-1])
cfg = json.load(open(f"{model}/config.json"))
D, F, E, K = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["n_routed_experts"], cfg["num_experts_per_tok"]
NS, M = cfg["n_shared_experts"], cfg["num_hidden_layers"] - cfg["first_k_dense_replace"]  # decode: no MTP block
EB = 3 * D * F * 2  # bytes of one bf16 expert
med = statistics.median
# The fit below gives one thread's weight rate (the in-process runs are at --threads 1); the
# simulator shares --mem-gbs, a host's bandwidth, among the host's workers. What the workers read
# together is one thread's rate times the measured ratio of their threads' bandwidth to one's.
bws = {}
try:
    lines = open(f"{data}/bandwidth.txt").readlines()
except FileNotFoundError:
    sys.exit(f"bench-sim-vs-cluster: no {data}/bandwidth.txt (measure writes it; for data measured without it, "
             f"'bandwidth' adds {runs} passes taken now)")
for line in lines:
    t, g = line.split()
    bws.setdefault(int(t), []).append(float(g))
host_ratio = med(bws[workers]) / med(bws[1])
print(f"read bandwidth: {med(bws[1]):.1f} GB/s on 1 thread, {med(bws[workers]):.1f} on {workers}: "
      f"the host reads {host_ratio:.2f} times one thread's rate", file=sys.stderr)
def sim(B, plan, extra):
    out = subprocess.run([bin_, "simulate", "--trace", trace, "--plan", plan, "--batch", str(B), "--mode", "decode",
                          "--model", model, "--json", "--no-mtp"] + extra, capture_output=True, text=True, check=True).stdout
    return json.loads(out)
one = f"{data}/one-worker.plan"  # every expert on one worker: the in-process engine's distinct experts
with open(one, "w") as f:
    f.write(f"darkhorse-placement 1\nworkers 1\nexperts {E}\nalgo contiguous\n")
    for l in range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"] + 1):
        f.write(f"layer {l} worker 1: 0-{E - 1}\n")
touched = {B: sim(B, one, [])["touched_mean"] for B in (1, 16, 64)}
def fit(i):
    """Round i's in-process runs at batch 16 and 64 (contiguous): the MoE part of a layer is
    (distinct experts + shared) * EB / bandwidth + flops / rate, flops = router + routed + shared.
    Two batches, two unknowns."""
    rows, rhs = [], []
    for B in (16, 64):
        moe = load(f"{data}/inproc-contiguous-b{B}-{i}.json")["ms_per_step"]["moe"] * 1e-3 / M
        rows.append(((touched[B] + NS) * EB, B * (2 * D * E + 6 * D * F * (K + NS))))
        rhs.append(moe)
    (a, b), (c, d) = rows
    det = a * d - b * c
    x, y = (rhs[0] * d - b * rhs[1]) / det, (a * rhs[1] - c * rhs[0]) / det
    return 1 / x / 1e9, 1 / y / 1e9  # GB/s, GFLOP/s
def own(name):
    m = load(f"{data}/inproc-{name}.json")["ms_per_step"]
    return m["attention"] + m["dense"] + m["head"]
def simulate(B, plan, link_us, name, i):
    gbs, gflops = fit(i)
    return sim(B, plan, ["--ranks-per-host", str(ranks), "--cores-per-host", str(cores), "--coord-ms", "%.3f" % own(name),
                         "--worker-rate", "%.4f" % gflops, "--coord-gflops", "%.4f" % gflops,
                         "--mem-gbs", "%.4f" % (gbs * host_ratio),
                         "--link-gbps", "40", "--link-us", "%.3f" % link_us])
for i in range(1, runs + 1):
    gbs, gflops = fit(i)
    print(f"round {i}: weights read at {gbs:.2f} GB/s, experts computed at {gflops:.1f} GFLOP/s (one thread)", file=sys.stderr)
x1 = [load(f"{data}/np3-contiguous-b1-{i}.json")["ms_per_step"]["exchange"] for i in range(1, runs + 1)]
p1 = [simulate(1, f"{data}/contiguous-b1.plan", 0.001, f"contiguous-b1-{i}", i)["exchange_ms_mean"]
      for i in range(1, runs + 1)]
lat_us = max(0.001, med(x - p for x, p in zip(x1, p1)) / (2 * M) * 1e3)  # --link-us wants > 0
print(f"latency calibration: batch 1 exchange {med(x1):.2f} ms a step measured, {med(p1):.2f} ms predicted without "
      f"latency: {lat_us:.0f} us a message", file=sys.stderr)
fits = [fit(i) for i in range(1, runs + 1)]
json.dump({"read_gbs": med(f[0] for f in fits), "host_read_ratio": host_ratio, "gflops": med(f[1] for f in fits),
           "latency_us": lat_us,
           "coord_ms": {B: med(own(f"{a}-b{B}-{i}") for a in ("contiguous", "balanced") for i in range(1, runs + 1))
                        for B in (16, 64)}},
          open(f"{data}/calibration.json", "w"), indent=1)
print("| batch | plan | step ms measured | predicted (A) | error | predicted (B) | error | dispatch-to-combine ms measured | predicted | error | of which the slowest worker's compute, measured / predicted | coordinator's own ms, measured / predicted |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
sims = {}  # (B, algo): each round's prediction, for both tables
for B in (16, 64):
    for algo in ("contiguous", "balanced"):
        ms = [load(f"{data}/np3-{algo}-b{B}-{i}.json") for i in range(1, runs + 1)]
        ps = sims[B, algo] = [simulate(B, f"{data}/{algo}-b{B}.plan", lat_us, f"{algo}-b{B}-{i}", i)
                              for i in range(1, runs + 1)]
        step, pstep = med(m["step_ms_median"] for m in ms), med(p["step_ms_mean"] for p in ps)
        xchg, pxchg = med(m["ms_per_step"]["exchange"] for m in ms), med(p["exchange_ms_mean"] for p in ps)
        mown = med(m["ms_per_step"]["attention"] + m["ms_per_step"]["dense"] + m["ms_per_step"]["head"] for m in ms)
        pown = med(p["coord_ms_mean"] for p in ps)
        # the slowest worker's compute in each exchange, as the workers report it (bench since
        # 2026-12-06 04:00; earlier runs lack it), against the simulator's compute term
        wc = [m["ms_per_step"].get("worker_compute") for m in ms]
        mwc = "%.0f" % med(wc) if None not in wc else "-"
        pwc = med(p["worker_compute_ms_mean"] for p in ps)
        # (B): the coordinator's own parts as the cluster run measured them (FWD_T_* on rank 0)
        pstep_b = med(p["step_ms_mean"] - p["coord_ms_mean"] for p in ps) + mown
        print(f"| {B} | {algo} | {step:.0f} | {pstep:.0f} | {100 * (pstep / step - 1):+.0f}% | {pstep_b:.0f} | "
              f"{100 * (pstep_b / step - 1):+.0f}% | {xchg:.0f} | {pxchg:.0f} | "
              f"{100 * (pxchg / xchg - 1):+.0f}% | {mwc} / {pwc:.0f} | {mown:.0f} / {pown:.0f} |")
# where the rest of the exchange goes, from the cluster runs' exchange logs (measured since
# 2026-12-06 05:50; earlier data has none): per exchange, mean ms, timed exchanges only
if all(os.path.isdir(f"{data}/xlog-{a}-b{B}-{i}") for B in (16, 64) for a in ("contiguous", "balanced")
       for i in range(1, runs + 1)):
    print()
    print("| batch | plan | rest of the exchange (less the slowest worker's compute) ms a step, measured / predicted | "
          "header reaches a worker, ms an exchange | worker's reply sent after its compute, ms | coordinator ends after that reply, ms |")
    print("|---|---|---|---|---|---|")
    for B in (16, 64):
        for algo in ("contiguous", "balanced"):
            ph, rest, prest = [], [], []
            for i in range(1, runs + 1):
                out = subprocess.run(["scripts/exchange-timeline.py", f"{data}/xlog-{algo}-b{B}-{i}", "--json",
                                      "--skip-first", str(N * M)], capture_output=True, text=True, check=True).stdout
                ph.append(json.loads(out))
                m = load(f"{data}/np3-{algo}-b{B}-{i}.json")["ms_per_step"]
                rest.append(m["exchange"] - m["worker_compute"])
                p = sims[B, algo][i - 1]
                prest.append(p["exchange_ms_mean"] - p["worker_compute_ms_mean"])
            f = lambda k: med(x[k]["mean_ms"] for x in ph)
            print(f"| {B} | {algo} | {med(rest):.0f} / {med(prest):.0f} | {f('header reaches the worker'):.2f} | "
                  f"{f('worker reply sent'):.2f} | {f('coordinator ends after the reply'):.2f} |")
PY
}

case $what in
measure) measure ;;
latency) latency ;;
bandwidth) for i in $(seq 1 "$RUNS"); do bandwidth; done ;;
predict) predict ;;
all) measure; predict ;;
*) echo "usage: $0 [measure|latency|bandwidth|predict|all]" >&2; exit 2 ;;
esac
