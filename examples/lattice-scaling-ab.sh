#!/usr/bin/env bash
# `qlatent bench lattice --scaling` of an earlier commit and of the checked-out tree, alternated
# on one machine (its speed drifts between days, so only recordings of one sitting compare).
# The earlier tree goes into a temporary git worktree and runs from there, so each JSON records
# its own commit. Run it on an otherwise idle machine.
#
#   examples/lattice-scaling-ab.sh OLD_COMMIT OUT_DIR [ROUNDS]
#
# writes OUT_DIR/before-<i>.json (OLD_COMMIT) and OUT_DIR/after-<i>.json (this tree), i = 1..ROUNDS.
set -euo pipefail
old=${1:?usage: $0 OLD_COMMIT OUT_DIR [ROUNDS]}
out=$(realpath -m "${2:?usage: $0 OLD_COMMIT OUT_DIR [ROUNDS]}")
rounds=${3:-3}
root=$(git rev-parse --show-toplevel)
qlatent="$root/.venv/bin/qlatent"
tree=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
git -C "$root" worktree add --force --detach "$tree" "$old" >/dev/null
mkdir -p "$out"
for i in $(seq 1 "$rounds"); do
    (cd "$tree" && PYTHONPATH="$tree/src" "$qlatent" bench lattice --scaling --repeats 15 \
        --output "$out/before-$i.json")
    (cd "$root" && "$qlatent" bench lattice --scaling --repeats 15 --output "$out/after-$i.json")
done
