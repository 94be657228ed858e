#!/bin/bash
# alternate main and khack on genesis-1b q4k, log each run's state and pass figures
end=$(( $(date +%s) + ${1:-1200} ))
while [ $(date +%s) -lt $end ]; do
  for b in /work/main/build/cli/darkhorse /work/exp/khack/build/cli/darkhorse; do
    out=$($b bench --model ~/.cache/darkhorse/genesis-1b-q4k --weights q4k -t 2 -p 0 -n 64 -r 4 --passes 2>&1)
    lo=$(echo "$out" | grep -o "bursts [0-9.]*" | awk '{print $2}')
    echo "$(date +%T) ${b:6:10} lo $lo | $(echo "$out" | grep "each timed run" | sed 's/.*before or after it: //') | 2-4MiB $(echo "$out" | grep "^| 2-4 MiB" | awk -F'|' '{print $7, $8}') | head $(echo "$out" | grep "^| 64-128 MiB" | awk -F'|' '{print $7,$8}')"
  done
done
