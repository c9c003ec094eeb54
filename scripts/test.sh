#!/usr/bin/env bash
# Runs the whole test suite on the real assets (fetched first). Release mode: candle in debug is
# ~25x slower per step, and the CLI shares the same build. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-assets.sh
export SGT_ASSETS="${SGT_ASSETS:-$PWD/assets}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --workspace --locked --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The Python package: wheel built from this checkout, pytest in a fresh virtual environment.
./scripts/python-test.sh 2>&1 | tee -a "$log"
py_status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^[0-9]+ (passed|failed).* in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
[ "$status" = 0 ] && exit "$py_status"
exit "$status"
