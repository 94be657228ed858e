#!/usr/bin/env bash
# test-deb.sh: build the .deb, install it into a clean Debian 12 root, run it from there.
#   scripts/test-deb.sh [BUILD_DIR]      (default build-deb; needs root and the Debian mirror)
# Not part of CI: it takes a minute or more and the network. Steps:
#  1. configure and build BUILD_DIR, then `cpack -G DEB` there (the .deb lands in BUILD_DIR);
#  2. a minimal Debian root (debootstrap --variant=minbase, from the mirror apt uses here),
#     made once and cached under ~/.cache/darkhorse, copied fresh for every run;
#  3. `apt-get install ./darkhorse_*.deb` inside it: apt resolves the package's Depends from
#     the mirror (downloaded packages are cached too, so a re-run is fast);
#  4. from the installed files only, with an empty environment: darkhorse --version (must be
#     the project's version), --help, a greedy generate on tests/data/ref-tiny copied into the
#     root (ids compared with DeepSeek's reference), init-model genesis-tiny + generate from a
#     text prompt and tokenize (the built-in tokenizer), and `darkhorse hosts` under mpirun -np 3.
# Mounts happen in a mount namespace of their own (unshare), so nothing stays mounted if the
# script is interrupted, and the temporary root is removed at exit.
set -euo pipefail
root_dir=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root_dir/build-deb}
cache=${DH_CACHE:-${HOME:-/root}/.cache/darkhorse}
suite=bookworm
[ "$(id -u)" -eq 0 ] || { echo "test-deb: needs root (debootstrap, chroot)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "test-deb: debootstrap is missing: scripts/setup.sh installs it" >&2; exit 2; }
step() { echo "== $*"; }

# 1. the package
step "build and package in $build"
cmake -S "$root_dir" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" --target darkhorse -j2 >/dev/null
rm -f "$build"/darkhorse_*.deb
(cd "$build" && cpack -G DEB >/dev/null)
deb=$(ls "$build"/darkhorse_*.deb)
version=$(sed -n 's/^project(darkhorse VERSION \([0-9.]*\).*/\1/p' "$root_dir/CMakeLists.txt")
echo "$(basename "$deb"), $(du -k "$deb" | cut -f1) kB"
dpkg-deb -f "$deb" Version Depends

# 2. a clean root: the cached debootstrap, copied
mirror=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 == "'$suite'" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}
base=$cache/debootstrap-$suite-minbase
mkdir -p "$cache/apt-archives/partial"
if [ ! -e "$base/.complete" ]; then
  step "debootstrap $suite from $mirror into $base (once)"
  rm -rf "$base"
  debootstrap --variant=minbase "$suite" "$base" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    { tail -20 "$cache/debootstrap.log"; exit 1; }
  echo "deb $mirror $suite main" >"$base/etc/apt/sources.list"
  touch "$base/.complete"
fi
tmp=$(mktemp -d /tmp/darkhorse-deb.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
chroot_dir=$tmp/root
step "a fresh root in $chroot_dir"
cp -a "$base" "$chroot_dir"
rm -f "$chroot_dir/.complete"
cp "$deb" "$chroot_dir/tmp/"
cp -r "$root_dir/tests/data/ref-tiny" "$chroot_dir/tmp/ref-tiny"
cp /etc/resolv.conf "$chroot_dir/etc/resolv.conf"
ids=$(python3 -c "import json,sys; e=json.load(open(sys.argv[1])); print(','.join(map(str,e['prompt_ids'])), ' '.join(map(str,e['greedy_ids'])))" \
  "$root_dir/tests/data/ref-tiny/expected.json")
prompt=${ids%% *} greedy=${ids#* }
n_greedy=$(wc -w <<<"$greedy")

# 3 and 4, in a mount namespace: /proc, /dev and the apt cache mounted into the root
cat >"$chroot_dir/tmp/inside.sh" <<EOF
set -eu
export DEBIAN_FRONTEND=noninteractive
echo "== apt-get install ./$(basename "$deb") in the clean root"
apt-get update -qq
apt-get install -y -qq --no-install-recommends ./tmp/$(basename "$deb") >/tmp/apt.log 2>&1 || { tail -20 /tmp/apt.log; exit 1; }
grep -c '^Setting up' /tmp/apt.log | sed 's/^/packages set up: /'
dpkg -s darkhorse | grep -E '^(Status|Version)'
cd /
echo "== env -i darkhorse --version"
env -i /usr/bin/darkhorse --version
got=\$(env -i /usr/bin/darkhorse --version)
[ "\$got" = "darkhorse $version" ] || { echo "FAIL: wanted 'darkhorse $version'"; exit 1; }
echo "== env -i darkhorse --help"
env -i /usr/bin/darkhorse --help
echo "== env -i darkhorse generate --model /tmp/ref-tiny --ids $prompt --temperature 0 --print-ids --max-tokens $n_greedy"
out=\$(env -i /usr/bin/darkhorse generate --model /tmp/ref-tiny --ids $prompt --temperature 0 --print-ids --max-tokens $n_greedy 2>/tmp/gen.err) || { cat /tmp/gen.err; exit 1; }
echo "\$out"
[ "\$out" = "$greedy" ] || { echo "FAIL: DeepSeek's reference greedy ids are: $greedy"; exit 1; }
echo "ok: the reference's greedy ids"
echo "== env -i darkhorse init-model --preset genesis-tiny, then generate --prompt (the built-in tokenizer)"
env -i /usr/bin/darkhorse init-model --preset genesis-tiny --out /tmp/tiny 2>/dev/null
ls /tmp/tiny
text=\$(env -i /usr/bin/darkhorse generate --model /tmp/tiny --prompt "Hello" --max-tokens 8 --temperature 0 --ignore-eos 2>/tmp/gen.err) || { cat /tmp/gen.err; exit 1; }
echo "generated (random weights): \$text"
echo "== env -i darkhorse tokenize --text 'Hello!' (Hugging Face: 19923 3, tests/data/tokenizer/chat_cases.jsonl)"
got=\$(env -i /usr/bin/darkhorse tokenize --text 'Hello!')
echo "\$got"
[ "\$got" = "19923 3" ] || { echo "FAIL: wanted 19923 3"; exit 1; }
echo "== mpirun -np 3 darkhorse hosts --model /tmp/ref-tiny"
env -i OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PATH=/usr/bin:/bin \
  mpirun -np 3 --oversubscribe /usr/bin/darkhorse hosts --model /tmp/ref-tiny 2>/tmp/hosts.err || { cat /tmp/hosts.err; exit 1; }
tail -1 /tmp/hosts.err
EOF
step "install and run inside the root (a mount namespace of its own)"
unshare --mount --propagation private bash -c '
  set -e
  r=$1
  mount -t proc proc "$r/proc"
  mount --rbind /dev "$r/dev"
  mount --bind "$2" "$r/var/cache/apt/archives"
  chroot "$r" /bin/sh /tmp/inside.sh
' _ "$chroot_dir" "$cache/apt-archives"
step "test-deb: all passed"
