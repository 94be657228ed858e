#!/usr/bin/env bash
# ab.sh ROUNDS "ARGS" BIN...: runs BIN bench ARGS --json for each BIN in turn, ROUNDS times; prints tok/s
rounds=$1 args=$2; shift 2
for r in $(seq 1 $rounds); do
  for b in "$@"; do
    out=$(/work/exp/$b-darkhorse bench $args --json 2>/dev/null)
    echo "$out" | python3 -c "
import sys,json
for l in sys.stdin:
    l=l.strip()
    if not l.startswith('{'): continue
    j=json.loads(l)
    a=j.get('ms_per_step',{}).get('attention')
print('$r', '$b', j['test'], round(j['tok_s_median'],1), 'att_ms=%.2f' % a if a else '', 'share=%.3f' % j['roofline_share'] if 'roofline_share' in j else '')
"
  done
done
