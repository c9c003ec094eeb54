#!/usr/bin/env bash
# Side-by-side benchmark of the vision SGT: Rust (candle) vs PyTorch eager, same computation,
# same run. Prints both JSON lines and the ratios (Rust / PyTorch; > 1 means Rust is faster).
# Needs `pip install torch` (benchmark only). Repeats each side $REPEATS times, alternating.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sgt
REPEATS=${REPEATS:-3}
for i in $(seq "$REPEATS"); do
  target/release/sgt bench vision "$@"
  python3 bench/vision_torch.py "$@"
done | tee /tmp/sgt-bench-vision.jsonl
python3 - <<'PY'
import json, statistics
rows = [json.loads(l) for l in open("/tmp/sgt-bench-vision.jsonl")]
rust = [r for r in rows if r["impl"] == "rust-candle"]
torch = [r for r in rows if r["impl"] != "rust-candle"]
out = {"torch": torch[0]["impl"]}
for k in ("sgt_train_images_per_s", "transform_images_per_s"):
    r, t = statistics.median(x[k] for x in rust), statistics.median(x[k] for x in torch)
    out[k] = {"rust_median": round(r, 1), "torch_median": round(t, 1), "ratio_rust_over_torch": round(r / t, 3)}
print(json.dumps(out))
PY
