#!/usr/bin/env bash
# Decoding with f32 activations on the stored Q4_1 weights (the f32 model's numbers bit for bit,
# `sgt serve`'s default) against PyTorch eager f32 on the same weights, alternating per round:
# PyTorch, the previous binary ($OLD, --activations f32), this binary (--activations f32), and
# this binary with 8-bit activations for reference. Benchmark only: needs torch and
# transformers in $PYTHON. Prints JSON lines; summary at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
OLD=${OLD:?the previous sgt binary}
PY=${PYTHON:-python3}
HF=${HF_DIR:-/tmp/sgt-smollm2-hf}
NEW=target/release/sgt
[ -f "$HF/model.safetensors" ] || "$NEW" convert-hf --out "$HF"
OUT=${OUT:-/tmp/exact-decode.jsonl}
: > "$OUT"
for i in $(seq "${ROUNDS:-3}"); do
  "$PY" bench/llm_torch.py --hf-dir "$HF" --train-steps 1 2>/dev/null | tail -1 | sed "s/^{/{\"side\":\"torch\",\"round\":$i,/" >> "$OUT"
  "$OLD" bench llm --stored --activations f32 2>/dev/null | tail -1 | sed "s/^{/{\"side\":\"old_f32\",\"round\":$i,/" >> "$OUT"
  "$NEW" bench llm --stored --activations f32 2>/dev/null | tail -1 | sed "s/^{/{\"side\":\"new_f32\",\"round\":$i,/" >> "$OUT"
  "$NEW" bench llm --stored --activations int8 2>/dev/null | tail -1 | sed "s/^{/{\"side\":\"new_int8\",\"round\":$i,/" >> "$OUT"
done
cat "$OUT"
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = lambda s: [r for r in rows if r["side"] == s]
torch = by("torch")
for side in ("old_f32", "new_f32", "new_int8"):
    rs = by(side)
    for k in ("decode_tokens_per_s", "prefill_tokens_per_s"):
        ratios = [round(a[k] / t[k], 2) for a, t in zip(rs, torch)]
        print(json.dumps({"side": side, "metric": k, "median": round(statistics.median(r[k] for r in rs), 1),
                          "torch_median": round(statistics.median(t[k] for t in torch), 1),
                          "ratio_over_torch": ratios}))
PY
