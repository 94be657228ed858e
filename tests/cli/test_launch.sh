#!/usr/bin/env bash
# test_launch.sh DARKHORSE CLIENT kill|term: serve --launch "mpirun -np 3 --oversubscribe" on
# genesis-tiny, with real clients on 127.0.0.1 (CLIENT: scripts/chaos-client.py).
#  kill: 6 concurrent streaming clients (3 greedy, 3 seeded) run once without a fault, then
#        again while worker rank 2 is killed (SIGKILL) in the middle of their streams: every
#        completion must equal the fault-free one, whole; /health goes degraded then ok;
#        /metrics counts one restart and the resumed requests; the log names the rank and host.
#  term: SIGTERM to the front end while a request runs: it finishes within the grace, the front
#        end exits 0, and no process of the job is left 30 s after that request's end.
#  fekill: SIGKILL to the front end: mpirun dies with it (PR_SET_PDEATHSIG) and every rank with
#        mpirun; nothing of the job is left 10 s later.
set -u
bin=$1 client=$2 mode=$3
here=$(cd "$(dirname "$0")" && pwd)
. "$here/serve_lib.sh"

"$bin" init-model --preset genesis-tiny --out "$tmp/m" >/dev/null 2>&1 || fail "init-model"
# the processes of the job: every process whose command line names this test's model
job_pids() { pgrep -f -- "--model $tmp/m" | grep -v "^$SRV\$"; }
rank_pid() { # rank_pid R: the pid of rank R of the job
  for p in $(job_pids); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1" && { echo "$p"; return; }
  done
}
wait_health() { # wait_health ok|degraded SECONDS
  for _ in $(seq 1 $(($2 * 20))); do
    curl -s -m 5 "$URL/health" >"$tmp/health" 2>/dev/null
    grep -q "\"$1\"" "$tmp/health" && return 0
    sleep 0.05
  done
  return 1
}

# streams N MAX_TOKENS OUT CHUNKS: N streaming clients in the background (pid in cl), returning
# once every stream has CHUNKS chunks (at most 30 s)
streams() {
  python3 "$client" --port "$PORT" --clients "$1" --requests "$1" --max-tokens "$2" --out "$3" \
    --progress "$tmp/progress" --progress-chunks "$4" &
  cl=$!
  pids+=("$cl")
  for _ in $(seq 1 600); do [ -f "$tmp/progress" ] && break; sleep 0.05; done
  [ -f "$tmp/progress" ] || fail "the streams did not start within 30 s"
  rm -f "$tmp/progress"
}

start fe "$bin" serve --model "$tmp/m" --port 0 --launch "mpirun -np 3 --oversubscribe" --worker-timeout 3 \
  --max-seqs 8 --recovery-wait 60 --shutdown-grace 60
wait_health ok 120 || fail "/health never said ok: $(cat "$tmp/health")"
ok "the front end listens and the job serves"

if [ "$mode" = kill ]; then
  python3 "$client" --port "$PORT" --clients 6 --requests 6 --max-tokens 64 --out "$tmp/ref.jsonl" \
    || fail "the fault-free run"
  python3 - "$tmp/ref.jsonl" <<'EOF' || fail "the fault-free run had failures"
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
assert len(rs) == 6 and all(r["status"] == 200 and not r["error"] and r["completion_tokens"] == 64 for r in rs), rs
EOF
  ok "6 requests without a fault"

  streams 6 64 "$tmp/run.jsonl" 4
  victim=$(rank_pid 2)
  [ -n "$victim" ] || fail "no process of rank 2"
  kill -KILL "$victim"
  ok "SIGKILL to rank 2 (pid $victim) in the middle of 6 streams"
  wait_health degraded 20 && ok "/health degraded: $(cat "$tmp/health")" || fail "/health never said degraded"
  grep -q '"reason"' "$tmp/health" || fail "/health degraded without a reason"
  wait_health ok 120 || fail "/health did not come back to ok: $(cat "$tmp/health")"
  ok "/health ok again"
  for _ in $(seq 1 1200); do alive "$cl" || break; sleep 0.1; done
  alive "$cl" && fail "the clients did not end within 120 s"
  wait "$cl" || fail "the client failed"
  python3 - "$tmp/ref.jsonl" "$tmp/run.jsonl" <<'EOF' || fail "the completions differ from the fault-free run"
