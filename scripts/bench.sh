#!/usr/bin/env bash
# bench.sh: Darkhorse's speed on this machine against llama.cpp's, as issue 6 sets the goals.
#
# genesis-1b in f32, bf16, q8, q4 and q4k, and genesis-5b in bf16, q8, q4 and q4k (f32 of 5b
# does not fit in memory; our q4 and q4k are both compared with llama.cpp's Q4_K_M), 2 threads, prompt processing of 512 tokens and generation of 64 (darkhorse bench,
# llama-bench's definitions), median of 5 runs each, with the read bandwidth measured in the same
# run. Prints a markdown table with llama.cpp's figures and the ratio. The roofline column gives
# the share against the best reader burst of each run, then ("runs") the median over every
# timed run of its share against the reader bursts just before and after it (darkhorse bench).
#
#   scripts/bench.sh                  (about 10 minutes; models are created on first use)
#   DH_BENCH_DIR=DIR                  where genesis-1b/5b are kept (default ~/.cache/darkhorse)
#   DH_BENCH_REPS=N                   runs per test (default 5)
#   DH_BENCH_ONLY="1b:q8 5b:q4k"      a subset
#   DH_BENCH_BATCH=B                  also batch decode: darkhorse bench -b B -p 0 -n 64 against
#                                     llama-batched-bench -npp 0 -ntg 64 -npl B (with DH_BENCH_LLAMA=1)
#   DH_BENCH_DEPTH=D                  also a prompt and decode after a context of D tokens:
#                                     darkhorse bench -d D -p 512 -n 64 against llama-bench -d D -p 512
#                                     -n 64 (with DH_BENCH_LLAMA=1): pp512@dD and tg64@dD
#   DH_BENCH_ROUNDS=R                 alternate the engines R times per model and format (default 1):
#                                     llama.cpp, then ours, R times over; the table gives the median
#                                     of the rounds' medians and the median of the rounds' ratios
#   DH_BENCH_LLAMA=1                  also measure llama.cpp here, in the same run, on GGUFs of
#                                     the same shapes (scripts/bench-llamacpp.sh: builds it from
#                                     the npm registry; the first time adds about 15 minutes)
#   DH_BENCH_RAW=DIR                  keep the raw lines in DIR: darkhorse.jsonl (each line
#                                     "ROUND MODEL {darkhorse bench --json}"), llama.jsonl and
#                                     darkhorse.log (the tables and notes of each run, stderr)
#   LLAMA_BENCH_JSONL=FILE            llama.cpp figures measured earlier on this machine (what
#                                     scripts/bench-llamacpp.sh prints); with neither, the figures
#                                     of issue 6 (llama.cpp v0.5.0, llama-bench -t 2 -p 512 -n 64
#                                     -r 5 on this kind of machine, another day) are used
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-darkhorse.sh bench
dir=${DH_BENCH_DIR:-$HOME/.cache/darkhorse}
reps=${DH_BENCH_REPS:-5}
only=${DH_BENCH_ONLY:-"1b:f32 1b:bf16 1b:q8 1b:q4 1b:q4k 5b:bf16 5b:q8 5b:q4 5b:q4k"}
batch=${DH_BENCH_BATCH:-}
depth=${DH_BENCH_DEPTH:-}
mkdir -p "$dir"
out=$(mktemp)
trap 'rm -f "$out" "$out.llama" "$out.log"' EXIT

for m in 1b 5b; do
  case " $only " in *" $m:"*) ;; *) continue ;; esac
  ensure_model "genesis-$m" "$dir/genesis-$m"
