#!/usr/bin/env bash
# test_install.sh CMAKE BUILD_DIR SOURCE_DIR VERSION SANITIZED: `cmake --install` into a temporary prefix,
# then the installed binary run from another directory with an empty environment and the source
# and build trees out of reach.
#
# Out of reach: the runs happen in a mount namespace of their own (unshare, as root) where an
# empty tmpfs is mounted over the source and the build tree, with the model and the tokenizer
# cases copied to a temporary directory first. Where strace exists, every file the binary opens
# or stats is also listed, and none may be under either tree. Without root (no unshare) the
# strace check alone runs; with neither, the test is skipped (exit 77).
# The environment is empty (env -i) but for mpirun's PATH and root pair, and, when SANITIZED is
# ON, the sanitizers' own options (Open MPI's leaks suppressed, from a copy of tests/lsan.supp).
# Oracles: DeepSeek's reference greedy ids for tests/data/ref-tiny, Hugging Face's ids for the
# built-in tokenizer (tests/data/tokenizer), the version given by CMake.
set -u
cmake=$1 build=$(cd "$2" && pwd) src=$(cd "$3" && pwd) version=$4 sanitized=$5
. "$(dirname "$0")/lib.sh"
case "$tmp/" in "$src/"* | "$build/"*) echo "FAIL the temporary directory $tmp is inside a tree to hide"; exit 1 ;; esac

# install, and what it put there
prefix=$tmp/prefix
if "$cmake" --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1; then pass "cmake --install"; else fail "cmake --install"; cat "$tmp/install.log"; exit 1; fi
for f in bin/darkhorse share/darkhorse/deploy/darkhorse.service share/darkhorse/deploy/darkhorse.env.example \
         share/darkhorse/deploy/launch.sh share/doc/darkhorse/deploy.md share/doc/darkhorse/tokenizer/LICENSE.npm-package; do
  if [ -e "$prefix/$f" ]; then pass "installed $f"; else fail "$f is not installed"; fi
done
if command -v systemd-analyze >/dev/null; then
  sed "s#/usr/bin/darkhorse#$prefix/bin/darkhorse#" "$prefix/share/darkhorse/deploy/darkhorse.service" >"$tmp/darkhorse.service"
  if systemd-analyze verify "$tmp/darkhorse.service" >"$tmp/verify.log" 2>&1; then pass "systemd-analyze verify accepts the unit"
  else fail "systemd-analyze verify"; cat "$tmp/verify.log"; fi
fi

# what the runs need, outside both trees
cp -r "$src/tests/data/ref-tiny" "$tmp/model"
ref=$(python3 -c "import json,sys; e=json.load(open(sys.argv[1])); print(','.join(map(str,e['prompt_ids'])), ' '.join(map(str,e['greedy_ids'])))" "$tmp/model/expected.json")
prompt=${ref%% *} greedy=${ref#* }
n_greedy=$(wc -w <<<"$greedy")
# ten texts of the DeepSeek-V3 cases, each with Hugging Face's ids
python3 - "$src/tests/data/tokenizer/deepseek_v3_cases.jsonl" "$tmp/tok.in" "$tmp/tok.want" <<'PY'
import json, sys
cases = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
cases = [c for c in cases if len(c["text"]) > 20][:10]
with open(sys.argv[2], "w", encoding="utf-8") as f:
    for c in cases: f.write(json.dumps({"text": c["text"]}) + "\n")
with open(sys.argv[3], "w") as f:
    for c in cases: f.write(json.dumps(c["ids"]) + "\n")
PY

san=
case "$sanitized" in ON | 1 | TRUE | true)
  cp "$src/tests/lsan.supp" "$tmp/lsan.supp"
  san="ASAN_OPTIONS=detect_leaks=1:fast_unwind_on_malloc=0 LSAN_OPTIONS=suppressions=$tmp/lsan.supp:print_suppressions=0 UBSAN_OPTIONS=halt_on_error=1" ;;
esac
# The runs, in $tmp/work, with env -i. Written once, run under whichever isolation is available.
mkdir -p "$tmp/work"
cat >"$tmp/runs.sh" <<EOF
cd "$tmp/work" || exit 1
bin=$prefix/bin/darkhorse
# the trees really are out of reach here (only under unshare)
if [ "\${HIDDEN:-0}" = 1 ]; then
  [ -e "$src/CMakeLists.txt" ] || [ -e "$build/CMakeCache.txt" ] && echo "FAIL the trees are still visible" || echo "ok   the source and build trees are out of reach here"