import json, sys
ref = {r["key"]: r for r in map(json.loads, open(sys.argv[1]))}
run = {r["key"]: r for r in map(json.loads, open(sys.argv[2]))}
assert sorted(run) == sorted(ref), (sorted(run), sorted(ref))
for k, r in sorted(run.items()):
    assert r["status"] == 200 and not r["error"], (k, r["status"], r["error"])
    assert r["completion_tokens"] == 64 and r["finish"] == "length", (k, r["completion_tokens"], r["finish"])
    assert r["text"] == ref[k]["text"], (k, "differs", r["text"][:80], ref[k]["text"][:80])
print("6 completions equal, %d characters in all" % sum(len(r["text"]) for r in run.values()))
EOF
  ok "every completion equals the fault-free run (no duplicate, no gap)"
  [ "$(metric darkhorse_engine_restarts_total)" = 1 ] || fail "restarts: $(metric darkhorse_engine_restarts_total)"
  resumed=$(metric darkhorse_requests_resumed_total)
  [ "$resumed" -ge 1 ] 2>/dev/null || fail "no request counted as resumed ($resumed)"
  [ "$(metric darkhorse_engine_up)" = 1 ] || fail "engine_up is not 1"
  ok "metrics: 1 restart, $resumed requests resumed, engine up"
  grep -Eq "rank 2 on host [^ ]+ failed" "$log_of" || fail "the log does not name rank 2 and its host"
  ok "the log names the failed rank and host: $(grep -Eo "rank 2 on host [^ ]+ failed[^:]*" "$log_of" | head -1)"
fi

if [ "$mode" = term ]; then
  streams 1 24 "$tmp/one.jsonl" 2
  [ "$(job_pids | wc -l)" -ge 3 ] || fail "fewer than 3 processes of the job before the signal"
  kill -TERM "$SRV"
  for _ in $(seq 1 900); do alive "$cl" || break; sleep 0.1; done
  t0=$(date +%s%N) # from here no request runs
  wait "$cl"
  python3 - "$tmp/one.jsonl" <<'EOF' || fail "the request in flight did not finish"
import json, sys
r = json.loads(open(sys.argv[1]).readline())
assert r["status"] == 200 and not r["error"] and r["completion_tokens"] == 24, r
EOF
  ok "the request in flight finished within the grace"
  wait_exit "$SRV" 30
  rc=$?
  [ "$rc" = 0 ] || fail "the front end exited with status $rc"
  for _ in $(seq 1 300); do [ -z "$(job_pids)" ] && break; sleep 0.1; done
  left=$(job_pids | wc -l)
  ms=$((($(date +%s%N) - t0) / 1000000))
  [ "$left" -eq 0 ] || fail "$left processes of the job left 30 s after the last request ended"
  [ "$ms" -le 30000 ] || fail "everything gone only $ms ms after the last request ended"
  ok "front end exited 0; everything gone $ms ms after the last request ended"
fi
if [ "$mode" = fekill ]; then
  [ "$(job_pids | wc -l)" -ge 3 ] || fail "fewer than 3 processes of the job"
  kill -KILL "$SRV"
  for _ in $(seq 1 100); do [ -z "$(job_pids)" ] && break; sleep 0.1; done
  left=$(job_pids | wc -l)
  [ "$left" -eq 0 ] || fail "$left processes of the job outlived the front end by 10 s"
  ok "nothing of the job outlives a killed front end"
fi
echo "$n_pass passed"
