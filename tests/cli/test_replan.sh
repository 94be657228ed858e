#!/usr/bin/env bash
# test_replan.sh DARKHORSE live|fail|every: live re-placement of `mpirun -np 3 darkhorse serve`
# with real clients on 127.0.0.1. The model is tests/data/ref-tiny (hidden 64, vocab 512: fast
# enough for the sanitizer build; its context raised to 1024) with the vendored DeepSeek-V3
# tokenizer.json beside it (serve wants one; prompts are given as token ids). Every cluster starts from a lopsided plan (worker 1
# hosts 48 of the 64 experts of each MoE layer), so that any traffic makes a re-plan worth it.
#
#   live   8 greedy requests give the reference texts on the first plan; the same 8 again,
#          with a re-plan asked in their middle: 200, generation 2, moved >= 1, the imbalance
#          lower, 20 steps or more of the requests after the switch; every request ends with its
#          reference text. /metrics and the
#          log say generation 2 and the moves; two re-plans after the requests: the second,
#          with no step between, moves nothing (200, moved 0, a reason); a wrong key is 401,
#          GET 405; SIGTERM to rank 0 ends the job with 0.
#   fail   a cluster whose rank 2 cannot map (the test hook DH_FAULT_MAP_FAIL=2) and whose
#          workers wait 1 s before mapping (DH_FAULT_MAP_DELAY, a slow disk): 8 requests give
#          their texts on plan generation 1; the same 8 again, with two re-plans asked at once:
#          one is 409 replan_in_progress, the other 500 replan_failed naming rank 2 and why; the
#          requests end with the same texts, the plan stays generation 1, /metrics counts the
#          failure and gives the reason, the log says it; a request after is answered alike, and
#          the next re-plan fails the same way (not 409: nothing is left running).
#   every  in one process without a key, POST /admin/replan is 403 and says why, and the 8
#          requests give the reference texts; the cluster with --replan-every 10 --max-moves 4
#          gives the same texts while it re-plans by itself, at most 4 moves each time.
#
# Greedy ids must not change with the plan (docs/cluster.md: a plan moves logits by float
# rounding only); the texts decoded from them are compared, with their token counts. Loops are
# bounded in count and time, and nothing asserts on timing.
set -u
bin=$1 mode=$2
here=$(cd "$(dirname "$0")" && pwd)
. "$here/serve_lib.sh"

N=8
MAX_TOKENS=600
# live: long enough that a re-plan asked once all N run falls in their middle also when the
# workers' helpers, at nice 19, wait hundreds of milliseconds for a core on a loaded machine
[ "$mode" = live ] && MAX_TOKENS=1000

# start_all NAME: the N requests at once, from one curl (so that they start together however
# loaded the machine is), in the background; finish_all NAME: wait for them (at most 300 s),
# check them, and write their texts into $tmp/NAME.<i>.txt
start_all() {
  local i
  for i in $(seq 1 $N); do
    printf 'url = "%s/v1/completions"\nheader = "%s"\noutput = "%s"\n' "$URL" "$AUTH" "$tmp/$1.$i.json"
    printf 'silent\nmax-time = 300\nwrite-out = "%%{http_code}\\n"\n'
    printf 'data = "{\\"prompt\\":[%d,%d,%d,42,%d],\\"max_tokens\\":%d,\\"temperature\\":0,\\"ignore_eos\\":true}"\n' \
      $((100 + i)) $((200 + 7 * i)) $((300 + i)) $((450 + i)) $MAX_TOKENS
    [ "$i" -lt $N ] && echo next
  done >"$tmp/$1.curl"
  curl -s -Z --parallel-immediate --parallel-max $N -K "$tmp/$1.curl" >"$tmp/$1.codes" 2>"$tmp/$1.curl.err" &
  all_pid=$!
  pids+=("$all_pid")
}
finish_all() {
  wait "$all_pid"
  python3 - "$tmp" "$1" $N $MAX_TOKENS <<'PY' || fail "$1: the requests did not all complete (see above)"
import json, sys
tmp, name, n, want = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
codes = open("%s/%s.codes" % (tmp, name)).read().split()
assert codes == ["200"] * n, "statuses %s" % codes
for i in range(1, n + 1):
    d = json.load(open("%s/%s.%d.json" % (tmp, name, i)))
    assert d["usage"]["completion_tokens"] == want, "request %d: %s" % (i, d["usage"])
    open("%s/%s.%d.txt" % (tmp, name, i), "w").write(repr(d["choices"][0]["text"]) + "\n")
PY
}
same_texts() { # same_texts A B: request by request
  local i
  for i in $(seq 1 $N); do
    cmp -s "$tmp/$1.$i.txt" "$tmp/$2.$i.txt" ||
      fail "request $i: $2 gave $(head -c 120 "$tmp/$2.$i.txt"), $1 $(head -c 120 "$tmp/$1.$i.txt")"
  done
}
replan() { call POST /admin/replan -H "$AUTH"; }

