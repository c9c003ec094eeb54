#!/usr/bin/env bash
# Cold start of `sgt text apply` (process start, artefact verified and loaded, one prompt
# transformed, embeddings written), two binaries alternating: OLD_BIN (before the table was read
# in place, commit 365b099) and NEW_BIN. Each round runs each binary once with the artefact and
# the binary dropped from the page cache (bench/evict.py) and once straight after, cached.
# Prints one JSON line per run. ART is the quickstart's artefact (f16 table, 73 MB).
set -euo pipefail
cd "$(dirname "$0")/../.."
ART=${ART:-runs/quickstart/artefact}
OLD_BIN=${OLD_BIN:-/tmp/sgt-old}
NEW_BIN=${NEW_BIN:-target/release/sgt}
one() { # name binary cache
  local t0 t1 rss
  [ "$3" = evicted ] && python3 bench/evict.py "$ART" "$2"
  t0=$(date +%s%N)
  rss=$( { /usr/bin/time -f %M "$2" text apply --sgt "$ART" --prompt "What is the capital of France?" \
      --output /tmp/sgt-cold-start.safetensors > /dev/null; } 2>&1 | tail -1)
  t1=$(date +%s%N)
  echo "{\"binary\": \"$1\", \"cache\": \"$3\", \"wall_ms\": $(( (t1 - t0) / 1000000 )), \"max_rss_kb\": $rss}"
}
for r in $(seq "${ROUNDS:-10}"); do
  for b in old new; do
    bin=$OLD_BIN; [ $b = new ] && bin=$NEW_BIN
    one $b "$bin" evicted
    one $b "$bin" cached
  done
done
