#!/usr/bin/env bash
# test_trace.sh DARKHORSE TRACE_TOOL DATA_DIR TRACES_DIR: routing traces from the command line.
#   import  hand-made ESFT-layout folders written here: every error the importer must catch
#           (truncated line, id out of range, a repeated id, a weight that is not finite, layers
#           of different lengths, a missing layer file) names the file, line and token; a good
#           folder round-trips: import, then info, the same counts as the files (counted here
#           by Python), and every id and weight as written.
#   live    --trace-out in one process and under mpirun -np 3 equals the router's choices: the
#           prompt's experts are those of DeepSeek's reference implementation (ref-tiny's
#           routing_prefill.json), and the trace's counts equal the --routing-stats counts the
#           forward pass keeps apart; serve records each request as a sequence with its domain.
#   simulate on the vendored ESFT trace: the contiguous plan gives the figures issue 13 quotes,
#           bytes follow the wire layout, and bad plans are refused.
set -u
bin=$1 tool=$2 data=$3 traces=$4
. "$(dirname "$0")/lib.sh"

# ---- import: a good folder (E 4, K 2, 2 layers) and broken copies of it
good=$tmp/esft
python3 - "$good" <<'PY'
import os, sys
root = sys.argv[1]
# domain -> layer -> lines of (ids, weights), 2 per token
data = {
  "alpha": {1: [([0, 1, 2, 3], ["0.5", "0.25", "0.125", "0.0625"]), ([3, 1], ["0.3333", "0.1"])],
            2: [([1, 2, 0, 3], ["0.4", "0.4", "0.2", "0.2"]), ([2, 0], ["1", "0"])]},
  "beta":  {1: [([0, 2, 1, 3, 0, 3], ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6"])],
            2: [([3, 2, 1, 0, 2, 1], ["0.9", "0.8", "0.7", "0.6", "0.5", "0.4"])]},
}
for dom, layers in data.items():
    os.makedirs(f"{root}/{dom}")
    open(f"{root}/{dom}/summary.json", "w").write("{}")
    for l, lines in layers.items():
        with open(f"{root}/{dom}/expert_weights_{l}.txt", "w") as f:
            for ids, ws in lines:
                f.write("\t".join(map(str, ids)) + "\t\t" + "\t".join(ws) + "\n")
open(f"{root}/notes.txt", "w").write("not a domain")
PY
# broken NAME PYTHON: a copy of the good folder changed by PYTHON (run inside it)
broken() {
  rm -rf "$tmp/$1" && cp -r "$good" "$tmp/$1"
  (cd "$tmp/$1" && python3 -c "$2")
}
edit='import sys
def edit(path, line, fn):
    ls = open(path).read().split("\n")
    ls[line - 1] = fn(ls[line - 1])
    open(path, "w").write("\n".join(ls))
'
# bad_import NAME "what" PYTHON MESSAGE: the good folder changed by PYTHON must fail to import
# with MESSAGE (the file, line and token at fault) on stderr
bad_import() {
  broken "$1" "$3"
  expect 1 "import: $2 is an error" "$bin" trace import --esft "$tmp/$1" --out "$tmp/x.dhtrace" --top-k 2 --experts 4
  grep_err "$4" "the message says where: $4"
}
bad_import trunc "a truncated line" "$edit"'edit("alpha/expert_weights_2.txt", 2, lambda s: s[:s.rindex("\t")])' \
  "alpha/expert_weights_2.txt:2: 2 ids and 1 weights"
grep_err "token 0 is incomplete" "the message names the token"
[ ! -e "$tmp/x.dhtrace" ] && pass "nothing is written on an error" || fail "a trace was written despite the error"
bad_import range "an id out of range" "$edit"'edit("beta/expert_weights_1.txt", 1, lambda s: "0\t2\t4" + s[5:])' \
  "beta/expert_weights_1.txt:1: token 1, slot 0: expert id '4' is not an integer in 0..3"
bad_import dup "an id twice in a token" "$edit"'edit("alpha/expert_weights_1.txt", 1, lambda s: "0\t0" + s[3:])' \
  "alpha/expert_weights_1.txt:1: token 0: expert 0 appears twice"
bad_import nan "a weight that is not finite" "$edit"'edit("beta/expert_weights_2.txt", 1, lambda s: s.replace("0.7", "nan"))' \
  "beta/expert_weights_2.txt:1: token 1, slot 0: weight 'nan'"
bad_import len "layers of different lengths" "$edit"'edit("alpha/expert_weights_2.txt", 1, lambda s: "1\t2\t\t0.4\t0.4")' \
  "alpha/expert_weights_2.txt:1: 1 tokens, but line 1 of"
bad_import missing "a missing layer file" 'import os; os.rename("beta/expert_weights_2.txt", "beta/expert_weights_3.txt")' \
  "beta/expert_weights_2.txt: missing"
bad_import fewer "domains with different layer counts" 'import os; os.remove("beta/expert_weights_2.txt")' \
  "1 layers, but"
expect 2 "import without --out is a usage error" "$bin" trace import --esft "$good"

# ---- round trip: import, info, dump
expect 0 "import of a good folder" "$bin" trace import --esft "$good" --out "$tmp/good.dhtrace" --top-k 2 --experts 4
expect 0 "trace info --json" "$bin" trace info "$tmp/good.dhtrace" --json
cp "$tmp/out" "$tmp/info.json"
"$tool" dump "$tmp/good.dhtrace" >"$tmp/dump.txt" 2>/dev/null
py "info gives the files' counts and skew, and every id and weight is kept" '
import json, sys, os, math
info, dump, root = json.load(open(sys.argv[1])), open(sys.argv[2]).read().split("\n"), sys.argv[3]
doms = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
want_rows, ntok, load = [], {}, [[0] * 4 for _ in range(2)]
for di, d in enumerate(doms):
    lines = [open(f"{root}/{d}/expert_weights_{l}.txt").read().split("\n")[:-1] for l in (1, 2)]
    for s in range(len(lines[0])):
        per_layer = []
        for l in range(2):
            ids, ws = lines[l][s].split("\t\t")
            ids, ws = [int(x) for x in ids.split("\t")], [float(x) for x in ws.split("\t")]
            per_layer.append((ids, ws))
            for e in ids: load[l][e] += 1
        T = len(per_layer[0][0]) // 2
        ntok[d] = ntok.get(d, 0) + T
        for t in range(T):
            for l in range(2):
                ids, ws = per_layer[l]
                want_rows.append((s + 1, di, t, l, ids[2*t:2*t+2], ws[2*t:2*t+2]))
assert info["layers"] == 2 and info["experts"] == 4 and info["top_k"] == 2, info
assert info["sequences"] == 3 and info["tokens"] == sum(ntok.values()) == 6, info
assert [(x["name"], x["tokens"]) for x in info["domains"]] == [(d, ntok[d]) for d in doms], info["domains"]
assert [x["sequences"] for x in info["domains"]] == [2, 1], info["domains"]
for l in range(2):
    skew = max(load[l]) / (sum(load[l]) / 4)
    assert abs(info["skew"][l] - skew) < 1e-5, (l, info["skew"][l], skew)  # info prints 6 digits
got = [r.split() for r in dump if r]
assert len(got) == len(want_rows), (len(got), len(want_rows))
for g, (sid, di, t, l, ids, ws) in zip(got, want_rows):
    assert [int(x) for x in g[:4]] == [sid, di, t, l], (g, sid, di, t, l)
    assert [int(x) for x in g[4:6]] == ids, (g, ids)
    assert all(abs(float(a) - b) < 1e-7 for a, b in zip(g[6:8], ws)), (g, ws)
' "$tmp/info.json" "$tmp/dump.txt" "$good"
expect 0 "trace info (text)" "$bin" trace info "$tmp/good.dhtrace"
grep -q "alpha.* 2 .* 3" "$tmp/out" && pass "the text report lists the domains" || fail "the text report lists the domains"
expect 1 "trace info of a file that is not a trace" "$bin" trace info "$good/notes.txt"
grep_err "not a Darkhorse trace" "the message says so"

# ---- live recording against the reference routing and the routing counts
ref=$data/ref-tiny
prompt=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['prompt_ids'])))" "$ref/expected.json")
check_live='
import json, sys
dump, ref, stats = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
rows = [r.split() for r in open(dump).read().split("\n") if r]
# ref-tiny: layer 0 dense, MoE layers 1 and 2, the MTP block 3 (trace layers 0, 1, 2)
model_layer = {0: 1, 1: 2, 2: 3}
assert {r[0] for r in rows} == {"0"}, "one sequence"
T = len(ref["layers"]["layer1"]["experts"])
bad = 0
for r in rows:
    pos, l, ids = int(r[2]), int(r[3]), [int(x) for x in r[4:8]]
    if l == 2:
        assert ids == [-1] * 4, ("the MTP block does not run in generate", r)
    elif pos < T:
        want = ref["layers"]["layer%d" % model_layer[l]]["experts"][pos]
        bad += sorted(ids) != sorted(want)
