#!/usr/bin/env bash
# bench-unequal.sh: a cluster whose workers are not equally fast, and what --worker-capacity does
# about it. genesis-1b under mpirun -np 3 (a coordinator and two workers); worker 2 runs in a CPU
# cgroup limited to a share of one core (DH_SLOW_SHARE, default 0.2), so it stands for a slower
# machine. Decode batches of 64 sequences, with each placement:
#   contiguous                              32 experts a layer on each worker
#   balanced --worker-capacity 1/share,1    the speeds given by hand
#   balanced --worker-capacity measured     the expert rates the workers measure at start-up
# and prints tokens/s (median of DH_BENCH_REPS runs) and each worker's expert compute time.
#   scripts/bench-unequal.sh        (needs root and a writable cgroup cpu controller, v1 or v2)
#   DH_BENCH_DIR                    where genesis-1b is kept (default ~/.cache/darkhorse)
set -euo pipefail
cd "$(dirname "$0")/.."
share=${DH_SLOW_SHARE:-0.2}
reps=${DH_BENCH_REPS:-5}
# the cgroup: v1's cpu controller, else v2 with the cpu controller enabled. A period of 10 ms
# keeps the limit steady over the workers' 20 ms start-up measurement.
quota=$(python3 -c "import sys; s = float(sys.argv[1]); assert 0 < s <= 1; print(int(10000 * s))" "$share") ||
  { echo "bench-unequal.sh: DH_SLOW_SHARE must be in (0, 1], not '$share'" >&2; exit 2; }
if [ -w /sys/fs/cgroup/cpu ]; then
  cg=/sys/fs/cgroup/cpu/darkhorse-slow
  mkdir -p "$cg"
  echo 10000 >"$cg/cpu.cfs_period_us"
  echo "$quota" >"$cg/cpu.cfs_quota_us"
elif grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null && [ -w /sys/fs/cgroup ]; then
  cg=/sys/fs/cgroup/darkhorse-slow
  mkdir -p "$cg"
  echo "$quota 10000" >"$cg/cpu.max"
else
  echo "bench-unequal.sh: needs a writable CPU cgroup (run as root; cgroup v1 cpu or v2 with +cpu)" >&2
  exit 1
fi
trap 'rmdir "$cg" 2>/dev/null || true' EXIT
. scripts/build-darkhorse.sh bench-unequal
dir=${DH_BENCH_DIR:-$HOME/.cache/darkhorse}
model=$dir/genesis-1b
ensure_model genesis-1b "$model"
fast=$(python3 -c "import sys; print('%g' % (1 / float(sys.argv[1])))" "$share")
args=(bench --model "$model" -p 0 -n 16 -b 64 -r "$reps" --no-bandwidth --json)
log=$(mktemp)
trap 'rm -f "$log"; rmdir "$cg" 2>/dev/null || true' EXIT
echo "| placement | tok/s (median of $reps) | min-max | worker 1: experts (all layers), compute s | worker 2 (slow): experts, compute s |"
echo "|---|---|---|---|---|"
for cfg in "contiguous" "balanced --worker-capacity $fast,1" "balanced --worker-capacity measured"; do
  read -r -a opts <<<"--placement-algo $cfg"
  json=$(mpirun --oversubscribe -np 2 "$bin" "${args[@]}" "${opts[@]}" \
    : -np 1 sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$bin" "${args[@]}" 2>"$log")
  # the load table at exit: "worker experts tokens expert-tok compute_s MB_in MB_out RSS_GB"
  w=$(awk '/^worker +experts/ {t=1; next} t && $1 ~ /^[12]$/ {printf "%s %s, %s s|", $1, $2, $5}' "$log")
  caps=$(grep -o "ranks 1..2: [0-9.:]*" "$log" | awk '{print $3}' || true)
  python3 - "$json" "$cfg${caps:+ ($caps)}" "$w" <<'PY'
import json, sys
j = json.loads(sys.argv[1].splitlines()[0])
cells = [c.split(' ', 1)[1] for c in sys.argv[3].strip('|').split('|')]
print("| %s | %.1f | %.1f-%.1f | %s | %s |" % (sys.argv[2], j["tok_s_median"], j["tok_s_min"], j["tok_s_max"], cells[0], cells[1]))
PY
done
