#!/usr/bin/env bash
# bench-netns.sh: the cluster over rate-shaped links (scripts/netns-cluster.sh; needs root).
# genesis-1b, `darkhorse bench -p 0` decode of batches of B sequences, under np ranks in network
# namespaces whose links are limited to each rate, with f32 and bf16 activations on the wire.
# Prints a markdown table (median tok/s of the repetitions, wire bytes per token, and the
# exchange's share of the step: dispatch to combine, the workers' expert compute included).
#   scripts/bench-netns.sh
#   DH_NETNS_RATES="none 1gbit 300mbit 100mbit" DH_NETNS_NP="3 5" DH_NETNS_BATCH="1 16 64"
#   DH_NETNS_WIRE="f32 bf16" DH_BENCH_GEN=8 DH_BENCH_REPS=3     what to run (these defaults)
#   DH_BENCH_DIR: where genesis-1b is kept (default ~/.cache/darkhorse)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-darkhorse.sh bench-netns
dir=${DH_BENCH_DIR:-$HOME/.cache/darkhorse}
model=$dir/genesis-1b
ensure_model genesis-1b "$model"
gen=${DH_BENCH_GEN:-8}
reps=${DH_BENCH_REPS:-3}
log=build/bench-netns-runs.log # every run's stderr
: >"$log"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for np in ${DH_NETNS_NP:-3 5}; do
  for b in ${DH_NETNS_BATCH:-1 16 64}; do
    for wire in ${DH_NETNS_WIRE:-f32 bf16}; do
      for rate in ${DH_NETNS_RATES:-none 1gbit 300mbit 100mbit}; do
        echo "bench-netns: np $np, batch $b, --wire $wire, links $rate" >&2
        echo "=== np $np, batch $b, --wire $wire, links $rate" >>"$log"
        line=$(timeout 900 scripts/netns-cluster.sh -n "$np" --rate "$rate" -- "$bin" bench --model "$model" \
          -p 0 -n "$gen" -b "$b" -r "$reps" --no-bandwidth --json --wire "$wire" 2>>"$log") ||
          { echo "bench-netns: that run failed (see $log)" >&2; continue; }
        echo "$rate $wire $line" >>"$out"
        echo "bench-netns: $line" >&2
      done
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
print("| ranks | batch | wire | links | tok/s (median) | step ms | wire bytes/token | exchange share |")
print("|---|---|---|---|---|---|---|---|")
for l in open(sys.argv[1]):
    rate, wire, js = l.split(" ", 2)
    j = json.loads(js)
    print("| %d | %d | %s | %s | %.1f | %.1f | %.0f | %.0f%% |" % (j["ranks"], j["batch"], wire, rate, j["tok_s_median"],
          j["step_ms_median"], j["wire_bytes_per_token"], 100 * j["exchange_share"]))
PY