assert bad == 0, "%d (token, layer) expert sets differ from the reference" % bad
counts = {}
for r in rows:
    for e in r[4:8]:
        if int(e) >= 0:
            k = (model_layer[int(r[3])], int(e))
            counts[k] = counts.get(k, 0) + 1
want = {}
for line in open(stats):
    p = line.split()
    if len(p) == 3 and p[0].isdigit(): want[(int(p[0]), int(p[1]))] = int(p[2])
assert counts == want, "trace counts differ from --routing-stats"
'
expect 0 "generate --trace-out in one process" "$bin" generate --model "$ref" --ids "$prompt" --max-tokens 6 --temperature 0 \
  --print-ids --threads 1 --trace-out "$tmp/live1.dhtrace" --routing-stats "$tmp/rs1.txt"
"$tool" dump "$tmp/live1.dhtrace" >"$tmp/live1.txt"
py "the in-process trace is the reference's routing and the routing counts" "$check_live" "$tmp/live1.txt" "$ref/routing_prefill.json" "$tmp/rs1.txt"
expect 0 "generate --trace-out under mpirun -np 3" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids "$prompt" \
  --max-tokens 6 --temperature 0 --print-ids --threads 1 --trace-out "$tmp/live3.dhtrace" --routing-stats "$tmp/rs3.txt"
