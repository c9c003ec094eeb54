#!/usr/bin/env bash
# The privacy–utility frontier (issue: privacy variants, item 4): SGT variants trained by
# ../fill/run.sh and ../adversary/run.sh, the original's default and the noise fill as curves
# over their noise factor (×1, ×2, ×4, ×8, same centres), both baselines as curves, each point
# judged by attacks trained after the layer was frozen, against answer accuracy on the first 20
# questions.
#   docs/eval/frontier/run.sh     # after the two training scripts; ~35 min for the baselines,
#                                 # ~4 min per variant's attacks, ~15 min per extra curve
# Then: python3 docs/eval/frontier/render.py runs/variants   (needs matplotlib)
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ -z "${S:-}" ]; then cargo build --release -q -p sgt; S=target/release/sgt; fi
R=${R:-runs/variants}
Q="--question-limit 20 --beamclean-rows 0"
# Baselines as curves (every point faces the learned MLP and the probe), beside the original's
# default (masked_fill = mean) as a curve.
# (Skipped when the original's run is absent, e.g. a fresh folder holding only new variants: the
# baseline points already in report.json are kept by render.py.)
[ -f "$R/frontier-base/report.json" ] || [ ! -f "$R/mean.toml" ] || $S eval text --config "$R/mean.toml" --sgt "$R/mean/sgt" \
  --report "$R/frontier-base" $Q --gaussian 0.25,0.5,1,2,4,16 --metric-dp 2,4,8,16,32 \
  --sgt-noise-factors 2,4,8 --all-baseline-attacks > /dev/null
# Every variant: the attacks `sgt text eval` trains after freezing (MLP inverter, the provider's
# probes at three depths, the probe retrained on the SGT's own states) on the held-out text.
for v in ${VARIANTS:-mean noise adv-ce-0.3}; do
  [ -f "$R/$v.toml" ] || { echo "skipping $v: no $R/$v.toml (train it first)" >&2; continue; }
  [ -s "$R/$v/fresh_attacks_v2.json" ] || $S text eval --config "$R/$v.toml" --sgt "$R/$v/sgt" > "$R/$v/fresh_attacks_v2.json"
done
for v in ${CURVES:-noise}; do
  [ -f "$R/$v.toml" ] || { echo "skipping the curve of $v: no $R/$v.toml" >&2; continue; }
  [ -f "$R/frontier-$v/report.json" ] || $S eval text --config "$R/$v.toml" --sgt "$R/$v/sgt" \
    --report "$R/frontier-$v" $Q --gaussian 16 --metric-dp 32 --sgt-noise-factors 2,4,8 \
    --no-baseline-attacks > /dev/null
done
