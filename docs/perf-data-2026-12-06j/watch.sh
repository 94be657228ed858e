#!/bin/bash
# sample the machine state; when fast, run pass
end=$(( $(date +%s) + ${1:-600} ))
while [ $(date +%s) -lt $end ]; do
  r=$(./cyc | tail -1 | grep -o "best [0-9.]*" | awk '{print $2}')
  echo "$(date +%T) reader $r"
  if awk "BEGIN{exit !($r > 45)}"; then ./pass 0; ./cyc | tail -1; fi
  sleep 5
done
