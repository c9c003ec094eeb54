#!/usr/bin/env bash
# The privacy–utility frontier (issue: privacy variants, item 4): every SGT variant trained by
# ../fill/run.sh and ../adversary/run.sh as a curve over its noise factor (×1, ×2, ×4, ×8, same
# centres), and both baselines as curves, each point judged by attacks trained after the layer
# was frozen, against answer accuracy on the first 20 questions.
#   docs/eval/frontier/run.sh     # after the two training scripts; ~15 min per variant, ~35 min for the baselines
# Then: python3 docs/eval/frontier/render.py runs/variants   (needs matplotlib)
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ -z "${S:-}" ]; then cargo build --release -q -p sgt; S=target/release/sgt; fi
R=${R:-runs/variants}
Q="--question-limit 20 --beamclean-rows 0"
# Every variant: the strongest attacks after training (MLP inverter, probes at three depths, the
# probe retrained on the SGT's own states), on the held-out conversations.
for v in ${VARIANTS:-mean noise zero adv-ce-0.3 adv-ce-3 adv-conf-1}; do
  [ -f "$R/$v/fresh_attacks_v2.json" ] || $S text eval --config "$R/$v.toml" --sgt "$R/$v/sgt" > "$R/$v/fresh_attacks_v2.json"
done
# Baselines as curves (every point faces the learned MLP and the probe), beside the original's
# default (masked_fill = mean) as a curve.
[ -f "$R/frontier-base/report.json" ] || $S eval text --config "$R/mean.toml" --sgt "$R/mean/sgt" \
  --report "$R/frontier-base" $Q --gaussian 0.25,0.5,1,2,4,16 --metric-dp 2,4,8,16,32 \
  --sgt-noise-factors 2,4,8 --all-baseline-attacks > /dev/null
for v in ${CURVES:-noise}; do
  [ -f "$R/frontier-$v/report.json" ] || $S eval text --config "$R/$v.toml" --sgt "$R/$v/sgt" \
    --report "$R/frontier-$v" $Q --gaussian 16 --metric-dp 32 --sgt-noise-factors 2,4,8 \
    --no-baseline-attacks > /dev/null
done
