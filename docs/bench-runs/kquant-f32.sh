#!/usr/bin/env bash
# f32 activations (the default: the f32 model's numbers bit for bit) on the Q4_K_M-mix model of
# random weights (`cargo run --release -p stainedglass-models --example kquant_model -- $KQ
# assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), alternating the previous binary ($OLD) and
# this one per round: decoding one request, an 8-token prefill, 16 requests decoded together.
# Lines in kquant-f32-activations.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
export SGT_ASSETS=${SGT_ASSETS:-$PWD/assets}
OLD=${OLD:?the previous sgt binary}
KQ=${KQ:-/tmp/kq.gguf}
for i in $(seq "${ROUNDS:-4}"); do
  for side in old new; do
    bin=$OLD; [ "$side" = new ] && bin=target/release/sgt
    "$bin" bench llm --model "$KQ" --stored --activations f32 --decode-tokens 64 \
      --prefill-tokens 8 --decode-batch 16 2>/dev/null | tail -1 | sed "s/^{/{\"side\":\"$side\",\"round\":$i,/"
  done
done
