"""Does the Monte-Carlo density loosen IWAE? A trained good-lattice row's IWAE NLL at its own
evaluation counts against larger ones, on the same test images with the same posterior draws.

Inside IWAE the good lattices' prior term is the unbiased Monte-Carlo estimate f̂ of Theorem 1's
density (``DitheredGoodLattice.log_prior``), so the bound holds in expectation but is looser than
with the exact density by an amount that shrinks with the counts. This measures that amount:
per image, IWAE-S at the counts given in turn (the first is the reference), paired.

    python examples/iwae-density-counts.py --row e8_gl_lattice \
        --runs ~/.cache/qlatent/runs-v6-long --images 100 --counts 2048,128 16384,1024 \
        [--out results/iwae-density-counts-e8_gl.json]

``--counts 512,32:64`` gives one proposal-draw count per block (``eval_prior_samples=[32, 64]``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from qlatent.bottlenecks.good_lattice import check_block_counts, counts_text, monte_carlo_counts
from qlatent.eval import iwae_nll
from qlatent.experiments import lattice_mnist
from qlatent.results import provenance, write_json
from qlatent.train import CheckpointError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", required=True, choices=lattice_mnist.GOOD_LATTICE_ROWS)
    parser.add_argument("--runs", required=True, type=Path, help="its runs folder")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "qlatent"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--samples", type=int, default=1000, help="IWAE importance samples")
    parser.add_argument("--counts", type=monte_carlo_counts, nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.out and args.out.is_dir():  # refused now, not after the work
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    if args.images < 2 or args.samples < 1:
        parser.error("need --images >= 2 and --samples >= 1")
    counts = " ".join(map(counts_text, args.counts))
    command = (
        f"python examples/iwae-density-counts.py --row {args.row} --runs {args.runs} "
        f"--images {args.images} --samples {args.samples} --counts {counts} "
        f"--seed {args.seed}" + (f" --out {args.out}" if args.out else "")
    )
    started = provenance(command)
    torch.set_num_threads(1)
    try:
        _, data, model, ckpt = lattice_mnist.load_trained(args.row, args.runs, args.data_dir)
    except (OSError, CheckpointError) as err:
        raise SystemExit(str(err)) from None
    x = data["test"][: args.images]
    neck = model.bottleneck
    try:
        check_block_counts(args.counts, len(neck.geometry.blocks))
    except ValueError as err:
        parser.error(f"--counts: {err} ({args.row})")
    rows, nll = [], {}
    for cells, draws in args.counts:
        neck.eval_samples, neck.eval_prior_samples = cells, draws
        torch.manual_seed(args.seed)  # the density's points: torch's default generator
        t0 = time.perf_counter()
        nll[(cells, draws)] = iwae_nll(
            model,
            x,
            num_samples=args.samples,
            generator=torch.Generator().manual_seed(args.seed),
            progress=False,
        )
        rows.append(
            {
                "counts": [cells, draws],
                "iwae_nll": nll[(cells, draws)].mean().item(),
                "wall_s": time.perf_counter() - t0,
            }
        )
        print(f"counts {cells},{draws}: IWAE-{args.samples} {rows[-1]['iwae_nll']:.4f}")
    reference = nll[args.counts[0]]
    for row in rows[1:]:
        diff = nll[tuple(row["counts"])] - reference
        row["minus_first"] = diff.mean().item()
        row["minus_first_se"] = (diff.std() / math.sqrt(diff.numel())).item()
        print(
            f"  {row['counts']} minus {list(args.counts[0])}: {row['minus_first']:+.4f}"
            f" ± {row['minus_first_se']:.4f}"
        )
    payload = {
        **started,
        "row": args.row,
        "checkpoint_epoch": ckpt.get("epoch"),
        "images": x.shape[0],
        "iwae_samples": args.samples,
        "rows": rows,
        "threads": 1,
    }
    if args.out:
        print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
