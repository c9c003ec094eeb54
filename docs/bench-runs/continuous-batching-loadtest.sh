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
one() { # label bin serve-args...
  local label=$1 bin=$2; shift 2
  local log; log=$(mktemp -d)
  $bin serve --port 0 --api-key lt-key "$@" > "$log/serve.out" 2> "$log/serve.err" &
  local SERVE=$!
  until grep -qs listening "$log/serve.out"; do sleep 0.2; done
  $bin proxy --sgt "$ART" --upstream "http://$(sed -n 's/.*http:\/\///p' "$log/serve.out")" --upstream-api-key lt-key --protect-output --port 0 > "$log/proxy.out" 2> "$log/proxy.err" &
  local PROXY=$!
  until grep -qs listening "$log/proxy.out"; do sleep 0.2; done
  local URL=http://$(sed -n 's/.*http:\/\///p' "$log/proxy.out")
  $bin loadtest --url "$URL" --requests 200 --concurrency 16 --max-tokens 16 \
    --prompt "What is the capital of France?" --prompt "Name three primary colors." \
    --prompt "Write a haiku about the sea." > "$log/lt.json"
  python3 -c "import json,sys; d=json.load(open('$log/lt.json')); d={k:v for k,v in d.items() if not isinstance(v,(list,dict))}; d['label']='$label'; print(json.dumps(d))"
  kill $PROXY $SERVE; wait $PROXY $SERVE 2>/dev/null
  rm -rf "$log"
}
for r in $(seq "${ROUNDS:-2}"); do
  one before-stored runs/bin/sgt
  one before-continuous-int8 "$PREV_BIN" --activations int8
  one continuous-int8 target/release/sgt --activations int8
  one continuous-f32 target/release/sgt
  one continuous-int8-no-prefix-cache target/release/sgt --activations int8 --prefix-cache off
done
