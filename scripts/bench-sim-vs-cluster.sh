#!/usr/bin/env bash
# bench-sim-vs-cluster.sh: docs/cluster.md's predicted-against-measured table.
#   measure  in process (one thread: the one-core calibration of the coordinator's parts and of
#            the expert rate), then `mpirun -np 3 --oversubscribe darkhorse bench` with the
#            vendored ESFT trace replayed, for batch 16 and 64 and the plans contiguous and
#            balanced (the default plan here: balanced on the routing counts the first replayed
#            run records), RUNS times each; raw JSON, plans and load tables into DATA.
#   predict  `darkhorse simulate` of each configuration with the host model (3 ranks on this
#            machine's cores) and the calibration, and the table of medians on stdout.
#   scripts/bench-sim-vs-cluster.sh [measure|predict|all]   (default all)
# Env: MODEL (default /work/models-local/genesis-1b, made if missing), DATA (default
# docs/cluster-data), RUNS (3), N (generated tokens per run, 8), REPS (timed runs per bench, 1).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
. scripts/build-darkhorse.sh sim-vs-cluster
model=${MODEL:-/work/models-local/genesis-1b}
data=${DATA:-docs/cluster-data}
RUNS=${RUNS:-3} N=${N:-8} REPS=${REPS:-1}
trace=data/traces/esft.dhtrace
ensure_model genesis-1b "$model"
mkdir -p "$data"
cores=$(nproc)

measure() {
  lscpu | grep 'Model name' | sed 's/  */ /g' >"$data/cpu.txt"
  uptime >>"$data/cpu.txt"
  for B in 16 64; do
    echo "calibration: in process, 1 thread, batch $B" >&2
    "$bin" bench --model "$model" -p 0 -n "$N" -b "$B" -r "$REPS" --no-bandwidth --json --threads 1 \
      --routing-replay "$trace" >"$data/inproc-b$B.json" 2>"$data/inproc-b$B.err"
  done
  rm -f "$data/routing.txt"
  for B in 16 64; do
    for algo in contiguous balanced; do
      for i in $(seq 1 "$RUNS"); do
        echo "cluster: np 3, batch $B, $algo, run $i of $RUNS" >&2
        extra=()
        if [ "$algo" = balanced ]; then
          cp "$data/routing.txt" "$data/routing-run.txt" # bench adds its counts at exit: a copy per run
          extra=(--routing-stats "$data/routing-run.txt")
        elif [ ! -f "$data/routing.txt" ]; then
          extra=(--routing-stats "$data/routing.txt") # the first run records the replayed routing
        fi
        mpirun -np 3 --oversubscribe "$bin" bench --model "$model" -p 0 -n "$N" -b "$B" -r "$REPS" --no-bandwidth \
          --json --routing-replay "$trace" --placement-algo "$algo" --placement-out "$data/$algo-b$B.plan" \
          "${extra[@]}" >"$data/np3-$algo-b$B-$i.json" 2>"$data/np3-$algo-b$B-$i.err"
      done
    done
  done
  rm -f "$data/routing-run.txt"
}

predict() {
  python3 - "$bin" "$data" "$trace" "$model" "$cores" "$RUNS" <<'PY'
import json, statistics, subprocess, sys
bin_, data, trace, model, cores, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
def load(path): return json.loads(open(path).read().strip().split("\n")[-1])
print("| batch | plan | step ms measured (median of %d) | step ms predicted | error | dispatch-to-combine ms measured | predicted | error |" % runs)
print("|---|---|---|---|---|---|---|---|")
for B in (16, 64):
    cal = load(f"{data}/inproc-b{B}.json")["ms_per_step"]
    # the coordinator's own parts at one core: attention, dense layer, head (the router and the
    # shared experts are computed by the simulator from the expert rate)
    coord_ms = cal["attention"] + cal["dense"] + cal["head"]
    for algo in ("contiguous", "balanced"):
        ms = [load(f"{data}/np3-{algo}-b{B}-{i}.json") for i in range(1, runs + 1)]
        step = statistics.median(m["step_ms_median"] for m in ms)
        xchg = statistics.median(m["ms_per_step"]["exchange"] for m in ms)
        out = subprocess.run([bin_, "simulate", "--trace", trace, "--plan", f"{data}/{algo}-b{B}.plan", "--batch", str(B),
                              "--mode", "decode", "--model", model, "--json", "--ranks-per-host", "3",
                              "--cores-per-host", str(cores), "--coord-ms", "%.3f" % coord_ms,
                              "--calibration", f"{data}/inproc-b{B}.json", "--no-mtp", "--link-gbps", "40", "--link-us", "20"],
                             capture_output=True, text=True, check=True).stdout
        p = json.loads(out)
        e1 = p["step_ms_mean"] / step - 1
        e2 = p["exchange_ms_mean"] / xchg - 1
        print(f"| {B} | {algo} | {step:.0f} | {p['step_ms_mean']:.0f} | {100*e1:+.0f}% | {xchg:.0f} | {p['exchange_ms_mean']:.0f} | {100*e2:+.0f}% |")
PY
}

case $what in
measure) measure ;;
predict) predict ;;
all) measure; predict ;;
*) echo "usage: $0 [measure|predict|all]" >&2; exit 2 ;;
esac
