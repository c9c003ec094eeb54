#!/usr/bin/env bash
# The main job on the bundled default: Fashion-MNIST classifier, SGT, evaluation, PNG grid.
# Re-running resumes interrupted stages (each checkpoints into runs/quickstart-vision).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-assets.sh
cargo build --release -p sgt
sgt=target/release/sgt
out=${1:-runs/quickstart-vision}
echo "== 1/4 training the base classifier (Fashion-MNIST, small CNN, noise + masking augmentation)"
$sgt vision train-classifier --epochs 4 --noise-augment 0.3 --mask-augment 0.7 --output "$out/classifier"
echo "== 2/4 training the SGT (Cloak, 60% of the features masked, alpha 0.05)"
$sgt vision train --classifier "$out/classifier/model" --layer cloak-two-phase --percent-to-mask 0.6 --alpha 0.05 \
  --epochs 4 --output "$out/sgt"
echo "== 3/4 client side: transforming 12 test images"
$sgt vision apply --sgt "$out/sgt/noise_layer" --count 12 --output "$out/apply"
echo "== 4/4 evaluating on the 10k test images (with a learned reconstruction attack)"
$sgt eval vision --sgt "$out/sgt/noise_layer" --classifier "$out/classifier/model" --attack-steps 60 --json | tee "$out/eval.json"
echo "grid of clean (top) vs transformed (bottom) images: $out/apply/grid.png"
