# lib.sh: sourced by the command-line tests that count their checks (test_cli.sh, test_trace.sh,
# test_replay.sh):
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
# grep_err PATTERN "description": the last command's stderr must match (fixed string)
grep_err() { if grep -Fq -- "$1" "$tmp/err"; then pass "$2"; else fail "$2: no '$1' in stderr"; tail -3 "$tmp/err"; fi; }
# py "description" SCRIPT ARGS...: a Python check that exits 0 when it holds
py() {
  local what=$1 script=$2
  shift 2
  if python3 -c "$script" "$@" >"$tmp/py" 2>&1; then pass "$what"; else fail "$what"; tail -5 "$tmp/py"; fi
}
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
