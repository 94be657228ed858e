#!/usr/bin/env bash
# test_replan.sh DARKHORSE live|fail|every: live re-placement of `mpirun -np 3 darkhorse serve`
# on a genesis-tiny checkpoint, with real clients on 127.0.0.1.
#
#   live   in one process without a key, POST /admin/replan is 403 and says why, and 8 greedy
#          requests (prompts given as token ids) give the reference texts. Then the cluster,
#          whose workers wait 0.5 s before mapping (the test hook DH_FAULT_MAP_DELAY, a slow
#          disk): the same 8 requests, with two re-plans asked at once in their middle: one is
#          409, the other answers 200 with moved >= 1 and generation 2 while the
#          requests still run, and every request ends with the reference text. /metrics says
#          generation 2 and the moves; a re-plan right after, with no new traffic, moves nothing
#          (200, moved 0, a reason); a wrong key is 401; SIGTERM to rank 0 ends the job with 0.
#   fail   a cluster whose rank 2 cannot map (the test hook DH_FAULT_MAP_FAIL=2): 8 requests
#          give their texts on plan generation 1; the same 8 with a re-plan in their middle: it
#          answers 500 replan_failed naming rank 2 and the reason, the requests end with the same
#          texts, the plan stays generation 1, /metrics counts the failure and gives the reason,
#          the log says it, and the next re-plan is refused the same way (not 409: nothing is
#          left running).
#   every  --replan-every 10 --max-moves 4: the 8 requests of the reference (in one process)
#          give the same texts while the cluster re-plans by itself, at most 4 moves each time.
#
# Greedy ids must not change with the plan (docs/cluster.md: a plan moves logits by float
# rounding only); the texts are compared, decoded from those ids. Loops are bounded in count
# and time, and nothing asserts on timing.
set -u
bin=$1 mode=$2
here=$(cd "$(dirname "$0")" && pwd)
. "$here/serve_lib.sh"

N=8
MAX_TOKENS=100

# start_all NAME: the N requests at once, in the background; finish_all NAME: wait for them (at
# most 300 s each, curl's own limit), check them, their texts into $tmp/NAME.<i>.txt
start_all() {
  local i
  req_pids=()
  for i in $(seq 1 $N); do
    curl -s -m 300 -o "$tmp/$1.$i.json" -w '%{http_code}' "$URL/v1/completions" -H "$AUTH" \
      -d "{\"prompt\":[$((100 + i)),$((2000 + 7 * i)),$((3000 + i)),42,$((50000 + i))],\"max_tokens\":$MAX_TOKENS,\"temperature\":0,\"ignore_eos\":true}" \
      >"$tmp/$1.$i.code" &
    pids+=("$!")
    req_pids+=("$!")
  done
}
finish_all() {
  local i
  wait "${req_pids[@]}"
  for i in $(seq 1 $N); do
    [ "$(cat "$tmp/$1.$i.code")" = 200 ] || fail "$1: request $i: $(cat "$tmp/$1.$i.code") $(cat "$tmp/$1.$i.json")"
    [ "$(json "$tmp/$1.$i.json" 'd["usage"]["completion_tokens"]')" = $MAX_TOKENS ] || fail "$1: request $i is short"
    json "$tmp/$1.$i.json" 'repr(d["choices"][0]["text"])' >"$tmp/$1.$i.txt"
  done
}
same_texts() { # same_texts A B: request by request
  local i
  for i in $(seq 1 $N); do
    cmp -s "$tmp/$1.$i.txt" "$tmp/$2.$i.txt" ||
      fail "request $i: $2 gave $(head -c 120 "$tmp/$2.$i.txt"), $1 $(head -c 120 "$tmp/$1.$i.txt")"
  done
}
replan() { call POST /admin/replan -H "$AUTH"; }