"$tool" dump "$tmp/live3.dhtrace" >"$tmp/live3.txt"
py "the cluster's trace is the reference's routing and the routing counts" "$check_live" "$tmp/live3.txt" "$ref/routing_prefill.json" "$tmp/rs3.txt"
py "the cluster's trace has the in-process ids, weights within 1e-5" '
import sys
a = [r.split() for r in open(sys.argv[1]).read().split("\n") if r]
b = [r.split() for r in open(sys.argv[2]).read().split("\n") if r]
assert len(a) == len(b) and len(a) > 0, (len(a), len(b))
for x, y in zip(a, b):
    assert x[:8] == y[:8], (x, y)
    assert all(abs(float(p) - float(q)) <= 1e-5 for p, q in zip(x[8:], y[8:])), (x, y)
' "$tmp/live1.txt" "$tmp/live3.txt"
expect 0 "generate without --trace-out" "$bin" generate --model "$ref" --ids "$prompt" --max-tokens 6 --temperature 0 \
  --print-ids --threads 1
cmp -s "$tmp/out" <("$bin" generate --model "$ref" --ids "$prompt" --max-tokens 6 --temperature 0 --print-ids --threads 1 \
  --trace-out "$tmp/again.dhtrace" 2>/dev/null) && pass "recording leaves the generated ids alone" ||
  fail "the generated ids differ with --trace-out"
# the MTP block runs in logits --mtp-out: its layer (trace layer 2) is recorded for positions 0..T-2
expect 0 "logits --mtp-out --trace-out" "$bin" logits --model "$ref" --ids "$prompt" --out "$tmp/l.f32" --mtp-out "$tmp/m.f32" \
  --threads 1 --trace-out "$tmp/mtp.dhtrace" --routing-stats "$tmp/rs-mtp.txt"
