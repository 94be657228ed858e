#!/usr/bin/env bash
# demo.sh: the cluster end to end on this machine. Installs what is missing, builds, creates a
# genesis-tiny checkpoint (random weights, DeepSeek-V3's real tokenizer) if absent, and runs a
# 3-rank cluster (1 coordinator + 2 expert workers) on a prompt: prints the generated text and
# the per-worker load table.
#   scripts/demo.sh ["your prompt"]
#   DH_DEMO_MODEL=DIR   use (or create) the checkpoint in DIR (default models-local/genesis-tiny)
#   DH_DEMO_RANKS=N     ranks for mpirun (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-darkhorse.sh demo
model=${DH_DEMO_MODEL:-models-local/genesis-tiny}
ranks=${DH_DEMO_RANKS:-3}
prompt=${1:-"Explain in one sentence why experts are spread over several machines."}
ensure_model genesis-tiny "$model"
echo "demo: mpirun -np $ranks: rank 0 coordinates, ranks 1..$((ranks - 1)) host the experts" >&2
echo "demo: the weights are random, so the text is too; the machinery is real" >&2
echo "prompt: $prompt"
# the text streams to stdout; the ranks' log and the load table (stderr) follow it, so that
# they do not break into the middle of the text
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo -n "output:"
rc=0
mpirun -np "$ranks" --oversubscribe "$bin" generate --model "$model" --prompt "$prompt" \
  --max-tokens 40 --temperature 0.8 --seed 42 2>"$log" || rc=$?
echo
echo "--- the cluster's log and load table:" >&2
cat "$log" >&2
exit $rc
