#!/usr/bin/env bash
# bench-llamacpp.sh: llama.cpp's speed on this machine, on random-weight GGUFs of genesis-1b/5b's shapes.
#
# Builds llama.cpp v0.5.0 (the git bundle shipped in the npm package node-llama-cpp@3.22.1, commit
# de3ff81; the npm registry is the only source used), writes bf16 GGUFs (arch deepseek2, as llama.cpp's
# convert_hf_to_gguf.py does for DeepseekV3ForCausalLM) with exactly the shapes of our
# genesis-1b/5b config.json and random weights (normal * 0.02), quantizes them to Q8_0 and Q4_K_M with
# llama-quantize, and runs llama-bench -t 2 -p 512 -n 64 -r 5 on each. Prints one JSON object per
# line and test, the format scripts/bench.sh reads through LLAMA_BENCH_JSONL:
#   {"model": "genesis-5b", "format": "q8", "test": "pp512", "tok_s": 64.9, ...}
# tok_s is the median of the runs. Progress goes to stderr; every step whose output exists is skipped.
#
#   scripts/bench-llamacpp.sh > llama.jsonl    (first run about 20 minutes on 2 cores: build, 6 GGUFs, benches)
#   DH_LLAMA_DIR=DIR                  work dir: npm package, source, build, GGUFs, logs
#                                     (default ~/.cache/darkhorse/llamacpp)
#   DH_BENCH_DIR=DIR                  where genesis-1b/5b's config.json are (default ~/.cache/darkhorse)
#   DH_BENCH_REPS=N                   runs per test (default 5)
#   DH_BENCH_ONLY="1b:q8 5b:q4"       a subset (formats bf16, q8 = Q8_0, q4 = Q4_K_M; f32 is skipped)
#   DH_BENCH_BATCH=B                  also llama-batched-bench -npp 1 -ntg 64 -npl B -t 2, DH_BENCH_REPS
#                                     times: {"test": "tg64@bB", "tok_s": median of its S_TG t/s}
#
# Notes: the MTP (nextn) layer of the configs is not written (llama.cpp's converter skips it for
# deepseek2 and llama-bench does not load it); block_count = num_hidden_layers. q_lora_rank null is
# written as attention.q_lora_rank = 0 (llama.cpp requires the key). The random weights are drawn
# from a 64 MiB pool of normal values at random offsets, which keeps the 10 GB write of genesis-5b
# disk-bound; the values do not matter to the speed. The build is -march=native minus AMX (see
# step 2); llama-bench runs with its defaults otherwise (mmap, flash attention auto). Needs cmake,
# g++, git, npm and /usr/bin/python3 with numpy (apt-get install -y python3-numpy if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
dir=${DH_LLAMA_DIR:-$HOME/.cache/darkhorse/llamacpp}
cfgdir=${DH_BENCH_DIR:-$HOME/.cache/darkhorse}
reps=${DH_BENCH_REPS:-5}
only=${DH_BENCH_ONLY:-"1b:bf16 1b:q8 1b:q4 5b:bf16 5b:q8 5b:q4"}
py=/usr/bin/python3
mkdir -p "$dir"
timings=$dir/timings.log
say() { echo "bench-llamacpp: $*" >&2; }
phase() { # phase NAME COMMAND...: runs COMMAND, logs its wall time
  local name=$1 t0 t1; shift
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v n="$name" -v d="$(date -u +%FT%TZ)" 'BEGIN { printf "%s %s: %.1f s\n", d, n, b - a }' |
    tee -a "$timings" >&2
}

# 1. llama.cpp's source, from the npm registry only
get_source() {
  if [ ! -f "$dir/npm/node_modules/node-llama-cpp/llama/gitRelease.bundle" ]; then
    say "npm install node-llama-cpp@3.22.1"
    mkdir -p "$dir/npm"
    (cd "$dir/npm" && npm install --ignore-scripts --no-save --no-audit --no-fund node-llama-cpp@3.22.1 >&2)
  fi
  if [ ! -d "$dir/src/.git" ]; then
    local bundle=$dir/npm/node_modules/node-llama-cpp/llama/gitRelease.bundle
    say "bundle heads: $(git bundle list-heads "$bundle" | tr '\n' ' ')"
    git -c advice.detachedHead=false clone -q "$bundle" "$dir/src"
  fi
}
phase source get_source
commit=$(git -C "$dir/src" rev-parse HEAD)
say "llama.cpp commit $commit"

