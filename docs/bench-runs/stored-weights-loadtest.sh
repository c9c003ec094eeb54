#!/usr/bin/env bash
# Alternating load test: previous binary vs this one (f32 and int8 activations), each through its own proxy.
set -uo pipefail
cd "$(dirname "$0")/../.."
export SGT_ASSETS=$PWD/assets
ART=runs/quickstart/artefact
. docs/bench-runs/loadtest-one.sh
for r in 1 2; do
  one previous runs/bin/sgt
  one stored-f32 target/release/sgt
  one stored-int8 target/release/sgt --activations int8
done
