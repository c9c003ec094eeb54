#!/usr/bin/env bash
# Builds the Python package (crates/stainedglass-py) as a wheel from this checkout, installs it
# into a fresh virtual environment with numpy and pytest, and runs its tests against the `sgt`
# binary of the same checkout (outputs must agree bit for bit). Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export SGT_ASSETS="${SGT_ASSETS:-$PWD/assets}"
venv=target/py-test-venv
rm -rf "$venv" target/wheels
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "maturin==1.16.0" "numpy>=1.21" "pytest==8.4.2"
cargo build --release --locked -q -p sgt
"$venv/bin/maturin" build --release --locked -q -m crates/stainedglass-py/Cargo.toml -o target/wheels
"$venv/bin/pip" install -q --disable-pip-version-check --no-index target/wheels/stainedglass-*.whl
SGT_BIN="$PWD/target/release/sgt" "$venv/bin/python" -m pytest -q -p no:cacheprovider crates/stainedglass-py/tests
