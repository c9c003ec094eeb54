#!/usr/bin/env bash
# Side-by-side benchmark of the causal LM, alternating in one run: Rust on the f32 weights vs
# transformers (PyTorch eager) on the same f32 SmolLM2 weights; Rust from the GGUF's Q4_1
# matrices as stored (`sgt bench llm --stored`) vs the same PyTorch f32 run and vs llama.cpp on
# the same GGUF. Prints the JSON lines and the ratios (Rust / peer; > 1 means Rust is faster;
# for memory, Rust / f32 weight size). Needs `pip install torch transformers` and, for the
# llama.cpp column, `llama-cpp-python` (benchmark only; PYTHON and LLAMACPP_PYTHON pick the
# interpreters). Repeats each side $REPEATS times.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p sgt
HF=${HF_DIR:-/tmp/sgt-smollm2-hf}
PY=${PYTHON:-python3}
LPY=${LLAMACPP_PYTHON:-$PY}
GGUF=${SGT_ASSETS:-assets}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$HF/model.safetensors" ] || target/release/sgt convert-hf --out "$HF"
REPEATS=${REPEATS:-3}
for i in $(seq "$REPEATS"); do
  target/release/sgt bench llm "$@"
  "$PY" bench/llm_torch.py --hf-dir "$HF" "$@" 2>/dev/null
  target/release/sgt bench llm --stored "$@"
  "$LPY" bench/llm_llamacpp.py --gguf "$GGUF" 2>/dev/null || true
done | tee /tmp/sgt-bench-llm.jsonl
python3 - <<'PY'
import json, statistics
rows = [json.loads(l) for l in open("/tmp/sgt-bench-llm.jsonl")]
rust = [r for r in rows if r["impl"] == "rust-candle"]
stored = [r for r in rows if r["impl"].startswith("rust-stored")]
lcpp = [r for r in rows if r["impl"] == "llama.cpp"]
torch = [r for r in rows if r["impl"] not in ("rust-candle", "llama.cpp") and not r["impl"].startswith("rust-stored")]
out = {"torch": torch[0]["impl"], "repeats": len(rust)}
def pair(k, a, b, kb=None):
    kb = kb or k
    r, t = statistics.median(x[k] for x in a), statistics.median(x[kb] for x in b)
    # Each Rust run over the peer's run in the same round: the spread the machine's noise gives.
    return {"rust_median": round(r, 1), "peer_median": round(t, 1), "ratio_rust_over_peer": round(r / t, 3),
            "pair_ratios": [round(x[k] / y[kb], 3) for x, y in zip(a, b)]}
for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "train_step_tokens_per_s"):
    p = pair(k, rust, torch)
    out[k] = {"rust_median": p["rust_median"], "torch_median": p["peer_median"],
              "ratio_rust_over_torch": p["ratio_rust_over_peer"], "pair_ratios": p["pair_ratios"]}
w = rust[0]["weights_f32_mb"]
out["decode_peak_rss_over_weights"] = {"rust": round(max(x["decode_peak_rss_mb"] for x in rust) / w, 3),
                                       "torch": round(max(x["decode_peak_rss_mb"] for x in torch) / w, 3)}
if stored:
    p = pair("decode_tokens_per_s", stored, torch)
    q = {"storage": stored[0]["storage"], "isa": stored[0]["isa"], "activations": stored[0]["impl"],
         "rust_median": p["rust_median"], "torch_f32_median": p["peer_median"],
         "ratio_rust_over_torch": p["ratio_rust_over_peer"], "pair_ratios": p["pair_ratios"]}
    if lcpp:
        l = pair("decode_tokens_per_s", stored, lcpp)
        q.update({"llamacpp_median": l["peer_median"], "ratio_rust_over_llamacpp": l["ratio_rust_over_peer"],
                  "pair_ratios_llamacpp": l["pair_ratios"]})
    out["decode_q4_1_tokens_per_s"] = q
    p = pair("prefill_tokens_per_s", stored, torch)
    q = {"rust_median": p["rust_median"], "torch_f32_median": p["peer_median"], "ratio_rust_over_torch": p["ratio_rust_over_peer"]}
    if lcpp:
        l = pair("prefill_tokens_per_s", stored, lcpp)
        q.update({"llamacpp_median": l["peer_median"], "ratio_rust_over_llamacpp": l["ratio_rust_over_peer"]})
    out["prefill_q4_1_tokens_per_s"] = q
    out["decode_q4_1_peak_rss_over_f32_weights"] = {
        "rust": round(max(x["decode_peak_rss_mb"] for x in stored) / w, 3),
        "llamacpp": round(max(x["decode_peak_rss_mb"] for x in lcpp) / w, 3) if lcpp else None}
print(json.dumps(out))
PY
