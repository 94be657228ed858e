#!/usr/bin/env bash
# test_cli.sh DARKHORSE DATA_DIR: the command line as users and scripts drive it.
# logits and generate against DeepSeek's reference outputs (tests/data/ref-tiny), the same under
# mpirun, and the errors a user can make: bad options, a missing or mismatched checkpoint on a
# worker, a placement plan that does not fit the job.
set -u
bin=$1 data=$2
. "$(dirname "$0")/lib.sh"
# grep_err PATTERN "description": the last command's stderr must match
grep_err() { if grep -Eq "$1" "$tmp/err"; then pass "$2"; else fail "$2: no /$1/ in stderr"; tail -5 "$tmp/err"; fi; }
# compare A B ATOL RTOL: float32 files equal within |a-b| <= atol + rtol|b|
compare() {
  python3 - "$@" <<'PY'
import array, sys
a, b = array.array('f'), array.array('f')
a.frombytes(open(sys.argv[1], 'rb').read()); b.frombytes(open(sys.argv[2], 'rb').read())
atol, rtol = float(sys.argv[3]), float(sys.argv[4])
if len(a) != len(b): print("  sizes differ: %d vs %d" % (len(a), len(b))); sys.exit(1)
worst = max(range(len(a)), key=lambda i: abs(a[i] - b[i]) - atol - rtol * abs(b[i]))
bad = sum(1 for x, y in zip(a, b) if abs(x - y) > atol + rtol * abs(y))
print("  max |diff| %.3g (worst at %d: %.7g vs %.7g), %d outside tolerance" % (max(abs(x - y) for x, y in zip(a, b)), worst, a[worst], b[worst], bad))
sys.exit(1 if bad else 0)
PY
}
json_ids() { python3 -c "import json,sys; print(' '.join(map(str, json.load(open(sys.argv[1]))[sys.argv[2]])))" "$@"; }
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
ref=$data/ref-tiny
prompt=$(json_ids "$ref/expected.json" prompt_ids | tr ' ' ',')
greedy=$(json_ids "$ref/expected.json" greedy_ids)

# help and usage
expect 0 "darkhorse --help" "$bin" --help
expect 2 "an unknown command is a usage error" "$bin" frobnicate
expect 0 "generate --help" "$bin" generate --help
expect 2 "generate without --model" "$bin" generate --ids 1,2
expect 2 "an id that is not a number" "$bin" generate --model "$ref" --ids 1,x,3 --print-ids
grep_err "not a token id" "the message names the bad id"
expect 2 "an id beyond the vocabulary" "$bin" generate --model "$ref" --ids 1,512 --print-ids
grep_err "vocabulary size 512" "the message names the vocabulary size"
expect 1 "a missing checkpoint" "$bin" logits --model "$tmp/nope" --ids 1 --out "$tmp/x"
grep_err "$tmp/nope" "the message names the directory"
mkdir -p "$tmp/badcfg" && cp "$ref/model.safetensors" "$tmp/badcfg/" && sed 's/"hidden_size": 64/"hidden_size": "64"/' "$ref/config.json" >"$tmp/badcfg/config.json"
expect 1 "a config with a wrong type" "$bin" logits --model "$tmp/badcfg" --ids 1 --out "$tmp/x"
grep_err 'hidden_size.*must be an integer' "the message names the key"
expect 2 "init-model with an unknown preset" "$bin" init-model --preset genesis-huge --out "$tmp/m"
expect 2 "a bad --weights value" "$bin" generate --model "$ref" --ids 1 --weights fp8

# the reference: logits, MTP logits and greedy ids, in-process
expect 0 "logits on ref-tiny" "$bin" logits --model "$ref" --ids "$prompt" --out "$tmp/l.f32" --mtp-out "$tmp/m.f32"
if compare "$tmp/l.f32" "$ref/prefill_logits.f32" 1e-4 1e-5; then pass "logits match DeepSeek's reference"; else fail "logits vs reference"; fi
if compare "$tmp/m.f32" "$ref/mtp_logits.f32" 1e-4 1e-5; then pass "MTP logits match the reference"; else fail "MTP logits vs reference"; fi
expect 0 "greedy generate on ref-tiny" "$bin" generate --model "$ref" --ids "$prompt" --temperature 0 --max-tokens 16 --print-ids
if [ "$(cat "$tmp/out")" = "$greedy" ]; then pass "greedy ids equal the reference's"; else fail "greedy ids: $(cat "$tmp/out") vs $greedy"; fi