# 2. build llama-bench, llama-batched-bench and llama-quantize. -march=native without AMX: this CPU reports AMX, but
# AMX tile instructions raise SIGILL in this VM, and llama.cpp's AMX buffer also fails its graph
# split on the MLA tensors attn_k_b/attn_v_b (GGML_ASSERT(*cur_backend_id != -1)); AVX-512
# (incl. VNNI, BF16) stays on.
noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DGGML_BLAS=OFF -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF "-DCMAKE_C_FLAGS=$noamx" "-DCMAKE_CXX_FLAGS=$noamx")
build() {
  if [ -x "$dir/build/bin/llama-bench" ] && [ -x "$dir/build/bin/llama-quantize" ] &&
     [ -x "$dir/build/bin/llama-batched-bench" ] &&
     [ "$(cat "$dir/build/flags.txt" 2>/dev/null)" = "${flags[*]}" ]; then return; fi
  say "building llama.cpp (log: $dir/build.log)"
  rm -rf "$dir/build"
  cmake -S "$dir/src" -B "$dir/build" "${flags[@]}" >"$dir/build-configure.log" 2>&1
  cmake --build "$dir/build" -j 2 --target llama-bench llama-quantize llama-batched-bench >"$dir/build.log" 2>&1
  echo "${flags[*]}" >"$dir/build/flags.txt"
}
phase build build

# 3. random-weight bf16 GGUFs of genesis-1b/5b's shapes
"$py" -c 'import numpy' 2>/dev/null || { say "apt-get install -y python3-numpy"; apt-get install -y python3-numpy >&2; }
cat >"$dir/make_gguf.py" <<'PY'
# make_gguf.py CONFIG TOKENIZER OUT: a deepseek2 GGUF, bf16 random weights, of CONFIG's shapes
import json, sys
import numpy as np
import gguf

cfg_path, tok_path, out = sys.argv[1:4]
c = json.load(open(cfg_path))
H, V, L = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
nh, nope, rope, vd = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
kvr, qr = c["kv_lora_rank"], c.get("q_lora_rank") or 0
ff, ffe, E, ns = c["intermediate_size"], c["moe_intermediate_size"], c["n_routed_experts"], c["n_shared_experts"]
dense = c["first_k_dense_replace"]
assert c.get("moe_layer_freq", 1) == 1

w = gguf.GGUFWriter(out, "deepseek2")
w.add_name(c.get("darkhorse_preset", "genesis"))
w.add_block_count(L)
w.add_context_length(c["max_position_embeddings"])
w.add_embedding_length(H)
w.add_feed_forward_length(ff)
w.add_head_count(nh)
w.add_head_count_kv(1)  # MLA as MQA, as the converter writes it
w.add_rope_freq_base(c["rope_theta"])
w.add_layer_norm_rms_eps(c["rms_norm_eps"])
w.add_expert_count(E)
w.add_expert_used_count(c["num_experts_per_tok"])
w.add_expert_group_count(c["n_group"])
w.add_expert_group_used_count(c["topk_group"])
assert c["scoring_func"] == "sigmoid"
w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
w.add_leading_dense_block_count(dense)
w.add_vocab_size(V)
w.add_q_lora_rank(qr)  # 0 = no q LoRA (llama.cpp requires the key for non-"lite" models)
w.add_kv_lora_rank(kvr)
w.add_key_length(kvr + rope)
w.add_value_length(kvr)
w.add_key_length_mla(nope + rope)
w.add_value_length_mla(vd)
w.add_expert_feed_forward_length(ffe)
w.add_expert_shared_count(ns)
w.add_expert_weights_scale(c["routed_scaling_factor"])
if c.get("norm_topk_prob"):
    w.add_expert_weights_norm(True)
w.add_rope_dimension_count(rope)
rs = c.get("rope_scaling")
if rs:
    assert rs.get("type", rs.get("rope_type")) == "yarn"
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rs["factor"])
    w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
    if "beta_fast" in rs: w.add_rope_scaling_yarn_beta_fast(rs["beta_fast"])
    if "beta_slow" in rs: w.add_rope_scaling_yarn_beta_slow(rs["beta_slow"])
    if "mscale_all_dim" in rs: w.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])  # as the converter does
w.add_quantization_version(gguf.GGML_QUANT_VERSION)

# tokenizer: DeepSeek-V3's byte-level BPE, padded to vocab_size
t = json.load(open(tok_path))
tokens, types = [f"[PAD{i}]" for i in range(V)], [gguf.TokenType.UNUSED] * V
for s, i in t["model"]["vocab"].items():
    tokens[i], types[i] = s, gguf.TokenType.NORMAL
for a in t["added_tokens"]:
    tokens[a["id"]] = a["content"]
    types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
