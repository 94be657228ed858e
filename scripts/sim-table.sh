#!/usr/bin/env bash
# sim-table.sh: the first placement table of docs/placement.md. Plans contiguous, round-robin
# and balanced for W workers (default 4) are made from the expert loads of the FIRST half of the
# vendored ESFT trace (tests/sched/trace_tool.c over sched/placement.c's place_compute, without
# the slot limit that `darkhorse place --algo balanced` applies), then `darkhorse simulate` replays the SECOND half against each, B
# (default 64) in decode and in prefill, and a markdown table goes to stdout.
#   scripts/sim-table.sh [W] [B]
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-4} B=${2:-64}
. scripts/build-darkhorse.sh sim-table
cmake --build build -j 2 --target trace_tool >"build/sim-table-build.log" 2>&1 || { tail -40 build/sim-table-build.log; exit 1; }
tool=build/tests/trace_tool trace=data/traces/esft.dhtrace
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
field() { python3 -c 'import json,sys; print("%.*f" % (int(sys.argv[2]), json.loads(open(sys.argv[1]).read())[sys.argv[3]]))' "$@"; }
echo "| plan (loads of the first half) | decode: imbalance mean / p99 | decode fan-out | prefill: imbalance mean / p99 | prefill fan-out | bytes/token (f32) | decode step ms (model) |"
echo "|---|---|---|---|---|---|---|"
for algo in contiguous round-robin balanced; do
  "$tool" plan "$trace" "$W" "$algo" first-half "$tmp/$algo.plan"
  for mode in decode prefill; do
    "$bin" simulate --trace "$trace" --plan "$tmp/$algo.plan" --batch "$B" --mode "$mode" --seqs second-half --json \
      >"$tmp/$mode.json" 2>/dev/null
  done
  echo "| $algo | $(field "$tmp/decode.json" 2 imbalance_mean) / $(field "$tmp/decode.json" 2 imbalance_p99) |" \
       "$(field "$tmp/decode.json" 2 fanout_mean) | $(field "$tmp/prefill.json" 2 imbalance_mean) / $(field "$tmp/prefill.json" 2 imbalance_p99) |" \
       "$(field "$tmp/prefill.json" 2 fanout_mean) | $(field "$tmp/decode.json" 0 bytes_per_token) | $(field "$tmp/decode.json" 1 step_ms_mean) |"
done
