#!/usr/bin/env bash
# Side-by-side benchmark of the causal LM: Rust vs transformers (PyTorch eager) on the same f32
# SmolLM2 weights, same shapes, same run. Prints both JSON lines and the ratios
# (Rust / PyTorch; > 1 means Rust is faster; for memory, Rust / weight size).
# Needs `pip install torch transformers` (benchmark only). Repeats each side $REPEATS times.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sgt
HF=${HF_DIR:-/tmp/sgt-smollm2-hf}
[ -f "$HF/model.safetensors" ] || target/release/sgt convert-hf --out "$HF"
REPEATS=${REPEATS:-3}
for i in $(seq "$REPEATS"); do
  target/release/sgt bench llm "$@"
  python3 bench/llm_torch.py --hf-dir "$HF" "$@" 2>/dev/null
done | tee /tmp/sgt-bench-llm.jsonl
python3 - <<'PY'
import json, statistics
rows = [json.loads(l) for l in open("/tmp/sgt-bench-llm.jsonl")]
rust = [r for r in rows if r["impl"] == "rust-candle"]
torch = [r for r in rows if r["impl"] != "rust-candle"]
out = {"torch": torch[0]["impl"], "repeats": len(rust)}
for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "train_step_tokens_per_s"):
    r, t = statistics.median(x[k] for x in rust), statistics.median(x[k] for x in torch)
    out[k] = {"rust_median": round(r, 1), "torch_median": round(t, 1), "ratio_rust_over_torch": round(r / t, 3),
              # Each Rust run over the PyTorch run right after it: the spread the machine's noise gives.
              "pair_ratios": [round(a[k] / b[k], 3) for a, b in zip(rust, torch)]}
w = rust[0]["weights_f32_mb"]
out["decode_peak_rss_over_weights"] = {"rust": round(max(x["decode_peak_rss_mb"] for x in rust) / w, 3),
                                       "torch": round(max(x["decode_peak_rss_mb"] for x in torch) / w, 3)}
print(json.dumps(out))
PY
