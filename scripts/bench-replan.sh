#!/usr/bin/env bash
# bench-replan.sh: does a live re-plan stall serving? genesis-1b under mpirun -np 3 (a coordinator,
# two workers) starts from a lopsided plan (worker 1 hosts 48 of the 64 experts of every MoE
# layer, worker 2 the other 16: a plan made for other traffic) and serves DH_BENCH_SEQS greedy
# requests at once, long enough that every step is one decode row per sequence (a steady load).
# Every DH_BENCH_GAP steps it asks POST /admin/replan, DH_BENCH_REPLANS times, --max-moves
# DH_MAX_MOVES each. For each re-plan the coordinator logs the step times from the request to 20
# steps after the switch, the longest of them against the median of the 100 steps before, and
# the longest of those 100 (what an ordinary step does on this machine); this prints them.
#   scripts/bench-replan.sh           DH_BENCH_DIR: where genesis-1b is kept (~/.cache/darkhorse)
set -euo pipefail
cd "$(dirname "$0")/.."
seqs=${DH_BENCH_SEQS:-8}
gap=${DH_BENCH_GAP:-150}
replans=${DH_BENCH_REPLANS:-3}
moves=${DH_MAX_MOVES:-16}
. scripts/build-darkhorse.sh bench-replan
model=${DH_BENCH_DIR:-$HOME/.cache/darkhorse}/genesis-1b
ensure_model genesis-1b "$model"
tmp=$(mktemp -d)
job=""
cleanup() { # rank 0 stops the workers; mpirun then ends
  local pid
  pid=$(grep -o "; pid [0-9]*" "$tmp/serve.err" 2>/dev/null | sed 's/.* //')
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
  [ -n "$job" ] && { for _ in $(seq 1 300); do kill -0 "$job" 2>/dev/null || break; sleep 0.1; done; kill -KILL "$job" 2>/dev/null; }
  rm -rf "$tmp"
}
trap cleanup EXIT

# the lopsided plan: the MoE layers of the contiguous one, 0-47 on worker 1 and 48-63 on worker 2
mpirun -np 3 --oversubscribe "$bin" generate --model "$model" --ids 1,2,3 --max-tokens 1 --print-ids \
  --placement-out "$tmp/contiguous.plan" >/dev/null 2>"$tmp/plan.err" || { cat "$tmp/plan.err"; exit 1; }
awk '/^layer [0-9]+ worker 1:/ { print "layer " $2 " worker 1: 0-47"; print "layer " $2 " worker 2: 48-63"; next }
     /^layer/ { next } { print }' "$tmp/contiguous.plan" >"$tmp/lopsided.plan"

key=bench-$$
mpirun -np 3 --oversubscribe "$bin" serve --model "$model" --port 0 --api-key "$key" --max-seqs "$seqs" \
  --ctx 4096 --placement "$tmp/lopsided.plan" --max-moves "$moves" --shutdown-grace 0 >/dev/null 2>"$tmp/serve.err" &
job=$!
for _ in $(seq 1 1200); do grep -q "listening on" "$tmp/serve.err" && break; sleep 0.1; done
url=http://127.0.0.1:$(grep -o "listening on http://127.0.0.1:[0-9]*" "$tmp/serve.err" | sed 's/.*://')
steps() { curl -s "$url/metrics" | sed -n 's/^darkhorse_engine_steps_total //p'; }
tokens=$((gap * (replans + 1) + 300))
for i in $(seq 1 "$seqs"); do
  curl -s -o /dev/null -m 3600 "$url/v1/completions" -H "Authorization: Bearer $key" \
    -d "{\"prompt\":[$((1000 + i)),$((20000 + i)),7,$((90000 + i))],\"max_tokens\":$tokens,\"temperature\":0,\"ignore_eos\":true}" &
done
echo "bench-replan: $seqs sequences of $tokens tokens; a re-plan every $gap steps, --max-moves $moves" >&2
for r in $(seq 1 "$replans"); do
  want=$((gap * r))
  for _ in $(seq 1 36000); do [ "$(steps)" -ge "$want" ] && break; sleep 0.1; done
  echo "re-plan $r at step $(steps): $(curl -s -m 3600 -X POST "$url/admin/replan" -H "Authorization: Bearer $key")"
done
for _ in $(seq 1 36000); do [ "$(steps)" -ge $((gap * replans + 150)) ] && break; sleep 0.1; done
grep -E "re-plan step times|the longest step|placements moved|mapped the new plan" "$tmp/serve.err" | sed 's/^\[rank 0\] info: [a-z_.]*:[0-9]*: //'
lscpu | grep 'Model name' || true
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (other work on this machine)"
