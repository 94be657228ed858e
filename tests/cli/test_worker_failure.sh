#!/usr/bin/env bash
# test_worker_failure.sh DARKHORSE STOP|KILL: a worker of a 3-rank cluster is stopped (SIGSTOP)
# or killed (SIGKILL) in the middle of generation. The run must end non-zero, within the
# deadline (--worker-timeout 2) plus a few seconds; after SIGSTOP the coordinator must name the
# rank and the layer; and no process of the job may be left behind.
set -u
bin=$1 sig=$2
tmp=$(mktemp -d)
cleanup() { pkill -KILL -f "$tmp/m" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- stderr of the run:"; tail -30 "$tmp/err"; exit 1; }

"$bin" init-model --preset genesis-tiny --out "$tmp/m" >/dev/null 2>&1 || fail "init-model"
mpirun -np 3 --oversubscribe "$bin" generate --model "$tmp/m" --ids 1,2,3 --max-tokens 100000 \
  --ignore-eos --print-ids --temperature 0 --worker-timeout 2 >"$tmp/out" 2>"$tmp/err" &
job=$!

# wait (at most 60 s) until the cluster is generating, then a little more
for _ in $(seq 1 600); do
  grep -q "loaded" "$tmp/err" 2>/dev/null && break
  kill -0 $job 2>/dev/null || fail "the job ended before generating"
  sleep 0.1
done
grep -q "loaded" "$tmp/err" || fail "the cluster did not start within 60 s"
sleep 1

victim=""
for p in $(pgrep -f "$tmp/m"); do
  tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=2" && victim=$p
done
[ -n "$victim" ] || fail "no process of rank 2"
t0=$(date +%s%N)
kill -"$sig" "$victim"

# the job must end by itself: give it 2 s of deadline plus 10 s
for _ in $(seq 1 120); do kill -0 $job 2>/dev/null || break; sleep 0.1; done
if kill -0 $job 2>/dev/null; then fail "still running 12 s after SIG$sig"; fi
wait $job
rc=$?
elapsed_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo "SIG$sig on rank 2: the job ended in $elapsed_ms ms with status $rc"
[ $rc -ne 0 ] || fail "exit status 0 after losing a worker"
if [ "$sig" = STOP ]; then
  grep -Eq "worker rank 2 did not answer within [0-9.]+ s at layer [0-9]+" "$tmp/err" \
    || fail "no message naming rank 2 and the layer"
  grep -E "did not answer" "$tmp/err" | head -1
fi
sleep 1
left=$(pgrep -f "$tmp/m" | wc -l)
[ "$left" -eq 0 ] || fail "$left processes left behind"
echo "PASS"
