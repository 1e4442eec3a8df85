"""The cell's cost at a trained operating point: the Gaussian-lattice VAE with its noise swapped for
a lattice's dither.

The Gaussian-lattice VAE of Table 1 adds N(0, σ_i²) noise to its encoder's output and pays
KL(N(μ, σ²) ‖ N(0, I)); that is Theorem 1's rate for Gaussian "dither" with X̂ ~ N(0, 1 − σ_i²)
per coordinate, since X̂ + N is then N(0, 1). Here its trained encoder and decoder are kept and
the noise is replaced by the dither of a lattice scaled coordinate by coordinate (the lattice
diag(c)·Λ with c_i chosen so that the dither's variance along i is σ_i², i.e. c_i² G(Λ_b) = σ_i²
for a unit-volume block), with the same X̂ (a Gaussian prior, scale τ_i = √(1 − σ_i²)), and the
negative ELBO is measured on the training path (Theorem-1 rate by Monte Carlo, `prior` proposal).
Nothing is retrained, so the difference to the Gaussian-lattice VAE's own −ELBO is what the cell's
shape costs at exactly that encoder, decoder and noise level: the ideal-lattice gap of eq. 12
evaluated at the trained model's resolution per coordinate instead of at high resolution.

Coordinates are assigned to blocks in order of σ_i (the least noisy, most informative first), so
that with E8^3 ⊕ Z^16 the E8 blocks take the 24 most active coordinates; ``--natural-order``
keeps the encoder's order instead.

    python examples/lattice-plugin.py --runs ~/.cache/qlatent/runs-v6-long [--images 10000]
        [--counts 2048,128] [--check-counts 8192,512] [--check-images 1000] [--debias]
        [--out results/lattice-plugin.json]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from qlatent.data import DataError
from qlatent.experiments.lattice_mnist import gaussian_lattice_start
from qlatent.models import Autoencoder, gated_vae
from qlatent.results import provenance, write_json
from qlatent.rng import SeedKeys

#: normalized second moments (SPLAG Table 2.3; Λ16 after Pook-Kolb, Agrell & Allen 2023)
NSM = {"z": 1 / 12, "e8": 0.0716821, "bw16": 0.0682976, "leech": 0.0657710}
DIMS = {"z": 1, "e8": 8, "bw16": 16, "leech": 24}

#: block layouts in the order the coordinates are handed out (most active first)
LAYOUTS = {
    "Z^40": ["z"] * 40,
    "E8^5": ["e8"] * 5,
    "E8^3 ⊕ Z^16": ["e8"] * 3 + ["z"] * 16,
    "E8^4 ⊕ Z^8": ["e8"] * 4 + ["z"] * 8,
    "Λ24 ⊕ Λ16": ["leech", "bw16"],
    "Λ24 ⊕ Z^16": ["leech"] + ["z"] * 16,
    "Λ24 ⊕ E8^2": ["leech", "e8", "e8"],
}


def plugged(
    gl: Autoencoder,
    blocks: list[str],
    counts,
    natural_order: bool,
    prior: str = "gaussian",
    proposal: str = "prior",
    debias: bool = False,
) -> Autoencoder:
    """The Gaussian-lattice model ``gl`` with its noise replaced by the dither of ``blocks``
    (:func:`qlatent.experiments.lattice_mnist.gaussian_lattice_start`)."""
    model = gated_vae(
        "lattice",
        lattice=blocks,
        prior=prior,
        proposal=proposal,
        spacing_per="coordinate",
        samples=counts[0],
        prior_samples=counts[1],
        eval_samples=counts[0],
        eval_prior_samples=counts[1],
        debias=debias,
    )
    gaussian_lattice_start(model, gl.state_dict(), by_sigma=not natural_order)
    return model.eval()


@torch.no_grad()
def negative_elbo(model: Autoencoder, x: torch.Tensor, seed: int, batch: int = 500) -> torch.Tensor:
    """Per-image distortion and rate on the training path (one dither per image), ``(N, 2)``."""
    neck = model.bottleneck
    neck.train()
    out = []
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch]
        res = neck(model.encoder(xb), generator=SeedKeys(seed + start))
        params = model.decoder(res.y_hat.to(xb.dtype))
        distortion = model.likelihood.nll(xb, params).reshape(xb.shape[0], -1).sum(1)
        out.append(torch.stack([distortion.double(), res.rate.double()], 1))
    neck.eval()
    return torch.cat(out)


def summary(parts: torch.Tensor) -> dict[str, float]:
    total = parts.sum(1)
    return {
        "negative_elbo": total.mean().item(),
        "negative_elbo_se": (total.std() / math.sqrt(total.numel())).item(),
        "distortion": parts[:, 0].mean().item(),
        "rate": parts[:, 1].mean().item(),
    }


def gl_negative_elbo(gl: Autoencoder, x: torch.Tensor, seed: int, batch: int = 500):
    """The Gaussian-lattice VAE's own per-image distortion and KL rate, ``(N, 2)``."""
    gl.bottleneck.train()
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], batch):
            xb = x[start : start + batch]
            res = gl.bottleneck(gl.encoder(xb), generator=gen)
            distortion = gl.likelihood.nll(xb, gl.decoder(res.y_hat)).reshape(xb.shape[0], -1)
            out.append(torch.stack([distortion.sum(1).double(), res.rate.double()], 1))
    gl.bottleneck.eval()
    return torch.cat(out)


