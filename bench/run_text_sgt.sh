#!/usr/bin/env bash
# Side-by-side benchmark of one text-SGT training step: Rust vs PyTorch eager (transformers) on
# the same f32 SmolLM2 weights, same shapes and loss, same run. Prints both JSON lines and the
# ratio (Rust / PyTorch; > 1 means Rust is faster). Needs `pip install torch transformers`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sgt
HF=${HF_DIR:-/tmp/sgt-smollm2-hf}
[ -f "$HF/model.safetensors" ] || target/release/sgt convert-hf --out "$HF"
REPEATS=${REPEATS:-3}
for i in $(seq "$REPEATS"); do
  target/release/sgt bench text-sgt "$@"
  python3 bench/text_sgt_torch.py --hf-dir "$HF" "$@" 2>/dev/null
done | tee /tmp/sgt-bench-text-sgt.jsonl
python3 - <<'PY'
import json, statistics
rows = [json.loads(l) for l in open("/tmp/sgt-bench-text-sgt.jsonl")]
rust = [r["text_sgt_train_tokens_per_s"] for r in rows if r["impl"] == "rust-candle"]
torch = [r["text_sgt_train_tokens_per_s"] for r in rows if r["impl"] != "rust-candle"]
r, t = statistics.median(rust), statistics.median(torch)
# pair_ratios: each Rust run over the PyTorch run right after it (the spread the machine's noise gives).
print(json.dumps({"text_sgt_train_tokens_per_s": {"rust_median": round(r, 1), "torch_median": round(t, 1),
                  "ratio_rust_over_torch": round(r / t, 3),
                  "pair_ratios": [round(a / b, 3) for a, b in zip(rust, torch)]}, "repeats": len(rust)}))
PY
