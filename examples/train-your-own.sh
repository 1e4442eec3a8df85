#!/usr/bin/env bash
# The README's "Train your own" comparison: a VQ-VAE and the dithered lattice bottleneck on a
# folder of images, from one config with one changed line, compared with `qlatent eval`.
# Run from the repository root: bash examples/train-your-own.sh [WORK_DIR]
set -euo pipefail
work="${1:-$HOME/.cache/qlatent/train-your-own}"
repo="$(pwd)"
qlatent="$repo/.venv/bin/qlatent"
out="$repo/results/train-your-own"
mkdir -p "$work" "$out"
cd "$work"
[ -d digits ] || "$qlatent" data export mnist digits --split train --limit 12000
for name in vq lattice; do
  "$qlatent" train "$repo/examples/folder-vq.toml" --set bottleneck.name="$name" \
    --set train.progress=false --out "runs/$name" --fresh
  cp "runs/$name/summary.json" "$out/$name-train.json"
  "$qlatent" eval "runs/$name/best.pt" -o "$out/$name-eval.json"
done
# the codebook's file with counted symbol frequencies instead of a uniform index model
"$qlatent" update --checkpoint runs/vq/best.pt --data checkpoint-train -o runs/vq/counted.pt
"$qlatent" eval runs/vq/counted.pt -o "$out/vq-counted-eval.json"
