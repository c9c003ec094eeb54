#!/usr/bin/env bash
# The same trained layer (the layer-15 SGT of ../distill/) applied with f32 and with bf16
# products (`--precision bf16`), judged by the same attacks trained after freezing, each under two
# attack seeds: the bf16 change read against the attacks' own run-to-run variation.
#   docs/eval/precision/run.sh        # after VARIANTS=l15-noise docs/eval/distill/run.sh; ~6 min a run
# Then: python3 docs/eval/precision/render.py runs/variants/l15-noise
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ -z "${S:-}" ]; then cargo build --release -q -p sgt; S=target/release/sgt; fi
R=${R:-runs/variants}
v=${V:-l15-noise}
run() {
  [ -s "$R/$v/$1" ] || $S text eval --config "$R/$v.toml" --sgt "$R/$v/sgt" "${@:2}" > "$R/$v/$1"
}
run fresh_attacks_f32.json
run fresh_attacks_seed2.json --attack-seed 2
run fresh_attacks_bf16.json --precision bf16
run fresh_attacks_bf16-seed2.json --precision bf16 --attack-seed 2
