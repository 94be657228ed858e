#!/usr/bin/env bash
# test_netns.sh DARKHORSE DATA_DIR: scripts/netns-cluster.sh, a 3-rank cluster in network
# namespaces joined by 100mbit links.
#   1. greedy generate across the namespaces gives the in-process ids;
#   2. when mpirun fails (a model path that does not exist), the script exits non-zero and
#      leaves no namespace, veth or process behind;
#   3. the same after Ctrl-C (SIGINT) in the middle of a generation.
# Skipped (exit 77) when network namespaces cannot be created (not root, no CAP_SYS_ADMIN).
set -u
bin=$1 data=$2
script=$(cd "$(dirname "$0")/../.." && pwd)/scripts/netns-cluster.sh

if [ "$(id -u)" -ne 0 ]; then echo "SKIP: network namespaces need root"; exit 77; fi
for tool in ip tc mpirun python3; do
  command -v "$tool" >/dev/null || { echo "SKIP: no $tool (scripts/setup.sh installs it)"; exit 77; }
done
probe=dh-probe$$
if ! ip netns add "$probe" 2>/dev/null; then echo "SKIP: cannot create a network namespace here"; exit 77; fi
ip netns del "$probe"

tmp=$(mktemp -d)
tag=t$$
cleanup() { # only if a check failed and left something: the test must not leak either
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^dh-$tag"); do
    for p in $(ip netns pids "$ns"); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$ns"
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; [ -f "$tmp/err" ] && { echo "--- stderr of the run:"; tail -30 "$tmp/err"; }; exit 1; }

veths_before=$(ip -o link show type veth | awk -F': ' '{print $2}' | sort)

# nothing of run $1 (a --name) is left: namespaces, veths here, processes (orted and mpirun
# name the run's temporary directory, the ranks our model path); reaped within 5 s
check_gone() {
  local name=$1 what=$2 left
  left=$(ip netns list | awk '{print $1}' | grep "^dh-$name-")
  [ -z "$left" ] || fail "$what: namespaces left behind: $left"
  [ "$(ip -o link show type veth | awk -F': ' '{print $2}' | sort)" = "$veths_before" ] ||
    fail "$what: the veths of this namespace changed"
  for _ in $(seq 1 50); do
    left=$(pgrep -f "netns-cluster-$name\.|$tmp/")
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  fail "$what: processes left behind: $(ps -o pid,args -p "$(echo $left | tr ' ' ,)")"
}

# 1. the cluster in namespaces gives the in-process greedy ids
ln -s "$data/ref-tiny" "$tmp/ref"
args=(generate --model "$tmp/ref" --ids 5,17,42,7 --temperature 0 --max-tokens 12 --print-ids)
"$bin" "${args[@]}" >"$tmp/want" 2>"$tmp/err" || fail "in-process generate"
timeout 60 "$script" -n 3 --rate 100mbit --name "${tag}a" -- "$bin" "${args[@]}" >"$tmp/got" 2>"$tmp/err" ||
  fail "generate across 3 namespaces exited with $?"
grep -q "on 10.213.0.0/24, links 100mbit" "$tmp/err" || fail "the script did not say what it built"
grep -q "rank 2 on" "$tmp/err" || fail "rank 2 did not start"
[ -s "$tmp/want" ] && cmp -s "$tmp/want" "$tmp/got" || fail "ids differ: in-process '$(cat "$tmp/want")', namespaces '$(cat "$tmp/got")'"
check_gone "${tag}a" "after a good run"
echo "ok (${SECONDS} s): 3 ranks in namespaces give the in-process ids: $(cat "$tmp/got")"

# 2. mpirun fails: every rank refuses the missing model
timeout 60 "$script" -n 3 --rate 100mbit --name "${tag}b" -- "$bin" generate --model "$tmp/none" --ids 1,2 \
  --max-tokens 2 >/dev/null 2>"$tmp/err"
rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || fail "a missing model: exit status $rc, expected mpirun's failure"
grep -q "mpirun exited with status" "$tmp/err" || fail "the script did not report mpirun's failure"
check_gone "${tag}b" "after mpirun failed"
echo "ok (${SECONDS} s): mpirun failed with status $rc and nothing is left"

# 3. Ctrl-C in the middle of a generation (python resets SIGINT, which bash ignores in jobs
# started with &, so the script sees it as it would from a terminal)
python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
  "$script" -n 3 --rate 100mbit --name "${tag}c" -- "$bin" generate --model "$tmp/ref" --ids 1,2,3 \
  --max-tokens 100000 --ignore-eos --print-ids --temperature 0 >/dev/null 2>"$tmp/err" &
job=$!
for _ in $(seq 1 300); do
  grep -q "loaded" "$tmp/err" && break
  kill -0 $job 2>/dev/null || fail "the job ended before generating"
  sleep 0.1
done
grep -q "loaded" "$tmp/err" || fail "the cluster did not start within 30 s"
sleep 1
kill -INT $job
for _ in $(seq 1 150); do kill -0 $job 2>/dev/null || break; sleep 0.1; done
kill -0 $job 2>/dev/null && fail "still running 15 s after SIGINT"
wait $job
rc=$?
[ "$rc" -eq 130 ] || fail "after SIGINT: exit status $rc, expected 130"
check_gone "${tag}c" "after Ctrl-C"
echo "ok (${SECONDS} s): Ctrl-C tore everything down"