merges = [m if isinstance(m, str) else " ".join(m) for m in t["model"]["merges"]]
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("deepseek-v3")
w.add_token_list(tokens)
w.add_token_types(types)
w.add_token_merges(merges)
w.add_bos_token_id(c["bos_token_id"])
w.add_eos_token_id(c["eos_token_id"])
w.add_pad_token_id(c["eos_token_id"])
w.add_add_bos_token(True)
w.add_add_eos_token(False)

# tensors: (name, numpy shape = ggml shape reversed, kind); kinds: w = bf16 random, g = f32 random,
# one = f32 ones (norms), zero = f32 zeros (bias)
T = [("token_embd.weight", (V, H), "w")]
for i in range(L):
    b = f"blk.{i}."
    T += [(b + "attn_norm.weight", (H,), "one"),
          (b + "attn_q.weight", (nh * (nope + rope), H), "w")] if not qr else [
          (b + "attn_norm.weight", (H,), "one"),
          (b + "attn_q_a_norm.weight", (qr,), "one"),
          (b + "attn_q_a.weight", (qr, H), "w"),
          (b + "attn_q_b.weight", (nh * (nope + rope), qr), "w")]
    T += [(b + "attn_kv_a_norm.weight", (kvr,), "one"),
          (b + "attn_kv_a_mqa.weight", (kvr + rope, H), "w"),
          (b + "attn_k_b.weight", (nh, kvr, nope), "w"),
          (b + "attn_v_b.weight", (nh, vd, kvr), "w"),
          (b + "attn_output.weight", (H, nh * vd), "w"),
          (b + "ffn_norm.weight", (H,), "one")]
    if i < dense:
        T += [(b + "ffn_gate.weight", (ff, H), "w"), (b + "ffn_up.weight", (ff, H), "w"),
              (b + "ffn_down.weight", (H, ff), "w")]
    else:
        T += [(b + "ffn_gate_inp.weight", (E, H), "g"),
              (b + "exp_probs_b.bias", (E,), "zero"),
              (b + "ffn_gate_exps.weight", (E, ffe, H), "w"),
              (b + "ffn_up_exps.weight", (E, ffe, H), "w"),
              (b + "ffn_down_exps.weight", (E, H, ffe), "w"),
              (b + "ffn_gate_shexp.weight", (ffe * ns, H), "w"),
              (b + "ffn_up_shexp.weight", (ffe * ns, H), "w"),
              (b + "ffn_down_shexp.weight", (H, ffe * ns), "w")]
T += [("output_norm.weight", (H,), "one"), ("output.weight", (V, H), "w")]

for name, shape, kind in T:
    n = int(np.prod(shape))
    if kind == "w":
        w.add_tensor_info(name, shape, np.dtype(np.uint16), 2 * n, raw_dtype=gguf.GGMLQuantizationType.BF16)
    else:
        w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * n, raw_dtype=gguf.GGMLQuantizationType.F32)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_ti_data_to_file()

rng = np.random.default_rng(0)
POOL, CHUNK = 1 << 25, 1 << 22
f = rng.standard_normal(POOL + CHUNK, dtype=np.float32) * np.float32(0.02)
pool = ((f.view(np.uint32) + 0x8000) >> 16).astype(np.uint16)  # bf16, rounded
fout = w.fout[0]
total = 0
for name, shape, kind in T:
    n = int(np.prod(shape))
    w.write_padding(fout, fout.tell())
    if kind == "w":
        left = n
        while left:
            k = min(left, CHUNK)
            off = int(rng.integers(0, POOL))
            pool[off:off + k].tofile(fout)
            left -= k
        nb = 2 * n
    else:
        a = {"one": np.ones(n, np.float32), "zero": np.zeros(n, np.float32)}.get(kind)
        if a is None:
            a = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
        a.tofile(fout)
        nb = 4 * n
    w.write_padding(fout, nb)
    total += n
w.close()
print(f"{out}: {len(T)} tensors, {total / 1e9:.3f} B parameters", file=sys.stderr)
PY

models=""
for m in 1b 5b; do case " $only " in *" $m:"*) models="$models $m" ;; esac; done
for m in $models; do
  g=$dir/genesis-$m-bf16.gguf
  [ -f "$g" ] && continue
  [ -f "$cfgdir/genesis-$m/config.json" ] || { say "missing $cfgdir/genesis-$m/config.json (run scripts/bench.sh first)"; exit 1; }
  say "writing $g"
  phase "gguf genesis-$m bf16" env PYTHONPATH="$dir/src/gguf-py" "$py" "$dir/make_gguf.py" \
    "$cfgdir/genesis-$m/config.json" "$repo/models/deepseek-v3/tokenizer.json" "$g.tmp"
  mv "$g.tmp" "$g"
done