mkdir "$tmp/m"
cp "$here/../data/ref-tiny/model.safetensors" "$here/../../models/deepseek-v3/tokenizer.json" "$tmp/m/" ||
  fail "copying the model"
# a context of 1024 positions instead of 256 (ref-tiny has no RoPE scaling: the limit is only a
# limit), so that the requests outlast a re-plan even on an idle machine
python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["max_position_embeddings"] = 1024
json.dump(c, open(sys.argv[2], "w"), indent=1)' "$here/../data/ref-tiny/config.json" "$tmp/m/config.json" ||
  fail "config.json"
{
  printf 'darkhorse-placement 1\nworkers 2\nexperts 64\nalgo lopsided\n'
  for l in 1 2 3; do printf 'layer %d worker 1: 0-47\nlayer %d worker 2: 48-63\n' $l $l; done
} >"$tmp/lopsided.plan"
cluster() { # cluster NAME [serve options]: mpirun -np 3 with the key, from the lopsided plan
  local name=$1; shift
  start "$name" mpirun -np 3 --oversubscribe "$bin" serve --model "$tmp/m" --port 0 --api-key "$KEY" --ctx 1024 \
    --max-seqs $N --threads 1 --worker-timeout 30 --placement "$tmp/lopsided.plan" "$@"
}
reference() { # the texts of one process into ref.*
  start local "$bin" serve --model "$tmp/m" --port 0 --ctx 1024 --max-seqs $N --threads 1
  if [ "$mode" = every ]; then
    [ "$(call POST /admin/replan -H "$AUTH")" = 403 ] || fail "no key configured: $(cat "$tmp/body")"
    [ "$(json "$tmp/body" 'd["error"]["code"]')" = admin_disabled ] && grep -q -- "--api-key" "$tmp/body" ||
      fail "the 403 does not say why: $(cat "$tmp/body")"
    ok "without --api-key, POST /admin/replan is 403 and says that it needs a key"
  fi
  start_all ref
  finish_all ref
  kill -TERM "$SRV"
  wait_exit "$SRV" 120 || fail "the local server's exit status"
}

