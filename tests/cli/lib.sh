# lib.sh: what the command-line tests share; sourced after `set -u`. A temporary directory
# $tmp removed at exit, "ok"/"FAIL" lines counted in $fails, expect and grep_err on the last
# command's output ($tmp/out, $tmp/err), and the verdict (finish).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
# expect STATUS "description" command...: the command's exit status must be STATUS ("nonzero":
# any but 0); its stdout and stderr are kept in $tmp/out and $tmp/err
expect() {
  local want=$1 what=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$? ok=0
  if [ "$want" = nonzero ]; then [ "$got" -ne 0 ] && ok=1; else [ "$got" -eq "$want" ] && ok=1; fi
  if [ "$ok" = 1 ]; then pass "$what"; else fail "$what (exit $got, wanted $want)"; tail -5 "$tmp/err"; fi
}
# grep_err PATTERN "description": the last command's stderr must match
grep_err() { if grep -Eq "$1" "$tmp/err"; then pass "$2"; else fail "$2: no /$1/ in stderr"; tail -5 "$tmp/err"; fi; }
# the verdict and the exit status
finish() { [ "$fails" -eq 0 ] && echo "PASS" || { echo "$fails FAILED"; exit 1; }; }
