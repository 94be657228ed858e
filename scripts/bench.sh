#!/usr/bin/env bash
# bench.sh: Darkhorse's speed on this machine against llama.cpp's, as issue 6 sets the goals.
#
# genesis-1b in f32, bf16, q8, q4 and q4k, and genesis-5b in bf16, q8, q4 and q4k (f32 of 5b
# does not fit in memory; our q4 and q4k are both compared with llama.cpp's Q4_K_M), 2 threads, prompt processing of 512 tokens and generation of 64 (darkhorse bench,
# llama-bench's definitions), median of 5 runs each, with the read bandwidth measured in the same
# run. Prints a markdown table with llama.cpp's figures and the ratio.
#
#   scripts/bench.sh                  (about 10 minutes; models are created on first use)
#   DH_BENCH_DIR=DIR                  where genesis-1b/5b are kept (default ~/.cache/darkhorse)
#   DH_BENCH_REPS=N                   runs per test (default 5)
#   DH_BENCH_ONLY="1b:q8 5b:q4k"      a subset
#   DH_BENCH_BATCH=B                  also batch decode: darkhorse bench -b B -p 0 -n 64 against
#                                     llama-batched-bench -npp 0 -ntg 64 -npl B (with DH_BENCH_LLAMA=1)
#   DH_BENCH_LLAMA=1                  also measure llama.cpp here, in the same run, on GGUFs of
#                                     the same shapes (scripts/bench-llamacpp.sh: builds it from
#                                     the npm registry; the first time adds about 15 minutes)
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
mkdir -p "$dir"
out=$(mktemp)
trap 'rm -f "$out" "$out.llama"' EXIT

for m in 1b 5b; do
  case " $only " in *" $m:"*) ;; *) continue ;; esac
  ensure_model "genesis-$m" "$dir/genesis-$m"
done
llama=${LLAMA_BENCH_JSONL:-}
if [ "${DH_BENCH_LLAMA:-0}" = 1 ]; then
  lonly=$(echo "$only" | sed 's/:q4k/:q4/g' | tr ' ' '\n' | sort -u | tr '\n' ' ')  # q4k against Q4_K_M
  DH_BENCH_DIR=$dir DH_BENCH_REPS=$reps DH_BENCH_ONLY=$lonly DH_BENCH_BATCH=$batch scripts/bench-llamacpp.sh >"$out.llama"
  llama=$out.llama
fi
for cfg in $only; do
  m=${cfg%%:*} w=${cfg##*:}
  echo "bench: genesis-$m $w" >&2
  "$bin" bench --model "$dir/genesis-$m" --weights "$w" -t 2 -p 512 -n 64 -r "$reps" --json 2>>"$out.log" |
    sed "s/^/genesis-$m /" >>"$out"
  if [ -n "$batch" ]; then
    "$bin" bench --model "$dir/genesis-$m" --weights "$w" -t 2 -p 0 -n 64 -b "$batch" -r "$reps" --json \
      2>>"$out.log" | sed "s/^/genesis-$m /" >>"$out"
  fi
done

python3 - "$out" "$llama" <<'PY'
import json, sys
# llama.cpp v0.5.0 (de3ff81), llama-bench -t 2 -p 512,64 -n 64 -r 5, random-weight GGUFs of the
# same shapes, on this project's development machines (issue 6): median tok/s
ref = {("genesis-5b", "bf16"): (64.3, 9.64), ("genesis-5b", "q8"): (64.9, 13.29), ("genesis-5b", "q4"): (75.3, 17.95),
       ("genesis-1b", "bf16"): (406, 34.3), ("genesis-1b", "q8"): (448, 56.1), ("genesis-1b", "q4"): (445, 68.8)}
source = "issue 6's figures (measured on an Intel Xeon another day: not this CPU unless it is one)"
if sys.argv[2]:
    ref, source = {}, "llama.cpp de3ff81 measured on this machine (scripts/bench-llamacpp.sh)"
    for line in open(sys.argv[2]):
        j = json.loads(line)
        if "@b" in j["test"]:
            ref.setdefault((j["model"], j["format"], "batch"), {})[j["test"]] = j["tok_s"]
            continue
        ref.setdefault((j["model"], j["format"]), [None, None])[0 if j["test"] == "pp512" else 1] = j["tok_s"]

rows, cpus = {}, []
for line in open(sys.argv[1]):
    model, js = line.split(" ", 1)
    j = json.loads(js)
    if j.get("cpu") and j["cpu"] not in cpus: cpus.append(j["cpu"])
    rows.setdefault((model, j["weights"]), {})[j["test"]] = j
print("| model | format | bits/weight | pp512 tok/s (min-max) | llama.cpp | ratio | tg64 tok/s (min-max) | llama.cpp | ratio | roofline share of tg |")
print("|---|---|---|---|---|---|---|---|---|---|")
for (model, w), t in rows.items():
    pp, tg = t.get("pp512"), t.get("tg64")
    lpp, ltg = ref.get((model, "q4" if w == "q4k" else w), (None, None))  # q4k against Q4_K_M
    def cell(x, l):
        if not x: return "- | - | -"
        r = "%.2fx" % (x["tok_s_median"] / l) if l else "-"
        return "%.1f (%.1f-%.1f) | %s | %s" % (x["tok_s_median"], x["tok_s_min"], x["tok_s_max"], l if l else "-", r)
    share = "%.2f (of %.1f GB/s)" % (tg["roofline_share"], tg["bandwidth_gb_s"]) if tg and "roofline_share" in tg else "-"
    bpw = (pp or tg)["bits_per_weight"]
    print("| %s | %s | %.2f | %s | %s | %s |" % (model, w, bpw, cell(pp, lpp), cell(tg, ltg), share))
batched = [(m, w, t, j) for (m, w), tt in rows.items() for t, j in tt.items() if "@b" in t]
if batched:
    print("\n| model | format | test | tok/s (min-max) | llama-batched-bench | ratio |")
    print("|---|---|---|---|---|---|")
    for m, w, t, j in batched:
        l = ref.get((m, "q4" if w == "q4k" else w, "batch"), {}).get(t)
        print("| %s | %s | %s | %.1f (%.1f-%.1f) | %s | %s |" % (m, w, t, j["tok_s_median"], j["tok_s_min"], j["tok_s_max"],
              l if l else "-", "%.2fx" % (j["tok_s_median"] / l) if l else "-"))
print("\nCPU: %s" % "; ".join(cpus or ["unknown"]))
print("llama.cpp: %s; Darkhorse: median of the runs, 2 threads, this machine." % source)
PY
