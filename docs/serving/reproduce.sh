#!/usr/bin/env bash
# Regenerates every number in docs/serving/README.md from a trained text SGT:
#   docs/serving/reproduce.sh runs/text-sgt-abs/sgt
# (the layer trained by `sgt text train --config configs/text-sgt-smollm2.toml`, see docs/text).
# Exports the client artefact, previews what a server could read, chats through `sgt serve` +
# `sgt proxy` with output protection, runs the load test and the client-side benchmark (the
# benchmark needs `pip install torch transformers`), then renders README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
SGT_CKPT=${1:?usage: docs/serving/reproduce.sh <trained sgt folder>}
D=docs/serving
ART=${ART:-/tmp/sgt-docs-artefact}
cargo build --release -q -p sgt
S=target/release/sgt
$S text export --sgt "$SGT_CKPT" --output "$ART" --f16 > $D/export.json
# The preview trains its attackers on the artefact (minutes the first time, then cached).
$S text apply --sgt "${PREVIEW_ART:-$ART}" --prompt "What is the capital of France?" --preview \
  --output /tmp/sgt-docs-embeddings.pt > $D/apply_preview.json
log=$(mktemp -d)
$S serve --port 0 --api-key docs-key > "$log/serve.out" 2> "$log/serve.err" &
SERVE=$!
$S proxy --sgt "$ART" --upstream "http://$(until grep -q listening "$log/serve.out"; do sleep 0.2; done; \
  sed -n 's/.*http:\/\///p' "$log/serve.out")" --upstream-api-key docs-key --protect-output --port 0 \
  > "$log/proxy.out" 2> "$log/proxy.err" &
PROXY=$!
trap 'kill $PROXY $SERVE 2>/dev/null || true' EXIT
until grep -qs listening "$log/proxy.out"; do sleep 0.2; done
URL=http://$(sed -n 's/.*http:\/\///p' "$log/proxy.out")
curl -s "$URL/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"stainedglass","messages":[{"role":"user","content":"What is the capital of France?"}],"temperature":0,"max_tokens":48}' \
  > $D/chat.json
$S loadtest --url "$URL" --requests 200 --concurrency 16 --max-tokens 16 \
  --prompt "What is the capital of France?" --prompt "Name three primary colors." \
  --prompt "Write a haiku about the sea." > $D/loadtest.json
kill $PROXY $SERVE; wait $PROXY $SERVE 2>/dev/null || true
bench/run_apply.sh "$ART" | tail -1 > $D/bench_apply.json
python3 $D/render.py
echo "rendered $D/README.md"