# 4. Q8_0 and Q4_K_M
qtype() { case $1 in q8) echo Q8_0 ;; q4) echo Q4_K_M ;; bf16) echo BF16 ;; *) echo "" ;; esac; }
for cfg in $only; do
  m=${cfg%%:*} f=${cfg##*:}
  case $f in q8|q4) ;; *) continue ;; esac
  g=$dir/genesis-$m-$f.gguf
  [ -f "$g" ] && continue
  say "quantizing genesis-$m to $(qtype "$f")"
  phase "quantize genesis-$m $f" sh -c '"$1" "$2" "$3" "$4" 2 >>"$5" 2>&1' _ \
    "$dir/build/bin/llama-quantize" "$dir/genesis-$m-bf16.gguf" "$g.tmp" "$(qtype "$f")" "$dir/quantize.log"
  mv "$g.tmp" "$g"
done

# 5. llama-bench
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
say "cpu: $cpu"
for cfg in $only; do
  m=${cfg%%:*} f=${cfg##*:}
  [ -n "$(qtype "$f")" ] || { say "skipping $cfg (llama.cpp is measured in bf16, q8, q4)"; continue; }
  g=$dir/genesis-$m-$f.gguf
  say "llama-bench genesis-$m $f ($(du -h "$g" | cut -f1))"
  raw=$(mktemp)
  phase "bench genesis-$m $f" sh -c '"$1" -m "$2" -t 2 -p 512 -n 64 -r "$3" -o jsonl >"$4" 2>>"$5"' _ \
    "$dir/build/bin/llama-bench" "$g" "$reps" "$raw" "$dir/llama-bench.log"
  if [ -n "${DH_BENCH_DEPTH:-}" ]; then # pp and tg after a context of that many tokens (llama-bench -d)
    phase "bench genesis-$m $f at depth $DH_BENCH_DEPTH" sh -c \
      '"$1" -m "$2" -t 2 -p 512 -n 64 -d "$6" -r "$3" -o jsonl >>"$4" 2>>"$5"' _ \
      "$dir/build/bin/llama-bench" "$g" "$reps" "$raw" "$dir/llama-bench.log" "$DH_BENCH_DEPTH"
  fi
  cat "$raw" >>"$dir/llama-bench.jsonl"
  "$py" - "$raw" "genesis-$m" "$f" "$cpu" <<'PY'
import json, statistics, sys
raw, model, fmt, cpu = sys.argv[1:5]
for line in open(raw):
    line = line.strip()
    if not line.startswith("{"):
        continue
    j = json.loads(line)
    test = "pp%d" % j["n_prompt"] if j["n_gen"] == 0 else "tg%d" % j["n_gen"] if j["n_prompt"] == 0 else "pp%d+tg%d" % (j["n_prompt"], j["n_gen"])
    if j.get("n_depth"): test += "@d%d" % j["n_depth"]  # as darkhorse bench names it
    ts = j["samples_ts"]
    print(json.dumps({"model": model, "format": fmt, "test": test, "tok_s": round(statistics.median(ts), 2),
                      "tok_s_min": round(min(ts), 2), "tok_s_max": round(max(ts), 2),
                      "tok_s_avg": round(j["avg_ts"], 2), "tok_s_stddev": round(j["stddev_ts"], 2),
                      "threads": j["n_threads"], "type": j["model_type"], "commit": j["build_commit"],
                      "cpu": cpu}), flush=True)
PY
  rm -f "$raw"
  if [ -n "${DH_BENCH_BATCH:-}" ]; then
    say "llama-batched-bench genesis-$m $f, $DH_BENCH_BATCH sequences"
    braw=$(mktemp)
    for r in $(seq "$reps"); do
      "$dir/build/bin/llama-batched-bench" -m "$g" -t 2 -c $((DH_BENCH_BATCH * 80)) -b 2048 -ub 512 -npp 1 -ntg 64 \
        -npl "$DH_BENCH_BATCH" --output-format jsonl 2>>"$dir/llama-bench.log" | grep '^{' >>"$braw" || true
    done
    "$py" - "$braw" "genesis-$m" "$f" "$cpu" "$DH_BENCH_BATCH" <<'PY'
import json, statistics, sys
raw, model, fmt, cpu, b = sys.argv[1:6]
s = [json.loads(l)["speed_tg"] for l in open(raw) if l.startswith("{")]
if s:
    print(json.dumps({"model": model, "format": fmt, "test": "tg64@b%s" % b, "tok_s": round(statistics.median(s), 2),
                      "tok_s_min": round(min(s), 2), "tok_s_max": round(max(s), 2), "threads": 2, "cpu": cpu}), flush=True)
PY
    rm -f "$braw"
  fi
done