"$tool" dump "$tmp/mtp.dhtrace" >"$tmp/mtp.txt"
py "the MTP block's choices fill their layer, counted as --routing-stats counts them" '
import sys
rows = [r.split() for r in open(sys.argv[1]).read().split("\n") if r]
T = max(int(r[2]) for r in rows) + 1
mtp = {int(r[2]): [int(x) for x in r[4:8]] for r in rows if r[3] == "2"}
assert all(min(mtp[p]) >= 0 for p in range(T - 1)) and mtp[T - 1] == [-1] * 4, mtp
counts = {}
for r in rows:
    for e in r[4:8]:
        if int(e) >= 0: counts[(int(r[3]) + 1, int(e))] = counts.get((int(r[3]) + 1, int(e)), 0) + 1
want = {}
for line in open(sys.argv[2]):
    p = line.split()
    if len(p) == 3 and p[0].isdigit(): want[(int(p[0]), int(p[1]))] = int(p[2])
assert counts == want, "trace counts differ from --routing-stats"
' "$tmp/mtp.txt" "$tmp/rs-mtp.txt"
expect 1 "--trace-out into a folder that does not exist" "$bin" generate --model "$ref" --ids 1,2 --max-tokens 1 \
  --temperature 0 --print-ids --threads 1 --trace-out "$tmp/no/such/dir/t.dhtrace"
grep_err "$tmp/no/such/dir/t.dhtrace" "the message names the file"

# serve: two requests, every expert of the model in domain 4 ("legal"): two sequences labelled legal
"$bin" init-model --preset genesis-tiny --out "$tmp/m" >/dev/null 2>&1 || fail "init-model"
python3 - "$tmp/m/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["expert_domains"] = [4] * c["n_routed_experts"]
json.dump(c, open(sys.argv[1], "w"))
PY
"$bin" serve --model "$tmp/m" --port 0 --threads 1 --max-seqs 2 --trace-out "$tmp/serve.dhtrace" \
  --routing-stats "$tmp/rs-serve.txt" >"$tmp/serve.out" 2>"$tmp/serve.err" &
srv=$!
pids+=("$srv")
wait_port "$tmp/serve.err" "$srv"
if [ -n "$port" ]; then
  cpids=()
  for p in "[5,6,7,8,9]" "[100,200,300]"; do
    curl -s -m 120 -o /dev/null "http://127.0.0.1:$port/v1/completions" \
      -d "{\"prompt\":$p,\"max_tokens\":4,\"temperature\":0,\"ignore_eos\":true}" &
    cpids+=($!)
  done
  wait "${cpids[@]}"
  kill -TERM "$srv"
  for _ in $(seq 1 600); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
  wait "$srv" && pass "serve --trace-out ran and stopped" || fail "serve --trace-out exit status"
  "$tool" dump "$tmp/serve.dhtrace" >"$tmp/serve.txt"
  py "serve recorded two sequences of 5+3 and 3+3 tokens, domain legal, counts as --routing-stats" '
import sys
rows = [r.split() for r in open(sys.argv[1]).read().split("\n") if r]
seqs = {}
for r in rows:
    if r[3] == "0": seqs.setdefault(r[0], []).append((int(r[1]), int(r[2])))
lens = sorted(len(v) for v in seqs.values())
assert lens == [6, 8], ("prompt + max_tokens - 1 positions each", lens)
assert all(d == 4 for v in seqs.values() for d, _ in v), "domain 4 (legal)"
counts = {}
for r in rows:
    for e in r[4:4 + 4]:
        if int(e) >= 0: counts[(int(r[3]), int(e))] = counts.get((int(r[3]), int(e)), 0) + 1
want = {}
for line in open(sys.argv[2]):
    p = line.split()
    if len(p) == 3 and p[0].isdigit(): want[(int(p[0]) - 1, int(p[1]))] = int(p[2])
assert counts == want, "trace counts differ from --routing-stats"
' "$tmp/serve.txt" "$tmp/rs-serve.txt"
  "$bin" trace info "$tmp/serve.dhtrace" --json >"$tmp/serve-info.json" 2>/dev/null
  py "the live header carries the model's ten domain names and dims" '
import json, sys
i = json.load(open(sys.argv[1]))
assert [d["name"] for d in i["domains"]][:5] == ["mathematics", "code", "physics", "business", "legal"], i["domains"]
assert len(i["domains"]) == 10 and i["hidden_size"] == 256 and i["ffn_size"] == 64 and i["top_k"] == 4, i
' "$tmp/serve-info.json"
else
  fail "serve did not start listening"
  tail -5 "$tmp/serve.err"
