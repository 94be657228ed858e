#!/usr/bin/env bash
# test_hosts.sh DARKHORSE DATA_DIR VERSION: `darkhorse hosts` under mpirun and on its own.
# One line per rank, in rank order, each with the version CMake gives and the same model
# identity; a non-zero exit naming the rank when one rank has a wrong model path (mpirun's MPMD
# form gives one rank another --model), a different checkpoint at the path, or when rank 0
# itself cannot load; the --hostfile form that runs mpirun itself; the usage errors.
set -u
bin=$1 data=$2 version=$3
. "$(dirname "$0")/lib.sh"
# expect_fail "description" command...: the command must exit non-zero (which code, mpirun decides)
expect_fail() {
  local what=$1
  shift
  "$@" >"$tmp/out" 2>"$tmp/err" && { fail "$what (exit 0)"; return; }
  pass "$what"
}
# grep_err PATTERN "description": the last command's stderr must match
grep_err() { if grep -Eq "$1" "$tmp/err"; then pass "$2"; else fail "$2: no /$1/ in stderr"; tail -5 "$tmp/err"; fi; }
# field N KEY: the value of KEY= on the line of rank N of the last stdout
field() { awk -v r="rank=$1" -v k="$2=" '$1 == r { for (i = 2; i <= NF; i++) if (index($i, k) == 1) print substr($i, length(k) + 1) }' "$tmp/out"; }
# lines N: stdout has exactly N lines, ranks 0..N-1 in order
lines() {
  local want=$1 what=$2 ranks
  ranks=$(awk '{ print $1 }' "$tmp/out" | tr '\n' ' ')
  local expected=$(seq -f 'rank=%g' 0 $((want - 1)) | tr '\n' ' ')
  if [ "$(wc -l <"$tmp/out")" -eq "$want" ] && [ "$ranks" = "$expected" ]; then pass "$what"; else fail "$what: got '$ranks'"; cat "$tmp/out"; fi
}
check() { if eval "$1"; then pass "$2"; else fail "$2"; cat "$tmp/out"; fi; }
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
ref=$data/ref-tiny
mpi=(mpirun --oversubscribe)

# three ranks, all well
expect 0 "hosts under mpirun -np 3" "${mpi[@]}" -np 3 "$bin" hosts --model "$ref"
lines 3 "one line per rank, in rank order"
check '[ "$(grep -c " serve=yes$" "$tmp/out")" -eq 3 ]' "every rank can serve"
check '[ "$(grep -c " version=$version " "$tmp/out")" -eq 3 ]' "every rank reports version $version"
h0=$(field 0 model)
check '[ ${#h0} -eq 16 ] && [ "$(field 1 model)" = "$h0" ] && [ "$(field 2 model)" = "$h0" ]' "one model identity on every rank ($h0)"
check '[ "$(field 0 role)" = coordinator ] && [ "$(field 1 role)" = worker ] && [ "$(field 2 role)" = worker ]' "rank 0 coordinates, the others are workers"
check '[ "$(field 0 expert_gflops)" = - ] && awk "BEGIN { exit !($(field 1 expert_gflops) > 0 && $(field 2 expert_gflops) > 0) }"' \
  "the workers measure an expert rate, the coordinator does not"
check '[ "$(field 1 host)" = "$(hostname)" ] && [ "$(field 1 cores)" = "$(nproc --all 2>/dev/null || nproc)" ] && awk "BEGIN { exit !($(field 1 mem_total_gb) > 0) }"' \
  "host, cores and memory are this machine's"
grep_err "3 ranks on 1 host, every one can serve" "the verdict on stderr"

# one rank with a wrong model path (MPMD: ranks 0-1 one --model, rank 2 another)
expect_fail "a wrong model path on rank 2 fails the check" "${mpi[@]}" -np 2 "$bin" hosts --model "$ref" : -np 1 "$bin" hosts --model "$tmp/nonexistent"
lines 3 "still one line per rank"
check 'grep -q "^rank=2 .* model=- .*serve=no reason=.*$tmp/nonexistent" "$tmp/out"' "rank 2's line says it cannot serve and names the path"
check '[ "$(grep -c " serve=yes$" "$tmp/out")" -eq 2 ]' "ranks 0 and 1 can serve"
grep_err "1 of 3 ranks would be refused at start-up; the first: rank 2" "stderr says why"

# a different checkpoint at the path on rank 2: same shapes, another routed_scaling_factor
mkdir -p "$tmp/other" && cp "$ref/model.safetensors" "$tmp/other/"
python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['routed_scaling_factor'] = c.get('routed_scaling_factor', 1.0) + 1.0; json.dump(c, open(sys.argv[2], 'w'), indent=2)" \
  "$ref/config.json" "$tmp/other/config.json"
expect_fail "a different model on rank 2 fails the check" "${mpi[@]}" -np 2 "$bin" hosts --model "$ref" : -np 1 "$bin" hosts --model "$tmp/other"
check 'grep -q "^rank=2 .*serve=no reason=.*different model" "$tmp/out" && [ "$(field 2 model)" != "$(field 0 model)" ]' "rank 2 has another identity and is refused for it"

# rank 0 itself cannot load: refused; the others are checked for their own state only
expect_fail "a wrong model path on rank 0 fails the check" "${mpi[@]}" -np 1 "$bin" hosts --model "$tmp/nonexistent" : -np 2 "$bin" hosts --model "$ref"
check 'grep -q "^rank=0 .*serve=no" "$tmp/out" && [ "$(grep -c " serve=yes$" "$tmp/out")" -eq 2 ]' "rank 0 refused, ranks 1 and 2 fine on their own"

# --hostfile: hosts runs mpirun itself (with a relative model path, made absolute for the ranks)
printf 'localhost slots=3\n' >"$tmp/hostfile"
expect 0 "hosts --hostfile runs mpirun over the hostfile's 3 slots" bash -c 'cd "$1" && "$2" hosts --hostfile "$3" --model ref-tiny' _ "$data" "$bin" "$tmp/hostfile"
lines 3 "one line per slot"
expect 0 "hosts --hostfile -np 2" "$bin" hosts --hostfile "$tmp/hostfile" -np 2 --model "$ref"
lines 2 "-np 2 gives two lines"
expect_fail "hosts --hostfile with a missing model" "$bin" hosts --hostfile "$tmp/hostfile" -np 2 --model "$tmp/nonexistent"

# alone, and the usage errors
expect 0 "hosts without mpirun" "$bin" hosts --model "$ref"
lines 1 "one line"
check '[ "$(field 0 role)" = alone ] && awk "BEGIN { exit !($(field 0 expert_gflops) > 0) }"' "alone, rank 0 hosts the experts and measures their rate"
expect 1 "hosts alone with a missing model" "$bin" hosts --model "$tmp/nonexistent"
expect 2 "hosts without --model" "$bin" hosts
expect 2 "-np without --hostfile" "$bin" hosts -np 2 --model "$ref"
expect 2 "--hostfile under mpirun" "${mpi[@]}" -np 1 "$bin" hosts --hostfile "$tmp/hostfile" --model "$ref"
grep_err "already under mpirun" "the message says why"

[ $fails -eq 0 ] && echo "PASS" || { echo "$fails FAILED"; exit 1; }
