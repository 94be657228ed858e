#!/usr/bin/env bash
# test_serve.sh DARKHORSE local|mpi NPM_DIR: `darkhorse serve` against real clients on 127.0.0.1.
#
#   local  one process: curl for every endpoint and error (400s, 401, 404, 405, 413, 429 with
#          Retry-After), streams ending in [DONE], /metrics through a strict Prometheus parser
#          (serve_metrics.py), the greedy text equal to `darkhorse generate`'s; the official
#          `openai` npm package (installed into NPM_DIR at test time) for a completion, a chat
#          completion, a streamed chat, 16 concurrent greedy requests equal to each alone and
#          disconnecting clients (test_serve_openai.js); SIGTERM: a request in flight that fits
#          the grace finishes, one that does not gets 503, and the exit status is 0.
#   mpi    `mpirun -np 3 darkhorse serve` (rank 0 serves HTTP): the same text as in-process,
#          a stream, per-worker metrics; SIGTERM to rank 0 stops the whole job with status 0;
#          then a worker killed during a stream: an SSE error event, and the job ends.
#
# Request loops are bounded in count and time, and nothing asserts on timing.
set -u
bin=$1 mode=$2 npm_dir=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/serve_lib.sh"

# expect_error STATUS PARAM CODE PATH BODY: a JSON error naming PARAM (or null) and CODE
expect_error() {
  local want=$1 param=$2 code=$3 path=$4 body=$5 got
  got=$(call POST "$path" -H "$AUTH" -H 'Content-Type: application/json' -d "$body")
  [ "$got" = "$want" ] || fail "$body: status $got, not $want: $(cat "$tmp/body")"
  [ "$(json "$tmp/body" 'd["error"]["param"]')" = "$param" ] || fail "$body: param: $(cat "$tmp/body")"
  [ "$(json "$tmp/body" 'd["error"]["code"]')" = "$code" ] || fail "$body: code: $(cat "$tmp/body")"
  json "$tmp/body" 'd["error"]["message"] and d["error"]["type"]' >/dev/null || fail "$body: message and type"
}

# the text `darkhorse generate` gives greedily, for the same prompt and length
generate_text() {
  "$bin" generate --model "$tmp/m" --prompt "$1" --max-tokens "$2" --temperature 0 --ignore-eos \
    --threads 1 2>/dev/null | python3 -c 'import sys; print(repr(sys.stdin.read()[:-1]))'
}

"$bin" init-model --preset genesis-tiny --out "$tmp/m" >/dev/null 2>&1 || fail "init-model"
greedy=$(generate_text "The capital of France is" 12)
[ -n "$greedy" ] || fail "darkhorse generate gave nothing"

