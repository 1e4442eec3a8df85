"""Where the training step of a trained good-lattice bottleneck spends its time: the bottleneck of
a ``qlatent reproduce lattice-mnist`` row, loaded from its best checkpoint, run forward and
backward on the encoder's outputs for a batch of training images, with the time inside each of
the Monte-Carlo density's parts (wall time per step, median over ``--steps`` steps; the parts
timed by wrapping the methods, in the steps after the median's).

    python examples/good-lattice-step.py --row leech_gl_lattice \
        --runs ~/.cache/qlatent/runs-seeds/seed2022 [--batch 100] [--steps 20] [--threads 1] \
        [--out results/good-lattice-step/NAME.json]

Loss of the step: ``rate.sum() + y_hat.square().sum()`` (the decoder's part of the gradient
stands in as a quadratic). Compare trees by running the same command in each, alternated.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from pathlib import Path

import torch

from qlatent.bottlenecks import _lattice_density, good_lattice
from qlatent.experiments import lattice_mnist
from qlatent.results import provenance, write_json
from qlatent.train import CheckpointError, load, load_weights

#: the methods of the density estimate whose time is reported (after the dots, functions of the
#: module of its sums, ``_lattice_density``; a name the tree does not have is left out, so the
#: script runs against older trees)
PARTS = (
    "log_density",
    "_log_density",  # what the paths call (log_density checks its arguments, then calls it)
    "_inside_cell",
    "_proposal_points",
    "_cell_points_log_pdf",
    "_block_log_pdf",
    "_mc_points",
    ".._relative_variance",
    ".._group_slopes",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", required=True, help="a good-lattice row of lattice-mnist")
    parser.add_argument("--runs", type=Path, required=True, help="the runs folder of the row")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.row not in lattice_mnist.BLOCK_NSM or args.row == "rect_lattice":
        parser.error(f"{args.row!r} is not a good-lattice row of lattice-mnist")
    if min(args.batch, args.steps, args.threads) < 1:
        parser.error("--batch, --steps and --threads must be positive")
    command = (
        f"python examples/good-lattice-step.py --row {args.row} --runs {args.runs} "
        f"--batch {args.batch} --steps {args.steps} --threads {args.threads}"
        + (f" --out {args.out}" if args.out else "")
    )
    started = provenance(command)
    torch.set_num_threads(args.threads)
    cfg = lattice_mnist.model_config(args.row, quick=False, overrides=[])
    data = lattice_mnist.load_data(cfg, args.data_dir)
    model = lattice_mnist.build_model(cfg, data["test"].shape[1])
    path = args.runs / "lattice-mnist" / args.row / "best.pt"
    try:
        load_weights(model, load(path)["model"], str(path))
    except (OSError, KeyError, CheckpointError) as err:
        raise SystemExit(f"{path}: {err}") from None
    model.train()
    with torch.no_grad():
        y = model.encoder(data["train"][: args.batch]).detach()
    neck = model.bottleneck

    def step() -> None:
        neck.zero_grad(set_to_none=True)
        out = neck(y.clone().requires_grad_(True))
        (out.rate.sum() + out.y_hat.square().sum()).backward()

    for _ in range(3):  # compile and settle
        step()
    walls = []
    for _ in range(args.steps):
        begun = time.perf_counter()
        step()
        walls.append(time.perf_counter() - begun)
    parts = collections.defaultdict(float)
    originals = {}
    for name in PARTS:
        owner = _lattice_density if name.startswith("..") else good_lattice.DitheredGoodLattice
        attr = name.lstrip(".")
        original = getattr(owner, attr, None)
        if original is None:
            continue
        originals[(owner, attr)] = original

        def timed(*a, _f=original, _name=attr, **k):
            begun = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                parts[_name] += time.perf_counter() - begun

        setattr(owner, attr, timed)
    try:
        for _ in range(args.steps):
            step()
    finally:
        for (owner, attr), original in originals.items():
            setattr(owner, attr, original)
    result = {
        **started,
        "row": args.row,
        "checkpoint": str(path),
        "batch": args.batch,
        "threads": args.threads,
        "bottleneck": repr(neck),
        "step_ms_median": 1e3 * statistics.median(walls),
        "step_ms": [round(1e3 * w, 2) for w in walls],
        "parts_ms_per_step": {k: round(1e3 * v / args.steps, 2) for k, v in parts.items()},
        "parts_note": "time inside each method per step, the calls nested in (_)log_density "
        "included in its own; wrapped steps run a little slower than the median's",
    }
    print(f"{args.row}: step {result['step_ms_median']:.1f} ms (median of {args.steps})")
    for name, ms in result["parts_ms_per_step"].items():
        print(f"  {name}: {ms:.1f} ms")
    if args.out:
        print(f"wrote {write_json(result, args.out)}")


if __name__ == "__main__":
    main()