"$bin" init-model --preset genesis-tiny --out "$tmp/m" >/dev/null 2>&1 || fail "init-model"
cluster() { # cluster NAME [serve options]: mpirun -np 3 with the key
  local name=$1; shift
  start "$name" mpirun -np 3 --oversubscribe "$bin" serve --model "$tmp/m" --port 0 --api-key "$KEY" --ctx 512 \
    --max-seqs $N --threads 1 --worker-timeout 30 "$@"
}
reference() { # the texts of one process into ref.*
  start local "$bin" serve --model "$tmp/m" --port 0 --ctx 512 --max-seqs $N --threads 1
  if [ "$mode" = live ]; then
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
  reference
  DH_FAULT_MAP_DELAY=0.5 cluster live
  mpirun_pid=$SRV
  [ "$(metric darkhorse_plan_generation)" = 1 ] || fail "the first plan is not generation 1"
  start_all live
  for _ in $(seq 1 600); do [ "$(quick_metric darkhorse_running_sequences)" = $N ] && break; sleep 0.05; done
  [ "$(quick_metric darkhorse_running_sequences)" = $N ] || fail "the $N requests did not all start within 30 s"
  # two re-plans asked at once: whichever the server takes first runs (its workers wait 0.5 s before
  # mapping), the other is refused
  for k in a b; do
    curl -s -m 300 -o "$tmp/rp.$k.json" -w '%{http_code}' -X POST "$URL/admin/replan" -H "$AUTH" >"$tmp/rp.$k.code" &
    rp_pids+=("$!")
    pids+=("$!")
  done
  wait "${rp_pids[@]}"
  generated=$(metric darkhorse_generation_tokens_total) # read after the answer: at most what there was then
  codes="$(cat "$tmp/rp.a.code") $(cat "$tmp/rp.b.code")"
  case "$codes" in
  "200 409") won=a lost=b ;;
  "409 200") won=b lost=a ;;
  *) fail "two re-plans at once: $codes: $(cat "$tmp/rp.a.json") $(cat "$tmp/rp.b.json")" ;;
  esac
  [ "$(json "$tmp/rp.$lost.json" 'd["error"]["code"]')" = replan_in_progress ] || fail "409 body: $(cat "$tmp/rp.$lost.json")"
  ok "two re-plans asked at once: one runs, the other is 409 replan_in_progress"
  rp1=$tmp/rp.$won.json
  [ "$(json "$rp1" 'd["generation"]')" = 2 ] || fail "generation after the re-plan: $(cat "$rp1")"
  moved=$(json "$rp1" 'd["moved"]')
  [ "$moved" -ge 1 ] || fail "the re-plan moved nothing: $(cat "$rp1")"
  json "$rp1" '1 <= d["imbalance_after"] < d["imbalance_before"]' | grep -qx True || fail "imbalances: $(cat "$rp1")"
  [ "$generated" -lt $((N * MAX_TOKENS)) ] ||
    fail "the requests had finished before the switch: not a test of a switch in their middle"
  ok "a re-plan in the middle of $N requests: 200, generation 2, $moved placements moved, $generated of $((N * MAX_TOKENS)) tokens generated by then"
  finish_all live
  same_texts ref live
  ok "every request ended with the text of a run without the re-plan"
  mapfile -t v < <(metric darkhorse_plan_generation 'darkhorse_replans_total{result="applied"}' \
    darkhorse_replan_moves_total darkhorse_replan_imbalance_before darkhorse_replan_imbalance_after)
  [ "${v[0]} ${v[1]} ${v[2]}" = "2 1 $moved" ] || fail "/metrics: generation, applied re-plans, moves: ${v[*]}"
  python3 -c "import sys; sys.exit(not float('${v[4]}') < float('${v[3]}'))" || fail "/metrics: imbalances ${v[*]}"
  grep -q "re-plan: plan generation 2 in use, $moved placements moved" "$log_of" || fail "the log does not say so"
  grep -q "rank 1\] info: .*plan attempt 1 in use" "$log_of" && grep -q "rank 2\] info: .*plan attempt 1 in use" "$log_of" ||
    fail "a worker did not switch"
  ok "/metrics and the log: generation 2, $moved moves, imbalance before and after"
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
  wait_metric darkhorse_running_sequences $N
  [ "$(replan)" = 500 ] || fail "a re-plan that a worker cannot map: $(cat "$tmp/body")"
  [ "$(json "$tmp/body" 'd["error"]["code"]')" = replan_failed ] || fail "500 body: $(cat "$tmp/body")"
  grep -q "rank 2" "$tmp/body" && grep -q "could not map" "$tmp/body" && grep -q "DH_FAULT_MAP_FAIL" "$tmp/body" ||
    fail "the 500 does not say which rank and why: $(cat "$tmp/body")"
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
  [ "$(call POST /v1/completions -H "$AUTH" -d '{"prompt":[101,2007,3001,42,50001],"max_tokens":'$MAX_TOKENS',"temperature":0,"ignore_eos":true}')" = 200 ] ||
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
  applied=$(metric 'darkhorse_replans_total{result="applied"}')
  [ "$applied" -ge 1 ] || fail "no re-plan was applied by itself: $(grep 're-plan' "$log_of" | tail -3)"
  [ "$(metric darkhorse_plan_generation)" = $((applied + 1)) ] || fail "/metrics: generation"
  [ "$(metric darkhorse_replan_moves_total)" -le $((4 * applied)) ] || fail "more than --max-moves 4 a re-plan"
  ok "--replan-every 10: $applied re-plans applied by themselves, at most 4 moves each; the same texts"
  kill -TERM "$(rank_pid "$tmp/m" 0)"
  wait_exit "$mpirun_pid" 60 || fail "mpirun's status $? after SIGTERM to rank 0"
else
  fail "mode must be live, fail or every, not $mode"
fi
echo "$n_pass passed, 0 failed"