if [ "$mode" = live ]; then
  cluster live
  mpirun_pid=$SRV
  start_all ref
  finish_all ref
  [ "$(metric darkhorse_plan_generation)" = 1 ] || fail "the reference ran on another plan than the first"
  start_all live
  for _ in $(seq 1 600); do [ "$(quick_metric darkhorse_running_sequences)" = $N ] && break; sleep 0.05; done
  [ "$(quick_metric darkhorse_running_sequences)" = $N ] || fail "the $N requests did not all start within 30 s"
  [ "$(replan)" = 200 ] || fail "the re-plan: $(cat "$tmp/body")"
  cp "$tmp/body" "$tmp/rp1.json"
  rp1=$tmp/rp1.json
  [ "$(json "$rp1" 'd["generation"]')" = 2 ] || fail "generation after the re-plan: $(cat "$rp1")"
  moved=$(json "$rp1" 'd["moved"]')
  [ "$moved" -ge 1 ] || fail "the re-plan moved nothing: $(cat "$rp1")"
  json "$rp1" '1 <= d["imbalance_after"] < d["imbalance_before"]' | grep -qx True || fail "imbalances: $(cat "$rp1")"
  ok "a re-plan asked while $N requests run: 200, generation 2, $moved placements moved"
  finish_all live
  # the coordinator logs the step times once 20 steps have run after the switch: only these
  # requests were running, all started together and are as long, so all of them straddled it
  grep -q "re-plan: the longest step was" "$log_of" ||
    fail "fewer than 20 steps ran after the switch: not a test of a switch in the middle of the requests"
  ok "at least 20 steps of the $N requests ran after the switch"
  same_texts ref live
  ok "every request ended with the text of a run without the re-plan"
  mapfile -t v < <(metric darkhorse_plan_generation 'darkhorse_replans_total{result="applied"}' \
    darkhorse_replan_moves_total darkhorse_replan_imbalance_before darkhorse_replan_imbalance_after)
  [ "${v[0]} ${v[1]} ${v[2]}" = "2 1 $moved" ] || fail "/metrics: generation, applied re-plans, moves: ${v[*]}"
  python3 -c "import sys; sys.exit(not float('${v[4]}') < float('${v[3]}'))" || fail "/metrics: imbalances ${v[*]}"
  grep -q "re-plan: plan generation 2 in use, $moved placements moved" "$log_of" || fail "the log does not say so"
  grep -q "rank 1\] info: .*plan attempt 1 in use" "$log_of" && grep -q "rank 2\] info: .*plan attempt 1 in use" "$log_of" ||
    fail "a worker did not switch"
  # each worker mapped only what it gained and gives back what it lost: without replicas, what
  # the workers gained and what they lost are each the coordinator's moves
  gl=$(sed -n 's/.*rank [12]\] info: .*plan attempt 1 in use: [0-9]* experts (\([0-9]*\) gained, \([0-9]*\) given back.*/\1 \2/p' \
    "$log_of" | awk '{g += $1; l += $2; n++} END {print n, g, l}')
  [ "$gl" = "2 $moved $moved" ] || fail "workers switched, experts gained, given back: $gl (moved $moved)"
  # what they gained computes in memory of their own, as at start-up: every byte of it copied
  # (three [64, 32] f32 matrices an expert in ref-tiny)
  copied=$(sed -n 's/.*rank [12]\] info: .*plan attempt 1 mapped: .* \([0-9]*\) bytes of them in memory of their own.*/\1/p' "$log_of" |
    awk '{s += $1} END {print s + 0}')
  [ "$copied" = $((moved * 3 * 64 * 32 * 4)) ] || fail "the workers copied $copied bytes for $moved gained experts"
  ok "/metrics and the log: generation 2, $moved moves, imbalance before and after; the workers gained and gave back $moved each"
  # the window now holds the requests' last steps too: a re-plan may move more; the one after it,
  # with no step between, has nothing left worth moving
  [ "$(replan)" = 200 ] || fail "a re-plan after the requests: $(cat "$tmp/body")"
  gen=$(json "$tmp/body" 'd["generation"]')
  [ "$(replan)" = 200 ] || fail "a re-plan with nothing new: $(cat "$tmp/body")"
  [ "$(json "$tmp/body" 'd["moved"], d["generation"], bool(d["reason"])')" = "(0, $gen, True)" ] ||
    fail "nothing worth moving: $(cat "$tmp/body")"
  [ "$(metric 'darkhorse_replans_total{result="unchanged"}')" -ge 1 ] || fail "/metrics: unchanged re-plans"
  ok "a re-plan with no step since the last one: 200, moved 0, with the reason"
  [ "$(call POST /admin/replan -H 'Authorization: Bearer wrong')" = 401 ] || fail "a wrong key"
  [ "$(call GET /admin/replan -H "$AUTH")" = 405 ] || fail "GET /admin/replan"
  ok "a wrong key is 401, GET is 405"
  kill -TERM "$(rank_pid "$tmp/m" 0)"
  wait_exit "$mpirun_pid" 60 || fail "mpirun's status $? after SIGTERM to rank 0"
  ok "SIGTERM to rank 0: the job ends with status 0"