fi
# each run's exit code as "NAME CODE"; a failing run's last lines of stderr after it (both runs
# below write the same files, so this is the only record of the run whose codes are checked)
code_of() { rc=\$?; echo "\$1 \$rc"; [ \$rc = 0 ] || tail -5 "\$2" | sed "s/^/  stderr of \$1: /"; }
env -i $san \$bin --version >version.out 2>version.err; code_of version version.err
env -i $san \$bin --help >help.out 2>help.err; code_of help help.err
env -i $san \$bin generate --model "$tmp/model" --ids $prompt --temperature 0 --max-tokens $n_greedy --print-ids >gen.out 2>gen.err; code_of generate gen.err
env -i $san \$bin tokenize --jsonl <"$tmp/tok.in" >tok.out 2>tok.err; code_of tokenize tok.err
env -i $san \$bin hosts --model "$tmp/model" >hosts.out 2>hosts.err; code_of hosts hosts.err
# the workers too run the installed binary: mpirun needs PATH and, as root, its two variables
env -i $san PATH=/usr/bin:/bin OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  mpirun -np 3 --oversubscribe \$bin generate --model "$tmp/model" --ids $prompt --temperature 0 --max-tokens $n_greedy \
  --print-ids >mpi.out 2>mpi.err; code_of mpirun mpi.err
EOF
if [ "$(id -u)" -eq 0 ] && unshare --mount true 2>/dev/null; then
  # the build tree first: it may be inside the source tree, which hides it once covered
  (cd "$tmp/work" && unshare --mount --propagation private bash -c \
    'mount -t tmpfs none "$1" && mount -t tmpfs none "$2" && HIDDEN=1 bash "$3"' _ "$build" "$src" "$tmp/runs.sh" >"$tmp/codes") ||
    fail "could not hide the trees in a mount namespace"
  isolated=1
else
  isolated=0
  echo "note: not root or no unshare: the trees stay mounted, the strace check alone shows they are not read"
fi
if command -v strace >/dev/null; then
  # from the work directory, with no PWD or OLDPWD: a shell looks those up when it starts
  (cd "$tmp/work" && strace -f -qq -e trace=%file,execve -o "$tmp/trace" env -i PATH=/usr/bin:/bin bash "$tmp/runs.sh" >"$tmp/codes.strace")
  [ "$isolated" = 1 ] || mv "$tmp/codes.strace" "$tmp/codes"
  if grep -F -e "\"$src/" -e "\"$build/" -e "\"$src\"" -e "\"$build\"" "$tmp/trace" >"$tmp/touched"; then
    fail "the installed binary touched the source or build tree:"; head -5 "$tmp/touched"
  else
    pass "no file under $src or $build was opened or looked up ($(wc -l <"$tmp/trace") file calls traced)"
  fi
elif [ "$isolated" = 0 ]; then
  echo "skip: neither unshare (as root) nor strace is available to keep the trees out of reach"
  exit 77
fi

grep -v '^[a-z]* [0-9]*$' "$tmp/codes"
grep -q '^FAIL' "$tmp/codes" && fails=$((fails + 1))
code() { awk -v k="$1" '$1 == k { print $2 }' "$tmp/codes"; }
w=$tmp/work
[ "$(code version)" = 0 ] && [ "$(cat "$w/version.out")" = "darkhorse $version" ] && pass "--version prints darkhorse $version" ||
  fail "--version: exit $(code version), '$(cat "$w/version.out")', wanted 'darkhorse $version'"
[ "$(code help)" = 0 ] && grep -q '^  hosts ' "$w/help.out" && pass "--help lists the commands, hosts among them" ||
  fail "--help: exit $(code help)"
[ "$(code generate)" = 0 ] && [ "$(cat "$w/gen.out")" = "$greedy" ] && pass "greedy ids equal DeepSeek's reference" ||
  { fail "generate: exit $(code generate), ids '$(cat "$w/gen.out")', the reference's '$greedy'"; tail -3 "$w/gen.err"; }
[ "$(code tokenize)" = 0 ] && python3 - "$w/tok.out" "$tmp/tok.want" <<'PY' && pass "the built-in tokenizer gives Hugging Face's ids (10 texts)" || fail "tokenize: exit $(code tokenize)"
import json, sys
got = [json.loads(l).get("ids") for l in open(sys.argv[1])]
want = [json.loads(l) for l in open(sys.argv[2])]
bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
if len(got) != len(want) or bad:
    print("  %d lines for %d texts; differing: %s" % (len(got), len(want), bad[:5])); sys.exit(1)
PY
[ "$(code hosts)" = 0 ] && grep -q "^rank=0 .*version=$version .*serve=yes$" "$w/hosts.out" && pass "hosts: rank 0 can serve" ||
  { fail "hosts: exit $(code hosts): $(cat "$w/hosts.out")"; tail -3 "$w/hosts.err"; }
[ "$(code mpirun)" = 0 ] && [ "$(cat "$w/mpi.out")" = "$greedy" ] && pass "under mpirun -np 3 the installed binary gives the same ids" ||
  { fail "mpirun: exit $(code mpirun), ids '$(cat "$w/mpi.out")'"; tail -5 "$w/mpi.err"; }

[ $fails -eq 0 ] && echo "PASS" || { echo "$fails FAILED"; exit 1; }
