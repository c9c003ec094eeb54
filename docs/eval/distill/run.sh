#!/usr/bin/env bash
# What the SGT is distilled against (issue: privacy variants, item 2a): the quickstart preset
# trained for 400 steps on the same 64 answered chat prompts as ../fill/, with the distillation
# term counted on response positions only (`ignore_prompt_loss = true`, as the original's
# quickstart) and compared at the logits by the KL divergence of the next-token distributions
# (`distillation_layer_index = "logits"`, `distillation_logit_kl_loss_weight`), or at a deeper
# layer. Judged only by attacks trained afresh on the frozen layer: `sgt text train` ends with
# them, `sgt text eval` adds the provider's probes, `sgt eval text` the learned transformer and
# answers on 20 questions, over the noise factors ×1, ×1.5, ×2 and ×4.
# The `-a1`, `-a4`, `-a8` variants (item 2d) also train the served model's first 1, 4 or 8
# decoder layers with the SGT (`[adapter] layers`; learning rate 5e-5, or 5e-4 for `-fast`):
# the provider serves `$R/$v/served_model`, so every evaluation of them loads it (`--model`):
# answers, agreement and the provider's probes read the served model.
#   docs/eval/distill/run.sh          # logits: ~25 min of training per variant on 2 cores
#   VARIANTS="l15-noise-a1 l15-noise-a4-fast l15-noise-a8-fast" docs/eval/distill/run.sh
# Then: python3 docs/eval/frontier/render.py runs/variants   (needs matplotlib)
set -euo pipefail
cd "$(dirname "$0")/../../.."
if [ -z "${S:-}" ]; then cargo build --release -q -p sgt; S=target/release/sgt; fi
R=${R:-runs/variants}
mkdir -p "$R"
[ -f "$R/conversations.jsonl" ] || $S text prepare-data --limit 64 --max-new-tokens 96 --out "$R/conversations.jsonl"
KL='distillation_layer_index = "logits"\ndistillation_logit_kl_loss_weight = 1.0'
for v in ${VARIANTS:-kl-noise kl-mean}; do
  case $v in
    kl-noise) fill=noise; at=$KL ;;
    kl-mean)  fill=mean;  at=$KL ;;
    l15-noise) fill=noise; at='distillation_layer_index = 15' ;;
    l15-noise-m75) fill=noise; at='distillation_layer_index = 15' ;;   # 75% of features masked
    l15-noise-seed1) fill=noise; at='distillation_layer_index = 15' ;;  # l15-noise, training seed 1
    l15-noise-a1) fill=noise; at='distillation_layer_index = 15' ;;  # l15-noise + served adapter
    l15-mean-a1) fill=mean; at='distillation_layer_index = 15' ;;   # μ(x) fill + served adapter
    l15-noise-a1-fast) fill=noise; at='distillation_layer_index = 15' ;;  # adapter lr 5e-4
    l15-noise-a4-fast) fill=noise; at='distillation_layer_index = 15' ;;  # 4 adapter layers, lr 5e-4
    l15-noise-a8-fast) fill=noise; at='distillation_layer_index = 15' ;;  # 8 adapter layers, lr 5e-4
    # The near-clean point of ../fill/ (σ·ε fill, layer 6, every position) + 4 adapter layers.
    all6-noise-a4-fast) fill=noise; at='distillation_layer_index = 6' ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  sed -e "s|^\[data\]|[data]\nconversations = \"$R/conversations.jsonl\"|" \
      -e "s|^ignore_prompt_loss = false|ignore_prompt_loss = true|" \
      -e "s|^steps = .*|steps = 400|" -e "s|^eval_every = .*|eval_every = 200|" \
      -e "s|^percent_to_mask = 0.5|percent_to_mask = 0.5\nmasked_fill = \"$fill\"|" \
      -e "s|^distillation_layer_index = 6|$at|" configs/text-sgt-quickstart.toml > "$R/$v.toml"
  case $v in *-seed1) sed -i 's|^seed = 0|seed = 1|' "$R/$v.toml" ;; esac
  case $v in all6-*) sed -i 's|^ignore_prompt_loss = true|ignore_prompt_loss = false|' "$R/$v.toml" ;; esac
  case $v in *-m75) sed -i 's|^percent_to_mask = 0.5|percent_to_mask = 0.75|' "$R/$v.toml" ;; esac
  case $v in
    *-a1) printf '\n[adapter]\nlayers = 1\nlearning_rate = 5e-5\n' >> "$R/$v.toml" ;;
    *-a1-fast) printf '\n[adapter]\nlayers = 1\nlearning_rate = 5e-4\n' >> "$R/$v.toml" ;;
    *-a4-fast) printf '\n[adapter]\nlayers = 4\nlearning_rate = 5e-4\n' >> "$R/$v.toml" ;;
    *-a8-fast) printf '\n[adapter]\nlayers = 8\nlearning_rate = 5e-4\n' >> "$R/$v.toml" ;;
  esac
  case $v in kl-*) sed -i 's|^distillation_layer_cosine_distance_loss_weight = .*|distillation_layer_cosine_distance_loss_weight = 0.0|' "$R/$v.toml" ;; esac
  [ -f "$R/$v/fresh_attacks.json" ] || $S text train --config "$R/$v.toml" --output "$R/$v" > "$R/$v.train.json"
  M=(); [ -d "$R/$v/served_model" ] && M=(--model "$R/$v/served_model")
  [ -s "$R/$v/fresh_attacks_v2.json" ] || $S text eval --config "$R/$v.toml" --sgt "$R/$v/sgt" "${M[@]}" > "$R/$v/fresh_attacks_v2.json"
  [ -f "$R/frontier-$v/report.json" ] || $S eval text --config "$R/$v.toml" --sgt "$R/$v/sgt" "${M[@]}" \
      --report "$R/frontier-$v" --question-limit 20 --beamclean-rows 0 --gaussian 16 --metric-dp 32 \
      --sgt-noise-factors 1.5,2,4 --no-baseline-attacks > /dev/null
done
