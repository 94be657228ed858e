#!/usr/bin/env bash
# chaos.sh: serving through lost workers. `darkhorse serve --launch "mpirun -np NP
# --oversubscribe"` on a model, CLIENTS concurrent streaming clients (half greedy, half seeded;
# scripts/chaos-client.py) for DURATION seconds, and a random worker killed (SIGKILL) or
# stopped (SIGSTOP) every 30-60 s. Then every completed request is run again without faults on
# the same front end (same plan) and compared token for token (as text).
#
# Reports on stdout: requests and failures, exact completions, recovery per request (from the
# fault to that request's first token after the stall: median and max), the restart time (the
# failure noticed to the new job's hello, from the front end's log) against the whole recovery
# (what dominates), and the front end's RSS and file descriptors at each fault and at the end.
#
#   scripts/chaos.sh                                the issue's run: genesis-1b, np 5, 32 clients,
#                                                   max_tokens 200, 300 s, faults every 30-60 s
#   scripts/chaos.sh --model DIR --np 3 --clients 8 --max-tokens 64 --duration 90 --every 20,30
#                                                   a shorter run
# Options: --bin PATH (default build/cli/darkhorse), --model DIR (default
# ${DH_BENCH_DIR:-~/.cache/darkhorse}/genesis-1b, made with init-model when absent), --np N,
# --clients N, --max-tokens N, --duration S, --every MIN,MAX (seconds between faults),
# --signals KILL,STOP, --worker-timeout S (default 5), --out DIR (default a new temporary
# directory, kept), --args "more serve options".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/cli/darkhorse
model=${DH_BENCH_DIR:-$HOME/.cache/darkhorse}/genesis-1b
np=5 clients=32 max_tokens=200 duration=300 every=30,60 signals=KILL,STOP wt=5 out="" extra=""
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2 ;; --model) model=$2 ;; --np) np=$2 ;; --clients) clients=$2 ;;
    --max-tokens) max_tokens=$2 ;; --duration) duration=$2 ;; --every) every=$2 ;;
    --signals) signals=$2 ;; --worker-timeout) wt=$2 ;; --out) out=$2 ;; --args) extra=$2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "chaos: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
[ -x "$bin" ] || { echo "chaos: no darkhorse at $bin (build first, or --bin)" >&2; exit 1; }
if [ ! -f "$model/config.json" ]; then
  echo "chaos: creating $model (genesis-1b)" >&2
  "$bin" init-model --preset genesis-1b --out "$model" >&2
