# serve_lib.sh: what the serve tests share (sourced; bin and here set by the caller): a temporary
# directory removed at exit with the processes started, pass/fail counting, JSON and Prometheus
# readers, and a server started in the background on 127.0.0.1 with its port found in its log.
# Every wait is bounded in count and time.
tmp=$(mktemp -d)
pids=()
cleanup() { # DH_TEST_KEEP=1 keeps the directory (logs) for a look after a failure
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  if [ -n "${DH_TEST_KEEP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
n_pass=0
log_of=""
fail() {
  echo "FAIL: $*"
  [ -n "$log_of" ] && { echo "--- server stderr:"; tail -30 "$log_of"; }
  echo "$n_pass passed, 1 failed"
  exit 1
}
ok() { n_pass=$((n_pass + 1)); echo "ok: $*"; }
KEY=test-key-123
AUTH="Authorization: Bearer $KEY"

# json FILE EXPR: a Python expression over the JSON document d of FILE
json() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# start NAME ARGS...: a server in the background; sets PORT, SRV (its pid), log_of
start() {
  local name=$1; shift
  log_of=$tmp/$name.err
  "$@" >"$tmp/$name.out" 2>"$log_of" &
  SRV=$!
  pids+=("$SRV")
  for _ in $(seq 1 900); do # at most 90 s: the sanitizer build loads slowly
    grep -q "listening on http://" "$log_of" 2>/dev/null && break
    alive "$SRV" || fail "$name: the server ended before listening"
    sleep 0.1
  done
  PORT=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$log_of" | head -1 | sed 's/.*://')
  [ -n "$PORT" ] || fail "$name: no 'listening on' line within 90 s"
  URL=http://127.0.0.1:$PORT
}

# call METHOD PATH [curl args...]: the status; the body in $tmp/body, headers in $tmp/head
call() {
  local m=$1 p=$2; shift 2
  curl -s -m 120 -X "$m" -o "$tmp/body" -D "$tmp/head" -w '%{http_code}' "$URL$p" "$@"
}

# metric SERIES...: their values from /metrics, which must parse strictly, one a line
metric() {
  curl -s -m 30 "$URL/metrics" >"$tmp/metrics" || fail "GET /metrics"
  python3 "$here/serve_metrics.py" "$tmp/metrics" "$@" || fail "/metrics is not valid Prometheus text"
}

# quick_metric NAME: a metric without labels, read with grep (for polling: no Python to start)
quick_metric() { curl -s -m 30 "$URL/metrics" | sed -n "s/^$1 //p"; }

# wait_metric SERIES VALUE: poll until it has that value (at most 60 s)
wait_metric() {
  for _ in $(seq 1 300); do
    [ "$(metric "$1")" = "$2" ] && return 0
    sleep 0.2
  done
  fail "$1 did not reach $2 (it is $(metric "$1"))"
}

# alive PID: running (not gone, not a zombie)
alive() {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ "${st:0:1}" != Z ]
}

# wait_exit PID SECONDS: the process's exit status, or fail if it is still running
wait_exit() {
  for _ in $(seq 1 $(($2 * 10))); do alive "$1" || break; sleep 0.1; done
  alive "$1" && fail "pid $1 still running $2 s after the signal"
  wait "$1"
}

# rank_pid PATTERN RANK: the pid of the MPI rank RANK among the processes whose command line
# matches PATTERN (empty if none)
rank_pid() {
  local p
  for p in $(pgrep -f "$1"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" && { echo "$p"; return; }
  done
}