# stored quantization equals quantization at load, bit for bit
for q in q8 q4; do
  expect 0 "quantize ref-tiny to $q" "$bin" quantize --model "$ref" --out "$tmp/$q" --weights "$q"
  expect 0 "logits of the stored $q checkpoint" "$bin" logits --model "$tmp/$q" --ids "$prompt" --out "$tmp/s.f32"
  expect 0 "logits with --weights $q" "$bin" logits --model "$ref" --ids "$prompt" --out "$tmp/w.f32" --weights "$q"
  cmp -s "$tmp/s.f32" "$tmp/w.f32" && pass "stored $q == $q at load" || fail "stored $q differs from $q at load"
done
# the decode rows too, on a model whose absorbed attention matrices can be quantized (ref-tiny's
# heads are 16 wide, not a whole block of 32, so they stay f32 either way): a stored checkpoint
# holds them as --weights would, not in f32
python3 -c 'import json, sys; c = json.load(open(sys.argv[1]))
c.update(qk_nope_head_dim=32, v_head_dim=32, kv_lora_rank=64, vocab_size=512); json.dump(c, open(sys.argv[2], "w"))' \
  "$ref/config.json" "$tmp/absorbed-config.json" || fail "absorbed-config.json"
expect 0 "init-model with 32-wide heads" "$bin" init-model --config "$tmp/absorbed-config.json" --out "$tmp/ab" --seed 3
for q in q8 q4k; do
  expect 0 "quantize it to $q" "$bin" quantize --model "$tmp/ab" --out "$tmp/ab-$q" --weights "$q"
  expect 0 "decode logits of the stored $q checkpoint" "$bin" logits --model "$tmp/ab-$q" --ids 5,17,42,7,99,3 --decode \
    --out "$tmp/s.f32"
  expect 0 "decode logits with --weights $q" "$bin" logits --model "$tmp/ab" --ids 5,17,42,7,99,3 --decode \
    --out "$tmp/w.f32" --weights "$q"
  expect 0 "prefill logits with --weights $q" "$bin" logits --model "$tmp/ab" --ids 5,17,42,7,99,3 \
    --out "$tmp/p.f32" --weights "$q"
  cmp -s "$tmp/s.f32" "$tmp/w.f32" && pass "decode rows: stored $q == $q at load" || fail "decode rows: stored $q differs from $q at load"
  # the decode form is another computation than the prompt's: --decode did run it
  cmp -s "$tmp/p.f32" "$tmp/w.f32" && fail "--decode gave the prefill's logits" || pass "--decode ran the decode rows"
done
expect 1 "quantizing a quantized checkpoint" "$bin" quantize --model "$tmp/q8" --out "$tmp/q8b" --weights q4
grep_err "already quantized" "the message says so"

# the same through a 3-rank cluster
expect 0 "logits under mpirun -np 3" mpirun -np 3 --oversubscribe "$bin" logits --model "$ref" --ids "$prompt" --out "$tmp/lc.f32"
if compare "$tmp/lc.f32" "$tmp/l.f32" 1e-5 0; then pass "cluster logits within 1e-5 of in-process"; else fail "cluster logits"; fi
expect 0 "greedy generate under mpirun -np 3" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids "$prompt" --temperature 0 --max-tokens 16 --print-ids --placement-algo balanced --placement-out "$tmp/plan.txt"
if [ "$(cat "$tmp/out")" = "$greedy" ]; then pass "cluster greedy ids equal the reference's"; else fail "cluster greedy ids: $(cat "$tmp/out")"; fi
grep -q "^layer 1 worker 2:" "$tmp/plan.txt" && pass "--placement-out wrote the plan" || fail "--placement-out"
expect 0 "--placement FILE with --wire bf16" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids "$prompt" --temperature 0 --max-tokens 4 --print-ids --placement "$tmp/plan.txt" --wire bf16

# observed routing counts feed the balanced placement
expect 0 "generate with --routing-stats" "$bin" generate --model "$ref" --ids "$prompt" --temperature 0 --max-tokens 16 --print-ids --routing-stats "$tmp/routing.txt"
head -1 "$tmp/routing.txt" | grep -q "^darkhorse-routing 1" && [ "$(grep -c '^[0-9]' "$tmp/routing.txt")" -gt 10 ] \
  && pass "the routing counts were written" || fail "routing counts file"
