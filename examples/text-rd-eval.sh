#!/bin/bash
# Every discrete point of `qlatent reproduce text-rd`: its test file's size against the ideal
# length under its own code model (`coded.overhead`), written to results/text-rd-eval/.
# RUNS: the --runs-dir the sweep used.
set -euo pipefail
RUNS=${RUNS:-$HOME/.cache/qlatent/runs}
mkdir -p results/text-rd-eval
for point in scalar_st/M-{2,4,8,16} vector_st/M-{2,4,8,16} "language_model/no code"; do
  OMP_NUM_THREADS=1 qlatent eval "$RUNS/text-rd/$point/best.pt" \
    -o "results/text-rd-eval/$(echo "$point" | tr '/ ' '_-').json"
done
for lam in 0.03 0.1 0.3 1.0; do
  OMP_NUM_THREADS=1 qlatent eval "$RUNS/text-rd/lattice/λ-$lam/best.pt" \
    -o "results/text-rd-eval/lattice_lambda-$lam.json"
done