elif [ "$mode" = fail ]; then
  DH_FAULT_MAP_FAIL=2 DH_FAULT_MAP_DELAY=1 cluster fail
  mpirun_pid=$SRV
  start_all ref
  finish_all ref
  start_all after
  for _ in $(seq 1 600); do [ "$(quick_metric darkhorse_running_sequences)" = $N ] && break; sleep 0.05; done
  # two re-plans asked at once: whichever the server takes first runs (its workers wait 1 s before
  # mapping), the other is refused
  rp_pids=()
  for k in a b; do
    curl -s -m 300 -o "$tmp/rp.$k.json" -w '%{http_code}' -X POST "$URL/admin/replan" -H "$AUTH" >"$tmp/rp.$k.code" &
    rp_pids+=("$!")
    pids+=("$!")
  done
  wait "${rp_pids[@]}"
  codes="$(cat "$tmp/rp.a.code") $(cat "$tmp/rp.b.code")"
  case "$codes" in
  "500 409") ran=a refused=b ;;
  "409 500") ran=b refused=a ;;
  *) fail "two re-plans at once: $codes: $(cat "$tmp/rp.a.json") $(cat "$tmp/rp.b.json")" ;;
  esac
  [ "$(json "$tmp/rp.$refused.json" 'd["error"]["code"]')" = replan_in_progress ] ||
    fail "409 body: $(cat "$tmp/rp.$refused.json")"
  ok "two re-plans asked at once: one runs, the other is 409 replan_in_progress"
  body=$tmp/rp.$ran.json
  [ "$(json "$body" 'd["error"]["code"]')" = replan_failed ] || fail "500 body: $(cat "$body")"
  grep -q "rank 2" "$body" && grep -q "could not map" "$body" && grep -q "DH_FAULT_MAP_FAIL" "$body" ||
    fail "the 500 does not say which rank and why: $(cat "$body")"
  ok "a re-plan rank 2 cannot map: 500 replan_failed, naming rank 2 and the reason"
  finish_all after
  same_texts ref after
  ok "the requests in flight ended with their texts"
  [ "$(metric darkhorse_plan_generation)" = 1 ] || fail "the plan changed"
  [ "$(metric 'darkhorse_replans_total{result="failed"}')" = 1 ] || fail "/metrics: the failure"
  grep -q '^darkhorse_replan_last_error_info{reason=".*rank 2.*could not map.*"} 1$' "$tmp/metrics" ||
    fail "/metrics does not give the reason: $(grep last_error "$tmp/metrics")"
  grep -q "re-plan failed, plan generation 1 stays in use: .*rank 2" "$log_of" || fail "the log does not say why"
  grep -q "rank 1\] info: .*plan attempt 1 cancelled" "$log_of" || fail "rank 1 did not drop the plan it mapped"
  ok "the plan stays generation 1; /metrics and the log say why"
  [ "$(call POST /v1/completions -H "$AUTH" -d '{"prompt":[101,207,301,42,451],"max_tokens":'$MAX_TOKENS',"temperature":0,"ignore_eos":true}')" = 200 ] ||
    fail "a request after the failed re-plan"
  json "$tmp/body" 'repr(d["choices"][0]["text"])' | cmp -s - "$tmp/ref.1.txt" || fail "a request after: another text"
  [ "$(replan)" = 500 ] || fail "the next re-plan: $(cat "$tmp/body")"
  ok "the cluster answers on the old plan, and the next re-plan fails the same way (not 409)"
  kill -TERM "$(rank_pid "$tmp/m" 0)"
  wait_exit "$mpirun_pid" 60 || fail "mpirun's status $? after SIGTERM to rank 0"
  ok "SIGTERM to rank 0: the job ends with status 0"

elif [ "$mode" = every ]; then
  reference
  cluster every --replan-every 10 --max-moves 4
  mpirun_pid=$SRV
  start_all every
  finish_all every
  same_texts ref every
  # one scrape for all three: a re-plan begun in the last steps can be put in use between two
  mapfile -t v < <(metric 'darkhorse_replans_total{result="applied"}' darkhorse_plan_generation \
    darkhorse_replan_moves_total)
  applied=${v[0]}
  [ "$applied" -ge 1 ] || fail "no re-plan was applied by itself: $(grep 're-plan' "$log_of" | tail -3)"
  [ "${v[1]}" = $((applied + 1)) ] || fail "/metrics: generation ${v[1]} with $applied re-plans applied"
  [ "${v[2]}" -le $((4 * applied)) ] || fail "more than --max-moves 4 a re-plan"
  ok "--replan-every 10: $applied re-plans applied by themselves, at most 4 moves each; the same texts"
  kill -TERM "$(rank_pid "$tmp/m" 0)"
  wait_exit "$mpirun_pid" 60 || fail "mpirun's status $? after SIGTERM to rank 0"
else
  fail "mode must be live, fail or every, not $mode"
fi
echo "$n_pass passed, 0 failed"
