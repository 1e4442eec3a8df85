"""How the Monte-Carlo log-density of a good lattice fails at the Gaussian-lattice VAE's operating
point: the distribution of its error per image, not only its mean.

``examples/lattice-plugin.py`` swaps the Gaussian-lattice VAE's noise for a lattice's dither and
checks the rate against the same dithers at larger counts. For Λ24 ⊕ Λ16 that check can agree
while the estimate still fails now and then: the Λ16 block takes the sixteen noisiest
coordinates, most of them idle (prior far narrower than the cell along them), so uniform cell
points almost never see prior mass and everything rests on the proposal's draws landing in the
cell; for some dithers few do. Here, per layout and count pair, ``log f̂`` of the training
path's y_hat of the first ``--images`` training images is drawn ``--repeats`` times and compared
with the mean of ``--reference-repeats`` estimates at the reference counts: the mean and median
error per image, its standard error, and the share of estimates more than 5 nats below the
reference (collapses: no draw in the cell). ``S_u,S_q1:S_q2`` gives one draw count per block
(layouts with another number of blocks skip it). The delta-method correction is on (``debias``)
as in the Gaussian-lattice-start rows. Gaussian prior, one seed of draws.

    python examples/lattice-plugin-tails.py --runs ~/.cache/qlatent/runs-seeds/seed2021
        [--layouts 'Λ24 ⊕ Λ16,Λ24 ⊕ Z^16'] [--proposals tilted,prior]
        [--counts 512,32 512,256 512,32:1024] [--reference 8192,2048] [--images 100] [--repeats 8]
        [--reference-repeats 3] [--out results/lattice-plugin-tails.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

from qlatent.bottlenecks.good_lattice import counts_text, monte_carlo_counts
from qlatent.data import DataError
from qlatent.results import provenance, write_json
from qlatent.rng import SeedKeys

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("lattice_plugin", _HERE / "lattice-plugin.py")
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)

#: an estimate this far below the reference counts as a collapse (no proposal draw in the cell)
COLLAPSE_NATS = 5.0


@torch.no_grad()
def estimates(neck, v: torch.Tensor, counts, repeats: int, seed: int) -> torch.Tensor:
    """``(repeats, N)`` debiased log-density estimates at ``counts``, float64."""
    return torch.stack(
        [
            neck.log_density(v, *counts, SeedKeys(seed + r), debias=True).double()
            for r in range(repeats)
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="lattice-mnist runs folder with the GL row")
    parser.add_argument("--model", default="gaussian_lattice")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "qlatent"))
    parser.add_argument("--layouts", default="Λ24 ⊕ Λ16,Λ24 ⊕ Z^16")
    parser.add_argument("--proposals", default="tilted,prior")
    parser.add_argument(
        "--counts", nargs="+", type=monte_carlo_counts, default=[(512, 32), (512, 256)]
    )
    parser.add_argument("--reference", type=monte_carlo_counts, default=(8192, 2048))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results/lattice-plugin-tails.json"))
    args = parser.parse_args()
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    layouts = args.layouts.split(",")
    if unknown := [name for name in layouts if name not in plugin.LAYOUTS]:
        parser.error(f"unknown layouts {unknown}; choose from {list(plugin.LAYOUTS)}")
    proposals = args.proposals.split(",")
    if unknown := [p for p in proposals if p not in ("tilted", "prior")]:
        parser.error(f"unknown proposals {unknown} (the Gaussian prior takes tilted or prior)")
    counts, reference = args.counts, args.reference
    if min(args.images, args.repeats, args.reference_repeats) < 1:
        parser.error("--images, --repeats and --reference-repeats must be positive")
    command = (
        f"python examples/lattice-plugin-tails.py --runs {args.runs} --model {args.model} "
        f"--layouts '{args.layouts}' --proposals {args.proposals} --counts "
        f"{' '.join(map(counts_text, counts))} --reference {reference[0]},{reference[1]} "
        f"--images {args.images} "
        f"--repeats {args.repeats} --reference-repeats {args.reference_repeats} --out {args.out}"
    )
    started = provenance(command)
    from qlatent.experiments import coding_mnist

    try:
        gl, info, data = coding_mnist.trained_table1_model(args.model, args.runs, args.data_dir)
    except (ValueError, OSError, DataError) as err:  # an unknown row, no checkpoint
        parser.error(str(err))
    x = data["train"][: args.images]
    t_start = time.perf_counter()
    rows = []
    for layout in layouts:
        for proposal in proposals:
            blocks = plugin.LAYOUTS[layout]
            model = plugin.plugged(gl, blocks, reference, False, "gaussian", proposal, True)
            neck = model.bottleneck.double()
            neck.train()
            with torch.no_grad():
                v = neck(model.encoder(x).double(), generator=SeedKeys(1)).y_hat
            truth = estimates(neck, v, reference, args.reference_repeats, 1000).mean(0)
            for pair in counts:
                if isinstance(pair[1], tuple) and len(pair[1]) != len(blocks):
                    print(f"{layout}: {counts_text(pair)} names no count per block, skipped")
                    continue
                t0 = time.perf_counter()
                error = estimates(neck, v, pair, args.repeats, 0) - truth  # (repeats, N)
                per_image = error.mean(0)
                row = {
                    "layout": layout,
                    "proposal": proposal,
                    "counts": [pair[0], list(pair[1]) if isinstance(pair[1], tuple) else pair[1]],
                    "mean_error_nats": per_image.mean().item(),
                    "mean_error_se": (per_image.std() / args.images**0.5).item(),
                    "median_error_nats": error.median().item(),
                    "collapsed_share": (error < -COLLAPSE_NATS).double().mean().item(),
                    "worst_error_nats": error.min().item(),
                    "wall_s": time.perf_counter() - t0,
                }
                rows.append(row)
                print(
                    f"{layout:12s} {proposal:7s} {counts_text(pair):12s} "
                    f"mean {row['mean_error_nats']:+.3f}"
                    f" ± {row['mean_error_se']:.3f}  median {row['median_error_nats']:+.3f}"
                    f"  collapsed {100 * row['collapsed_share']:.1f}%"
                    f"  worst {row['worst_error_nats']:+.1f}",
                    flush=True,
                )
    payload = {
        **started,
        "model": args.model,
        "checkpoint": info,
        "images": args.images,
        "repeats": args.repeats,
        "reference": list(reference),
        "reference_repeats": args.reference_repeats,
        "collapse_nats": COLLAPSE_NATS,
        "prior": "gaussian",
        "debias": True,
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
        "threads": torch.get_num_threads(),
    }
    print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
