#!/usr/bin/env bash
# The alternating load test (200 requests, 16 concurrent, 16 tokens each, through the proxy with
# sealed output) on an AVX2-only CPU: the binary of the day the serving issue was filed
# (PRESTORED_BIN, commit 5415964, f32, batches of 8), the one before the AVX2 tiles of 8
# (PREV_BIN, commit 3593ef1, --activations int8) and this one (--activations int8). ART: any
# client artefact of the bundled model (a short quickstart's: `sgt quickstart --steps 20
# --prompts 16 --held-out 4 --attack-epochs 1 --output /tmp/qs-small`; serving speed does not
# depend on how well it was trained). Lines in loadtest-avx2.jsonl (tiles of 8 for Q4 rows) and
# loadtest-avx2-q8.jsonl (and for the Q8_0 LM head).
set -uo pipefail
cd "$(dirname "$0")/../.."
export SGT_ASSETS=$PWD/assets
ART=${ART:-runs/quickstart/artefact}
PRESTORED_BIN=${PRESTORED_BIN:-/tmp/sgt-prestored}
PREV_BIN=${PREV_BIN:-/tmp/sgt-3593ef1}
NEW_BIN=${NEW_BIN:-target/release/sgt}
. docs/bench-runs/loadtest-one.sh
for r in $(seq "${ROUNDS:-3}"); do
  one before-stored "$PRESTORED_BIN"
  one prev-3593ef1-int8 "$PREV_BIN" --activations int8
  one tile8-int8 "$NEW_BIN" --activations int8
done