balance() { grep -o "balance (mean/max expert tokens): [0-9.]*" "$tmp/err" | awk '{print $NF}'; }
expect 0 "contiguous, replaying the workload" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids "$prompt" --temperature 0 --max-tokens 16 --print-ids --placement-algo contiguous
bc=$(balance)
expect 0 "balanced from the observed counts" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids "$prompt" --temperature 0 --max-tokens 16 --print-ids --placement-algo balanced --routing-stats "$tmp/routing.txt"
bb=$(balance)
grep_err "observed routing counts for the placement" "the counts were read"
python3 -c "import sys; sys.exit(0 if float('$bb') >= float('$bc') else 1)" && pass "balanced ($bb) is at least as even as contiguous ($bc)" \
  || fail "balanced $bb worse than contiguous $bc"
[ "$(cat "$tmp/out")" = "$greedy" ] && pass "the same greedy ids with the balanced plan" || fail "ids under the balanced plan"

# worker speeds weigh the balanced placement: a worker three times as fast hosts three quarters
expect 0 "balanced with --worker-capacity 3,1" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids "$prompt" --temperature 0 --max-tokens 16 --print-ids --placement-algo balanced --worker-capacity 3,1 --placement-out "$tmp/plan31.txt"
[ "$(cat "$tmp/out")" = "$greedy" ] && pass "the same greedy ids on a 3:1 plan" || fail "ids under the 3:1 plan"
grep_err "worker capacities for the placement, ranks 1..2: 3:1 \(given\)" "the capacities used are logged"
experts_of() { grep "^layer $1 worker $2:" "$tmp/plan31.txt" | cut -d: -f2 | tr ' ' '\n' |
  awk -F- 'NF==1 && $1!="" {n++} NF==2 {n+=$2-$1+1} END {print n+0}'; }
[ "$(experts_of 1 1)" = 48 ] && [ "$(experts_of 1 2)" = 16 ] && [ "$(experts_of 2 1)" = 48 ] &&
  pass "the 3:1 plan gives workers 48 and 16 experts a layer" || fail "the 3:1 plan: $(experts_of 1 1) and $(experts_of 1 2)"
expect 0 "balanced with --worker-capacity measured" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids "$prompt" --temperature 0 --max-tokens 16 --print-ids --placement-algo balanced --worker-capacity measured
grep_err "worker capacities for the placement, ranks 1..2: [0-9.]+:[0-9.]+ \(measured" "the measured rates are used and logged"
[ "$(cat "$tmp/out")" = "$greedy" ] && pass "the same greedy ids on a measured plan" || fail "ids under the measured plan"
expect 2 "a capacity that is not a positive number" "$bin" generate --model "$ref" --ids 1,2 --worker-capacity 2,0
grep_err "worker capacity 2 in '2,0' is not a positive number" "the message names the bad speed"
expect 1 "more speeds than workers" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids 1,2 --max-tokens 2 --print-ids --placement-algo balanced --worker-capacity 1,2,3
grep_err "gives 3 speeds, but this job has 2 workers" "the message gives both counts"
[ "$(grep -c "cluster cannot start" "$tmp/err")" -eq 3 ] && pass "every rank says why" || fail "not every rank said why"
expect 1 "speeds for a placement that ignores them" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids 1,2 --max-tokens 2 --print-ids --worker-capacity 1,2
grep_err "weighs the 'balanced' placement; 'contiguous' would ignore it" "the message names the algorithm"

# cluster start-up errors, on every rank
expect 1 "a plan for another worker count" mpirun -np 4 --oversubscribe "$bin" generate --model "$ref" --ids 1,2 --max-tokens 2 --print-ids --placement "$tmp/plan.txt"
grep_err "plan is for 2 workers, this job has 3" "the message says why"
expect 1 "a worker without the checkpoint" mpirun -np 1 --oversubscribe "$bin" generate --model "$ref" --ids 1,2 --print-ids : -np 2 "$bin" generate --model "$tmp/absent" --ids 1,2 --print-ids
n=$(grep -c "cluster cannot start" "$tmp/err")
[ "$n" -eq 3 ] && pass "every rank says why ($n of 3)" || fail "ranks reporting the failure: $n of 3"
grep_err "rank [12] \(.*\): cannot load the checkpoint $tmp/absent" "the message names the rank and the path"
"$bin" init-model --config "$ref/config.json" --out "$tmp/other" --seed 5 --dtype f32 >/dev/null 2>&1
cp "$ref/config.json" "$tmp/other/config.json"
expect 1 "a worker with another checkpoint" mpirun -np 1 --oversubscribe "$bin" generate --model "$ref" --ids 1,2 --print-ids : -np 1 "$bin" generate --model "$tmp/other" --ids 1,2 --print-ids
grep_err "has a different model" "the identity mismatch is named"

