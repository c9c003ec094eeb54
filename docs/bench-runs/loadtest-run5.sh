#!/usr/bin/env bash
# Run 5 of the alternating load test (200 requests, 16 concurrent, 16 tokens each, through the
# proxy with sealed output): the binary of the day the serving issue was filed (PRESTORED_BIN,
# commit 5415964, f32, batches of 8), the binary before the Q4 tiles of 16 weight rows
# (PREV_BIN, commit 92112a7, --activations int8), and this one with --activations int8. ART is
# the quickstart's artefact. Lines in loadtest-run5.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.."
export SGT_ASSETS=$PWD/assets
ART=${ART:-runs/quickstart/artefact}
PRESTORED_BIN=${PRESTORED_BIN:-/tmp/sgt-prestored}
PREV_BIN=${PREV_BIN:-/tmp/sgt-92112a7}
NEW_BIN=${NEW_BIN:-target/release/sgt}
. docs/bench-runs/loadtest-one.sh
for r in $(seq "${ROUNDS:-3}"); do
  one before-stored "$PRESTORED_BIN"
  one prev-int8 "$PREV_BIN" --activations int8
  one tile16-int8 "$NEW_BIN" --activations int8
done
