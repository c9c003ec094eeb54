#!/usr/bin/env bash
# Serving a bf16 Hugging Face folder as stored (two bytes a weight, widened to f32 exactly), side
# by side in one run, alternating: Rust f32 (the same folder loaded in f32: the same numbers),
# Rust bf16 as stored (`sgt bench llm --stored --activations f32`), the same with a bf16 prefill
# (`--activations bf16`: activations rounded to bf16, AVX-512 BF16 products), and transformers (PyTorch
# eager) on the same folder in bf16. The folder is the bundled SmolLM2 written by
# `sgt convert-hf --dtype bf16`. Prints the JSON lines, then the medians and each round's ratios
# (Rust bf16 / peer; > 1 means Rust is faster; memory as peak RSS over the f32 weight size).
# Needs `pip install torch transformers` (benchmark only; PYTHON picks the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sgt
HF=${HF_BF16_DIR:-/tmp/sgt-smollm2-bf16}
PY=${PYTHON:-python3}
[ -f "$HF/model.safetensors" ] || target/release/sgt convert-hf --dtype bf16 --out "$HF"
REPEATS=${REPEATS:-3}
for i in $(seq "$REPEATS"); do
  target/release/sgt bench llm --model "$HF" --train-steps 1 "$@"
  target/release/sgt bench llm --model "$HF" --stored --activations f32 "$@"
  target/release/sgt bench llm --model "$HF" --stored --activations bf16 "$@"
  "$PY" bench/llm_torch.py --hf-dir "$HF" --dtype bfloat16 "$@" 2>/dev/null
done | tee /tmp/sgt-bench-half.jsonl
python3 - <<'PY'
import json, statistics
rows = [json.loads(l) for l in open("/tmp/sgt-bench-half.jsonl")]
f32 = [r for r in rows if r["impl"] == "rust-candle"]
half = [r for r in rows if r["impl"] == "rust-stored-f32"]
act = [r for r in rows if r["impl"] == "rust-stored-bf16"]
torch = [r for r in rows if r["impl"].startswith("torch")]
out = {"storage": half[0]["storage"], "torch": torch[0]["impl"] if torch else None, "repeats": len(half)}
med = lambda a, k: round(statistics.median(x[k] for x in a), 1)
for k in ("prefill_tokens_per_s", "decode_tokens_per_s"):
    q = {"rust_bf16_median": med(half, k), "rust_f32_median": med(f32, k),
         "ratio_bf16_over_f32": round(med(half, k) / med(f32, k), 3),
         "pair_ratios_f32": [round(a[k] / b[k], 3) for a, b in zip(half, f32)]}
    if torch:
        q.update({"torch_bf16_median": med(torch, k),
                  "ratio_rust_over_torch": round(med(half, k) / med(torch, k), 3),
                  "pair_ratios_torch": [round(a[k] / b[k], 3) for a, b in zip(half, torch)]})
    out[k] = q
if act:
    # `--activations bf16`: prefill with the activations rounded to bf16 (decoding as f32).
    k = "prefill_tokens_per_s"
    out["prefill_bf16_activations"] = {
        "rust_median": med(act, k), "ratio_over_rust_exact": round(med(act, k) / med(half, k), 3),
        "pair_ratios_exact": [round(a[k] / b[k], 3) for a, b in zip(act, half)]}
    if torch:
        out["prefill_bf16_activations"].update({
            "ratio_rust_over_torch": round(med(act, k) / med(torch, k), 3),
            "pair_ratios_torch": [round(a[k] / b[k], 3) for a, b in zip(act, torch)]})
w = half[0]["weights_f32_mb"]
out["decode_peak_rss_over_f32_weights"] = {
    "rust_bf16": round(max(x["decode_peak_rss_mb"] for x in half) / w, 3),
    "rust_f32": round(max(x["decode_peak_rss_mb"] for x in f32) / w, 3),
    "torch_bf16": round(max(x["decode_peak_rss_mb"] for x in torch) / w, 3) if torch else None}
out["weights_loaded_over_f32"] = round(half[0]["weights_loaded_mb"] / w, 3)
print(json.dumps(out))
PY
