#!/usr/bin/env bash
# setup.sh: install the Debian packages Darkhorse builds, tests and runs with.
# Idempotent and quiet when everything is there; needs root (or sudo) only when something is missing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config          # toolchain
  libopenmpi-dev openmpi-bin                # the cluster
  libopenblas-dev                           # BLAS (test oracle, OPENBLAS_CORETYPE handling)
  libprotobuf-c-dev protobuf-c-compiler     # control plane and routing traces
  libevent-dev                              # HTTP server
  libcunit1-dev                             # unit tests
  libjansson-dev                            # JSON
  zlib1g-dev                                # gzip-compressed routing traces
  libonig-dev                               # Unicode regexes of the tokenizer (what HF tokenizers uses)
  curl python3                               # HTTP tests; python3 compares float files in CLI tests
  debootstrap                               # scripts/test-deb.sh: a clean Debian root for the .deb
  iproute2                                  # ip netns and tc: scripts/netns-cluster.sh and its test
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm (the openai client in the HTTP tests): the machine's own when present (a
# nodesource nodejs ships npm itself and conflicts with Debian's npm package), else Debian's.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done" >&2
