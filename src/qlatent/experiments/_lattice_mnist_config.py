"""The rows of the lattice paper's Table 1 on MNIST (:data:`MODELS`, their labels, the paper's
numbers, the literature cell constants of the lattice rows and :func:`theoretical_gap`) and a
row's config (:class:`LatticeMnistConfig`, read from ``configs/lattice-mnist/`` by
:func:`model_config`). :mod:`~qlatent.experiments.lattice_mnist` re-exports every name; the
coding-mnist table and ``qlatent bench`` build their rows from these configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .._size import check_size
from ..config import apply_mapping, to_dict
from ..eval.proposals import parse_mixture
from ..models import gated_vae
from ..train import CheckpointError, TrainConfig
from ..train._resume_checks import _flatten
from . import custom

#: pixels of a binarized MNIST image (and of the synthetic stand-in)
DATA_DIM = 28 * 28

MODELS = (
    "rect_lattice",
    "gaussian_lattice",
    "gaussian",
    "e8_lattice",
    "leech_lattice",
    "a2_lattice",
    "d4_lattice",
    "e8z_lattice",
    "e8_coord_lattice",
    "leech_coord_lattice",
    "e8_debias_lattice",
    "leech_tilted_lattice",
    "e8z_tied_lattice",
    "e8_gl_lattice",
    "leechz_gl_lattice",
    "leeche8_gl_lattice",
    "e8_gauss_lattice",
    "leechz_gauss_lattice",
    "rect_gauss_lattice",
    "rect_gl_lattice",
    "leech_gl_lattice",
    "e8z_gl_lattice",
    "e8z8_gl_lattice",
    "gaussian_gl_lattice",
)
#: the rows a plain ``reproduce lattice-mnist`` runs (the paper's three and the two good lattices)
DEFAULT_MODELS = MODELS[:5]
PAPER_IWAE1000 = {"rect_lattice": 94.45, "gaussian_lattice": 89.35, "gaussian": 88.85}
LABELS = {
    "rect_lattice": "rectangular-lattice VAE",
    "gaussian_lattice": "Gaussian-lattice VAE",
    "gaussian": "Gaussian VAE",
    "e8_lattice": "E8^5-lattice VAE",
    "leech_lattice": "(Λ24 ⊕ Λ16)-lattice VAE",
    "a2_lattice": "A2^20-lattice VAE",
    "d4_lattice": "D4^10-lattice VAE",
    "e8z_lattice": "(E8^3 ⊕ Z^16)-lattice VAE",
    "e8_coord_lattice": "diag(s)·E8^5-lattice VAE",
    "leech_coord_lattice": "diag(s)·(Λ24 ⊕ Λ16)-lattice VAE",
    "e8_debias_lattice": "E8^5-lattice VAE, debiased rate",
    "leech_tilted_lattice": "(Λ24 ⊕ Λ16)-lattice VAE, tilted proposal, debiased rate",
    "e8z_tied_lattice": "(E8^3 ⊕ Z^16)-lattice VAE, one prior scale per E8 block",
    "e8_gl_lattice": "diag(s)·E8^5-lattice VAE, from the Gaussian-lattice VAE",
    "leechz_gl_lattice": "diag(s)·(Λ24 ⊕ Z^16)-lattice VAE, from the Gaussian-lattice VAE",
    "leeche8_gl_lattice": "diag(s)·(Λ24 ⊕ E8^2)-lattice VAE, from the Gaussian-lattice VAE",
    "e8_gauss_lattice": "diag(s)·E8^5-lattice VAE, Gaussian prior",
    "leechz_gauss_lattice": "diag(s)·(Λ24 ⊕ Z^16)-lattice VAE, Gaussian prior",
    "rect_gauss_lattice": "diag(s)·Z^40-lattice VAE, Gaussian prior",
    "rect_gl_lattice": "diag(s)·Z^40-lattice VAE, from the Gaussian-lattice VAE",
    "leech_gl_lattice": "diag(s)·(Λ24 ⊕ Λ16)-lattice VAE, from the Gaussian-lattice VAE",
    "e8z_gl_lattice": "diag(s)·(E8^3 ⊕ Z^16)-lattice VAE, from the Gaussian-lattice VAE",
    "e8z8_gl_lattice": "diag(s)·(E8^4 ⊕ Z^8)-lattice VAE, from the Gaussian-lattice VAE",
    "gaussian_gl_lattice": "Gaussian-lattice VAE, from the Gaussian-lattice VAE",
}
#: literature G(Λ) of each lattice row's blocks (SPLAG Table 2.3; Conway & Sloane 1982) and their
#: dimensions, for the theoretical gap m·½·log(2πe·G) to an ideal lattice
BLOCK_NSM = {
    "rect_lattice": [(1 / 12, 40)],
    "a2_lattice": [(5 / (36 * math.sqrt(3)), 40)],
    "d4_lattice": [(13 / (120 * math.sqrt(2)), 40)],
    "e8_lattice": [(929 / 12960, 40)],
    "leech_lattice": [(0.0657710, 24), (0.0682976, 16)],
    "e8z_lattice": [(929 / 12960, 24), (1 / 12, 16)],
    # the base lattices' G: a scale per coordinate stretches the cell (G ≥ the base's), so for
    # these two rows the gap is the one at equal scales, a lower bound
    "e8_coord_lattice": [(929 / 12960, 40)],
    "leech_coord_lattice": [(0.0657710, 24), (0.0682976, 16)],
    "e8_debias_lattice": [(929 / 12960, 40)],
    "leech_tilted_lattice": [(0.0657710, 24), (0.0682976, 16)],
    "e8z_tied_lattice": [(929 / 12960, 24), (1 / 12, 16)],
    "e8_gl_lattice": [(929 / 12960, 40)],
    "leechz_gl_lattice": [(0.0657710, 24), (1 / 12, 16)],
    "leeche8_gl_lattice": [(0.0657710, 24), (929 / 12960, 16)],
    "e8_gauss_lattice": [(929 / 12960, 40)],
    "leechz_gauss_lattice": [(0.0657710, 24), (1 / 12, 16)],
    "rect_gauss_lattice": [(1 / 12, 40)],
    "rect_gl_lattice": [(1 / 12, 40)],
    "leech_gl_lattice": [(0.0657710, 24), (0.0682976, 16)],
    "e8z_gl_lattice": [(929 / 12960, 24), (1 / 12, 16)],
    "e8z8_gl_lattice": [(929 / 12960, 32), (1 / 12, 8)],
}
#: the rows whose bottleneck is ``DitheredGoodLattice`` (its Z^40 controls included: a closed-form
#: density there), which the analysis scripts under ``examples/`` read
GOOD_LATTICE_ROWS = tuple(name for name in BLOCK_NSM if name != "rect_lattice")


def theoretical_gap(name: str) -> float | None:
    """Σ_blocks n_b·½·log(2πe·G_b): the nats per image a lattice loses to an ideal one (eq. 12)."""
    if name not in BLOCK_NSM:
        return None
    return sum(n * 0.5 * math.log(2 * math.pi * math.e * g) for g, n in BLOCK_NSM[name])


@dataclass
class VAEConfig:
    bottleneck: str = "lattice"
    latent_dim: int = 40
    hidden: int = 300
    bottleneck_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    iwae_samples: int = 1000
    iwae_batch_size: int = 100
    #: test images per cached IWAE chunk (an interrupted evaluation resumes chunk by chunk)
    iwae_chunk: int = 1000
    test_examples: int | None = None  #: None: all 10,000
    codelength_repeats: int = 10  #: dithers per test image for the hard-path codelength
    seed: int = 2020
    #: good lattices: test images on which the Monte-Carlo log-density bias is measured, and the
    #: reference sample counts (uniform, prior) it is measured against
    bias_examples: int = 500
    bias_reference_samples: int = 16384
    bias_reference_prior_samples: int = 4096
    #: ``"α:k"``: also IWAE with the defensive mixture proposal (1 − α)·q + α·N(c, diag(k·r)²),
    #: whose support covers the cells next to a lattice row's own (``qlatent.eval.proposals``);
    #: reported beside the protocol's IWAE as ``test_nll_iwae<S>_defensive``. None: not run.
    iwae_defensive: str | None = None

    def __post_init__(self) -> None:
        # here, not after hours of training: 0 images or samples fail (or average nothing) in
        # the evaluation, a negative count drops images silently
        custom.check_positive(self, "", ("iwae_batch_size", "iwae_chunk", "bias_examples"))
        counts = ("iwae_samples", "codelength_repeats")
        custom.check_positive(self, "", counts, at_most=custom.MAX_EVAL_COUNT)
        references = ("bias_reference_samples", "bias_reference_prior_samples")
        custom.check_positive(self, "", references, at_most=custom.MAX_EVAL_COUNT)
        if self.test_examples is not None:
            custom.check_positive(self, "", ("test_examples",))
        custom.check_eval_seed(self.seed, "seed")
        if self.iwae_defensive is not None:
            parse_mixture(self.iwae_defensive)


@dataclass
class LatticeMnistConfig:
    data: Literal["binarized-mnist", "synthetic"] = "binarized-mnist"
    model: VAEConfig = field(default_factory=VAEConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=200, warmup_epochs=100, patience=50)
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: another row of the same runs folder whose best checkpoint starts this one
    #: (``"gaussian_lattice"``: :func:`~._lattice_mnist_warm_start.gaussian_lattice_start` for
    #: a lattice row, the weights as they are for the Gaussian-lattice VAE itself); None: from
    #: the seed
    init_from: str | None = None


def model_config(name: str, *, quick: bool, overrides: list[str]) -> LatticeMnistConfig:
    """The row's run: ``configs/lattice-mnist/base.toml``, the row's file, ``quick.toml``, then
    command-line overrides, all in the schema of ``qlatent train``
    (:func:`~qlatent.experiments.custom.paper_config`), read into this table's config."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {list(MODELS)}")
    run = custom.paper_config("lattice-mnist", [name, *(["quick"] if quick else [])], overrides)
    return from_run_config(run)


