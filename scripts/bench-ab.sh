#!/usr/bin/env bash
# bench-ab.sh: one darkhorse bench against itself with one environment setting changed, the two
# alternated in the same run, so that a kernel or layout change is measured against its baseline
# on the same machine in the same minutes (the machine's speed drifts by tens of per cent within
# an hour; docs/performance.md).
#
#   scripts/bench-ab.sh MODEL_DIR WEIGHTS VAR=VALUE [ROUNDS] [-- BENCH_ARGS...]
#   e.g. scripts/bench-ab.sh ~/.cache/darkhorse/genesis-1b q8 DH_KERN_ROWS=1 5
#
# Each round runs `darkhorse bench` first with VAR=VALUE (the baseline, "A"), then without it
# ("B"), each with BENCH_ARGS (default: -t 2 -p 512 -n 64 -r 3). Prints, per test, the median of
# the rounds' medians of A and B and the median of the rounds' ratios B / A, with the CPU model.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ] || [[ "$3" != *=* ]]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
model=$1 weights=$2 setting=$3
shift 3
rounds=3
if [ $# -gt 0 ] && [ "$1" != -- ]; then rounds=$1; shift; fi
[ $# -gt 0 ] && [ "$1" = -- ] && shift
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(-t 2 -p 512 -n 64 -r 3)
[ -d "$model" ] || { echo "bench-ab: no model at $model" >&2; exit 2; }
. scripts/build-darkhorse.sh bench
out=$(mktemp)
trap 'rm -f "$out" "$out.log"' EXIT
for r in $(seq 1 "$rounds"); do
  echo "bench-ab: round $r/$rounds: A ($setting)" >&2
  env "$setting" "$bin" bench --model "$model" --weights "$weights" "${args[@]}" --json 2>>"$out.log" | sed "s/^/$r A /" >>"$out"
  echo "bench-ab: round $r/$rounds: B (without it)" >&2
  "$bin" bench --model "$model" --weights "$weights" "${args[@]}" --json 2>>"$out.log" | sed "s/^/$r B /" >>"$out"
done
python3 - "$out" "$setting" "$model" "$weights" <<'PY'
import json, sys
from statistics import median
runs, cpu = {}, None
for line in open(sys.argv[1]):
    r, ab, js = line.split(" ", 2)
    j = json.loads(js)
    cpu = cpu or j.get("cpu")
    runs.setdefault(j["test"], {}).setdefault(ab, {})[r] = j
print("%s %s; A = with %s, B = without; tok/s, median of the rounds' medians" % (sys.argv[3], sys.argv[4], sys.argv[2]))
print("| test | A tok/s | B tok/s | B / A (median of the rounds' ratios) | rounds' ratios |")
print("|---|---|---|---|---|")
for t, ab in runs.items():
    a, b = ab.get("A", {}), ab.get("B", {})
    rs = [b[r]["tok_s_median"] / a[r]["tok_s_median"] for r in a if r in b]
    if not rs: continue
    print("| %s | %.1f | %.1f | %.2fx | %s |" % (t, median(j["tok_s_median"] for j in a.values()),
          median(j["tok_s_median"] for j in b.values()), median(rs), " ".join("%.2f" % x for x in rs)))
print("\nCPU: %s" % (cpu or "unknown"))
PY
