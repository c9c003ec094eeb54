#!/usr/bin/env bash
# Alternating load test through the proxy (200 requests, 16 concurrent, 16 tokens each): the
# binary before stored weights (PRESTORED_BIN, commit 5415964, f32, batches of 8 — the day the
# serving issue was filed), the binary before the 512-bit Q4 kernel (PREV_BIN, commit 23561bd,
# --activations int8) and this one (--activations int8, then its default f32 activations).
# Each server gets its own proxy; ART is the quickstart's artefact.
set -uo pipefail
cd "$(dirname "$0")/../.."
export SGT_ASSETS=$PWD/assets
ART=${ART:-runs/quickstart/artefact}
PRESTORED_BIN=${PRESTORED_BIN:-/tmp/sgt-prestored}
PREV_BIN=${PREV_BIN:-/tmp/sgt-head}
NEW_BIN=${NEW_BIN:-target/release/sgt}
. docs/bench-runs/loadtest-one.sh
for r in $(seq "${ROUNDS:-2}"); do
  one before-stored "$PRESTORED_BIN"
  one before-dot512-int8 "$PREV_BIN" --activations int8
  one dot512-int8 "$NEW_BIN" --activations int8
  one dot512-f32 "$NEW_BIN"
done
