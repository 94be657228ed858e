#!/usr/bin/env bash
# bench-tokenizer.sh: encode throughput of `darkhorse tokenize` against Hugging Face tokenizers.
#
# Usage: scripts/bench-tokenizer.sh [--runs N] [--size MB] [--tokenizer FILE] [--no-hf]
#   BUILD=build-dir (default build) is configured and built if darkhorse is missing.
#
# Builds a few MB of mixed text (licences, C headers, the multilingual texts of
# tests/data/tokenizer/texts, synthetic multi-script lines with emoji), then encodes it line by
# line, single-threaded, N runs each (default 5), and prints the medians:
#   - darkhorse: `darkhorse tokenize --bench` (word cache emptied before each run);
#   - HF per line: @anush008/tokenizers 0.6.0 (tokenizers 0.22.2), encode() one line at a
#     time, awaited in sequence, only the encode calls timed; a fresh tokenizer each run, so its
#     cache starts cold too; RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false;
#   - HF batch: the same lines through one encodeBatch() call on one Rayon thread, which takes
#     the Node binding's per-call overhead out of the HF figure.
# HF is installed with npm into a temporary directory at bench time (needs the network; never
# needed to build or test). Results go to stderr and, as a table, to stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
RUNS=5
SIZE_MB=4
TOK="$ROOT/models/deepseek-v3/tokenizer.json"
HF=1
while [ $# -gt 0 ]; do
    case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --size) SIZE_MB=$2; shift 2 ;;
    --tokenizer) TOK=$2; shift 2 ;;
    --no-hf) HF=0; shift ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-tokenizer: unknown option $1" >&2; exit 2 ;;
    esac
done

DH="$ROOT/$BUILD/cli/darkhorse"
if [ ! -x "$DH" ]; then
    echo "bench-tokenizer: building darkhorse in $BUILD" >&2
    cmake -S "$ROOT" -B "$ROOT/$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
    cmake --build "$ROOT/$BUILD" --target darkhorse -j "$(nproc)" >&2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
TEXT="$WORK/mixed.txt"

# ---- the text: real files first, then synthetic lines up to the size ----
{
    cat /usr/share/common-licenses/* 2>/dev/null || true
    cat "$ROOT"/tests/data/tokenizer/texts/*.txt
    cat "$ROOT"/core/*.c "$ROOT"/core/*.h 2>/dev/null || true
    find /usr/include -maxdepth 2 -name '*.h' -size -200k 2>/dev/null | sort | head -400 | xargs cat 2>/dev/null || true
} | head -c $((SIZE_MB * 1000000 * 3 / 4)) >"$TEXT"
node - "$TEXT" "$SIZE_MB" <<'EOF'
// synthetic lines: words of many scripts, digits, punctuation and emoji, fixed seed
const fs = require('fs');
const [file, mb] = process.argv.slice(2);
let a = 12345;
const r = () => { a = (a * 1103515245 + 12345) >>> 0; return a / 4294967296; };
const pools = [[0x61, 0x7a], [0x41, 0x5a], [0x30, 0x39], [0x4e00, 0x9fa5], [0x3041, 0x30ff],
               [0x410, 0x44f], [0x621, 0x64a], [0x905, 0x939], [0xe01, 0xe30], [0xac00, 0xd7a3],
               [0x391, 0x3c9], [0x1f600, 0x1f64f], [0x1f300, 0x1f5ff], [0x21, 0x2f]];
const out = [];
let size = fs.statSync(file).size;
while (size < mb * 1e6) {
    let line = '';
    const words = 4 + Math.floor(r() * 20);
    for (let w = 0; w < words; w++) {
        const p = pools[Math.floor(r() * pools.length)], len = 1 + Math.floor(r() * 8);
        for (let i = 0; i < len; i++) line += String.fromCodePoint(p[0] + Math.floor(r() * (p[1] - p[0] + 1)));
        line += r() < 0.8 ? ' ' : r() < 0.5 ? ', ' : '. ';
    }
    out.push(line);
    size += Buffer.byteLength(line) + 1;
}
fs.appendFileSync(file, '\n' + out.join('\n') + '\n');
EOF
BYTES=$(wc -c <"$TEXT")
LINES=$(wc -l <"$TEXT")
echo "bench-tokenizer: $BYTES bytes, $LINES lines, $RUNS runs, tokenizer $TOK" >&2

# ---- darkhorse ----
DH_OUT=$("$DH" tokenize --tokenizer "$TOK" --bench "$TEXT" --runs "$RUNS" 2>&1)
echo "$DH_OUT" >&2
DH_MBS=$(echo "$DH_OUT" | sed -n 's/.*median \([0-9.]*\) MB\/s.*/\1/p')

# ---- Hugging Face tokenizers, single-threaded ----
HF_LINE=- HF_BATCH=-
if [ "$HF" = 1 ]; then
    (cd "$WORK" && npm install --silent --no-audit --no-fund @anush008/tokenizers@0.6.0 >&2)
    cat >"$WORK/hf.js" <<'EOF'
const {Tokenizer} = require('@anush008/tokenizers');
const fs = require('fs');
const [tokPath, file, runs, mode] = process.argv.slice(2);
const text = fs.readFileSync(file, 'utf8'), bytes = Buffer.byteLength(text);
const lines = text.split('\n');
const median = v => v.slice().sort((x, y) => x - y)[Math.floor(v.length / 2)];
(async () => {
    const mbs = [];
    for (let r = 0; r < +runs; r++) {
        const tok = Tokenizer.fromFile(tokPath); // fresh: a cold cache, like darkhorse's runs
        let ns = 0n;
        if (mode === 'line') {
            for (const l of lines) {
                const t0 = process.hrtime.bigint();
                await tok.encode(l, null, {addSpecialTokens: false});
                ns += process.hrtime.bigint() - t0;
            }
        } else {
            const t0 = process.hrtime.bigint();
            await tok.encodeBatch(lines, {addSpecialTokens: false});
            ns = process.hrtime.bigint() - t0;
        }
        mbs.push(bytes / 1e6 / (Number(ns) / 1e9));
    }
    console.error(`HF ${mode}: runs (MB/s): ${mbs.map(x => x.toFixed(2)).join(' ')}`);
    console.log(median(mbs).toFixed(2));
})();
EOF
    export RAYON_NUM_THREADS=1 RAYON_RS_NUM_CPUS=1 TOKENIZERS_PARALLELISM=false
    HF_LINE=$(cd "$WORK" && node hf.js "$TOK" "$TEXT" "$RUNS" line)
    HF_BATCH=$(cd "$WORK" && node hf.js "$TOK" "$TEXT" "$RUNS" batch)
fi

ratio() { if [ "$2" = - ]; then echo -; else awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; fi; }
printf '\n| encoder (single thread, %s MB mixed text, median of %s) | MB/s | darkhorse / this |\n' \
    "$(awk -v b="$BYTES" 'BEGIN { printf "%.1f", b / 1e6 }')" "$RUNS"
printf '|---|---|---|\n'
printf '| darkhorse tokenize --bench | %s | 1.0x |\n' "$DH_MBS"
printf '| HF tokenizers 0.22.2, encode() per line | %s | %s |\n' "$HF_LINE" "$(ratio "$DH_MBS" "$HF_LINE")"
printf '| HF tokenizers 0.22.2, encodeBatch(), 1 thread | %s | %s |\n' "$HF_BATCH" "$(ratio "$DH_MBS" "$HF_BATCH")"
