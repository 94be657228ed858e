#!/usr/bin/env bash
# test.sh: install what is missing, build, and run every test through ctest, twice: a normal
# build, and a build with AddressSanitizer + UndefinedBehaviorSanitizer.
#   scripts/test.sh            both configurations
#   scripts/test.sh --fast     the normal build only
#   DH_JOBS=N                  parallel build jobs (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${DH_JOBS:-2}
fast=0
[ "${1:-}" = "--fast" ] && fast=1

scripts/setup.sh

run_config() { # name, cmake options...
  local name=$1; shift
  local dir="$root/build-test-$name"
  echo "== $name: configure and build" >&2
  cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >"$dir.cmake.log" 2>&1 \
    || { cat "$dir.cmake.log"; return 1; }
  cmake --build "$dir" -j "$jobs" >"$dir.build.log" 2>&1 || { tail -60 "$dir.build.log"; return 1; }
  if grep -q "warning:" "$dir.build.log"; then grep -B2 -A6 "warning:" "$dir.build.log"; return 1; fi
  echo "== $name: ctest" >&2
  (cd "$dir" && ctest --output-on-failure --timeout 600 -j 1)
}

start=$(date +%s)
mkdir -p "$root/build-test-release" "$root/build-test-sanitize"
run_config release
[ $fast -eq 1 ] || run_config sanitize -DDH_SANITIZE=ON
echo "== all tests passed in $(( $(date +%s) - start )) s" >&2
