#!/usr/bin/env bash
# `qlatent bench lattice` (or BENCH=lattices, quantizers, ...) of an earlier commit and of the
# checked-out tree, alternated on one machine (its speed drifts between days, so only recordings
# of one sitting compare). The earlier
# tree goes into a temporary git worktree and runs from there, so each JSON records its own
# commit. Run it on an otherwise idle machine.
#
#   examples/lattice-scaling-ab.sh OLD_COMMIT OUT_DIR [ROUNDS [BENCH ARGUMENTS...]]
#
# writes OUT_DIR/before-<i>.json (OLD_COMMIT) and OUT_DIR/after-<i>.json (this tree), i = 1..ROUNDS
# (3). The bench arguments default to `--scaling --repeats 15`; QLATENT names the `qlatent` to run
# (default .venv/bin/qlatent; .venv-bench/bin/qlatent measures CompressAI beside it); BENCH the
# benchmark (default lattice).
set -euo pipefail
old=${1:?usage: $0 OLD_COMMIT OUT_DIR [ROUNDS [BENCH ARGUMENTS...]]}
out=$(realpath -m "${2:?usage: $0 OLD_COMMIT OUT_DIR [ROUNDS [BENCH ARGUMENTS...]]}")
rounds=${3:-3}
shift $(($# < 3 ? $# : 3))
args=("$@")
if [ ${#args[@]} -eq 0 ]; then args=(--scaling --repeats 15); fi
root=$(git rev-parse --show-toplevel)
qlatent=$(realpath "${QLATENT:-$root/.venv/bin/qlatent}")
bench=${BENCH:-lattice}
tree=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
git -C "$root" worktree add --force --detach "$tree" "$old" >/dev/null
mkdir -p "$out"
for i in $(seq 1 "$rounds"); do
    (cd "$tree" && PYTHONPATH="$tree/src" "$qlatent" bench "$bench" "${args[@]}" \
        --output "$out/before-$i.json")
    (cd "$root" && "$qlatent" bench "$bench" "${args[@]}" --output "$out/after-$i.json")
done