def from_run_config(run: custom.RunConfig) -> LatticeMnistConfig:
    """This table's config from a run described in the common schema; ValueError for what the
    table's pipeline cannot run (another model family, likelihood, loss weight ...)."""
    m = run.model
    custom.require(
        {
            "data.name": (run.data.name, ("binarized-mnist", "synthetic")),
            "model.family": (m.family, ("gated_mlp",)),
            "model.likelihood": (m.likelihood, ("bernoulli",)),
            "model.hidden (two equal layers)": (
                len(m.hidden) == 2 and m.hidden[0] == m.hidden[1],
                (True,),
            ),
            "loss.rate_weight": (run.loss.rate_weight, (1.0,)),
            # the loop's own loss (RateDistortionLoss()) weighs a bottleneck's auxiliary terms
            # by 1: another weight trained a VQ row with its full commitment term
            "loss.aux_weight": (run.loss.aux_weight, (1.0,)),
            # a warm start here names another row of the same runs folder, not a file
            "init_from": (run.init_from, (None, "gaussian_lattice")),
            **custom.fixed_data(run.data),
            # binarized MNIST's validation split is fixed, the synthetic set's a sixth
            "data.val_size": (run.data.val_size, (custom.DataConfig().val_size,)),
        },
        "lattice-mnist",
    )
    cfg = LatticeMnistConfig(
        data=run.data.name,  # type: ignore[arg-type]
        model=VAEConfig(
            bottleneck=run.bottleneck.name,
            latent_dim=m.latent_dim,
            hidden=m.hidden[0],
            bottleneck_args=dict(run.bottleneck.args),
        ),
        train=run.train,
        eval=custom.paper_eval(EvalConfig, run, seed=run.eval_seed),
        init_from=run.init_from,
    )
    check_size(lambda: _gated_vae(cfg, DATA_DIM))  # before the data is read
    return cfg


