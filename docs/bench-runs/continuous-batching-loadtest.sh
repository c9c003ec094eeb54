#!/usr/bin/env bash
# Alternating load test through the proxy (200 requests, 16 concurrent, 16 tokens each):
# the binary before stored weights (runs/bin/sgt), the binary before continuous batching
# (PREV_BIN, commit 485d5ff, --activations int8), and this one with 8-bit and with f32
# activations, and with the prefix cache off. Each server gets its own proxy; all use their
# defaults otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.."
export SGT_ASSETS=$PWD/assets
ART=runs/quickstart/artefact
PREV_BIN=${PREV_BIN:-/tmp/sgt-start}
. docs/bench-runs/loadtest-one.sh
for r in $(seq "${ROUNDS:-2}"); do
  one before-stored runs/bin/sgt
  one before-continuous-int8 "$PREV_BIN" --activations int8
  one continuous-int8 target/release/sgt --activations int8
  one continuous-f32 target/release/sgt
  one continuous-int8-no-prefix-cache target/release/sgt --activations int8 --prefix-cache off
done