def _counts(parser: argparse.ArgumentParser, option: str, text: str) -> tuple[int, int]:
    """``S,D`` (cell points, prior draws), both positive integers, or a parser error."""
    try:
        counts = tuple(int(c) for c in text.split(","))
    except ValueError:
        counts = ()
    if len(counts) != 2 or min(counts) < 1:
        parser.error(f"{option} takes two positive integers S,D, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="lattice-mnist runs folder with the GL row")
    parser.add_argument("--model", default="gaussian_lattice")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "qlatent"))
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--counts", default="2048,128", help="cell points, prior draws")
    parser.add_argument("--check-counts", default="8192,512")
    parser.add_argument("--check-images", type=int, default=1000)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--natural-order", action="store_true")
    parser.add_argument("--prior", choices=["gaussian", "laplace"], default="gaussian")
    parser.add_argument("--proposal", choices=["prior", "box", "tilted"], default="prior")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--debias", action="store_true", help="the delta-method correction in the rate"
    )
    parser.add_argument("--out", type=Path, default=Path("results/lattice-plugin.json"))
    args = parser.parse_args()
    counts, check = (
        _counts(parser, "--counts", args.counts),
        _counts(parser, "--check-counts", args.check_counts),
    )
    if min(args.images, args.check_images) < 1:
        parser.error("--images and --check-images must be positive")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    layouts = args.layouts.split(",")
    if unknown := [name for name in layouts if name not in LAYOUTS]:
        parser.error(f"unknown layouts {unknown}; choose from {list(LAYOUTS)}")
    command = (
        f"python examples/lattice-plugin.py --runs {args.runs} --model {args.model} --images "
        f"{args.images} --counts {args.counts} --check-counts {args.check_counts} "
        f"--check-images {args.check_images} --layouts '{args.layouts}' --seed {args.seed}"
        + (" --natural-order" if args.natural_order else "")
        + f" --prior {args.prior} --proposal {args.proposal}"
        + (" --debias" if args.debias else "")
        + f" --out {args.out}"
    )
    started = provenance(command)
    from qlatent.experiments import coding_mnist

    try:
        gl, info, data = coding_mnist.trained_table1_model(args.model, args.runs, args.data_dir)
    except (ValueError, OSError, DataError) as err:  # an unknown row, no checkpoint
        parser.error(str(err))
    gl.eval()
    x = data["test"][: args.images]
    sigma = gl.bottleneck.variance.detach().sqrt()
    t_start = time.perf_counter()
    reference_parts = gl_negative_elbo(gl, x, args.seed)
    reference = summary(reference_parts)
    print(f"Gaussian-lattice VAE: -ELBO {reference['negative_elbo']:.3f}")
    rows = []
    for name in layouts:
        t0 = time.perf_counter()
        blocks = LAYOUTS[name]
        model = plugged(
            gl, blocks, counts, args.natural_order, args.prior, args.proposal, args.debias
        )
        parts = negative_elbo(model, x, args.seed)
        row = {"layout": name, "blocks": LAYOUTS[name], **summary(parts)}
        paired = parts.sum(1) - reference_parts.sum(1)  # the same images, independent noise
        row["minus_gaussian_lattice"] = paired.mean().item()
        row["minus_gaussian_lattice_se"] = (paired.std() / math.sqrt(paired.numel())).item()
        theory = sum(DIMS[b] * 0.5 * math.log(2 * math.pi * math.e * NSM[b]) for b in blocks)
        row["ideal_lattice_gap_theory"] = theory
        # the Monte-Carlo rate's bias: the same dithers at larger counts on the first images
        small = x[: args.check_images]
        big = plugged(gl, blocks, check, args.natural_order, args.prior, args.proposal, args.debias)
        diff = negative_elbo(model, small, args.seed) - negative_elbo(big, small, args.seed)
        diff = diff[:, 1]
        row["rate_minus_larger_counts"] = {
            "counts": list(counts),
            "larger_counts": list(check),
            "images": small.shape[0],
            "mean": diff.mean().item(),
            "se": (diff.std() / math.sqrt(diff.numel())).item(),
        }
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"{name:14s} -ELBO {row['negative_elbo']:.3f}  -GL {row['minus_gaussian_lattice']:+.3f}"
            f" ± {row['minus_gaussian_lattice_se']:.3f}"
            f"  theory {theory:.2f}  rate bias vs {check}: {diff.mean().item():+.3f}"
            f"  ({row['wall_s']:.0f} s)"
        )
    payload = {
        **started,
        "model": args.model,
        "checkpoint": info,
        "images": x.shape[0],
        "order": "natural" if args.natural_order else "by sigma, ascending",
        "prior": args.prior,
        "proposal": args.proposal,
        "debias": args.debias,
        "sigma": sigma.tolist(),
        "gaussian_lattice": reference,
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
        "threads": torch.get_num_threads(),
    }
    print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
