"""The rectangular-lattice VAE on binarized MNIST: training, the Theorem-1 check, figures.

This is what ``qlatent demo`` and ``qlatent train`` run. ``demo`` is a few minutes of the paper's
model (Lastras, section 4: gated MLP 784-300-300-40, Laplace prior, Adam 5e-4, batch 100) on two CPU
cores; it then reports, on the 10k test images, the negative ELBO on the training path and the
two-part codelength with real quantization, which Theorem 1 says must agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .._utils import write_atomic
from ..config import to_dict
from ..data import binarized_mnist, synthetic_binary
from ..eval import codelength_report, reconstruction_grid, training_curves
from ..lattices import integer_lattice
from ..models import lattice_vae
from ..results import RESULTS_DIR, provenance, write_json
from ..train import TrainConfig, fit
from ..train.loop import check_seed


@dataclass
class ModelConfig:
    latent_dim: int = 40
    hidden: int = 300
    init_spacing: float = 1.0
    init_scale: float = 1.0
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("latent_dim", "hidden"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(
                    f"model.{name} must be a positive integer, got {getattr(self, name)}"
                )
        for name in ("init_spacing", "init_scale"):
            value = getattr(self, name)
            # float32 weights hold their logarithms: a subnormal or huge value would not survive
            if not 1e-30 <= value <= 1e30:
                raise ValueError(f"model.{name} must lie in [1e-30, 1e30], got {value}")


@dataclass
class LatticeVAEConfig:
    """Resolved config of one run (saved inside every checkpoint and in the summary)."""

    data: Literal["binarized-mnist", "synthetic"] = "binarized-mnist"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15))
    eval_seed: int = 2020  #: seed of the test-time dithers
    out_dir: str = "runs/demo"

    def __post_init__(self) -> None:
        if self.data not in ("binarized-mnist", "synthetic"):
            raise ValueError(f"data must be 'binarized-mnist' or 'synthetic', got {self.data!r}")
        if not isinstance(self.out_dir, str) or not self.out_dir.strip():
            raise ValueError(f"out_dir must name a folder, got {self.out_dir!r}")
        check_seed(self.eval_seed, "eval_seed")
        # the evaluation seeds the hard path's dither with eval_seed + 1
        check_seed(self.eval_seed + 1, "eval_seed + 1")


def load_data(cfg: LatticeVAEConfig, data_dir: str | None = None) -> dict[str, torch.Tensor]:
    if cfg.data == "synthetic":
        return synthetic_binary(n=1200, seed=cfg.train.seed)
    return binarized_mnist(data_dir)


def run(
    cfg: LatticeVAEConfig, *, data_dir: str | None = None, fresh: bool = False, command: str = ""
) -> dict[str, Any]:
    """Train (resuming if a checkpoint exists and ``fresh`` is false), evaluate, plot, summarise.

    Returns the summary that is also written to ``<out_dir>/summary.json``.
    """
    out_dir = Path(cfg.out_dir)
    data = load_data(cfg, data_dir)
    torch.manual_seed(cfg.train.seed)
    model = lattice_vae(
        latent_dim=cfg.model.latent_dim,
        hidden=cfg.model.hidden,
        data_dim=data["train"].shape[1],
        init_spacing=cfg.model.init_spacing,
        init_scale=cfg.model.init_scale,
        compile=cfg.model.compile,
    )
    # the summary and figures of the run in out_dir go with the first checkpoint this one writes
    result = fit(
        model,
        data,
        cfg.train,
        out_dir=out_dir,
        run_config=to_dict(cfg),
        resume=not fresh,
        results=("summary.json", "reconstructions.png", "training_curves.png"),
    )
    if not result.is_main:
        return {}  # under torchrun, rank 0 alone evaluates and writes the summary

    started = time.perf_counter()
    report = codelength_report(model, data["test"], seed=cfg.eval_seed)
    eval_s = time.perf_counter() - started

    model.eval()  # hard path: real quantization with the seeded dither
    sample = data["test"][:20]
    recon = model.reconstruct(
        sample.to(next(model.parameters()).device), generator=torch.Generator().manual_seed(0)
    )
    reconstruction_grid(
        sample, recon, out_dir / "reconstructions.png",
        title="test images (odd rows) and hard-path reconstructions (even rows)",
    )  # fmt: skip
    training_curves(
        result.history, out_dir / "training_curves.png", title="rectangular-lattice VAE"
    )

    lattice = model.bottleneck.geometry()
    summary = {
        **provenance(command),
        "config": to_dict(cfg),
        "train": result.summary(),
        "test": {
            "neg_elbo_nats": report.neg_elbo.total,
            "neg_elbo_se": report.neg_elbo.total_se,
            "codelength_nats": report.codelength.total,
            "codelength_se": report.codelength.total_se,
            "codelength_rate_nats": report.codelength.rate,
            "codelength_distortion_nats": report.codelength.distortion,
            "neg_elbo_rate_nats": report.neg_elbo.rate,
            "relative_gap": report.relative_gap,
            "gap_se_nats": report.gap_se,
            "eval_wall_s": eval_s,
        },
        "lattice": {
            "spacing_mean": lattice.spacing.mean().item(),
            "spacing_min": lattice.spacing.min().item(),
            "spacing_max": lattice.spacing.max().item(),
            "scale_mean": model.bottleneck.scale.mean().item(),
            # each coordinate is its own 1-D lattice (G = 1/12), so the loss against an ideal
            # lattice is ½·log(2πe/12) per dimension (eq. 12) whatever the spacings
            "kl_to_gaussian_per_dim": integer_lattice(1).kl_to_gaussian().item(),
        },
    }
    write_json(summary, out_dir / "summary.json")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    t = summary["test"]
    dim = summary["config"]["model"]["latent_dim"]
    gap = summary["lattice"]["kl_to_gaussian_per_dim"] * dim
    lines = [
        f"trained {summary['train']['epochs']} epochs ({summary['train']['wall_s']:.0f} s), "
        f"best epoch {summary['train']['best_epoch']}",
        "test set, nats per image (± standard error):",
        f"  negative ELBO, training path (dither):        {t['neg_elbo_nats']:8.2f} "
        f"± {t['neg_elbo_se']:.2f}   (rate {t['neg_elbo_rate_nats']:.2f})",
        f"  two-part codelength, real quantization:       {t['codelength_nats']:8.2f} "
        f"± {t['codelength_se']:.2f}   (-log P(z|u) {t['codelength_rate_nats']:.2f})",
        f"  difference: {100 * t['relative_gap']:+.3f}%  ({t['gap_se_nats']:.3f} nats s.e.; "
        "Theorem 1 says 0 in expectation)",
        f"  a rectangular cell costs {gap:.2f} nats over an ideal lattice at m={dim} "
        "(m·½·log(2πe/12))",
    ]
    return "\n".join(lines)


def record(cfg: LatticeVAEConfig, name: str) -> list[Path]:
    """Copy a finished run's summary and figures to ``results/<name>.json`` and ``<name>-*.png``,
    each atomically (:func:`~qlatent._utils.write_atomic`): a copy stopped midway left a
    truncated file in ``results/``, and a link there had the file it names overwritten."""
    out_dir = Path(cfg.out_dir)
    RESULTS_DIR.mkdir(exist_ok=True)
    copies = {
        "summary.json": RESULTS_DIR / f"{name}.json",
        "reconstructions.png": RESULTS_DIR / f"{name}-reconstructions.png",
        "training_curves.png": RESULTS_DIR / f"{name}-training-curves.png",
    }
    for source, target in copies.items():
        write_atomic(target, (out_dir / source).read_bytes())
    return list(copies.values())