done
llama=${LLAMA_BENCH_JSONL:-}
rounds=${DH_BENCH_ROUNDS:-1}
[ "${DH_BENCH_LLAMA:-0}" = 1 ] && llama=$out.llama && : >"$llama"
# each line of $out and $out.llama starts with its round: "R genesis-1b {json}" and "R {json}"
for cfg in $only; do
  m=${cfg%%:*} w=${cfg##*:}
  src=$dir/genesis-$m
  # q4k is read from a copy stored in q4k: the same bits, without its slow conversion at each load
  if [ "$w" = q4k ]; then src=$dir/genesis-$m-q4k && ensure_quantized "$dir/genesis-$m" "$src" q4k; fi
  for r in $(seq 1 "$rounds"); do
    if [ "${DH_BENCH_LLAMA:-0}" = 1 ]; then
      echo "bench: round $r/$rounds: llama.cpp genesis-$m ${w/q4k/q4 (Q4_K_M)}" >&2
      DH_BENCH_DIR=$dir DH_BENCH_REPS=$reps DH_BENCH_ONLY=${cfg/:q4k/:q4} DH_BENCH_BATCH=$batch \
        DH_BENCH_DEPTH=$depth scripts/bench-llamacpp.sh | sed "s/^/$r /" >>"$llama"
    fi
    echo "bench: round $r/$rounds: darkhorse genesis-$m $w" >&2
    "$bin" bench --model "$src" --weights "$w" -t 2 -p 512 -n 64 -r "$reps" --json 2>>"$out.log" |
      sed "s/^/$r genesis-$m /" >>"$out"
    if [ -n "$batch" ]; then
      "$bin" bench --model "$src" --weights "$w" -t 2 -p 0 -n 64 -b "$batch" -r "$reps" --json \
        2>>"$out.log" | sed "s/^/$r genesis-$m /" >>"$out"
    fi
    if [ -n "$depth" ]; then
      "$bin" bench --model "$src" --weights "$w" -t 2 -p 512 -n 64 -d "$depth" -r "$reps" --json \
        2>>"$out.log" | sed "s/^/$r genesis-$m /" >>"$out"
    fi
  done
done

if [ -n "${DH_BENCH_RAW:-}" ]; then
  mkdir -p "$DH_BENCH_RAW"
  cp "$out" "$DH_BENCH_RAW/darkhorse.jsonl"
  cp "$out.log" "$DH_BENCH_RAW/darkhorse.log" 2>/dev/null || :
  if [ -n "$llama" ] && [ -f "$llama" ]; then cp "$llama" "$DH_BENCH_RAW/llama.jsonl"; fi
fi

python3 - "$out" "$llama" "$rounds" <<'PY'
import json, sys
from statistics import median
# llama.cpp v0.5.0 (de3ff81), llama-bench -t 2 -p 512,64 -n 64 -r 5, random-weight GGUFs of the
# same shapes, on this project's development machines (issue 6): median tok/s
issue6 = {("genesis-5b", "bf16"): (64.3, 9.64), ("genesis-5b", "q8"): (64.9, 13.29), ("genesis-5b", "q4"): (75.3, 17.95),
          ("genesis-1b", "bf16"): (406, 34.3), ("genesis-1b", "q8"): (448, 56.1), ("genesis-1b", "q4"): (445, 68.8)}
rounds = int(sys.argv[3])
ref = {}  # (model, fmt, test) -> {round: tok/s}; round 0: for every round
source = "issue 6's figures (measured on an Intel Xeon another day: not this CPU unless it is one)"
for (m, f), (pp, tg) in issue6.items():
    ref[(m, f, "pp512")], ref[(m, f, "tg64")] = {0: pp}, {0: tg}
if sys.argv[2]:
    ref, source = {}, "llama.cpp de3ff81 measured on this machine (scripts/bench-llamacpp.sh)"
    for line in open(sys.argv[2]):
        r, js = (line.split(" ", 1) if line[0].isdigit() else ("0", line))
        j = json.loads(js)
        ref.setdefault((j["model"], j["format"], j["test"]), {})[int(r)] = j["tok_s"]
    if rounds > 1: source += ", alternated with ours %d times" % rounds

runs, cpus, round_ratios = {}, [], []  # (model, weights, test) -> {round: json}; "model w test r1 r2 ..."
for line in open(sys.argv[1]):
    r, model, js = line.split(" ", 2)
    j = json.loads(js)
    if j.get("cpu") and j["cpu"] not in cpus: cpus.append(j["cpu"])
    runs.setdefault((model, j["weights"], j["test"]), {})[int(r)] = j

def ours_and_theirs(model, w, test):
    """our median of the rounds' medians (min, max over all runs), llama.cpp's, the ratio"""
    got = runs.get((model, w, test))
    if not got: return None
    js = list(got.values())
    med = median(j["tok_s_median"] for j in js)
    mn, mx = min(j["tok_s_min"] for j in js), max(j["tok_s_max"] for j in js)
    theirs = ref.get((model, "q4" if w == "q4k" else w, test), {})  # q4k against Q4_K_M
    ratios = [got[r]["tok_s_median"] / (theirs.get(r) or theirs.get(0)) for r in got if theirs.get(r) or theirs.get(0)]
    l = median(theirs.values()) if theirs else None
    if rounds > 1 and ratios: round_ratios.append("%s %s %s %s" % (model, w, test, " ".join("%.2f" % x for x in ratios)))
    return med, mn, mx, l, median(ratios) if ratios else None, js

def cell(x):
    if not x: return "- | - | -"
    med, mn, mx, l, ratio, _ = x
    return "%.1f (%.1f-%.1f) | %s | %s" % (med, mn, mx, "%.1f" % l if l else "-", "%.2fx" % ratio if ratio else "-")

keys = []
for (m, w, t) in runs:
    if (m, w) not in keys and "@" not in t: keys.append((m, w))
print("| model | format | bits/weight | pp512 tok/s (min-max) | llama.cpp | ratio | tg64 tok/s (min-max) | llama.cpp | ratio | roofline share of tg |")
print("|---|---|---|---|---|---|---|---|---|---|")
for model, w in keys:
    pp, tg = ours_and_theirs(model, w, "pp512"), ours_and_theirs(model, w, "tg64")
    share = "-"
    if tg and all("roofline_share" in j for j in tg[5]):
        share = "%.2f (of %.1f GB/s)" % (median(j["roofline_share"] for j in tg[5]), median(j["bandwidth_gb_s"] for j in tg[5]))
        if all("roofline_share_runs" in j for j in tg[5]):  # each run against the bursts beside it
            share += "; runs %.2f" % median(s for j in tg[5] for s in j["roofline_share_runs"])
    bpw = (pp or tg)[5][0]["bits_per_weight"]
    print("| %s | %s | %.2f | %s | %s | %s |" % (model, w, bpw, cell(pp), cell(tg), share))
batched = [(m, w, t) for (m, w, t) in runs if "@" in t]  # tg64@bB (batched), pp512@dD and tg64@dD (after D tokens)
if batched:
    print("\n| model | format | test | tok/s (min-max) | llama-batched-bench (@b), llama-bench (@d) | ratio |")
    print("|---|---|---|---|---|---|")
    for m, w, t in batched:
        print("| %s | %s | %s | %s |" % (m, w, t, cell(ours_and_theirs(m, w, t))))
if round_ratios: print("\nThe rounds' ratios, in order: " + "; ".join(round_ratios) + ".")
# the reader's lowest and highest burst in each tg run: a wide range means the machine changed
# speed during the run (its share reads low); alike ranges mean the rounds met the same machine
ranges = []
for (m, w, t), got in runs.items():
    if t == "tg64" and all("bandwidth_gb_s_range" in got[r] for r in got):
        ranges.append("%s %s %s" % (m, w, " ".join("%.0f-%.0f" % tuple(got[r]["bandwidth_gb_s_range"]) for r in sorted(got))))
if ranges: print("\nThe read bandwidth's bursts in each round's tg64 run, GB/s: " + "; ".join(ranges) + ".")
print("\nCPU: %s" % "; ".join(cpus or ["unknown"]))
print("llama.cpp: %s; Darkhorse: median of the runs%s, 2 threads, this machine." %
      (source, " (of %d rounds: the median of the rounds' medians; ratio: the median of the rounds' ratios)" % rounds if rounds > 1 else ""))
PY
