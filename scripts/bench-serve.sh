#!/usr/bin/env bash
# bench-serve.sh: load benchmark of `darkhorse serve` on genesis-1b (random weights), in one
# process: for concurrency 1, 4, 16 and 64, generated tokens per second, time to first token
# and time per output token (p50, p99), from a streaming node client (scripts/bench-serve.js).
# The table goes to stdout, progress to stderr.
#
#   scripts/bench-serve.sh                 build/ must hold a built darkhorse
#   DH_BIN=path/to/darkhorse               another binary
#   DH_BENCH_DIR=DIR                       where genesis-1b is kept (default ~/.cache/darkhorse;
#                                          made with init-model when absent: 1.8 GB, seconds)
#   DH_BENCH_LEVELS=1,4,16,64 DH_BENCH_REQUESTS=16,32,64,128   concurrency levels, requests each
#   DH_BENCH_PROMPT=64 DH_BENCH_OUT=32     prompt and output tokens per request
#   DH_BENCH_ARGS="--threads 2"            more options for darkhorse serve
#   DH_BENCH_SAMPLING=openai               requests with temperature 1 and no top-p or top-k, as an
#                                          OpenAI client sends by default (default: darkhorse, as
#                                          darkhorse generate samples: 0.8, top-p 0.95, top-k 40)
#
# Requests go to 127.0.0.1 only; the server is stopped with SIGTERM at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${DH_BIN:-$root/build/cli/darkhorse}
dir=${DH_BENCH_DIR:-$HOME/.cache/darkhorse}
model=$dir/genesis-1b
levels=${DH_BENCH_LEVELS:-1,4,16,64}
requests=${DH_BENCH_REQUESTS:-16,32,64,128}
prompt=${DH_BENCH_PROMPT:-64}
out=${DH_BENCH_OUT:-32}
max_seqs=$(echo "$levels" | tr ',' '\n' | sort -n | tail -1)

[ -x "$bin" ] || { echo "bench-serve: no darkhorse at $bin (build first, or set DH_BIN)" >&2; exit 1; }
command -v node >/dev/null || { echo "bench-serve: node is needed (scripts/setup.sh installs it)" >&2; exit 1; }
if [ ! -f "$model/model.safetensors" ]; then
  echo "bench-serve: creating $model" >&2
  "$bin" init-model --preset genesis-1b --out "$model" >&2
fi

log=$(mktemp)
# shellcheck disable=SC2086
"$bin" serve --model "$model" --port 0 --max-seqs "$max_seqs" --max-batch-tokens 256 --max-queue 1024 \
  --ctx $((prompt + out + 16)) --kv-tokens $((max_seqs * (prompt + out + 16) + 1024)) ${DH_BENCH_ARGS:-} 2>"$log" &
srv=$!
trap 'kill -TERM $srv 2>/dev/null; wait $srv 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
  grep -q "listening on http://" "$log" && break
  kill -0 $srv 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
url=$(grep -o "http://127.0.0.1:[0-9]*" "$log" | head -1)
[ -n "$url" ] || { cat "$log" >&2; exit 1; }
echo "bench-serve: $bin serving $model at $url" >&2
echo "bench-serve: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" >&2
node "$root/scripts/bench-serve.js" "$url" --levels "$levels" --requests "$requests" \
  --prompt-tokens "$prompt" --max-tokens "$out" --sampling "${DH_BENCH_SAMPLING:-darkhorse}"
grep -E "loaded|KV cache" "$log" | sed 's/^/bench-serve: server: /' >&2