def trained_config(
    cfg: LatticeMnistConfig, ckpt: dict[str, Any], path: Any
) -> tuple[LatticeMnistConfig, list[str]]:
    """``cfg`` with the model section a checkpoint of its row was trained with, and what differs
    (``"key: checkpoint → this tree"``): a row's config may change after a run (its sample
    counts, its proposal), and the trained weights load into either model, since counts are not
    parameters; analysing the run must use the model as it was trained. A checkpoint that
    records no config (an older one) gives ``cfg`` unchanged; a recorded model section that
    does not describe a model of this table raises :class:`~qlatent.train.CheckpointError`
    naming ``path``."""
    saved = ckpt.get("run_config")
    if saved is None:
        return cfg, []
    model = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(model, dict):
        raise CheckpointError(f"{path}: its saved run config records no model section")
    try:
        trained = apply_mapping(cfg, {"model": model})
        check_size(lambda: _gated_vae(trained, DATA_DIM))
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: its saved model config is not this table's ({err})"
        ) from None
    # a key only one side has (an option added or dropped since) is a difference here: the
    # bottleneck's default stood in for it on that side
    was, now = _flatten(to_dict(trained.model)), _flatten(to_dict(cfg.model))

    def shown(side: dict[str, Any], key: str) -> str:
        return repr(side[key]) if key in side else "(default)"

    changes = [
        f"model.{key}: {shown(was, key)} → {shown(now, key)}"
        for key in sorted(was.keys() | now.keys())
        if key not in was or key not in now or was[key] != now[key]
    ]
    return trained, changes


def _gated_vae(cfg: LatticeMnistConfig, data_dim: int):
    return gated_vae(
        cfg.model.bottleneck,
        latent_dim=cfg.model.latent_dim,
        hidden=cfg.model.hidden,
        data_dim=data_dim,
        **cfg.model.bottleneck_args,
    )
