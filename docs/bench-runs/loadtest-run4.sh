#!/usr/bin/env bash
# Run 4 of the alternating load test (200 requests, 16 concurrent, 16 tokens each, through the
# proxy with sealed output): the binary of the day the serving issue was filed (PRESTORED_BIN,
# commit 5415964, f32, batches of 8), this one with --activations int8, and this one again with
# its proxy's transform on one thread per request (sgt-proxy-one-thread.sh). ART is the
# quickstart's artefact. Lines in loadtest-run4.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.."
export SGT_ASSETS=$PWD/assets
ART=${ART:-runs/quickstart/artefact}
PRESTORED_BIN=${PRESTORED_BIN:-/tmp/sgt-prestored}
export NEW_BIN=${NEW_BIN:-target/release/sgt}
. docs/bench-runs/loadtest-one.sh
for r in $(seq "${ROUNDS:-3}"); do
  one before-stored "$PRESTORED_BIN"
  one int8 "$NEW_BIN" --activations int8
  one int8-proxyall docs/bench-runs/sgt-proxy-one-thread.sh --activations int8
done
