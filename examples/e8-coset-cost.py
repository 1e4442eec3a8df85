"""What E8's coset costs in a file, under each coset model and under the exact probability.

The E8 code model (``qlatent.coding.models._E8Block``) codes a point of E8 = D8 ∪ (D8 + ½·1) as its
coset c, then its coordinates within the coset. The product of cube-cell masses gives each coset
about half the mass whatever the prior (``e8_cosets="half"``, files of kinds 4 and 5); the
rounding-error model (``"errors"``, kind 6) gives P(c = 1 | u) as the normal tail of Σ|e_j|
(``models._coset_one_probability``). The exact P(c | u) is the prior's mass on the points whose
nearest E8 point lies in coset c; this script estimates it by Monte Carlo — ``--draws`` prior
draws X̂ per image, the coset of K_E8((X̂ + u)/σ) counted block by block — and reports per block
of a trained model the mean coset cost −log2 P(c | u) of the coded points under each model and
under the estimate (probabilities clamped to [1/draws, 1 − 1/draws]), with the blocks' prior
scales over their cell size b/σ.

    python examples/e8-coset-cost.py --runs ~/.cache/qlatent/runs-v3 [--model e8_debias_lattice]
        [--images 2000] [--mc-images 300] [--draws 4096] [--out results/e8-coset-cost.json]

Images are the first of the training split (the coset model was designed on them, not on the
test images the coding-mnist table reports).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from qlatent.data import DataError
from qlatent.results import provenance, write_json


def _coset_ops(model, y: torch.Tensor, seed: int) -> list[np.ndarray]:
    """Per E8 block, each row's coset-op bits ``(N,)`` under ``model`` (a GoodLattice)."""
    from qlatent.coding.models import _E8Block

    ops, _, _ = model._ops(y, seed)
    out, at = [], 0
    for _, block in model.blocks:
        if isinstance(block, _E8Block):
            op = ops[at]
            picked = op.probs[np.arange(op.symbols.size), op.symbols]
            out.append(-np.log2(np.maximum(picked, 2.0**-24)))
            at += 25  # the coset, then parity, sign and magnitude per coordinate
        else:
            raise ValueError("every block must be E8")
    return out


@torch.no_grad()
def coset_costs(neck, y: torch.Tensor, *, seed: int, mc_rows: int, draws: int):
    """Per E8 block: the coded points' mean coset bits under "half", "errors" and the Monte-Carlo
    exact probability (the first two also on the first ``mc_rows`` rows, where the estimate
    is), and the mean binary entropy of the estimate. ``y`` ``(N, m)``; the prior draws come
    from torch's global generator (seeded by the caller)."""
    y = y.reshape(y.shape[0], -1)
    half = _coset_ops(neck.code_model(e8_cosets="half"), y, seed)
    errors_model = neck.code_model()
    errors = _coset_ops(errors_model, y, seed)
    u = errors_model.dither(y.shape[0], seed).double()
    sigma = torch.from_numpy(errors_model.sigma)
    scale = torch.from_numpy(errors_model.scale)
    starts = [cols.start for cols, _ in errors_model.blocks]
    z = neck.geometry.closest_point((y.double() + u) / sigma)
    coded = torch.round(2 * z[:, starts]).long() % 2  # (N, blocks): each block's coset
    rows = min(mc_rows, y.shape[0])
    laplace = torch.distributions.Laplace(torch.zeros(()), torch.ones(()))
    p_one = torch.empty(rows, len(starts), dtype=torch.float64)
    for i in tqdm(range(rows), desc="exact coset by Monte Carlo", leave=False):
        x = laplace.sample((draws, y.shape[1])).double() * scale  # prior draws X̂
        zz = neck.geometry.closest_point((x + u[i]) / sigma)
        p_one[i] = (torch.round(2 * zz[:, starts]).long() % 2).double().mean(0)
    p_one = p_one.clamp(1 / draws, 1 - 1 / draws)
    exact = -torch.log2(torch.where(coded[:rows] == 1, p_one, 1 - p_one))
    entropy = -(p_one * torch.log2(p_one) + (1 - p_one) * torch.log2(1 - p_one))
    blocks = []
    for b, (cols, _) in enumerate(errors_model.blocks):
        blocks.append(
            {
                "b_over_sigma": (errors_model.scale[cols] / errors_model.sigma[cols]).tolist(),
                "half_bits": float(half[b].mean()),
                "errors_bits": float(errors[b].mean()),
                "half_bits_mc_rows": float(half[b][:rows].mean()),
                "errors_bits_mc_rows": float(errors[b][:rows].mean()),
                "exact_mc_bits": float(exact[:, b].mean()),
                "exact_mc_bits_se": float(exact[:, b].std() / math.sqrt(rows)),
                "exact_mc_entropy_bits": float(entropy[:, b].mean()),
            }
        )
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="the lattice-mnist runs folder")
    parser.add_argument("--model", default="e8_debias_lattice")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "qlatent"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--mc-images", type=int, default=300)
    parser.add_argument("--draws", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0, help="the dither's seed (the file's)")
    parser.add_argument("--out", type=Path, default=Path("results/e8-coset-cost.json"))
    args = parser.parse_args()
    if min(args.images, args.mc_images) < 2 or args.draws < 1:
        parser.error(
            f"need --images >= 2, --mc-images >= 2 and --draws >= 1, got {args.images}, "
            f"{args.mc_images} and {args.draws}"
        )
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    command = "python examples/e8-coset-cost.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "data_dir"
    )
    started = provenance(command)  # the tree as it was when the run began
    t0 = time.perf_counter()
    from qlatent.experiments import coding_mnist

    try:
        model, info, data = coding_mnist.trained_table1_model(args.model, args.runs, args.data_dir)
    except (ValueError, OSError, DataError) as err:  # an unknown row, no checkpoint
        parser.error(str(err))
    model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        y = model.encoder(data["train"][: args.images])
    blocks = coset_costs(
        model.bottleneck, y, seed=args.seed, mc_rows=args.mc_images, draws=args.draws
    )
    totals = {
        key: sum(b[key] for b in blocks)
        for key in ("half_bits", "errors_bits", "half_bits_mc_rows", "errors_bits_mc_rows",
                    "exact_mc_bits", "exact_mc_entropy_bits")
    }  # fmt: skip
    totals["exact_mc_bits_se"] = math.sqrt(sum(b["exact_mc_bits_se"] ** 2 for b in blocks))
    payload = {
        **started,
        "model": args.model,
        "checkpoint": info["checkpoint"],
        "checkpoint_epoch": info.get("checkpoint_epoch"),
        "images": int(y.shape[0]),
        "mc_images": min(args.mc_images, int(y.shape[0])),
        "draws": args.draws,
        "split": "train",
        "per_image_total_bits": totals,
        "blocks": blocks,
        "wall_s": time.perf_counter() - t0,
        "notes": "bits per image for the coset symbols only (one per E8 block); *_mc_rows are on "
        "the first mc_images images, where the Monte-Carlo estimate is; its s.e. is over images",
    }
    write_json(payload, args.out)
    for b, block in enumerate(blocks):
        print(
            f"block {b}: half {block['half_bits']:.3f}  errors {block['errors_bits']:.3f}  "
            f"exact (MC, first {payload['mc_images']}) {block['exact_mc_bits']:.3f} "
            f"(errors there {block['errors_bits_mc_rows']:.3f})"
        )
    print("per image:", {k: round(v, 3) for k, v in totals.items()})


if __name__ == "__main__":
    main()