# bench --passes: the timed decode steps' passes by size. A pass's bytes lie in its class; the
# passes read no more than the step's weights (the absorbed per-head products are not passes),
# and take no more than the timed steps' mean time; the warm-up and the bandwidth reader are not
# counted. Without --passes, no table.
expect 0 "bench --passes --json" "$bin" bench --model "$ref" -p 0 -n 4 -r 2 -t 2 --no-bandwidth --passes --json
py "bench --passes: each class holds its sizes; bytes and time within the step's" '
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().split("\n")[-1])
p = j["passes"]
assert p, j
for c in p:
    assert c["bytes_max"] / 2 < c["bytes_mean"] <= c["bytes_max"], c
    assert c["per_step"] > 0 and c["ms_per_step"] > 0 and c["gb_s"] > 0, c
read = sum(c["per_step"] * c["bytes_mean"] for c in p)
assert 0.5 * j["bytes_per_step"] < read <= j["bytes_per_step"] * (1 + 1e-9), (read, j["bytes_per_step"])
ms = sum(c["ms_per_step"] for c in p)
assert 0 < ms <= j["step_ms_mean"], (ms, j["step_ms_mean"])
assert not any("share_runs" in c for c in p), p  # no reader, no share
' "$tmp/out"
grep_err "passes in all: " "bench --passes prints its table on stderr"
expect 0 "bench --json without --passes" "$bin" bench --model "$ref" -p 0 -n 2 -r 1 --no-bandwidth --json
py "no pass table unless asked" 'import json, sys; assert "passes" not in json.loads(open(sys.argv[1]).read().strip().split("\n")[-1])' "$tmp/out"

# bench --depth: each test runs after D context tokens a sequence, prefilled untimed. Its
# name says so, the JSON carries the depth, and the forward pass's parts per step, which would
# count the prefills' long steps if they were in, stay within the timed steps' mean.
expect 0 "bench --depth --json" "$bin" bench --model "$ref" -p 20 -n 3 -d 40 -b 2 -r 2 -t 2 --no-bandwidth --passes --json
py "bench --depth: the tests are pp20@d40 and tg3@b2@d40, and the clocks are the timed steps'" '
import json, sys
pp, j = [json.loads(l) for l in open(sys.argv[1]).read().strip().split("\n")[-2:]]
assert pp["test"] == "pp20@d40" and pp["depth"] == 40 and pp["batch"] == 1, pp
assert j["test"] == "tg3@b2@d40" and j["depth"] == 40 and j["batch"] == 2, j
parts = sum(j["ms_per_step"][k] for k in ("attention", "moe", "dense", "head"))
assert 0 < parts <= j["step_ms_mean"], (parts, j["step_ms_mean"])
' "$tmp/out"
expect 2 "bench with a negative depth" "$bin" bench --model "$ref" -p 0 -n 2 -d -1 --no-bandwidth

# bench's roofline with the reader: each timed tg run also gets a share against the faster of
# the reader bursts just before and after it (so that a run in a slow minute is not judged by a
# fast minute's best). Recomputed here from the run's own tok/s and bytes; each run's ceiling is
# one of the bursts, so no higher than the best of all of them. The pass table's classes are
# judged the same way: their share lies between their GB/s over the fastest and the slowest run's
# ceiling.
expect 0 "bench --json with the reader" "$bin" bench --model "$ref" -p 0 -n 4 -r 3 -t 2 --passes --json
py "bench: each run's share, from its tok/s, the step's bytes and the bursts beside it" '
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().split("\n")[-1])
runs, bws, shares = j["tok_s_runs"], j["bandwidth_gb_s_runs"], j["roofline_share_runs"]
assert len(runs) == len(bws) == len(shares) == 3, j
assert sorted(runs)[1] == j["tok_s_median"] and min(runs) == j["tok_s_min"] and max(runs) == j["tok_s_max"], j
lo, hi = j["bandwidth_gb_s_range"]
for t, bw, s in zip(runs, bws, shares):
    assert lo <= bw <= hi <= j["bandwidth_gb_s"], (bw, j)
    want = j["bytes_per_step"] * t / j["batch"] / (bw * 1e9)
    assert abs(s - want) <= 1e-9 * want, (s, want)
