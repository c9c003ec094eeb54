#!/usr/bin/env bash
# What suppressed features carry (`[sgt] masked_fill`): the original's μ(x) against σ·ε and 0,
# each trained with the quickstart preset for 400 steps on the same 64 answered chat prompts
# (12 held out), then measured by attacks trained on the frozen layer (`sgt text train` ends
# with them) and by `sgt eval text` on the SGT alone (answers on 20 questions).
#   docs/eval/fill/run.sh            # ~1 h on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --release -q -p sgt
S=target/release/sgt
R=${R:-runs/variants}
mkdir -p "$R"
$S text prepare-data --limit 64 --max-new-tokens 96 --out "$R/conversations.jsonl"
for fill in mean noise zero; do
  sed -e "s|^\[data\]|[data]\nconversations = \"$R/conversations.jsonl\"|" \
      -e "s|^steps = .*|steps = 400|" -e "s|^eval_every = .*|eval_every = 200|" \
      -e "s|^percent_to_mask = 0.5|percent_to_mask = 0.5\nmasked_fill = \"$fill\"|" \
      configs/text-sgt-quickstart.toml > "$R/$fill.toml"
  [ -f "$R/$fill/fresh_attacks.json" ] || $S text train --config "$R/$fill.toml" --output "$R/$fill" > "$R/$fill.train.json"
  [ -f "$R/$fill-eval/report.json" ] || $S eval text --config "$R/$fill.toml" --sgt "$R/$fill/sgt" \
      --report "$R/$fill-eval" --question-limit 20 --gaussian 1 --metric-dp 8 \
      --sgt-noise-factors none --no-baseline-attacks --beamclean-rows 0 > /dev/null
done
python3 docs/eval/fill/render.py "$R"
