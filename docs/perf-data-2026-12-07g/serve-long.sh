#!/usr/bin/env bash
# serve-long.sh ROUNDS PROMPT BUILD...: scripts/bench-serve.sh with one client and long prompts (3 requests), each build in turn
rounds=$1 prompt=$2; shift 2
for r in $(seq 1 $rounds); do
  for b in "$@"; do
    echo "== round $r $b prompt $prompt"
    DH_BIN=/work/exp/$b-darkhorse DH_BENCH_LEVELS=1 DH_BENCH_REQUESTS=3 DH_BENCH_PROMPT=$prompt DH_BENCH_OUT=8 DH_BENCH_ARGS="--threads 2 ${SERVE_ARGS:-}" /work/main/scripts/bench-serve.sh 2>&1 | grep -vE "^bench-serve: (server|/)" 
  done
done