if [ "$mode" = local ]; then
  start main "$bin" serve --model "$tmp/m" --port 0 --api-key "$KEY" --ctx 512 --max-seqs 4 \
    --max-queue 32 --max-body 65536 --served-name genesis-test --shutdown-grace 300
  # --- every endpoint
  [ "$(call GET /health)" = 200 ] && [ "$(json "$tmp/body" 'd["status"]')" = ok ] || fail "GET /health"
  [ "$(call GET /metrics)" = 200 ] || fail "GET /metrics needs no key"
  [ "$(call GET /v1/models)" = 401 ] || fail "GET /v1/models without a key"
  grep -qi "^WWW-Authenticate: Bearer" "$tmp/head" || fail "401 without WWW-Authenticate"
  [ "$(json "$tmp/body" 'd["error"]["code"]')" = invalid_api_key ] || fail "401 body"
  [ "$(call GET /v1/models -H 'Authorization: Bearer wrong')" = 401 ] || fail "a wrong key"
  [ "$(call POST /v1/completions -d '{"prompt":"x"}')" = 401 ] || fail "POST without a key"
  [ "$(call GET /v1/models -H "$AUTH")" = 200 ] || fail "GET /v1/models"
  [ "$(json "$tmp/body" 'd["data"][0]["id"]')" = genesis-test ] || fail "the served name in /v1/models"
  ok "health, metrics open; /v1/* needs the key (401 without, with a wrong one)"

  body='{"model":"gpt-4o","prompt":"The capital of France is","max_tokens":12,"temperature":0,"ignore_eos":true}'
  [ "$(call POST /v1/completions -H "$AUTH" -d "$body")" = 200 ] || fail "completion: $(cat "$tmp/body")"
  grep -qi "^Content-Type: application/json" "$tmp/head" || fail "completion content type"
  [ "$(json "$tmp/body" 'd["model"]')" = genesis-test ] || fail "the served name is echoed"
  [ "$(json "$tmp/body" 'd["object"]+" "+d["choices"][0]["finish_reason"]')" = "text_completion length" ] ||
    fail "completion object and finish_reason"
  [ "$(json "$tmp/body" 'd["usage"]["completion_tokens"]')" = 12 ] || fail "completion usage"
  [ "$(json "$tmp/body" 'round(sum(d["darkhorse"]["domain_share"].values()), 6)')" = 1.0 ] || fail "domain shares"
  [ "$(json "$tmp/body" 'repr(d["choices"][0]["text"])')" = "$greedy" ] ||
    fail "the greedy text differs from darkhorse generate's: $(json "$tmp/body" 'repr(d["choices"][0]["text"])') vs $greedy"
  ok "a completion: the OpenAI shape, usage, domain shares, the same text as darkhorse generate"

  sbody='{"prompt":"The capital of France is","max_tokens":12,"temperature":0,"ignore_eos":true,"stream":true}'
  [ "$(call POST /v1/completions -H "$AUTH" -N -d "$sbody")" = 200 ] || fail "stream"
  grep -qi "^Content-Type: text/event-stream" "$tmp/head" || fail "stream content type"
  [ "$(grep -c '^data: ' "$tmp/body")" -ge 3 ] || fail "stream: too few events"
  [ "$(grep '^data: ' "$tmp/body" | tail -1)" = "data: [DONE]" ] || fail "stream: does not end with [DONE]"
  streamed=$(grep '^data: {' "$tmp/body" | sed 's/^data: //' |
    python3 -c 'import json,sys; print(repr("".join(json.loads(l)["choices"][0]["text"] for l in sys.stdin)))')
  [ "$streamed" = "$greedy" ] || fail "streamed text $streamed differs from $greedy"
  ok "a completion stream: SSE chunks, the same text, data: [DONE]"

  cbody='{"messages":[{"role":"user","content":"Hi"}],"max_tokens":6,"temperature":0,"stream":true}'
  [ "$(call POST /v1/chat/completions -H "$AUTH" -N -d "$cbody")" = 200 ] || fail "chat stream"
  head -1 "$tmp/body" | grep -q '"delta":{"role":"assistant","content":""}' || fail "chat stream: no role chunk"
  grep '^data: {' "$tmp/body" | tail -1 | grep -q '"finish_reason":"\(stop\|length\)".*"usage"' ||
    fail "chat stream: the last chunk has no finish_reason and usage"
  [ "$(call POST /v1/chat/completions -H "$AUTH" -d "${cbody/true/false}")" = 200 ] || fail "chat"
  [ "$(json "$tmp/body" 'd["object"]+" "+d["choices"][0]["message"]["role"]')" = "chat.completion assistant" ] ||
    fail "chat shape: $(cat "$tmp/body")"
  ok "chat completions, whole and streamed"

  # --- a stop string, looked for by the server in the text it decodes from the engine's tokens:
  # taken from the middle of the greedy text, the text ends before its first occurrence, whole
  # and streamed (so no piece of it is ever sent), with finish_reason "stop"
  stop=$(python3 -c 'import ast, json, sys; t = ast.literal_eval(sys.argv[1]); print(json.dumps(t[len(t) // 2:][:3]))' "$greedy")
  for st in false true; do
    b=$(python3 -c 'import json, sys; d = json.loads(sys.argv[1]); d["stream"] = sys.argv[2] == "true"
d["stop"] = [json.loads(sys.argv[3])]; print(json.dumps(d))' "$sbody" $st "$stop")
    [ "$(call POST /v1/completions -H "$AUTH" -N -d "$b")" = 200 ] || fail "a stop string (stream $st): $(cat "$tmp/body")"
    python3 - "$tmp/body" "$greedy" "$stop" $st <<'PY' || fail "a stop string (stream $st): $(cat "$tmp/body")"
import ast, json, sys
body, t, s, st = open(sys.argv[1]).read(), ast.literal_eval(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
assert len(s) == 3 and s in t
if st == "true":
    chunks = [json.loads(l[6:]) for l in body.splitlines() if l.startswith("data: {")]
    text, finish = "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["choices"][0]["finish_reason"]
else:
    d = json.loads(body)
    text, finish = d["choices"][0]["text"], d["choices"][0]["finish_reason"]
assert (text, finish) == (t[:t.find(s)], "stop"), (text, finish, s)
PY
  done
  ok "a stop string: the text ends before it, whole and streamed, finish_reason stop"

  # --- errors
  expect_error 400 None invalid_json /v1/completions '{"prompt": "x",'
  expect_error 400 None invalid_type /v1/completions '["prompt"]'
  expect_error 400 max_tokens invalid_type /v1/completions '{"prompt":"x","max_tokens":"8"}'
  expect_error 400 max_tokens invalid_value /v1/completions '{"prompt":"x","max_tokens":-5}'
  expect_error 400 temperature invalid_value /v1/completions '{"prompt":"x","temperature":3}'
  expect_error 400 top_p invalid_value /v1/completions '{"prompt":"x","top_p":0}'
  expect_error 400 n invalid_value /v1/completions '{"prompt":"x","n":3}'
  expect_error 400 stop invalid_value /v1/completions '{"prompt":"x","stop":["a","b","c","d","e"]}'
  expect_error 400 stream invalid_type /v1/completions '{"prompt":"x","stream":"yes"}'
  expect_error 400 'prompt[1]' invalid_value /v1/completions '{"prompt":[5,129280]}'
  expect_error 400 prompt missing_required_parameter /v1/completions '{"max_tokens":3}'
  expect_error 400 'messages[1].role' invalid_value /v1/chat/completions \
    '{"messages":[{"role":"user","content":"a"},{"role":"wizard","content":"b"}]}'
  grep -q 'messages\[1\]' "$tmp/body" && grep -q wizard "$tmp/body" || fail "the role error names index and role"
  expect_error 400 'messages[0].role' unsupported_value /v1/chat/completions '{"messages":[{"role":"tool","content":"a"}]}'
  expect_error 400 max_tokens context_length_exceeded /v1/completions '{"prompt":"x","max_tokens":100000}'
  grep -q "context limit of 512 tokens" "$tmp/body" || fail "the context error names the limit"
  long=$(python3 -c 'print("word " * 505)')
  expect_error 400 max_tokens context_length_exceeded /v1/completions "{\"prompt\":\"$long\",\"max_tokens\":10}"
  grep -q "plus max_tokens (10) exceeds the context limit of 512" "$tmp/body" ||
    fail "prompt + max_tokens beyond the context: $(cat "$tmp/body")"
  long=$(python3 -c 'print("word " * 600)')
  expect_error 400 prompt context_length_exceeded /v1/completions "{\"prompt\":\"$long\"}"
  [ "$(call GET /v1/nothing -H "$AUTH")" = 404 ] || fail "404"
  [ "$(call GET /v1/completions -H "$AUTH")" = 405 ] && grep -qi "^Allow: POST" "$tmp/head" || fail "405"
  head -c 100000 /dev/zero | tr '\0' 'a' >"$tmp/big"
  [ "$(call POST /v1/completions -H "$AUTH" --data-binary @"$tmp/big")" = 413 ] || fail "a body over --max-body"
  ok "400 with OpenAI error bodies (type, param, code, message) for each rule; 404, 405, 413"

  # --- metrics: strict parse, and the series the issue asks for
  metric darkhorse_running_sequences >/dev/null
  for s in darkhorse_http_requests_total darkhorse_prompt_tokens_total darkhorse_generation_tokens_total \
    darkhorse_queue_depth darkhorse_running_sequences darkhorse_kv_cache_used_tokens \
    darkhorse_prefill_cache_bytes darkhorse_prefill_cache_reused_total \
    darkhorse_time_to_first_token_seconds_bucket darkhorse_time_per_output_token_seconds_bucket \
    darkhorse_step_seconds_bucket darkhorse_expert_tokens_total darkhorse_worker_tokens_total \
    darkhorse_worker_bytes_received_total darkhorse_worker_balancedness darkhorse_domain_share \
    darkhorse_domain_routed_tokens_total; do
    grep -q "^$s[ {]" "$tmp/metrics" || fail "/metrics has no $s"
  done
  [ "$(metric 'darkhorse_http_requests_total{path="/v1/completions",code="400"}')" -ge 10 ] || fail "400s counted"
  ok "/metrics: strict Prometheus text with every family asked for"

  # --- the openai npm package: installed at test time into the build tree
  if [ ! -f "$npm_dir/node_modules/openai/package.json" ]; then
    npm install --prefix "$npm_dir" --no-audit --no-fund --silent openai@6.30.1 >"$tmp/npm.log" 2>&1 ||
      { cat "$tmp/npm.log"; fail "npm install openai (the npm registry must be reachable)"; }
  fi
  NODE_PATH="$npm_dir/node_modules" timeout 300 node "$here/test_serve_openai.js" "$URL" "$KEY" genesis-test ||
    fail "the openai client tests"
  ok "the openai npm client: completion, chat, streamed chat, errors, 16 concurrent = alone, disconnects"

  # --- SIGTERM: a request in flight that fits the grace finishes; the exit status is 0. The
  # grace is generous: 200 tokens take 2 s in the release build and over 30 s under ASan.
  curl -s -m 300 -o "$tmp/last" -w '%{http_code}' -H "$AUTH" "$URL/v1/completions" \
    -d '{"prompt":"x","max_tokens":200,"temperature":0,"ignore_eos":true}' >"$tmp/last.code" &
  wait_metric darkhorse_running_sequences 1
  kill -TERM "$SRV"
  wait_exit "$SRV" 300 || fail "exit status $? after SIGTERM"
  wait
  [ "$(cat "$tmp/last.code")" = 200 ] || fail "the request in flight at SIGTERM: $(cat "$tmp/last")"
  [ "$(json "$tmp/last" 'd["usage"]["completion_tokens"]')" = 200 ] || fail "it was not finished"
  grep -q "SIGTERM: stopping" "$log_of" || fail "no shutdown message"
  ok "SIGTERM: the request in flight finished, exit status 0"

  # --- a small server: 429 with Retry-After; a disconnect frees its slot; the grace runs out
  start small "$bin" serve --model "$tmp/m" --port 0 --ctx 600 --max-seqs 1 --max-batch-tokens 16 --max-queue 1 \
    --shutdown-grace 1 --threads 1
  # a prompt longer than the context by its bytes alone (at most 128 bytes a token) is refused
  # before it is tokenized, and the message says so
  python3 -c 'import json; print(json.dumps({"prompt": "word " * 20000, "max_tokens": 5}))' >"$tmp/long.json"
  [ "$(call POST /v1/completions --data-binary @"$tmp/long.json")" = 400 ] || fail "a 100 KB prompt: not 400"
  [ "$(json "$tmp/body" 'd["error"]["code"]+" "+d["error"]["message"]')" = \
    "context_length_exceeded the prompt (100000 bytes, so at least 782 tokens) exceeds the context limit of 600 tokens" ] ||
    fail "a 100 KB prompt: $(cat "$tmp/body")"
  ok "a prompt too long by its bytes alone: 400 before tokenizing"
  long_body='{"prompt":"x","max_tokens":550,"temperature":0,"ignore_eos":true'
  curl -s -N -m 300 -o "$tmp/a" "$URL/v1/completions" -d "$long_body,\"stream\":true}" &
  curl_a=$!
  pids+=("$curl_a")
  wait_metric darkhorse_running_sequences 1
  curl -s -m 300 -o "$tmp/b" -w '%{http_code}' "$URL/v1/completions" -d "$long_body}" >"$tmp/b.code" &
  wait_metric darkhorse_queue_depth 1
  [ "$(call POST /v1/completions -d '{"prompt":"x","max_tokens":5}')" = 429 ] || fail "a full queue: not 429"
  grep -qi "^Retry-After: [0-9]" "$tmp/head" || fail "429 without Retry-After"
  [ "$(json "$tmp/body" 'd["error"]["type"]+" "+d["error"]["code"]')" = "rate_limit_error queue_full" ] ||
    fail "429 body: $(cat "$tmp/body")"
  ok "a full queue: 429 with Retry-After and an OpenAI error"
  kill -KILL "$curl_a"
  wait_metric darkhorse_client_disconnects_total 1
  wait_metric darkhorse_queue_depth 0 # the waiting request took the freed slot
  [ "$(metric darkhorse_running_sequences)" = 1 ] || fail "the waiting request did not start"
  ok "a client that disconnects frees its sequence for the next"
  kill -TERM "$SRV"
  wait_exit "$SRV" 60 || fail "exit status $? after SIGTERM with the grace running out"
  wait
  [ "$(cat "$tmp/b.code")" = 503 ] || fail "a request beyond the grace: $(cat "$tmp/b.code") $(cat "$tmp/b")"
  [ "$(json "$tmp/b" 'd["error"]["code"]')" = shutting_down ] || fail "503 body: $(cat "$tmp/b")"
  grep -q "shutdown grace" "$tmp/b" || fail "the 503 does not say the grace ran out: $(cat "$tmp/b")"
  grep -q "the shutdown grace ran out: failing 1 request still running" "$log_of" ||
    fail "the log does not say the grace ran out"
  ok "SIGTERM: a request beyond the grace gets 503 'shutting down', exit status 0"

elif [ "$mode" = mpi ]; then
  start cluster mpirun -np 3 --oversubscribe "$bin" serve --model "$tmp/m" --port 0 --ctx 512 --max-seqs 4 \
    --worker-timeout 3 --threads 1
  mpirun_pid=$SRV
  body='{"prompt":"The capital of France is","max_tokens":12,"temperature":0,"ignore_eos":true}'
  [ "$(call POST /v1/completions -d "$body")" = 200 ] || fail "completion: $(cat "$tmp/body")"
  [ "$(json "$tmp/body" 'repr(d["choices"][0]["text"])')" = "$greedy" ] ||
    fail "the cluster's greedy text differs from the in-process one"
  [ "$(call POST /v1/chat/completions -N -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"stream":true}')" = 200 ] ||
    fail "chat stream"
  [ "$(grep '^data: ' "$tmp/body" | tail -1)" = "data: [DONE]" ] || fail "stream: no [DONE]"
  ok "under mpirun: rank 0 serves; the same greedy text as in-process; a stream"
  [ "$(metric 'darkhorse_worker_tokens_total{worker="1"}')" -gt 0 ] || fail "no tokens counted for worker 1"
  [ "$(metric 'darkhorse_worker_bytes_received_total{worker="2"}')" -gt 0 ] || fail "no bytes counted for worker 2"
  b=$(metric darkhorse_worker_balancedness)
  python3 -c "import sys; sys.exit(not 0 < float('$b') <= 1)" || fail "balancedness $b"
  ok "under mpirun: per-worker tokens and bytes, balancedness $b"
  rank0=""
  for p in $(pgrep -f "$tmp/m"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=0" && rank0=$p
  done
  [ -n "$rank0" ] || fail "no process of rank 0"
  kill -TERM "$rank0"
  wait_exit "$mpirun_pid" 60 || fail "mpirun's status $? after SIGTERM to rank 0"
  [ "$(pgrep -f "$tmp/m" | wc -l)" -eq 0 ] || fail "processes left after the shutdown"
  ok "SIGTERM to rank 0: the whole job stops, status 0"

  # a worker that stops answering during a stream (SIGSTOP: mpirun does not notice, the
  # coordinator's deadline does): an SSE error event, then the job ends
  start cluster2 mpirun -np 3 --oversubscribe "$bin" serve --model "$tmp/m" --port 0 --ctx 600 --max-seqs 2 \
    --worker-timeout 2 --threads 1
  mpirun_pid=$SRV
  curl -s -N -m 120 -o "$tmp/s" "$URL/v1/completions" \
    -d '{"prompt":"x","max_tokens":550,"temperature":0,"ignore_eos":true,"stream":true}' &
  wait_metric darkhorse_running_sequences 1
  victim=""
  for p in $(pgrep -f "$tmp/m"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=2" && victim=$p
  done
  [ -n "$victim" ] || fail "no process of rank 2"
  kill -STOP "$victim"
  pids+=("$victim")
  wait_exit "$mpirun_pid" 60
  rc=$?
  wait
  [ $rc -ne 0 ] || fail "status 0 after losing a worker"
  grep '^data: {"error"' "$tmp/s" | grep -q '"type":"server_error"' ||
    fail "the stream in flight got no error event: $(tail -c 300 "$tmp/s")"
  ! grep -q '^data: \[DONE\]' "$tmp/s" || fail "a failed stream ended with [DONE]"
  sleep 1
  [ "$(pgrep -f "$tmp/m" | wc -l)" -eq 0 ] || fail "processes left after the failure"
  ok "a worker lost during a stream: an SSE error event, then the job ended with status $rc"
else
  fail "mode must be local or mpi, not $mode"
fi
echo "$n_pass passed, 0 failed"
