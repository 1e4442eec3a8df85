"""How much of a lattice row's IWAE gap is its proposal's support? Trained Table-1 rows' IWAE NLL
with their own proposal against defensive mixtures that reach beyond it, on the same test images.

A lattice row's IWAE proposal is its posterior, y_hat uniform on the (Voronoi or box) cell around
the encoder's output, so IWAE-S estimates log ∫_cell p(x | y_hat)·f(y_hat) dy_hat: as S grows it
reaches that integral over one cell, not log p(x) over the whole latent space, whose posterior
may put mass in the neighbouring cells. The Gaussian-lattice VAE's Gaussian proposal covers the
whole space. Every valid proposal gives an estimate whose expectation is a lower bound on the
same log p(x), so a proposal that also reaches past the cell measures how much of the row's IWAE
gap is the bound and how much the model. Here the proposal is the defensive mixture (Hesterberg,
"Weighted average importance sampling and defensive mixture distributions", Technometrics 1995)

    q_mix(z | x) = (1 − α)·q(z | x) + α·N(z; c(x), diag τ²),    τ_i = k·r_i,

with c the proposal's centre (y for a lattice cell, μ for a Gaussian) and r_i its standard
deviation along coordinate i (the cell's, estimated once from 2^16 dither draws, or σ_i). Each
sample comes from the Gaussian part with probability α, so the weights p(x, z)/q_mix(z | x) are
unbiased for p(x), and bounded by p(x, z)/((1 − α)·q(z | x)) where q is positive. At α = 0 the
estimate is the row's own IWAE bit for bit (tested). The mixture is the library's
``qlatent.eval.iwae_nll(..., defensive=(α, k))`` (``qlatent.eval.proposals``). Applied alike
to every row named, with the same α and k, so that the rows' differences are read under each
proposal:

    python examples/iwae-proposal-support.py --runs ~/.cache/qlatent/runs-support/seed2021 \\
        --rows gaussian_gl_lattice e8z_gl_lattice --images 1000 --mixtures 0.5:1 0.5:2 \\
        [--split val] [--samples 1000] [--out results/iwae-proposal-support/seed2021.json]

The first row named is the reference the others are read against. One thread. With ``--out``,
each (row, proposal) reading's per-image values go to ``OUT.partial.json`` as it finishes, and a
run stopped part way and started again with the same runs folder, split, images, samples and
seed takes the finished ones from there (of the same checkpoint epoch) instead of reading them
again; the file is removed once OUT is written. On a toy model
whose log p(x) is known (an E8 cell, a Gaussian prior and a Gaussian likelihood around y_hat),
the own proposal's IWAE falls short of it and the mixture's reaches it (tested).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from qlatent.eval import iwae_nll, proposals
from qlatent.experiments import lattice_mnist
from qlatent.results import provenance, write_json
from qlatent.train import CheckpointError


def parse_mixture(text: str) -> tuple[float, float]:
    """``"α:k"`` -> ``(α, k)`` for argparse."""
    try:
        return proposals.parse_mixture(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def with_proposal(model: nn.Module, mixture: tuple[float, float] | None) -> nn.Module:
    """``model`` itself (None: its own proposal) or a view drawing from ``mixture``."""
    return model if mixture is None else proposals.defensive_view(model, *mixture)


def partial_path(out: Path | None) -> Path | None:
    """Where a reading with ``--out OUT`` keeps its finished (row, proposal) pairs."""
    return None if out is None else out.with_name(out.name + ".partial.json")


def load_partial(path: Path | None, settings: dict) -> dict:
    """``{row: {proposal: entry}}`` from a stopped reading's partial file, or ``{}`` when there
    is none, it cannot be read, or it was made with other settings. An entry is kept only if it
    is well formed: ``checkpoint_epoch``, ``wall_s`` and one finite value per image."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("settings") != settings:
        return {}
    done = data.get("done")
    kept: dict = {}
    for row, entries in done.items() if isinstance(done, dict) else ():
        for name, entry in entries.items() if isinstance(entries, dict) else ():
            values = entry.get("nll") if isinstance(entry, dict) else None
            if (
                isinstance(values, list)
                and len(values) == settings["images"]
                and all(isinstance(v, float) and math.isfinite(v) for v in values)
                and isinstance(entry.get("wall_s"), (int, float))
                and isinstance(entry.get("checkpoint_epoch"), (int, type(None)))
            ):
                kept.setdefault(row, {})[name] = entry
    return kept


