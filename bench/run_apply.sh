#!/usr/bin/env bash
# Client-side text SGT, Rust vs PyTorch eager, same run: applying the artefact to a ~256-token
# chat prompt (template, tokenizer, estimator, masking, noise, payload encoding), the Rust
# proxy's whole per-request overhead (HTTP in and out included), and the cold start of
# `sgt text apply` (process start → embeddings written); the Rust transform in f32 and in bf16
# (`--precision bf16`); the cold start with the artefact and the binary dropped from the page
# cache (bench/evict.py), then cached. Usage: bench/run_apply.sh <artefact>.
# Needs `pip install torch transformers`.
set -euo pipefail
cd "$(dirname "$0")/.."
ART=${1:?usage: bench/run_apply.sh <artefact dir>}
cargo build --release -q -p sgt
HF=${HF_DIR:-/tmp/sgt-smollm2-hf}
[ -f "$HF/model.safetensors" ] || target/release/sgt convert-hf --out "$HF"
REPEATS=${REPEATS:-3}
PCT=$(python3 -c "import json,sys; print(json.load(open('$ART/config.json'))['noise_layer']['config'].get('percent_to_mask') or '')")
out=/tmp/sgt-bench-apply.jsonl
: > "$out"
for i in $(seq "$REPEATS"); do
  target/release/sgt bench apply --sgt "$ART" --prompt-out /tmp/sgt-bench-prompt.txt | tee -a "$out"
  target/release/sgt bench apply --sgt "$ART" --precision bf16 | sed 's/"rust-candle"/"rust-candle-bf16"/' | tee -a "$out"
  python3 bench/apply_torch.py --hf-dir "$HF" --artefact "$ART" --prompt-file /tmp/sgt-bench-prompt.txt \
    ${PCT:+--percent-to-mask "$PCT"} 2>/dev/null | tee -a "$out"
  python3 - "$ART" <<'PY' | tee -a "$out"
import json, subprocess, sys, time
def run():
    t = time.perf_counter()
    subprocess.run(["target/release/sgt", "text", "apply", "--sgt", sys.argv[1], "--prompt",
                    "What is the capital of France?", "--output", "/tmp/sgt-bench-cold.safetensors"],
                   check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1e3
# First with the artefact and the binary dropped from the page cache, then cached.
subprocess.run(["python3", "bench/evict.py", sys.argv[1], "target/release/sgt"], check=True)
evicted = run()
print(json.dumps({"impl": "rust-cold-start", "sgt_text_apply_wall_ms": evicted, "cached_ms": run()}))
PY
done
python3 - <<'PY'
import json, statistics
rows = [json.loads(l) for l in open("/tmp/sgt-bench-apply.jsonl")]
med = lambda impl, k: statistics.median(k(r) if callable(k) else r[k] for r in rows if impl(r["impl"]))
rust = lambda s: s == "rust-candle"
torch = lambda s: s.startswith("torch")
r_apply, t_apply = med(rust, "apply_ms"), med(torch, "apply_ms")
b_apply = med(lambda s: s == "rust-candle-bf16", "apply_ms")
r_proxy = med(rust, "proxy_overhead_ms")
cold = med(lambda s: s == "rust-cold-start", "sgt_text_apply_wall_ms")
cold_rows = [r for r in rows if r["impl"] == "rust-cold-start"]
print(json.dumps({
    "prompt_tokens": rows[0]["prompt_tokens"],
    "apply_ms": {"rust_median": round(r_apply, 2), "torch_median": round(t_apply, 2),
                 "speedup_rust_over_torch": round(t_apply / r_apply, 2)},
    "apply_bf16_ms": {"rust_median": round(b_apply, 2), "torch_f32_median": round(t_apply, 2),
                      "speedup_rust_bf16_over_torch": round(t_apply / b_apply, 2),
                      "speedup_bf16_over_rust_f32": round(r_apply / b_apply, 2)},
    "proxy_overhead_ms": {"rust_median": round(r_proxy, 2),
                          "speedup_vs_torch_apply_without_http": round(t_apply / r_proxy, 2)},
    "bf16_vs_f32": {k: med(lambda s: s == "rust-candle-bf16", lambda r, k=k: r["bf16_vs_f32"][k])
                    for k in ("mean_rel_l2", "std_rel_l2", "keep_mask_flipped")},
    "cold_start_sgt_text_apply_ms": round(cold, 1),
    "cold_start_max_ms": round(max(r["sgt_text_apply_wall_ms"] for r in cold_rows), 1),
    "cold_start_cached_ms": round(statistics.median(r["cached_ms"] for r in cold_rows), 1),
    "pairs_torch_over_rust_f32_bf16": [
        [round(t["apply_ms"] / f["apply_ms"], 2), round(t["apply_ms"] / b["apply_ms"], 2)]
        for f, b, t in zip(*[[r for r in rows if r["impl"] == i] for i in ("rust-candle", "rust-candle-bf16")],
                           [r for r in rows if torch(r["impl"])])],
    "repeats": sum(1 for r in rows if rust(r["impl"])),
}))
PY
