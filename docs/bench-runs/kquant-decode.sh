#!/usr/bin/env bash
# Decoding a Q4_K_M-mix model (random weights, llama.cpp's mix: Q4_K, Q6_K for the LM head and
# the "more bits" layers' attn_v and ffn_down; crates/stainedglass-models/examples/kquant_model.rs)
# alternating, per round: this binary (Q4_K and Q6_K in our kernels), the previous binary
# (OLD: both through candle's K-quant dot products), PyTorch eager f32 on the same weights
# (`sgt convert-hf` of the file) and llama.cpp on the same GGUF. One JSON line each.
#   OLD=/path/to/previous/sgt PYTHON=venv-with-torch/bin/python \
#   LLAMACPP_PYTHON=venv-with-llama-cpp/bin/python ROUNDS=3 docs/bench-runs/kquant-decode.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD=${OLD:?the previous sgt binary}
PY=${PYTHON:-python3}
LPY=${LLAMACPP_PYTHON:-$PY}
MODEL=${MODEL:-/tmp/kq.gguf}
HF=${HF_DIR:-/tmp/kq-hf}
ROUNDS=${ROUNDS:-3}
cargo build --release -q -p sgt
cargo build --release -q -p stainedglass-models --example kquant_model
TOK=${SGT_ASSETS:-assets}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$MODEL" ] || target/release/examples/kquant_model "$MODEL" "$TOK" >&2
[ -f "$HF/model.safetensors" ] || target/release/sgt convert-hf --model "$MODEL" --out "$HF" >&2
tag() { python3 -c "import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); r['binary']='$1'; print(json.dumps(r))"; }
for r in $(seq "$ROUNDS"); do
  target/release/sgt bench llm --model "$MODEL" --stored --activations int8 --decode-batch 16 | tag this
  "$OLD" bench llm --model "$MODEL" --stored --activations int8 --decode-batch 16 | tag previous
  "$PY" bench/llm_torch.py --hf-dir "$HF" --train-steps 1 --train-batch 1 --train-seq 16 2>/dev/null | tag torch
  "$LPY" bench/llm_llamacpp.py --gguf "$MODEL" 2>/dev/null | tag llama.cpp || true
done
