#!/usr/bin/env bash
# The README's "Train your own" comparison: a VQ-VAE and the dithered lattice bottleneck on a
# folder of images, from one config with one changed line, compared with `qlatent eval`.
# Run from the repository root (its commit is recorded with every result):
#   bash examples/train-your-own.sh [WORK_DIR]
set -euo pipefail
work="${1:-$HOME/.cache/qlatent/train-your-own}"
qlatent="${QLATENT:-.venv/bin/qlatent}"
out="results/train-your-own"
mkdir -p "$work" "$out"
[ -d "$work/digits" ] || "$qlatent" data export mnist "$work/digits" --split train --limit 12000
for name in vq lattice; do
  "$qlatent" train examples/folder-vq.toml --set bottleneck.name="$name" \
    --set data.folder="$work/digits" --set train.progress=false --out "$work/runs/$name" --fresh
  cp "$work/runs/$name/summary.json" "$out/$name-train.json"
  "$qlatent" eval "$work/runs/$name/best.pt" -o "$out/$name-eval.json"
done
# the codebook's file with counted symbol frequencies instead of a uniform index model
"$qlatent" update --checkpoint "$work/runs/vq/best.pt" --data checkpoint-train \
  -o "$work/runs/vq/counted.pt"
"$qlatent" eval "$work/runs/vq/counted.pt" -o "$out/vq-counted-eval.json"