assert j["roofline_share_runs_median"] == sorted(shares)[1], j
assert abs(j["roofline_share"] - j["bytes_per_step"] * j["tok_s_median"] / (j["bandwidth_gb_s"] * 1e9)) <= 1e-9, j
assert j["passes"], j
for c in j["passes"]:
    assert c["gb_s"] / max(bws) * (1 - 1e-9) <= c["share_runs"] <= c["gb_s"] / min(bws) * (1 + 1e-9), (c, bws)
pat = j["bandwidth_gb_s_patterns"]
assert sorted(pat) == sorted(["plain", "prefetch 8 KiB", "8 streams", "paced 2", "paced 4"]), pat
assert all(0 < g <= j["bandwidth_gb_s"] for g in pat.values()) and max(pat.values()) == j["bandwidth_gb_s"], (pat, j)
# the round trip between the threads, measured with each burst: the burst after run r is the
# one before run r + 1; every figure lies within the range of all of them
rt = j["thread_round_trip_ns_runs"]
lo, hi = j["thread_round_trip_ns_range"]
assert len(rt) == 3 and all(len(p) == 2 for p in rt), rt
assert all(rt[r][1] == rt[r + 1][0] for r in range(2)), rt
assert 0 < lo <= hi and all(v is None or lo <= v <= hi for p in rt for v in p), (rt, lo, hi)
# the fork-joins a step are the steps own, not the reader bursts between the timed runs
f = j["forks_per_step"]
assert abs(f["total"] - (f["attention"] + f["moe"] + f["dense"] + f["head"])) < 1e-6, f
' "$tmp/out"
grep_err "best of each pattern: plain [0-9.]+, prefetch 8 KiB [0-9.]+, 8 streams [0-9.]+, paced 2 [0-9.]+, paced 4 [0-9.]+" "bench prints each read pattern's best"
grep_err "each timed run.s share, against the faster reader burst just before or after it: [0-9.]+ of [0-9.]+ GB/s \\(round trip [0-9nan]+, [0-9nan]+ ns\\), " "bench prints each run's share and the threads' round trip beside it"
grep_err "the threads' round trip [0-9]+-[0-9]+ ns" "bench prints the range of the threads' round trip"
expect 0 "bench --json on one thread" "$bin" bench --model "$ref" -p 0 -n 2 -r 1 -t 1 --json
py "one thread: no round trip" 'import json, sys; j = json.loads(open(sys.argv[1]).read().strip().split("\n")[-1]); assert j["bandwidth_gb_s"] > 0 and not any("round_trip" in k for k in j), j' "$tmp/out"
expect 0 "bench --json --no-bandwidth" "$bin" bench --model "$ref" -p 0 -n 2 -r 2 --no-bandwidth --json
py "no shares without the reader" 'import json, sys; j = json.loads(open(sys.argv[1]).read().strip().split("\n")[-1]); assert not any(k.startswith("roofline") or k.endswith("_runs") for k in j), j' "$tmp/out"

# The packed decode streams' prefetch distance is chosen at run time from the CPU (0 on AMD
# Zen 4, cpuid family 25; 8192 elsewhere) and DH_KERN_PREFETCH_G16 overrides it; bench's cpu
# line says which. Kernels without the packed layout claim no distance.
if grep -q "avx512 kernels, packed" "$tmp/err"; then
  want=8192
  grep -q "^vendor_id.*AuthenticAMD" /proc/cpuinfo && grep -Eq "^cpu family[[:space:]]*: 25$" /proc/cpuinfo && want=0
  grep_err "prefetching $want bytes ahead" "bench names this CPU's default prefetch distance ($want)"
  expect 0 "bench with DH_KERN_PREFETCH_G16=4096" env DH_KERN_PREFETCH_G16=4096 "$bin" bench --model "$ref" -p 0 -n 2 -r 1 --no-bandwidth
  grep_err "prefetching 4096 bytes ahead" "DH_KERN_PREFETCH_G16 overrides the default"
else
  grep -q "prefetching" "$tmp/err" && fail "kernels without packed streams name a prefetch distance" ||
    pass "no prefetch distance named without packed kernels"
fi

[ $fails -eq 0 ] && echo "PASS" || { echo "$fails FAILED"; exit 1; }
