#!/usr/bin/env bash
# Run 6 of the alternating load test (200 requests, 16 concurrent, 16 tokens each, through the
# proxy with sealed output), on a 2-core AVX-512 VBMI machine: the binary of the day the serving
# issue was filed (PRESTORED_BIN, commit 5415964, f32, batches of 8) and this one with
# --activations int8. ART is a client artefact (`sgt quickstart --steps 20 --attack-epochs 1
# --prompts 16 --max-new-tokens 32 --held-out 4 --output /tmp/qs-lt`: the layer's shapes, and
# so the proxy's work, are the quickstart's). Lines in loadtest-run6.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.."
export SGT_ASSETS=$PWD/assets
ART=${ART:-/tmp/qs-lt/artefact}
PRESTORED_BIN=${PRESTORED_BIN:-/tmp/sgt-prestored}
NEW_BIN=${NEW_BIN:-target/release/sgt}
. docs/bench-runs/loadtest-one.sh
for r in $(seq "${ROUNDS:-3}"); do
  one before-stored "$PRESTORED_BIN"
  one new-int8 "$NEW_BIN" --activations int8
done
