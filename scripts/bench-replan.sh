#!/usr/bin/env bash
# bench-replan.sh: does a live re-plan stall serving? genesis-1b (DH_BENCH_MODEL=genesis-tiny for
# the small one) under mpirun -np 3 (a coordinator, two workers) starts from a lopsided plan
# (worker 1 hosts 48 of the 64 experts of every MoE layer, worker 2 the other 16: a plan made
# for other traffic) and serves DH_BENCH_SEQS greedy requests at once, long enough that every
# step is one decode row per sequence (a steady load). The server re-plans by itself every
# DH_BENCH_GAP steps (--replan-every, --max-moves DH_MAX_MOVES), DH_BENCH_REPLANS times: no client
# polls or posts while the steps are timed, so the only extra work is the re-plan's. The
# coordinator writes every step's time (DH_REPLAN_STEP_LOG); scripts/replan-steps.py then gives,
# for each re-plan, its longest step over the median of the 100 steps before, beside the same
# ratio for every window of as many steps without a re-plan in the same run (the control: this
# machine's own noise). The coordinator's own log lines of the re-plans are printed too.
# At the end, the workers' load table (the server's, at exit) with each worker's compute time
# per (token, expert) pair: an expert a worker gained computes as fast as one it kept.
#   scripts/bench-replan.sh           DH_BENCH_DIR: where the models are kept (~/.cache/darkhorse)
#                                     DH_BENCH_BIN: another darkhorse executable (an older build)
set -euo pipefail
cd "$(dirname "$0")/.."
seqs=${DH_BENCH_SEQS:-8}
gap=${DH_BENCH_GAP:-400}
replans=${DH_BENCH_REPLANS:-3}
moves=${DH_MAX_MOVES:-16}
. scripts/build-darkhorse.sh bench-replan
bin=${DH_BENCH_BIN:-$bin}
preset=${DH_BENCH_MODEL:-genesis-1b}
model=${DH_BENCH_DIR:-$HOME/.cache/darkhorse}/$preset
ensure_model "$preset" "$model"
tmp=$(mktemp -d)
job=""
cleanup() { # rank 0 stops the workers; mpirun then ends
  local pid
  pid=$(grep -o "; pid [0-9]*" "$tmp/serve.err" 2>/dev/null | sed 's/.* //')
  [ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null || true; } # stopped already at the end of a run
  [ -n "$job" ] && { for _ in $(seq 1 300); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done; kill -KILL "$job" 2>/dev/null || true; }
  rm -rf "$tmp"
}
trap cleanup EXIT

# the lopsided plan: the MoE layers of the contiguous one, 0-47 on worker 1 and 48-63 on worker 2
mpirun -np 3 --oversubscribe "$bin" generate --model "$model" --ids 1,2,3 --max-tokens 1 --print-ids \
  --placement-out "$tmp/contiguous.plan" >/dev/null 2>"$tmp/plan.err" || { cat "$tmp/plan.err"; exit 1; }
awk '/^layer [0-9]+ worker 1:/ { print "layer " $2 " worker 1: 0-47"; print "layer " $2 " worker 2: 48-63"; next }
     /^layer/ { next } { print }' "$tmp/contiguous.plan" >"$tmp/lopsided.plan"

key=bench-$$
DH_REPLAN_STEP_LOG=$tmp/steps.log mpirun -np 3 --oversubscribe "$bin" serve --model "$model" --port 0 \
  --api-key "$key" --max-seqs "$seqs" --ctx 4096 --placement "$tmp/lopsided.plan" --replan-every "$gap" \
  --max-moves "$moves" --shutdown-grace 0 >/dev/null 2>"$tmp/serve.err" &
job=$!
for _ in $(seq 1 1200); do grep -q "listening on" "$tmp/serve.err" && break; sleep 0.1; done
url=http://127.0.0.1:$(grep -o "listening on http://127.0.0.1:[0-9]*" "$tmp/serve.err" | sed 's/.*://')
tokens=$((gap * replans + gap / 2))
echo "bench-replan: $preset, $seqs sequences of $tokens tokens; a re-plan every $gap steps, --max-moves $moves" >&2
pids=()
for i in $(seq 1 "$seqs"); do
  curl -s -o /dev/null -m 7200 "$url/v1/completions" -H "Authorization: Bearer $key" \
    -d "{\"prompt\":[$((1000 + i)),$((20000 + i)),7,$((90000 + i))],\"max_tokens\":$tokens,\"temperature\":0,\"ignore_eos\":true}" &
  pids+=($!)
done
wait "${pids[@]}"
# stop the server, so that it prints the workers' table
kill -TERM "$(grep -o "; pid [0-9]*" "$tmp/serve.err" | sed 's/.* //')"
for _ in $(seq 1 600); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done
grep -E "re-plan step times|the longest step|placements moved|nothing moved|mapped the new plan|in use:|copied" \
  "$tmp/serve.err" | sed 's/^\[rank 0\] info: [a-z_.]*:[0-9]*: //'
echo "step times (ms) during each re-plan against windows of as many steps without one, same run:"
scripts/replan-steps.py "$tmp/steps.log"
echo "the workers at exit (us_per_pair: compute_s over expert-tok):"
awk '/^worker  experts/ { on = 1; print $0 "  us_per_pair"; next }
     on && $1 ~ /^[0-9]+$/ { printf "%s  %11.1f\n", $0, ($4 > 0 ? 1e6 * $5 / $4 : 0); next } { on = 0 }' "$tmp/serve.err"
lscpu | grep 'Model name' || true
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (other work on this machine)"
