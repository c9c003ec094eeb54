#!/usr/bin/env bash
# Adversarial training (`[adversary]`, issue: privacy variants, item 2c): the quickstart preset
# with masked_fill = "noise" (the best fill of ../fill/), trained for 400 steps on the same 64
# answered chat prompts as ../fill/, with an MLP inverter updated online on the SGT's outputs
# (sampled softmax over the step's tokens and 512 unigram negatives, log-Q corrected; 2 inverter
# steps per SGT step) that the SGT is trained to defeat. Judged only by attacks trained afresh on
# the frozen layer (`sgt text train` ends with them; `sgt eval text` adds the learned transformer
# and answers on 20 questions). Variants: name and the [adversary] lines. The runs marked
# "stopped" were ended at their step-200 evaluation, which showed the layer had given up
# utility (run them with VARIANTS="adv-ce-1 ..." and stop them there, or let them finish).
#   docs/eval/adversary/run.sh        # ~16 min per variant on 2 cores
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ -z "${S:-}" ]; then cargo build --release -q -p sgt; S=target/release/sgt; fi
R=${R:-runs/variants}
mkdir -p "$R"
[ -f "$R/conversations.jsonl" ] || $S text prepare-data --limit 64 --max-new-tokens 96 --out "$R/conversations.jsonl"
VARIANTS=${VARIANTS:-"adv-ce-0.3"}
for v in $VARIANTS; do
  case $v in
    adv-ce-0.3) adv='weight = 0.3' ;;
    adv-ce-1)   adv='weight = 1.0' ;;   # stopped at step 200: agreement 0.2%
    adv-ce-3)   adv='weight = 3.0' ;;   # stopped at step 200 of 400: all noise, no utility
    adv-ent-1)  adv=$'weight = 1.0\nobjective = "entropy"' ;;
    adv-conf-1) adv=$'weight = 1.0\nobjective = "confusion"' ;;   # stopped at step 200: agreement 0.9%
    adv-conf-0.1) adv=$'weight = 0.1\nobjective = "confusion"' ;;   # stopped at step 200: agreement 1.2%
    adv-conf-3) adv=$'weight = 3.0\nobjective = "confusion"' ;;
    adv-club-0.3) adv=$'weight = 0.3\nobjective = "club"' ;;   # the CLUB mutual-information bound
    adv-club-0.03) adv=$'weight = 0.03\nobjective = "club"' ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  sed -e "s|^\[data\]|[data]\nconversations = \"$R/conversations.jsonl\"|" \
      -e "s|^steps = .*|steps = 400|" -e "s|^eval_every = .*|eval_every = 200|" \
      -e "s|^percent_to_mask = 0.5|percent_to_mask = 0.5\nmasked_fill = \"noise\"|" \
      configs/text-sgt-quickstart.toml > "$R/$v.toml"
  printf '\n[adversary]\n%s\ninner_steps = 2\n' "$adv" >> "$R/$v.toml"
  [ -f "$R/$v/fresh_attacks.json" ] || $S text train --config "$R/$v.toml" --output "$R/$v" > "$R/$v.train.json"
  [ -f "$R/$v-eval/report.json" ] || $S eval text --config "$R/$v.toml" --sgt "$R/$v/sgt" \
      --report "$R/$v-eval" --question-limit 20 --gaussian 1 --metric-dp 8 \
      --sgt-noise-factors none --no-baseline-attacks --beamclean-rows 0 > /dev/null
done
