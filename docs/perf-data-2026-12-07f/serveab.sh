#!/usr/bin/env bash
# serveab.sh ROUNDS SAMPLING BUILD...: scripts/bench-serve.sh at concurrency 16 (64 requests) with each build in turn
rounds=$1 samp=$2; shift 2
for r in $(seq 1 $rounds); do
  for b in "$@"; do
    echo "== round $r $b $samp"
    DH_BIN=/work/exp/$b-darkhorse DH_BENCH_LEVELS=16 DH_BENCH_REQUESTS=64 DH_BENCH_SAMPLING=$samp DH_BENCH_ARGS="--threads 2 ${SERVE_ARGS:-}" /work/main/scripts/bench-serve.sh 2>/dev/null
  done
done