fi

# ---- simulate on the vendored ESFT trace
esft=$traces/esft.dhtrace
"$tool" plan "$esft" 4 contiguous first-half "$tmp/contiguous.plan" 2>/dev/null || fail "trace_tool plan"
expect 0 "simulate decode" "$bin" simulate --trace "$esft" --plan "$tmp/contiguous.plan" --batch 64 --mode decode --seqs second-half --json
cp "$tmp/out" "$tmp/dec.json"
expect 0 "simulate prefill, turns, bf16" "$bin" simulate --trace "$esft" --plan "$tmp/contiguous.plan" --batch 64 --mode prefill \
  --seqs second-half --dispatch turns --wire bf16 --json
cp "$tmp/out" "$tmp/pre.json"
py "contiguous on the second half: issue 13's figures (decode 1.17 / 1.42, prefill 1.28, fan-out 3.35)" '
import json, sys
d, p = json.loads(open(sys.argv[1]).read()), json.loads(open(sys.argv[2]).read())
for k in ("imbalance_mean", "imbalance_p99", "fanout_mean", "bytes_per_token", "step_ms_mean", "steps", "tokens"):
    assert k in d and k in p, k
assert (round(d["imbalance_mean"], 2), round(d["imbalance_p99"], 2), round(p["imbalance_mean"], 2)) == (1.17, 1.42, 1.28), (d, p)
assert round(d["fanout_mean"], 2) == 3.35 and d["tokens"] == 64 * d["steps"], d
# every (token, layer) row costs 6 * 8 bytes of ids and weights + 2048 * 2 out and back (bf16)
want = 26 * p["fanout_mean"] * (6 * 8 + 2 * 2048 * 2)
assert abs(p["bytes_per_token"] - want) < 1e-6 * want, (p["bytes_per_token"], want)
' "$tmp/dec.json" "$tmp/pre.json"
[ "$(wc -l <"$tmp/dec.json")" -eq 1 ] && pass "simulate prints one line" || fail "simulate prints one line"
grep -q "^worker  experts  expert-tok" "$tmp/err" && pass "the per-worker table goes to stderr" || fail "no per-worker table on stderr"
# --model: ref-tiny numbers its layers 0 (dense), 1, 2 and 3 (MTP); a hand-written plan for 2 workers
{ echo "darkhorse-placement 1"; echo "workers 2"; echo "experts 64"; echo "algo manual"
  for l in 1 2 3; do echo "layer $l worker 1: 0-31"; echo "layer $l worker 2: 32-63"; done; } >"$tmp/ref.plan"
expect 0 "simulate --model with a plan in the model's numbering" "$bin" simulate --trace "$esft" --plan "$tmp/ref.plan" \
  --model "$ref" --batch 16 --mode prefill --json
py "bytes follow ref-tiny's hidden size over its 3 MoE layers" '
import json, sys
d = json.loads(open(sys.argv[1]).read())
want = 3 * d["fanout_mean"] * (4 * 8 + 2 * 64 * 4)  # with --model, its K = 4 heaviest of ESFT 6, as the replay
assert abs(d["bytes_per_token"] - want) < 1e-6 * want, (d, want)
' "$tmp/out"
expect 1 "a trace-numbered plan does not fit the model's layers" "$bin" simulate --trace "$esft" --plan "$tmp/contiguous.plan" \
  --model "$ref" --batch 16 --mode prefill --json
grep_err "contiguous.plan" "the message names the plan"
sed 's/^experts 64/experts 32/' "$tmp/contiguous.plan" >"$tmp/bad.plan"
expect 1 "a plan for another expert count is refused" "$bin" simulate --trace "$esft" --plan "$tmp/bad.plan" --batch 64 --mode decode --json
grep_err "bad.plan" "the message names the plan"
expect 2 "simulate without --batch" "$bin" simulate --trace "$esft" --plan "$tmp/contiguous.plan" --mode decode --json
expect 2 "simulate with a bad --seqs" "$bin" simulate --trace "$esft" --plan "$tmp/contiguous.plan" --batch 8 --seqs odd --json

echo "$fails failed"
[ "$fails" -eq 0 ]
