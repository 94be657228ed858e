#!/usr/bin/env bash
# bench-cluster.sh: the cluster against the in-process engine on this machine.
# genesis-1b, decode batches of 1, 16 and 64 sequences; in-process, mpirun -np 3 (2 workers)
# and -np 5 (4 workers). Reports the step time, the bytes on the wire per token and the share of
# the coordinator's time spent in the expert exchange (dispatch to combine), medians of -r runs.
#   scripts/bench-cluster.sh            (DH_BENCH_DIR: where genesis-1b is kept, default ~/.cache/darkhorse)
#   DH_BENCH_GEN=16 DH_BENCH_REPS=3     tokens per run and runs per configuration
# On one 2-core machine every rank shares the same two cores, so the cluster cannot be faster
# than the in-process engine here; the figures measure the exchange's cost, not a speed-up.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-darkhorse.sh bench-cluster
dir=${DH_BENCH_DIR:-$HOME/.cache/darkhorse}
model=$dir/genesis-1b
gen=${DH_BENCH_GEN:-16}
reps=${DH_BENCH_REPS:-3}
ensure_model genesis-1b "$model"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for b in 1 16 64; do
  for np in 1 3 5; do
    if [ "$np" -eq 1 ]; then
      "$bin" bench --model "$model" -p 0 -n "$gen" -b "$b" -r "$reps" --no-bandwidth --json 2>/dev/null | sed "s/^/$np /" >>"$out"
    else
      mpirun -np "$np" --oversubscribe "$bin" bench --model "$model" -p 0 -n "$gen" -b "$b" -r "$reps" \
        --no-bandwidth --json 2>/dev/null | sed "s/^/$np /" >>"$out"
    fi
  done
done
python3 - "$out" <<'PY'
import json, sys
rows = [l.split(' ', 1) for l in open(sys.argv[1]) if l.strip()]
print("| ranks | batch | step ms (median) | tok/s | wire bytes/token | exchange share |")
print("|---|---|---|---|---|---|")
for np, line in rows:
    j = json.loads(line)
    wire = j.get("wire_bytes_per_token")
    share = j.get("exchange_share")
    print("| %s | %d | %.1f | %.1f | %s | %s |" % ("in-process" if np == "1" else np, j["batch"], j["step_ms_median"],
          j["tok_s_median"], "-" if wire is None else "%.0f" % wire, "-" if share is None else "%.0f%%" % (100 * share)))
PY
