#!/usr/bin/env bash
# The README's main command: fetch the assets (sha256-checked), build, and run `sgt quickstart`
# on the bundled SmolLM2 (about 11 minutes on 2 CPU cores; running it again resumes).
# Extra arguments go to `sgt quickstart` (e.g. --keep-running, --steps 400, --output DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-assets.sh
cargo build --release --locked -q -p sgt
exec target/release/sgt quickstart "$@"
