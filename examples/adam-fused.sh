#!/usr/bin/env bash
# Does torch's fused Adam leave the trained numbers unchanged? The rectangular-lattice VAE of the
# demo (binarized MNIST, Adam 5e-4, batch 100) for 10 epochs, seeds 0-2, with `adam` and
# `adam_fused`. Run from the repository root: bash examples/adam-fused.sh [WORK_DIR]
set -euo pipefail
work="${1:-$HOME/.cache/qlatent/adam-fused}"
qlatent="${QLATENT:-.venv/bin/qlatent}"
out="results/adam-fused"
mkdir -p "$work" "$out"
for seed in 0 1 2; do
  for optimizer in adam adam_fused; do
    "$qlatent" train --set train.optimizer="$optimizer" --set train.seed="$seed" \
      --set train.epochs=10 --set train.progress=false --out "$work/$optimizer-seed$seed" --fresh
    cp "$work/$optimizer-seed$seed/summary.json" "$out/$optimizer-seed$seed.json"
  done
done
