#!/usr/bin/env bash
# The AVX2 tiles of 8 weight rows and Q4_K on the Q4 kernels, against the previous commit
# (3593ef1), alternating in one run on an AVX2-only CPU:
#   1. the 8-bit product's kernel speed (`q4_int8_speed`: Q4_1 layers, the Q8_0 head, Q4_K
#      and Q6_K matrices), old and new test binaries in turn;
#   2. the bundled model from its Q4_1 weights with 8-bit activations: prefill of 256 tokens,
#      batch-1 decode, and 16 prompts decoded together (`sgt bench llm --stored`).
# OLD_TEST/NEW_TEST: the models crate's test binaries; OLD_SGT/NEW_SGT: the two `sgt` builds.
set -euo pipefail
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-docs/bench-runs/avx2-tiles.jsonl}
: > "$OUT"
for i in $(seq "$ROUNDS"); do
  for side in old new; do
    bin=$([ $side = old ] && echo "$OLD_TEST" || echo "$NEW_TEST")
    "$bin" q4_int8_speed --ignored --nocapture --test-threads 1 2>/dev/null \
      | grep -o '{.*}' | sed "s/^{/{\"side\":\"$side\",\"round\":$i,/" >> "$OUT"
  done
done
for i in $(seq "$ROUNDS"); do
  for side in old new; do
    bin=$([ $side = old ] && echo "$OLD_SGT" || echo "$NEW_SGT")
    "$bin" bench llm --stored --activations int8 --prefill-tokens 256 --decode-batch 16 2>/dev/null \
      | grep -o '{.*}' | sed "s/^{/{\"side\":\"$side\",\"round\":$i,/" >> "$OUT"
  done
done
echo "wrote $OUT"