def paired(a: Tensor, b: Tensor) -> dict[str, float]:
    diff = a - b
    return {"mean": diff.mean().item(), "se": (diff.std() / math.sqrt(diff.numel())).item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path, help="the rows' runs folder")
    parser.add_argument("--rows", required=True, nargs="+", help="the first is the reference")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "qlatent"))
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--images", type=int, default=1000, help="the split's first N images")
    parser.add_argument("--samples", type=int, default=1000, help="IWAE importance samples")
    parser.add_argument("--mixtures", type=parse_mixture, nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.out and args.out.is_dir():  # refused now, not after the work
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    if args.images < 2 or args.samples < 1:
        parser.error("need --images >= 2 and --samples >= 1")
    mixtures = [None, *args.mixtures]
    names = ["own"] + [f"{a:g}:{k:g}" for a, k in args.mixtures]
    command = " ".join(
        [
            f"python examples/iwae-proposal-support.py --runs {args.runs}",
            f"--rows {' '.join(args.rows)} --split {args.split} --images {args.images}",
            f"--samples {args.samples} --mixtures {' '.join(names[1:])} --seed {args.seed}",
            *([f"--out {args.out}"] if args.out else []),
        ]
    )
    started = provenance(command)
    torch.set_num_threads(1)
    settings = {
        "runs": str(args.runs.resolve()),
        "split": args.split,
        "images": args.images,
        "samples": args.samples,
        "seed": args.seed,
    }
    partial_file = partial_path(args.out)
    partial = load_partial(partial_file, settings)
    nll: dict[str, dict[str, Tensor]] = {}
    rows = {}
    for row in args.rows:
        try:
            _, data, model, ckpt = lattice_mnist.load_trained(row, args.runs, args.data_dir)
            x = data[args.split][: args.images]
            views = [with_proposal(model, mixture) for mixture in mixtures]
        except (OSError, CheckpointError, KeyError, TypeError, ValueError) as err:
            sys.exit(f"{row}: {err}")
        if x.shape[0] != args.images:
            sys.exit(f"{row}: the {args.split} split has {x.shape[0]} images, not {args.images}")
        epoch = ckpt.get("epoch")
        nll[row], rows[row] = {}, {"checkpoint_epoch": epoch, "proposals": {}}
        for name, view in zip(names, views, strict=True):
            done = partial.get(row, {}).get(name)
            if done is not None and done["checkpoint_epoch"] == epoch:
                values, wall_s = torch.tensor(done["nll"], dtype=torch.float64), done["wall_s"]
            else:
                torch.manual_seed(args.seed)  # a good lattice's density points
                t0 = time.perf_counter()
                values = iwae_nll(
                    view,
                    x,
                    num_samples=args.samples,
                    generator=torch.Generator().manual_seed(args.seed),
                    progress=False,
                ).double()
                wall_s = round(time.perf_counter() - t0, 1)
                if partial_file is not None:
                    entry = {"checkpoint_epoch": epoch, "wall_s": wall_s, "nll": values.tolist()}
                    partial.setdefault(row, {})[name] = entry
                    write_json({"settings": settings, "done": partial}, partial_file)
            nll[row][name] = values
            entry = {
                "iwae_nll": values.mean().item(),
                "se": (values.std() / math.sqrt(values.numel())).item(),
                "wall_s": wall_s,
            }
            if name != "own":
                entry["minus_own"] = paired(values, nll[row]["own"])
            rows[row]["proposals"][name] = entry
            print(f"{row} {name}: IWAE-{args.samples} {entry['iwae_nll']:.4f}", flush=True)
    reference = args.rows[0]
    for row in args.rows[1:]:
        rows[row]["minus_reference"] = {
            name: paired(nll[row][name], nll[reference][name]) for name in names
        }
        for name, d in rows[row]["minus_reference"].items():
            print(f"{row} − {reference}, {name}: {d['mean']:+.4f} ± {d['se']:.4f}")
    payload = {
        **started,
        "runs": str(args.runs),
        "reference": reference,
        "split": args.split,
        "images": int(x.shape[0]),
        "iwae_samples": args.samples,
        "mixtures": {name: list(m) for name, m in zip(names[1:], args.mixtures, strict=True)},
        "rows": rows,
        "threads": 1,
    }
    if args.out:
        print(f"wrote {write_json(payload, args.out)}")
        partial_file.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
