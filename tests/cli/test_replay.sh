#!/usr/bin/env bash
# test_replay.sh DARKHORSE TRACE_TOOL DATA_DIR: --routing-replay from the command line.
#   A hand-made trace (ESFT layout, imported: 2 trace layers, 6 experts per token drawn with
#   many tied weights, domains alpha with 3 sequences and beta with 2) is replayed on ref-tiny
#   (MoE layers 1, 2 and the MTP block: 3 model MoE layers, so trace layers 0, 0, 1). Every
#   replayed run also records --trace-out, which observes the choices after the replay: the
#   recording must equal what the rules say, computed here in Python from the imported trace:
#   the sequence order (turns or domain), the continuation into the next trace sequence, the
#   layer map, the 4 heaviest of 6 with ties to the earlier, and the weights renormalised and
#   scaled by 2.5 (ref-tiny's norm_topk_prob and routed_scaling_factor). In process and under
#   mpirun -np 3; the --routing-stats counts must match too. Errors: an id not below the
#   model's E, fewer experts per token than K, a bad --replay-order. serve says on stderr and
#   in /metrics that the replay is on.
set -u
bin=$1 tool=$2 data=$3
. "$(dirname "$0")/lib.sh"
ref=$data/ref-tiny

# esft DIR E K [BAD_ID]: a hand-made ESFT folder, seeded; BAD_ID replaces one id of beta's
# second sequence, layer 2, token 1
esft() {
  python3 - "$@" <<'PY'
import os, random, sys
root, E, K = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bad = int(sys.argv[4]) if len(sys.argv) > 4 else None
rng = random.Random(7)
lens = {"alpha": [5, 3, 4], "beta": [6, 2]}
for dom, ls in lens.items():
    os.makedirs(f"{root}/{dom}")
    for l in (1, 2):
        with open(f"{root}/{dom}/expert_weights_{l}.txt", "w") as f:
            for si, n in enumerate(ls):
                ids, ws = [], []
                for t in range(n):
                    ids += rng.sample(range(64), K)
                    ws += [rng.choice(["0.1", "0.2", "0.3", "0.05"]) for _ in range(K)]
                if bad is not None and dom == "beta" and si == 1 and l == 2: ids[K] = bad
                f.write("\t".join(map(str, ids)) + "\t\t" + "\t".join(ws) + "\n")
PY
}
esft "$tmp/hand" 64 6
expect 0 "import of the hand-made trace" "$bin" trace import --esft "$tmp/hand" --out "$tmp/hand.dhtrace" --top-k 6 --experts 64
"$tool" dump "$tmp/hand.dhtrace" >"$tmp/hand.txt"

# the oracle: ORDER RUNS, where RUNS is a list of steps, each a list of (slot, pos) rows
oracle='
import sys, json
hand, got, order, steps = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
stats = sys.argv[5] if len(sys.argv) > 5 else None
L, M, K, rsf = 2, 3, 4, 2.5
seqs = {}                                   # trace sequence (domain, id) -> tokens [layer] (ids, ws)
for r in open(hand).read().split("\n"):
    if not r: continue
    p = r.split()
    key = (int(p[1]), int(p[0]))
    tok = seqs.setdefault(key, {})
    tok.setdefault(int(p[2]), {})[int(p[3])] = ([int(x) for x in p[4:10]], [float(x) for x in p[10:16]])
doms = sorted({d for d, _ in seqs})
by_dom = {d: sorted(i for dd, i in seqs if dd == d) for d in doms}
if order == "turns":
    lst = [(d, by_dom[d][r]) for r in range(max(map(len, by_dom.values()))) for d in doms if r < len(by_dom[d])]
else:
    lst = [(d, i) for d in doms for i in by_dom[d]]
