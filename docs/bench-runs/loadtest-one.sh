# Sourced by the alternating load-test scripts beside it (run from the repository root, with
# ART set to a client artefact): `one LABEL BIN [serve args...]` starts BIN's server and its
# proxy on free ports, runs 200 requests, 16 concurrent, 16 tokens each through the proxy with
# sealed output, prints the report as one JSON line labelled LABEL, and stops both.
one() {
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
