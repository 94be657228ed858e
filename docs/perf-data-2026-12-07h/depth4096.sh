#!/usr/bin/env bash
# ours (lm, d81d32c; head, 07f7f20) and llama.cpp alternated: genesis-5b q4k / Q4_K_M tg32 after 4096 tokens
L=$HOME/.cache/darkhorse/llamacpp
for r in 1 2; do
  for b in lm head; do
    /work/exp/$b-darkhorse bench --model $HOME/.cache/darkhorse/genesis-5b-q4k --weights q4k -t 2 -p 0 -n 32 -d 4096 -r 2 --no-bandwidth --json 2>/dev/null | python3 -c "
import sys,json
for l in sys.stdin:
    if l.startswith('{'): j=json.loads(l); print('$r $b', j['test'], round(j['tok_s_median'],2))"
  done
  $L/build/bin/llama-bench -m $L/genesis-5b-q4.gguf -t 2 -p 0 -n 32 -d 4096 -r 2 -o json 2>/dev/null | python3 -c "
import sys,json
for t in json.load(sys.stdin): print('$r llama.cpp tg32@d4096', round(t['avg_ts'],2), [round(x,2) for x in t['samples_ts']])"
done