assert len(lst) == 5
# replay the rules: run sequences in order of appearance, chains of trace sequences
cursor, run, slot, want = 0, 0, {}, {}
for step in steps:
    done = set()
    for s, pos in step:
        if s not in done:
            done.add(s)
            if s not in slot or pos <= slot[s]["start"] or pos > slot[s]["next"]:
                slot[s] = {"run": run, "start": pos, "next": pos, "chain": [(0, cursor)]}
                run += 1; cursor += 1
        st = slot[s]
        st["next"] = max(st["next"], pos + 1)
        off = pos - st["start"]
        while True:
            o, li = st["chain"][-1]
            n = len(seqs[lst[li % 5]])
            if off < o + n: break
            st["chain"].append((o + n, cursor)); cursor += 1
        o, li = [c for c in st["chain"] if c[0] <= off][-1]
        toks = seqs[lst[li % 5]]
        for j in range(M - 1):                  # the MTP block (j = 2) does not run here
            ids, ws = toks[sorted(toks)[off - o]][j * L // M]
            keep = sorted(range(6), key=lambda i: (-ws[i], i))[:K]
            tot = sum(ws[i] for i in keep)
            want[(st["run"], pos, j)] = ([ids[i] for i in keep], [ws[i] / tot * rsf for i in keep])
rows = [r.split() for r in open(got).read().split("\n") if r]
seen = {}
for p in rows:
    sid, pos, j = int(p[0]), int(p[2]), int(p[3])
    ids, ws = [int(x) for x in p[4:8]], [float(x) for x in p[8:12]]
    if j == 2:
        assert ids == [-1] * 4, ("the MTP layer did not run", p); continue
    seen[(sid, pos, j)] = (ids, ws)
assert set(seen) == set(want), ("recorded (seq, pos, layer) differ", sorted(set(seen) ^ set(want))[:5])
for k in want:
    assert seen[k][0] == want[k][0], ("experts", k, seen[k][0], want[k][0])
    assert all(abs(a - b) <= 1e-5 for a, b in zip(seen[k][1], want[k][1])), ("weights", k, seen[k][1], want[k][1])
assert cursor > run, "some sequence should have continued into the next trace sequence"
if stats:
    counts = {}
    for (s, pos, j), (ids, _) in want.items():
        for e in ids: counts[(j + 1, e)] = counts.get((j + 1, e), 0) + 1
    have = {}
    for line in open(stats):
        p = line.split()
        if len(p) == 3 and p[0].isdigit(): have[(int(p[0]), int(p[1]))] = int(p[2])
    assert counts == have, "the --routing-stats counts are not the replayed choices"
print(len(want), "(sequence, position, layer) choices as the rules say")
'
# generate: one sequence, a 4-token prompt in one step, then decode steps
gen_steps=$(python3 -c 'import json; print(json.dumps([[[0, p] for p in range(4)]] + [[[0, p]] for p in range(4, 13)]))')
gen() { "$bin" generate --model "$ref" --ids 5,17,42,99 --max-tokens 10 --temperature 0 --ignore-eos --print-ids --threads 1 "$@"; }
expect 0 "generate --routing-replay in one process" gen --routing-replay "$tmp/hand.dhtrace" --trace-out "$tmp/g1.dhtrace" \
  --routing-stats "$tmp/rs1.txt"
grep_err "routing replay is ON" "stderr says the replay is on"
"$tool" dump "$tmp/g1.dhtrace" >"$tmp/g1.txt"
py "in process: every layer's experts and weights are the trace's (turns), and the routing counts" "$oracle" \
  "$tmp/hand.txt" "$tmp/g1.txt" turns "$gen_steps" "$tmp/rs1.txt"
expect 0 "generate --routing-replay under mpirun -np 3" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" \
  --ids 5,17,42,99 --max-tokens 10 --temperature 0 --ignore-eos --print-ids --threads 1 \
  --routing-replay "$tmp/hand.dhtrace" --trace-out "$tmp/g3.dhtrace" --routing-stats "$tmp/rs3.txt"
"$tool" dump "$tmp/g3.dhtrace" >"$tmp/g3.txt"
py "under mpirun: every layer's experts and weights are the trace's, and the routing counts" "$oracle" \
  "$tmp/hand.txt" "$tmp/g3.txt" turns "$gen_steps" "$tmp/rs3.txt"
grep -Eq "^worker +experts +tokens +expert-tok" "$tmp/err" && pass "the load table is printed under mpirun" ||
  fail "no load table under mpirun"
expect 0 "generate without the replay" gen --trace-out "$tmp/plain.dhtrace"
if grep -Fq "routing replay" "$tmp/err"; then fail "the replay is off by default"; else pass "the replay is off by default"; fi

# bench: 3 sequences decoding together, 4 steps, a warm-up run and one timed run (6 sequences)
bench_steps=$(python3 -c 'import json; print(json.dumps([[[b, p] for b in range(3)] for r in range(2) for p in range(4)]))')
expect 0 "bench --replay-order domain in one process" "$bin" bench --model "$ref" -p 0 -n 4 -b 3 -r 1 --no-bandwidth \
  --threads 1 --routing-replay "$tmp/hand.dhtrace" --replay-order domain --trace-out "$tmp/b1.dhtrace"
"$tool" dump "$tmp/b1.dhtrace" >"$tmp/b1.txt"
py "bench, domain order: one domain after the other" "$oracle" "$tmp/hand.txt" "$tmp/b1.txt" domain "$bench_steps"
expect 0 "bench --replay-order turns under mpirun -np 3" mpirun -np 3 --oversubscribe "$bin" bench --model "$ref" -p 0 \
  -n 4 -b 3 -r 1 --no-bandwidth --threads 1 --routing-replay "$tmp/hand.dhtrace" --replay-order turns \
  --trace-out "$tmp/b3.dhtrace" --json
# the slowest worker's compute, as the workers report it, lies inside the coordinator's
# dispatch-to-combine time of the same steps (the simulator's calibration compares the two),
# and so does the part of it the coordinator spends in finish (waiting, then combining)
py "bench --json under mpirun: the workers' compute and the wait are reported, and within the exchange" '
import json, sys
m = json.loads(open(sys.argv[1]).read().strip().split("\n")[-1])["ms_per_step"]
assert 0 < m["worker_compute"] <= m["exchange"], m
assert 0 < m["exchange_wait"] <= m["exchange"], m
' "$tmp/out"
# the exchange log (DH_EXCHANGE_LOG): every rank's file, one line per exchange, each rank's times
# in order, the workers' exchanges among the coordinator's; and the timeline script reads it
mkdir -p "$tmp/xlog"
expect 0 "bench under mpirun -np 3 with DH_EXCHANGE_LOG" env DH_EXCHANGE_LOG="$tmp/xlog" mpirun -np 3 --oversubscribe \
  -x DH_EXCHANGE_LOG "$bin" bench --model "$ref" -p 0 -n 4 -b 3 -r 1 --no-bandwidth --threads 1 \
  --routing-replay "$tmp/hand.dhtrace"
py "the exchange log: one file a rank, each line's times in order" '
import csv, sys
d = sys.argv[1]
rows = lambda r: list(csv.DictReader(open(f"{d}/exchange-{r}.tsv"), delimiter="\t"))
c = rows(0)
assert len(c) > 0 and [int(r["exchange"]) for r in c] == list(range(1, len(c) + 1)), c[:3]
for r in c:
    t = [float(r[k]) for k in ("start", "posted", "finish", "end")]
    assert t == sorted(t) and int(r["tokens"]) == 3, r
ids = {int(r["exchange"]) for r in c}
seen = 0
for w in (1, 2):
    for r in rows(w):
        t = [float(r[k]) for k in ("header", "request", "compute_start", "compute_end", "replied")]
        assert t == sorted(t) and int(r["exchange"]) in ids and 0 < int(r["tokens"]) <= 3, r
        seen += 1
assert seen >= len(c), (seen, len(c))  # every exchange reaches at least one worker
' "$tmp/xlog"
expect 0 "exchange-timeline.py summarises the log" python3 "$(dirname "$0")/../../scripts/exchange-timeline.py" \
  "$tmp/xlog" --json
py "exchange-timeline.py: every phase, from both sides" '
import json, sys
j = json.load(open(sys.argv[1]))
for k in ("dispatch and packing", "header reaches the worker", "worker compute", "exchange"):
    assert j[k]["n"] > 0 and j[k]["median_ms"] <= j[k]["p90_ms"] + 1e-9, (k, j.get(k))
assert j["worker compute"]["median_ms"] <= j["exchange"]["p90_ms"] + 1e-9, j
' "$tmp/out"
"$tool" dump "$tmp/b3.dhtrace" >"$tmp/b3.txt"
py "bench under mpirun, turns order: in turn across the domains" "$oracle" "$tmp/hand.txt" "$tmp/b3.txt" turns "$bench_steps"
py "the two orders differ on this trace" '
import sys
a, b = open(sys.argv[1]).read(), open(sys.argv[2]).read()
assert a != b
' "$tmp/b1.txt" "$tmp/b3.txt"

# errors
esft "$tmp/wide" 128 6 100
expect 0 "import of a trace with 128 experts" "$bin" trace import --esft "$tmp/wide" --out "$tmp/wide.dhtrace" --top-k 6 --experts 128
expect 1 "an expert id not below the model's E stops the run at start" gen --routing-replay "$tmp/wide.dhtrace"
grep_err "$tmp/wide.dhtrace: sequence 2, position 1, trace layer 1: expert 100, but the model has 64 routed experts" \
  "the message names the file, the token and the id"
expect 1 "under mpirun too" mpirun -np 3 --oversubscribe "$bin" generate --model "$ref" --ids 5,17 --max-tokens 2 \
  --temperature 0 --print-ids --threads 1 --routing-replay "$tmp/wide.dhtrace"
grep_err "expert 100, but the model has 64" "the cluster's message names the id"
esft "$tmp/narrow" 64 2
expect 0 "import of a trace with 2 experts per token" "$bin" trace import --esft "$tmp/narrow" --out "$tmp/narrow.dhtrace" --top-k 2 --experts 64
expect 1 "fewer experts per token than K is an error" gen --routing-replay "$tmp/narrow.dhtrace"
grep_err "$tmp/narrow.dhtrace: the trace has 2 experts per token, the model needs 4" "the message says so"
expect 1 "a replay file that does not exist" gen --routing-replay "$tmp/none.dhtrace"
grep_err "$tmp/none.dhtrace" "the message names the file"
expect 2 "a bad --replay-order" gen --routing-replay "$tmp/hand.dhtrace" --replay-order random
expect 1 "--replay-order without --routing-replay" gen --replay-order domain

# serve says so in /metrics (genesis-tiny: the API needs a tokenizer)
"$bin" init-model --preset genesis-tiny --out "$tmp/m" >/dev/null 2>&1 || fail "init-model"
"$bin" serve --model "$tmp/m" --port 0 --threads 1 --max-seqs 2 --routing-replay "$tmp/hand.dhtrace" \
  --replay-order domain >"$tmp/serve.out" 2>"$tmp/serve.err" &
srv=$!
pids+=("$srv")
wait_port "$tmp/serve.err" "$srv"
if [ -n "$port" ]; then
  curl -s -m 120 -o "$tmp/c.json" "http://127.0.0.1:$port/v1/completions" \
    -d '{"prompt":[5,6,7],"max_tokens":3,"temperature":0,"ignore_eos":true}'
  curl -s -m 30 -o "$tmp/metrics.txt" "http://127.0.0.1:$port/metrics"
  grep -q "^darkhorse_routing_replay{file=\"$tmp/hand.dhtrace\",order=\"domain\"} 1$" "$tmp/metrics.txt" &&
    pass "/metrics says the replay is on, with its file and order" || fail "/metrics does not show the replay"
  grep -q '"text"' "$tmp/c.json" && pass "serve answers during the replay" || fail "serve did not answer"
  kill -TERM "$srv"
  for _ in $(seq 1 600); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
  wait "$srv" && pass "serve stopped" || fail "serve exit status"
  grep -Fq "routing replay is ON" "$tmp/serve.err" && pass "serve's stderr says the replay is on" ||
    fail "serve's stderr does not say the replay is on"
else
  fail "serve did not start listening"
  tail -5 "$tmp/serve.err"
fi

echo "$fails failed"
[ "$fails" -eq 0 ]