fi
[ -n "$out" ] || out=$(mktemp -d /tmp/chaos.XXXXXX)
mkdir -p "$out"
fmin=${every%,*} fmax=${every#*,}
IFS=, read -r -a sigs <<<"$signals"
client=$root/scripts/chaos-client.py
echo "chaos: $bin, $model, np $np, $clients clients, max_tokens $max_tokens, ${duration} s, a fault every" \
  "$fmin-$fmax s ($signals), --worker-timeout $wt; files in $out" >&2
echo "chaos: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" >&2

# shellcheck disable=SC2086
"$bin" serve --model "$model" --port 0 --launch "mpirun -np $np --oversubscribe" --worker-timeout "$wt" \
  --max-seqs "$clients" --max-queue 1024 --recovery-wait 120 --ctx $((max_tokens + 64)) \
  --kv-tokens $((clients * (max_tokens + 64) + 1024)) $extra 2>"$out/fe.err" &
fe=$!
poller=""
cleanup() { kill -TERM $fe 2>/dev/null || true; wait $fe 2>/dev/null || true; [ -z "$poller" ] || kill $poller 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 1200); do
  port=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$out/fe.err" 2>/dev/null | head -1 | sed 's/.*://' || true)
  [ -n "$port" ] && break
  kill -0 $fe 2>/dev/null || { tail -20 "$out/fe.err" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "chaos: the front end did not listen" >&2; exit 1; }
health_ok() { curl -s -m 5 "http://127.0.0.1:$port/health" | grep -q '"ok"'; }
for _ in $(seq 1 3000); do health_ok && break; sleep 0.1; done
health_ok || { echo "chaos: the job never served" >&2; tail -20 "$out/fe.err" >&2; exit 1; }
echo "chaos: serving on port $port" >&2

fe_stats() { # time rss_kb fds
  echo "$(date +%s.%N) $(awk '/VmRSS/ {print $2}' /proc/$fe/status) $(find /proc/$fe/fd -mindepth 1 | wc -l)"
}
rank_pid() {
  for p in $(pgrep -f -- "--model $model" || true); do
    [ "$p" = "$fe" ] && continue
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" && { echo "$p"; return; }
  done
}

: >"$out/faults.txt"
fe_stats >"$out/fe-stats.txt"
# /health every 50 ms, its changes with their time: when each failure was noticed and served again
(last="" ; while kill -0 $fe 2>/dev/null; do
   st=$(curl -s -m 2 "http://127.0.0.1:$port/health" | grep -o '"status":"[a-z]*"' || true)
   [ "$st" != "$last" ] && echo "$(date +%s.%N) $st" >>"$out/health.txt" && last=$st
   sleep 0.05
 done) &
poller=$!
python3 "$client" --port "$port" --clients "$clients" --duration "$duration" --max-tokens "$max_tokens" \
  --out "$out/chaos.jsonl" &
cl=$!
while kill -0 $cl 2>/dev/null; do
  wait_s=$((fmin + RANDOM % (fmax - fmin + 1)))
  for _ in $(seq 1 $((wait_s * 10))); do kill -0 $cl 2>/dev/null || break; sleep 0.1; done
  kill -0 $cl 2>/dev/null || break
  for _ in $(seq 1 1200); do health_ok && break; sleep 0.1; done # the last recovery first
  rank=$((1 + RANDOM % (np - 1)))
  sig=${sigs[$((RANDOM % ${#sigs[@]}))]}
  victim=$(rank_pid $rank)
  [ -n "$victim" ] || { echo "chaos: no process of rank $rank" >&2; continue; }
  fe_stats >>"$out/fe-stats.txt"
  echo "$(date +%s.%N) $rank $sig $victim" >>"$out/faults.txt"
  kill -"$sig" "$victim"
  echo "chaos: $(date +%T) SIG$sig to rank $rank (pid $victim)" >&2
done
wait $cl || true
for _ in $(seq 1 1200); do health_ok && break; sleep 0.1; done
fe_stats >>"$out/fe-stats.txt"

# the fault-free run of every request that completed, on the same front end and plan
keys=$(python3 -c '
import json, sys
print(",".join(str(r["key"]) for r in map(json.loads, open(sys.argv[1])) if r["status"] == 200 and not r["error"]))
' "$out/chaos.jsonl")
echo "chaos: the fault-free run of $(echo "$keys" | tr ',' '\n' | grep -c .) requests" >&2
[ -z "$keys" ] || python3 "$client" --port "$port" --clients "$clients" --keys "$keys" --max-tokens "$max_tokens" \
  --out "$out/ref.jsonl"
fe_stats >>"$out/fe-stats.txt"

python3 - "$out" <<'EOF'
import json, os, re, statistics, sys
out = sys.argv[1]
runs = [json.loads(l) for l in open(out + "/chaos.jsonl")]
refs = {r["key"]: r for r in map(json.loads, open(out + "/ref.jsonl"))} if os.path.exists(out + "/ref.jsonl") else {}
faults = [l.split() for l in open(out + "/faults.txt") if l.strip()]
health = []
for l in open(out + "/health.txt") if os.path.exists(out + "/health.txt") else []:
    t, _, st = l.partition(" ")
    health.append((float(t), st.strip().split(":")[-1].strip('"')))
failed = [r for r in runs if r["status"] != 200 or r["error"]]
ok = [r for r in runs if r not in failed]
exact = [r for r in ok if r["key"] in refs and refs[r["key"]]["text"] == r["text"] and not refs[r["key"]]["error"]]
print("requests: %d, failed: %d, completed: %d, equal to the fault-free run: %d" %
      (len(runs), len(failed), len(ok), len(exact)))
for r in failed[:5]:
    print("  failed: key %d status %d: %s" % (r["key"], r["status"], r["error"]))
for r in ok:
    if r not in exact:
        print("  differs: key %d" % r["key"])
rec = []
for n, (t, rank, sig, pid) in enumerate(faults):
    tf = float(t)
    t_next = float(faults[n + 1][0]) if n + 1 < len(faults) else tf + 120
    per = []
    for r in runs:  # the stall: the longest gap between two tokens around the fault
        c = r["chunks"]
        gaps = [(c[i] - c[i - 1], c[i]) for i in range(1, len(c)) if tf - 0.5 <= c[i] < t_next]
        if c and c[0] < tf and gaps:
            per.append(max(gaps)[1] - tf)
    rec += per
    print("fault at +%.1f s: SIG%s rank %s: %d streams in flight, fault to the first token after the stall: "
          "median %.2f s, max %.2f s"
          % (tf - min(r["t_start"] for r in runs), sig, rank, len(per),
             statistics.median(per) if per else float("nan"), max(per) if per else float("nan")))
    deg = [t for t, st in health if st == "degraded" and tf <= t < t_next]
    ok_ = [t for t, st in health if st == "ok" and deg and deg[0] < t < t_next]
    if deg and ok_ and per:
        print("  noticed (health degraded) %.2f s after the fault; restart (degraded to ok) %.2f s; "
              "ok to the median stream's next token %.2f s (resubmission and recomputation)"
              % (deg[0] - tf, ok_[0] - deg[0], statistics.median(per) - (ok_[0] - tf)))
if rec:
    print("recovery per request (fault to next token), %d streams: median %.2f s, max %.2f s" %
          (len(rec), statistics.median(rec), max(rec)))
err = open(out + "/fe.err").read()
back = [float(x) for x in re.findall(r"serves again .*? ([0-9.]+) s after the failure", err)]
if back:
    print("restart (failure noticed to the new job's hello, front end log): median %.2f s, max %.2f s over %d" %
          (statistics.median(back), max(back), len(back)))
stats = [l.split() for l in open(out + "/fe-stats.txt") if l.strip()]
print("front end RSS (kB) at start, each fault, end: %s" % " ".join(s[1] for s in stats))
print("front end fds at start, each fault, end: %s" % " ".join(s[2] for s in stats))
EOF
