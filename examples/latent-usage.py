"""Which latent coordinates a trained lattice row of Table 1 uses, block by block.

Per coordinate of a trained row's best checkpoint: the spread (standard deviation over test
images) of the encoder's output y, the learned prior scale b, and the size of the cell it sits in
(Δ for the rectangular lattice, the block's V^{1/n} for a good lattice, the coordinate's own
scale where a good lattice has one per coordinate), and whether it is idle:
its spread below ``--idle`` times its cell (default 0.1), so that it carries next to nothing
through the dither. Summed per kind of block (E8, Z ...): how many coordinates are idle.

    python examples/latent-usage.py --runs ~/.cache/qlatent/runs-v5 [--model e8z_lattice]
        [--images 2000] [--idle 0.1] [--out results/latent-usage-e8z.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from qlatent.data import DataError
from qlatent.results import provenance, write_json


def usage(model, x: torch.Tensor, idle: float) -> list[dict]:
    """One entry per coordinate: block kind, y's spread, prior scale, cell size, idle flag."""
    neck = model.bottleneck
    with torch.no_grad():
        spread = model.encoder(x).std(0)
    scale = neck.scale.detach()
    if hasattr(neck, "geometry") and hasattr(neck, "_block_of"):  # a good lattice (or a sum)
        blocks = neck.geometry.blocks
        index = [int(b) for b in neck._block_of]
        kinds = [blocks[b].name for b in index]
        # a scale per coordinate stretches the cell along each coordinate by its own factor
        per_coordinate = getattr(neck, "spacing_per", "block") == "coordinate"
        cell = (neck.spacing if per_coordinate else neck.block_spacing[neck._block_of]).detach()
    else:
        index = list(range(scale.numel()))
        kinds = ["Z"] * scale.numel()
        cell = neck.spacing.detach()
    return [
        {
            "coordinate": i,
            "block": kinds[i],
            "block_index": index[i],
            "spread": float(spread[i]),
            "prior_scale": float(scale[i]),
            "cell": float(cell[i]),
            "idle": bool(spread[i] < idle * cell[i]),
        }
        for i in range(scale.numel())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="the lattice-mnist runs folder")
    parser.add_argument("--model", default="e8z_lattice")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "qlatent"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--idle", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("results/latent-usage-e8z.json"))
    args = parser.parse_args()
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    if args.images < 2 or not args.idle > 0:
        parser.error("--images must be at least 2 and --idle positive")
    command = (
        f"python examples/latent-usage.py --runs {args.runs} --model {args.model} --images "
        f"{args.images} --idle {args.idle} --out {args.out}"
    )
    started = provenance(command)
    from qlatent.experiments import coding_mnist

    try:
        model, info, data = coding_mnist.trained_table1_model(args.model, args.runs, args.data_dir)
    except (ValueError, OSError, DataError) as err:  # an unknown row, no checkpoint
        parser.error(str(err))
    rows = usage(model.eval(), data["test"][: args.images], args.idle)
    by_kind: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = by_kind.setdefault(row["block"], {"coordinates": 0, "idle": 0})
        entry["coordinates"] += 1
        entry["idle"] += row["idle"]
    by_block: dict[int, dict[str, int | str]] = {}
    for row in rows:
        entry = by_block.setdefault(row["block_index"], {"block": row["block"], "idle": 0})
        entry["idle"] += row["idle"]
    for kind, entry in by_kind.items():
        print(f"{kind:8s} {entry['idle']:3d} of {entry['coordinates']:3d} coordinates idle")
    payload = {**started, "model": args.model, "checkpoint": info, "by_block_kind": by_kind}
    # good-lattice blocks only: a Z block is one coordinate
    payload["by_block"] = {i: e for i, e in by_block.items() if e["block"] != "Z"}
    payload["coordinates"] = rows
    print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
