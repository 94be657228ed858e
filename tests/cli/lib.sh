# lib.sh: sourced by the command-line tests that count their checks (test_cli.sh, test_trace.sh):
# a scratch folder $tmp removed at exit with every process listed in pids, and the checks.
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
# expect STATUS "description" command...: the command's exit status must be STATUS
expect() {
  local want=$1 what=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  if [ "$got" -eq "$want" ]; then pass "$what"; else fail "$what (exit $got, wanted $want)"; tail -5 "$tmp/err"; fi
}
# wait_port ERRFILE PID: wait (at most 90 s: the sanitizer build loads slowly) until the server
# PID logs "listening on http://127.0.0.1:PORT" in ERRFILE; sets port ("" if it never did)
wait_port() {
  port=""
  for _ in $(seq 1 900); do
    port=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$1" 2>/dev/null | head -1 | sed 's/.*://')
    [ -n "$port" ] && break
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
}
