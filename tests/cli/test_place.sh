#!/usr/bin/env bash
# test_place.sh DARKHORSE DATA_DIR TRACES_DIR: `darkhorse place` from the command line, on the
# vendored ESFT trace and the ref-tiny checkpoint (64 experts, MoE layers 1, 2 and the MTP 3).
#   - a plan in the model's numbering that simulate and the cluster's loader accept, with
#     every worker within --slots experts a layer (counted here by Python);
#   - --from PLAN --max-moves M adds at most M placements (counted here against PLAN);
#   - a checkpoint alone gives balanced's plan; bad options are refused with a reason.
set -u
bin=$1 data=$2 traces=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }
trace=$traces/esft.dhtrace model=$data/ref-tiny

# count.py PLAN [FROM]: max experts per (layer, worker), and placements of PLAN not in FROM
cat >"$tmp/count.py" <<'PY'
import re, sys
def read(p):
    s = set()
    for line in open(p):
        m = re.match(r"layer (\d+) worker (\d+):(.*)", line)
        if m:
            for tok in m.group(3).split():
                a, _, b = tok.partition("-")
                for e in range(int(a), int(b or a) + 1):
                    s.add((int(m.group(1)), int(m.group(2)), e))
    return s
p = read(sys.argv[1])
per = {}
for l, w, e in p:
    per[(l, w)] = per.get((l, w), 0) + 1
added = len(p - read(sys.argv[2])) if len(sys.argv) > 2 else 0
print(max(per.values()), added, len({(l, e) for l, w, e in p}))
PY

if "$bin" place --trace "$trace" --workers 2 --slots 34 --seqs first-half --model "$model" --out "$tmp/a.plan" 2>"$tmp/err"; then
  read -r most added hosted < <(python3 "$tmp/count.py" "$tmp/a.plan")
  # 3 MoE layers x 64 experts hosted, at most 34 a worker
  if [ "$most" -le 34 ] && [ "$hosted" = 192 ] && grep -q "^layer 3 worker" "$tmp/a.plan" && ! grep -q "^layer 0 " "$tmp/a.plan"; then
    pass "affinity plan in ref-tiny's numbering, at most $most of 34 slots"
  else fail "affinity plan: most $most, hosted $hosted"; fi
  if "$bin" simulate --trace "$trace" --plan "$tmp/a.plan" --model "$model" --batch 64 --mode decode --seqs second-half --json >"$tmp/sim" 2>/dev/null &&
    grep -q '"fanout_mean"' "$tmp/sim"; then pass "simulate replays it"; else fail "simulate refused the plan"; fi
else fail "place --model: $(cat "$tmp/err")"; fi

"$bin" place --trace "$trace" --workers 2 --algo contiguous --model "$model" --out "$tmp/c.plan" 2>/dev/null
for m in 0 3; do
  if "$bin" place --trace "$trace" --workers 2 --slots 33 --model "$model" --from "$tmp/c.plan" --max-moves $m --out "$tmp/m$m.plan" 2>"$tmp/err"; then
    read -r most added hosted < <(python3 "$tmp/count.py" "$tmp/m$m.plan" "$tmp/c.plan")
    said=$(grep -o "[0-9]* placements added" "$tmp/err" | cut -d' ' -f1)
    if [ "$added" -le $m ] && [ "$added" = "$said" ] && [ "$hosted" = 192 ]; then pass "--max-moves $m: $added added"
    else fail "--max-moves $m: $added added, place said $said, $hosted hosted"; fi
  else fail "place --from: $(cat "$tmp/err")"; fi
done

if "$bin" place --model "$model" --workers 2 --out "$tmp/b.plan" 2>/dev/null && grep -q "^algo balanced" "$tmp/b.plan"; then
  pass "a checkpoint alone: balanced"; else fail "place --model alone"; fi

bad() { # bad "reason text" args...
  local want=$1
  shift
  if "$bin" place "$@" --out "$tmp/x.plan" 2>"$tmp/err"; then fail "accepted: $*"
  elif grep -q "$want" "$tmp/err"; then pass "refused: $want"
  else fail "refused without '$want': $(head -c 300 "$tmp/err")"; fi
}
bad "unknown algorithm 'nope'" --trace "$trace" --workers 2 --algo nope
bad "'medicine' is not a domain" --trace "$trace" --workers 2 --domain-mix medicine=1
bad "cannot host 64 experts" --trace "$trace" --workers 4 --slots 15
bad "speed per worker" --trace "$trace" --workers 4 --capacity 1,2
bad "go together" --trace "$trace" --workers 4 --max-moves 3
[ $fails -eq 0 ] && echo "test_place: all passed" || echo "test_place: $fails failed"
exit $((fails > 0))
