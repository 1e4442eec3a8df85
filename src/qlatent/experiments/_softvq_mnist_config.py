"""The rows of the Soft VQ-VAE paper's Table 1 and the rows beyond it (:data:`MODELS`, their labels,
the paper's values and the paper row each cause row is compared with), a row's config
(:class:`SoftVQMnistConfig`, read from ``configs/softvq-mnist/`` by :func:`model_config`) and its
ReLU-MLP autoencoder (:func:`build_model`). :mod:`~qlatent.experiments.softvq_mnist` re-exports
every public name; ``examples/softvq-posterior.py`` builds its models from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .._size import check_size
from ..bottlenecks import build
from ..eval.downstream import PROBE_CS
from ..models import Autoencoder, sized
from ..nn import SquaredError, relu_mlp
from ..train import TrainConfig
from . import custom

ROWS = ("raw", "ae", "vae", "beta_vae", "info_dropout", "vq", "soft_vq")
#: beyond the table: soft EM for the VIB-vs-VDIB perplexity comparison, and Soft VQ-VAE as the
#: reference notebook runs it (no noise, its normalisation of the posterior weights)
DEFAULT_MODELS = (*ROWS, "soft_em_vq", "soft_vq_reference")
#: rows that test the causes of the gaps to the paper, one factor at a time (not run by default)
CAUSE_ROWS = (
    "vq_commit025",
    "soft_vq_noiseless",
    "soft_vq_reference_noise",
    "beta_vae_batch64",
    "beta_vae_5",
    "beta_vae_10",
    "beta_vae_40",
)
MODELS = (*DEFAULT_MODELS, *CAUSE_ROWS)
#: the rows whose code perplexity the VIB-vs-VDIB comparison reports
PERPLEXITY_ROWS = ("vq", "soft_em_vq")
LABELS = {
    "raw": "Raw data",
    "ae": "Baseline autoencoder",
    "vae": "VAE",
    "beta_vae": "β-VAE (β = 20)",
    "info_dropout": "Information dropout",
    "vq": "VQ-VAE (K = 128)",
    "soft_vq": "Soft VQ-VAE (K = 128)",
    "soft_em_vq": "soft-EM VQ (K = 128, m = 10)",
    "soft_vq_reference": "Soft VQ-VAE, notebook variant (K = 128)",
    "vq_commit025": "VQ-VAE, commitment 0.25",
    "soft_vq_noiseless": "Soft VQ-VAE, eq. (5) weights, no noise",
    "soft_vq_reference_noise": "Soft VQ-VAE, notebook weights, σ_ε = 0.01",
    "beta_vae_batch64": "β-VAE (β = 20), batch 64",
    "beta_vae_5": "β-VAE (β = 5)",
    "beta_vae_10": "β-VAE (β = 10)",
    "beta_vae_40": "β-VAE (β = 40)",
}
#: the paper row each cause row is compared with
PAPER_ROW = {
    "vq_commit025": "vq",
    "soft_vq_noiseless": "soft_vq",
    "soft_vq_reference_noise": "soft_vq",
    "soft_vq_reference": "soft_vq",
    "beta_vae_batch64": "beta_vae",
    "beta_vae_5": "beta_vae",
    "beta_vae_10": "beta_vae",
    "beta_vae_40": "beta_vae",
}
#: the paper's Table 1 (MNIST, d = 64) as fractions: k-means accuracy, NMI, linear accuracy
PAPER = {
    "raw": (0.5517, 0.5008, 0.9244),
    "ae": (0.5261, 0.5301, 0.9191),
    "vae": (0.5644, 0.5600, 0.8910),
    "beta_vae": (0.7381, 0.5760, 0.9110),
    "info_dropout": (0.5852, 0.4979, 0.9111),
    "vq": (0.5148, 0.3541, 0.8162),
    "soft_vq": (0.7764, 0.7188, 0.9354),
}

#: what the reference notebook itself printed (its configuration: batch 64, reference variant)
NOTEBOOK_OUTPUT = {"soft_vq_reference": {"kmeans_acc": 0.7804}}


@dataclass
class ModelConfig:
    bottleneck: str = "identity"  #: registered bottleneck name
    latent_dim: int = 64
    hidden: list[int] = field(default_factory=lambda: [500, 500, 2000])
    bottleneck_args: dict[str, Any] = field(default_factory=dict)
    lmbda: float = 1.0  #: rate weight of the loss
    aux_weight: float = 1.0  #: weight of the bottleneck's auxiliary (codebook) terms


@dataclass
class EvalConfig:
    kmeans_n_init: int = 100
    probe_steps: int = 30000
    tsne_points: int | None = 5000  #: None: all test images
    seed: int = 0
    #: also fit the probe to convergence (L-BFGS, L2 strength chosen on a validation split)
    converged_probe: bool = True
    #: the inverse L2 strengths the converged probe chooses among
    probe_cs: list[float] = field(default_factory=lambda: list(PROBE_CS))

    def __post_init__(self) -> None:
        # the checks of k-means and the probes, here rather than after the training
        custom.check_positive(
            self, "", ("kmeans_n_init", "probe_steps"), at_most=custom.MAX_EVAL_COUNT
        )
        if self.tsne_points is not None:
            custom.check_positive(self, "", ("tsne_points",))
        # k-means and the probes take seeds below 2^32 (eval_seed, where eval.seed is not set)
        custom.check_eval_seed(self.seed, "seed (or eval_seed)", below=2**32)
        cs = self.probe_cs
        if (
            not isinstance(cs, list)
            or not cs
            or any(
                isinstance(c, bool) or not (isinstance(c, int | float) and 0 < c < math.inf)
                for c in cs
            )
        ):
            raise ValueError(f"probe_cs must be a list of positive finite numbers, got {cs!r}")


@dataclass
class SoftVQMnistConfig:
    data: Literal["mnist", "synthetic"] = "mnist"
    monitor_examples: int = 5000  #: training images whose loss is logged each epoch
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=1000, max_steps=40_000, batch_size=32, lr=3e-4, keep="last"
        )
    )
    eval: EvalConfig = field(default_factory=EvalConfig)


def model_config(name: str, *, quick: bool, overrides: list[str]) -> SoftVQMnistConfig:
    """The row's run: ``configs/softvq-mnist/base.toml``, the row's file (``raw`` has none),
    ``quick.toml``, then command-line overrides, all in the schema of ``qlatent train``
    (:func:`~qlatent.experiments.custom.paper_config`), read into this table's config."""
    if name not in MODELS:
        raise ValueError(f"unknown row {name!r}; known: {list(MODELS)}")
    parts = ([] if name == "raw" else [name]) + (["quick"] if quick else [])
    cfg = from_run_config(custom.paper_config("softvq-mnist", parts, overrides))
    if name != "raw":  # sizes counted before the data is read (the raw row builds no model)
        check_size(lambda: _autoencoder(cfg.model, 28 * 28, 1.0))
    return cfg


