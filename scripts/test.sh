#!/usr/bin/env bash
# Runs the whole test suite on the real assets (fetched first). Release mode: candle in debug is
# ~25x slower per step, and the CLI shares the same build.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-assets.sh
export SGT_ASSETS="${SGT_ASSETS:-$PWD/assets}"
cargo test --release --workspace --locked
