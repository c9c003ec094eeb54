#!/usr/bin/env bash
# Regenerates every number in docs/pii/README.md (about 40 min on 2 cores, most of it the
# end-to-end passes through the bundled model):
#   docs/pii/reproduce.sh
# Needs ./scripts/setup-assets.sh (the word lists in assets/pii, the bundled model, the chat
# prompts in assets/chat). The labelled sets in data/pii are committed; regenerate them with
# scripts/pii_generate.py (needs `pip install faker==40.63.0`).
set -euo pipefail
cd "$(dirname "$0")/../.."
D=docs/pii
cargo build --release -q -p sgt
S=target/release/sgt
$S pii eval --data data/pii/prompts.jsonl --report $D/dev > /dev/null
$S pii eval --data data/pii/prompts-test.jsonl --report $D/test > /dev/null
$S pii eval --data data/pii/prompts-fresh.jsonl --report $D/fresh > /dev/null
# Ordinary prompts (no labels): the bundled chat prompts and the question set.
python3 $D/benign.py > /tmp/sgt-pii-benign.txt
$S pii scan /tmp/sgt-pii-benign.txt > $D/benign-spans.jsonl
python3 -c "import json; print(json.dumps({'prompts': sum(1 for _ in open('/tmp/sgt-pii-benign.txt').read().split('\n\n'))}))" \
  > $D/benign-count.json
$S bench pii --chars 1000,4000,16000,65000 > $D/bench.jsonl
ART=${ART:-/tmp/sgt-pii-artefact}
[ -d "$ART" ] || $S text export --init-only --f16 --output "$ART" > /dev/null 2>&1
$S pii e2e --sgt "$ART" --report $D/e2e
python3 $D/render.py
