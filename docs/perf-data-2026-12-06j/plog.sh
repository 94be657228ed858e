#!/bin/bash
# plog.sh SECONDS MODEL W "ENV1" "ENV2" ...: alternate env variants, log state + per-run shares + classes
secs=$1 model=$2 w=$3; shift 3
end=$(( $(date +%s) + secs ))
D=/work/main/build/cli/darkhorse
while [ $(date +%s) -lt $end ]; do
  for e in "$@"; do
    out=$(env $e $D bench --model $model --weights $w -t 2 -p 0 -n 64 -r 4 --passes 2>&1)
    lo=$(echo "$out" | grep -o "bursts [0-9.]*" | awk '{print $2}')
    cls=$(echo "$out" | grep -E "^\| [0-9]" | awk -F'|' '{gsub(/ /,"",$2); gsub(/ /,"",$8); printf "%s:%s ", $2, $8}')
    echo "$(date +%T) [$e] lo $lo | $(echo "$out" | grep "each timed run" | sed 's/.*median/median/') | $cls"
  done
done
