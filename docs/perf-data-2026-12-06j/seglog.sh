#!/bin/bash
end=$(( $(date +%s) + ${1:-600} ))
while [ $(date +%s) -lt $end ]; do for p in "0 0" "4096 2" "65536 2"; do ./segs $p | sed "s/^/$(date +%T) touch $p: /"; done; done
