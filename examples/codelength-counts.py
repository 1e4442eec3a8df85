"""A trained good-lattice row's hard-path two-part codelength at other Monte-Carlo counts than its
evaluation's: the rate −log P(z | u) of the hard path is the Monte-Carlo density at the row's
evaluation counts, one estimate per image, so where those counts leave the log-density biased the
codelength carries the bias; the −ELBO of the same evaluation reads the training counts.

For each ``--counts`` in turn the hard path's counts are set to them and the evaluation's own
codelength is formed again (``qlatent.eval.codelength_report`` on the whole test set with the
evaluation's seeds, ``--repeats`` dithers per image: 10 in the row's evaluation, whose number it
reproduces at the row's own evaluation counts), with the −ELBO beside it and their paired
difference.

    python examples/codelength-counts.py --row leech_gl_lattice \
        --runs ~/.cache/qlatent/runs-seeds/seed2022 --counts 512,32:64 512,32:1024 \
        [--repeats 10] [--images N] [--out results/codelength-counts-leech_gl/seed2022.json]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from qlatent.bottlenecks.good_lattice import check_block_counts, counts_text, monte_carlo_counts
from qlatent.eval import codelength_report
from qlatent.experiments import lattice_mnist
from qlatent.results import provenance, write_json
from qlatent.train import CheckpointError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", required=True, choices=lattice_mnist.GOOD_LATTICE_ROWS)
    parser.add_argument("--runs", type=Path, required=True, help="the runs folder of the row")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--counts",
        type=monte_carlo_counts,
        nargs="+",
        required=True,
        help="S_u,S_q or S_u,S_q1:S_q2 (one draw count per block) for the hard path's density",
    )
    parser.add_argument("--repeats", type=int, default=10, help="dithers per test image")
    parser.add_argument("--images", type=int, default=0, help="first N test images (0: all)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.repeats < 1 or args.images < 0:
        parser.error("need --repeats >= 1 and --images >= 0")
    counts = " ".join(map(counts_text, args.counts))
    command = (
        f"python examples/codelength-counts.py --row {args.row} --runs {args.runs} "
        f"--counts {counts} --repeats {args.repeats}"
        + (f" --images {args.images}" if args.images else "")
        + (f" --out {args.out}" if args.out else "")
    )
    started = provenance(command)
    torch.set_num_threads(1)
    try:
        cfg, data, model, ckpt = lattice_mnist.load_trained(args.row, args.runs, args.data_dir)
    except (OSError, CheckpointError) as err:
        raise SystemExit(str(err)) from None
    neck = model.bottleneck
    try:
        check_block_counts(args.counts, len(neck.geometry.blocks))
    except ValueError as err:
        parser.error(f"--counts: {err} ({args.row})")
    x = data["test"][: args.images] if args.images else data["test"]
    seed = cfg.eval.seed
    rows = []
    for cells, draws in args.counts:
        neck.eval_samples, neck.eval_prior_samples = cells, draws
        t0 = time.perf_counter()
        codelengths, elbos, gaps, gap_ses = [], [], [], []
        label = f"counts {counts_text((cells, draws))}"
        # the evaluation's seeds (lattice_mnist)
        for repeat in tqdm(range(args.repeats), desc=label, leave=False):
            report = codelength_report(model, x, seed=seed + 100 + 2 * repeat)
            codelengths.append(report.codelength.total)
            elbos.append(report.neg_elbo.total)
            gaps.append(report.codelength.total - report.neg_elbo.total)
            gap_ses.append(report.gap_se)
        row = {
            "counts": [cells, list(draws) if isinstance(draws, tuple) else draws],
            "codelength": sum(codelengths) / len(codelengths),
            "neg_elbo": sum(elbos) / len(elbos),
            "codelength_minus_neg_elbo": sum(gaps) / len(gaps),
            # the repeats' paired differences are independent: the s.e. of their mean
            "codelength_minus_neg_elbo_se": math.sqrt(sum(s * s for s in gap_ses)) / len(gap_ses),
            "wall_s": time.perf_counter() - t0,
        }
        rows.append(row)
        print(
            f"counts {counts_text((cells, draws))}: codelength {row['codelength']:.3f}, "
            f"−ELBO {row['neg_elbo']:.3f}, difference {row['codelength_minus_neg_elbo']:+.3f} "
            f"± {row['codelength_minus_neg_elbo_se']:.3f}"
        )
    payload = {
        **started,
        "row": args.row,
        "checkpoint": str(args.runs / "lattice-mnist" / args.row / "best.pt"),
        "checkpoint_epoch": ckpt.get("epoch"),
        "images": x.shape[0],
        "repeats": args.repeats,
        "eval_seed": seed,
        "training_counts": [neck.samples, neck.prior_samples],
        "rows": rows,
        "threads": 1,
    }
    if args.out:
        print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