def from_run_config(run: custom.RunConfig) -> SoftVQMnistConfig:
    """This table's config from a run described in the common schema; ValueError for what the
    table's pipeline cannot run. ``data.val_size`` is the number of training images whose loss
    is logged each epoch."""
    m = run.model
    custom.require(
        {
            "data.name": (run.data.name, ("mnist", "synthetic")),
            "model.family": (m.family, ("relu_mlp",)),
            "model.likelihood": (m.likelihood, ("squared_error",)),
            "model.variance (0: the data's)": (m.variance, (0.0,)),
            "init_from": (run.init_from, (None,)),
            **custom.fixed_data(run.data),
        },
        "softvq-mnist",
    )
    return SoftVQMnistConfig(
        data=run.data.name,  # type: ignore[arg-type]
        monitor_examples=run.data.val_size,
        model=ModelConfig(
            bottleneck=run.bottleneck.name,
            latent_dim=m.latent_dim,
            hidden=list(m.hidden),
            bottleneck_args=dict(run.bottleneck.args),
            lmbda=run.loss.rate_weight,
            aux_weight=run.loss.aux_weight,
        ),
        train=run.train,
        eval=custom.paper_eval(EvalConfig, run, seed=run.eval_seed),
    )


def build_model(cfg: ModelConfig, data_dim: int, variance: float) -> Autoencoder:
    """ReLU MLP ``D-h1-…-in_dim`` → bottleneck → ``d-…-h1-D`` with a sigmoid output (sized on
    the meta device first: :func:`~qlatent._size.sized`)."""

    return sized(lambda: _autoencoder(cfg, data_dim, variance))


def _autoencoder(cfg: ModelConfig, data_dim: int, variance: float) -> Autoencoder:
    bottleneck = build(cfg.bottleneck, dim=cfg.latent_dim, **cfg.bottleneck_args)
    return Autoencoder(
        encoder=relu_mlp([data_dim, *cfg.hidden, bottleneck.in_dim]),
        bottleneck=bottleneck,
        decoder=relu_mlp([cfg.latent_dim, *reversed(cfg.hidden), data_dim]),
        likelihood=SquaredError(variance=variance, link="sigmoid"),
    )
