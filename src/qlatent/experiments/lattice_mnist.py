"""Table 1 of the lattice paper: rectangular-lattice VAE vs Gaussian-lattice VAE vs Gaussian VAE.

Lastras, "Lattice Representation Learning", section 4 and Table 1 (IWAE-1000 test NLL on static
binarized MNIST: 94.45 / 89.35 / 88.85 nats). One gated-MLP encoder/decoder for all three models,
which differ only in the bottleneck (``configs/lattice-mnist/*.toml``). Protocol, after the
VampPrior code the paper adapted: batch 100, Adam 5e-4, rate warm-up over 100 epochs, early stopping
on the validation negative ELBO with patience 50 (not counted during warm-up), best model reloaded,
and an epoch cap so a run fits in a few hours on two CPU cores.

Per model, on the test set: IWAE NLL with S importance samples, the negative ELBO (training path),
and for the lattice model the realised two-part codelength with hard quantization (mean over
several dithers), which Theorem 1 says equals the negative ELBO in expectation.

Every stage is resumable: training from its checkpoint, and each model's evaluation is cached in
its run folder next to the checkpoint it evaluated (a cache that holds anything but what was
written there is refused, naming it).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from .._size import check_size
from .._utils import terminal_text, write_atomic
from ..bottlenecks.gaussian_lattice import GaussianLattice
from ..config import to_dict
from ..data import binarized_mnist, synthetic_binary
from ..eval import codelength_report, iwae_nll, iwae_summary
from ..eval.proposals import parse_mixture
from ..lattices import integer_lattice
from ..losses import RateDistortionLoss, evaluate_objective
from ..models import gated_vae
from ..results import RESULTS_DIR, cell, finite, number, provenance, read_json, write_json
from ..train import CheckpointError, TrainConfig, fit, load, load_weights, save_atomic
from . import custom
from ._cache import described, problem, read_cache, refused, unplain

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
    #: (``"gaussian_lattice"``: :func:`gaussian_lattice_start` for a lattice row, the weights as
    #: they are for the Gaussian-lattice VAE itself); None: from the seed
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


def load_data(cfg: LatticeMnistConfig, data_dir: str | None) -> dict[str, torch.Tensor]:
    if cfg.data == "synthetic":
        return synthetic_binary(n=1800, seed=cfg.train.seed)
    return binarized_mnist(data_dir)


def build_model(cfg: LatticeMnistConfig, data_dim: int):
    """The gated-MLP VAE of a row, initialised from the row's seed."""
    torch.manual_seed(cfg.train.seed)
    return _gated_vae(cfg, data_dim)


def _gated_vae(cfg: LatticeMnistConfig, data_dim: int):
    return gated_vae(
        cfg.model.bottleneck,
        latent_dim=cfg.model.latent_dim,
        hidden=cfg.model.hidden,
        data_dim=data_dim,
        **cfg.model.bottleneck_args,
    )


def load_trained(
    row: str, runs_dir: str | Path, data_dir: str | None = None
) -> tuple[LatticeMnistConfig, dict[str, torch.Tensor], torch.nn.Module, dict[str, Any]]:
    """A trained row as the analysis scripts under ``examples/`` read it: its config (as
    configured, no overrides), the data, its model with the weights of
    ``<runs_dir>/lattice-mnist/<row>/best.pt`` in eval mode, and that checkpoint's dict. Raises
    FileNotFoundError or :class:`~qlatent.train.CheckpointError`, each naming the file, when the
    checkpoint is missing or unreadable or holds another model."""
    cfg = model_config(row, quick=False, overrides=[])
    data = load_data(cfg, data_dir)
    model = build_model(cfg, data["test"].shape[1])
    path = Path(runs_dir) / "lattice-mnist" / row / "best.pt"
    checkpoint = load(path)
    if "model" not in checkpoint:
        raise CheckpointError(f"{path} holds no model weights")
    load_weights(model, checkpoint["model"], path)
    return cfg, data, model.eval(), checkpoint


def gaussian_lattice_start(
    model, gl_state: dict[str, Any], source: str = "checkpoint", *, by_sigma: bool = True
) -> Tensor:
    """Start a good-lattice row from a trained Gaussian-lattice VAE (``gl_state``, its weights):
    the same encoder and decoder, the noise N(0, σ_i²) replaced by the dither of the row's
    lattice. Returns the order in which the encoder's coordinates were handed to the lattice.

    The Gaussian-lattice VAE's KL(N(μ, σ²) ‖ N(0, I)) is Theorem 1's rate for Gaussian "dither"
    with X̂ ~ N(0, 1 − σ_i²) per coordinate (X̂ + N is then N(0, 1)). Here the lattice is scaled
    coordinate by coordinate (``spacing_per = "coordinate"``) so that its dither has variance
    σ_i² along coordinate i (c_i²·G(Λ_b) = σ_i² for a unit-volume block b of normalized second
    moment G), and the prior gets the variance 1 − σ_i² (a Gaussian's standard deviation, a
    Laplace's scale √((1 − σ_i²)/2)). The coordinates go to the blocks in order of σ_i, least
    noisy first (``by_sigma=False``: in the encoder's order), so that the first blocks of a sum
    such as E8^3 ⊕ Z^16 take the most active coordinates; the permutation is written into the
    encoder's last layer and the decoder's first, so the model is the Gaussian-lattice VAE's up
    to the noise's shape (``examples/lattice-plugin.py`` measures its −ELBO untrained).
    """
    from ..bottlenecks.good_lattice import DitheredGoodLattice
    from ..lattices import LITERATURE_NSM

    neck = model.bottleneck
    if (
        not isinstance(neck, DitheredGoodLattice)
        or neck.spacing_per != "coordinate"
        or neck.scale_per != "coordinate"
    ):
        raise ValueError(
            "a Gaussian-lattice start needs a good-lattice bottleneck with spacing_per and "
            "scale_per 'coordinate' (a cell scale and a prior scale to match each σ_i)"
        )
    logvar = gl_state.get("bottleneck.logvar") if isinstance(gl_state, dict) else None
    if not isinstance(logvar, Tensor) or logvar.shape != (neck.dim,):
        raise CheckpointError(f"{source} holds no Gaussian-lattice VAE of dimension {neck.dim}")
    if not torch.isfinite(logvar).all():
        raise CheckpointError(f"{source}: the Gaussian-lattice variances are not finite")
    sigma = (0.5 * logvar.double()).exp()
    order = torch.argsort(sigma, stable=True) if by_sigma else torch.arange(neck.dim)
    weights = {k: v for k, v in gl_state.items() if k.startswith(("encoder.", "decoder."))}
    last = f"encoder.{len(model.encoder) - 1}"
    for key in (f"{last}.weight", f"{last}.bias"):
        if key not in weights:
            raise CheckpointError(f"{source} holds no encoder output layer {key}")
        weights[key] = weights[key][order]
    first = [k for k in weights if k.startswith("decoder.0.") and k.endswith("weight")]
    for key in first:
        weights[key] = weights[key][:, order]
    state = {**model.state_dict(), **weights}
    load_weights(model, state, source)
    blocks = neck.geometry.blocks
    nsm = torch.cat(
        [torch.full((b.dim,), LITERATURE_NSM.get(b.name.lower()) or float(b.nsm())) for b in blocks]
    ).double()
    variance = (1.0 - sigma[order].square()).clamp_min(1e-6)
    scale = variance.sqrt() if neck.prior_name == "gaussian" else (variance / 2).sqrt()
    with torch.no_grad():
        neck.log_spacing.copy_((sigma[order] / nsm.sqrt()).log())
        neck.log_scale.copy_(scale.log())
    return order


def _warm_start(model, cfg: LatticeMnistConfig, out_dir: Path) -> dict[str, Any]:
    """Start ``model`` from the best checkpoint of row ``cfg.init_from`` in the same runs folder
    (on a fresh run; a resumed one continues from its own checkpoint). Returns where it came
    from, which ``out_dir/init.json`` keeps for the resumed runs' results."""
    record = out_dir / "init.json"
    if (out_dir / "last.pt").is_file():
        saved = read_json(record)
        return (
            saved if isinstance(saved, dict) else {"row": cfg.init_from, "checkpoint": "unrecorded"}
        )
    source = out_dir.parent / str(cfg.init_from) / "best.pt"
    if not source.is_file():
        raise ValueError(
            f"no checkpoint {source} to start from: train the row first (`qlatent reproduce "
            f"lattice-mnist --models {cfg.init_from}` with the same --runs-dir)"
        )
    ckpt = load(source)
    wrong = problem(ckpt, {"epoch": "integer or None or missing"})
    if wrong:  # recorded in init.json and the results
        raise CheckpointError(f"{source}: {wrong}")
    if isinstance(model.bottleneck, GaussianLattice):
        # the same model trained on: its weights as they are, coordinates in their own order
        load_weights(model, ckpt.get("model"), source)
        order = torch.arange(model.bottleneck.logvar.numel())
    else:
        order = gaussian_lattice_start(model, ckpt.get("model"), str(source))
    start = {
        "row": cfg.init_from,
        "checkpoint": str(source),
        "checkpoint_epoch": ckpt.get("epoch"),
        "coordinate_order": order.tolist(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(record, (json.dumps(start, indent=1) + "\n").encode())  # as the checkpoints
    return start


def run_model(
    name: str, cfg: LatticeMnistConfig, data: dict[str, torch.Tensor], out_dir: Path
) -> dict[str, Any]:
    """Train (or resume) one model, then evaluate it (or reload the cached evaluation)."""
    model = build_model(cfg, data["train"].shape[1])
    start = _warm_start(model, cfg, out_dir) if cfg.init_from else None
    result = fit(model, data, cfg.train, out_dir=out_dir, run_config=to_dict(cfg))
    trained = {
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped": result.stopped,
        "epoch_cap_hit": result.stopped == "epochs",
        "best_val_neg_elbo": result.best_val,
        "wall_s": result.wall_s,
        "val_neg_elbo_curve": [h["val_objective"] for h in result.history],
    }
    if start is not None:
        trained["init_from"] = start
    cache = out_dir / "eval.pt"
    config_key = _eval_key(cfg)
    cached = _cached_evaluation(cache, config_key, result.best_epoch, cfg.eval, trained)
    if cached is not None:
        return {**trained, **cached}
    chunks = out_dir / "iwae-chunks"
    metrics = evaluate(
        name,
        model,
        data["test"],
        cfg.eval,
        chunk_dir=chunks,
        key=_eval_key(cfg, protocol=True),
        epoch=result.best_epoch,
    )
    save_atomic({"config": config_key, "best_epoch": result.best_epoch, "metrics": metrics}, cache)
    return {**trained, **metrics}


def _cached_evaluation(
    cache: Path, config_key: dict[str, Any], best_epoch: int, cfg: EvalConfig, trained: dict
) -> dict[str, Any] | None:
    """The metrics cached in ``cache`` for this config and best epoch (None: none, or stale),
    holding what the table and its figures read (:func:`_metric_fields`) and nothing that
    training reports (``trained``); a cache holding anything else is refused, naming it."""
    tags = {"config": config_key, "best_epoch": best_epoch}
    cached = read_cache(cache, tags, "metrics", _metric_fields(cfg))
    if cached is None:
        return None
    shadowed = sorted(cached.keys() & trained.keys())
    if shadowed:  # the row's training results are this run's, not the cache's
        raise refused(cache, f"its metrics hold {', '.join(shadowed)}, which training reports")
    if cached["iwae_samples"] != cfg.iwae_samples:
        raise refused(
            cache,
            f"its metrics are of IWAE-{cached['iwae_samples']}, not of the IWAE-"
            f"{cfg.iwae_samples} its config asks for",
        )
    return cached


def _metric_fields(cfg: EvalConfig) -> dict[str, str]:
    """What a cached evaluation (:func:`evaluate`) must hold for the table and its figures
    (:func:`~._cache.problem`)."""
    s = cfg.iwae_samples
    fields = {
        "test_neg_elbo": "number",
        f"test_nll_iwae{s}": "number",
        "test_nll_iwae_se": "number",
        "iwae_samples": "integer",
        "test_codelength_hard": "number or missing",
    }
    if cfg.iwae_defensive is not None:
        fields |= {
            "iwae_defensive": "string",
            f"test_nll_iwae{s}_defensive": "number",
            "test_nll_iwae_defensive_se": "number",
            "iwae_defensive_minus_own": "number",
            "iwae_defensive_minus_own_se": "number",
        }
    return fields


def _eval_key(cfg: LatticeMnistConfig, *, protocol: bool = False) -> dict[str, Any]:
    """The config an evaluation cache is tagged with. ``eval.iwae_defensive`` is left out where
    it is None (caches made before the option existed still match) and, with ``protocol``, always
    (the protocol's IWAE does not depend on it)."""
    key = to_dict(cfg)
    if protocol or key["eval"].get("iwae_defensive") is None:
        key["eval"].pop("iwae_defensive", None)
    return key


def evaluate(
    name: str,
    model: torch.nn.Module,
    x_test: torch.Tensor,
    cfg: EvalConfig,
    *,
    chunk_dir: Path | None = None,
    key: Any = None,
    epoch: int | None = None,
) -> dict[str, Any]:
    """IWAE NLL, negative ELBO and (lattice) hard-path codelength on the test set, in nats.

    With ``chunk_dir``, IWAE runs over ``cfg.iwae_chunk`` test images at a time and caches each
    chunk's per-image NLL there (tagged with ``key`` and the checkpoint's ``epoch``), so an
    interrupted evaluation resumes at the first missing chunk; chunk i draws from the generator
    seeded ``cfg.seed + 1 + i``. With ``cfg.iwae_defensive`` the same images are read again
    under the defensive mixture proposal (same seeds, chunks cached under ``<chunk_dir>-defensive``
    tagged with the mixture too)."""
    if cfg.test_examples is not None:
        x_test = x_test[: cfg.test_examples]
    gen = torch.Generator().manual_seed(cfg.seed)
    parts = evaluate_objective(model, RateDistortionLoss(), x_test, generator=gen)
    elbo = parts["distortion"] + parts["rate"]
    metrics: dict[str, Any] = {
        "test_examples": x_test.shape[0],
        "test_neg_elbo": elbo.mean().item(),
        "test_neg_elbo_se": elbo.std().item() / math.sqrt(elbo.numel()),
        "test_rate": parts["rate"].mean().item(),
    }
    started = time.perf_counter()
    nll = _test_iwae(model, x_test, cfg, chunk_dir, key, epoch)
    summary = iwae_summary(nll)
    metrics[f"test_nll_iwae{cfg.iwae_samples}"] = summary["mean"]
    metrics["test_nll_iwae_se"] = summary["se"]
    metrics["iwae_samples"] = cfg.iwae_samples
    metrics["iwae_wall_s"] = time.perf_counter() - started
    if cfg.iwae_defensive is not None:
        started = time.perf_counter()
        mixture = parse_mixture(cfg.iwae_defensive)
        wide = _test_iwae(model, x_test, cfg, chunk_dir, key, epoch, defensive=mixture)
        summary = iwae_summary(wide)
        diff = wide - nll
        metrics["iwae_defensive"] = cfg.iwae_defensive
        metrics[f"test_nll_iwae{cfg.iwae_samples}_defensive"] = summary["mean"]
        metrics["test_nll_iwae_defensive_se"] = summary["se"]
        metrics["iwae_defensive_minus_own"] = diff.mean().item()
        metrics["iwae_defensive_minus_own_se"] = diff.std().item() / math.sqrt(diff.numel())
        metrics["iwae_defensive_wall_s"] = time.perf_counter() - started
    metrics["eval_threads"] = torch.get_num_threads()
    if name == "rect_lattice":
        metrics.update(_lattice_metrics(model, x_test, cfg))
    elif name in BLOCK_NSM:
        metrics.update(_good_lattice_metrics(model, x_test, cfg))
    return metrics


def _test_iwae(
    model,
    x_test: torch.Tensor,
    cfg: EvalConfig,
    chunk_dir: Path | None,
    key,
    epoch: int | None,
    defensive: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Per-image IWAE NLL of ``x_test``, with the defensive mixture ``defensive`` as proposal if
    given; with ``chunk_dir``, cached chunk by chunk (the mixture's chunks in
    ``<chunk_dir>-defensive``, tagged with it)."""
    if chunk_dir is None:
        return iwae_nll(
            model,
            x_test,
            num_samples=cfg.iwae_samples,
            batch_size=cfg.iwae_batch_size,
            generator=torch.Generator().manual_seed(cfg.seed + 1),
            defensive=defensive,
        )
    if defensive is not None:
        chunk_dir = chunk_dir.with_name(chunk_dir.name + "-defensive")
        key = {"config": key, "defensive": list(defensive)}
    return _chunked_iwae(model, x_test, cfg, chunk_dir, key, epoch, defensive=defensive)


def _chunked_iwae(
    model,
    x_test: torch.Tensor,
    cfg: EvalConfig,
    folder: Path,
    key,
    epoch: int | None = None,
    *,
    defensive: tuple[float, float] | None = None,
) -> torch.Tensor:
    """IWAE NLL chunk by chunk, each chunk cached (atomically) under ``folder``. A cached chunk
    is used only for the same ``key`` and ``epoch`` (the checkpoint evaluated: a run trained on
    under the same config has another best epoch; chunks that name no epoch are taken as they
    are)."""
    parts = []
    for i, start in enumerate(range(0, x_test.shape[0], cfg.iwae_chunk)):
        path = folder / f"chunk-{i:03d}.pt"
        x = x_test[start : start + cfg.iwae_chunk]
        if path.exists():
            cached = _cached_chunk(path)
            same = cached["key"] == key and cached.get("epoch", epoch) == epoch
            if same and cached["nll"].shape[0] == x.shape[0]:
                parts.append(cached["nll"])
                continue
        nll = iwae_nll(
            model,
            x,
            num_samples=cfg.iwae_samples,
            batch_size=cfg.iwae_batch_size,
            generator=torch.Generator().manual_seed(cfg.seed + 1 + i),
            defensive=defensive,
        )
        folder.mkdir(parents=True, exist_ok=True)
        save_atomic({"key": key, "epoch": epoch, "nll": nll}, path)
        parts.append(nll)
    return torch.cat(parts)


def _cached_chunk(path: Path) -> dict[str, Any]:
    """An IWAE chunk as :func:`_chunked_iwae` writes it: its ``key`` (plain data), the
    ``epoch`` it evaluated (an integer, or None or absent) and the per-image ``nll`` (1-D,
    floating point, finite). A file holding anything else is refused, naming it, as a damaged
    one is (:mod:`._cache`): deleting it computes the chunk again."""
    cached = load(path)  # plain data, digest checked
    wrong = problem(
        cached, {"key": "anything", "epoch": "integer or None or missing", "nll": "tensor"}
    ) or unplain(cached["key"], "key")
    nll = cached.get("nll")
    if not wrong and (nll.dim() != 1 or not nll.is_floating_point()):
        wrong = f"nll is {described(nll)}, not a 1-D floating-point tensor"
    if not wrong and not torch.isfinite(nll).all():
        bad = int((~torch.isfinite(nll)).sum())
        wrong = f"nll holds {bad:,} non-finite value(s) (NaN or infinity)"
    if wrong:
        raise refused(path, wrong)
    return cached


def _lattice_metrics(model, x_test: torch.Tensor, cfg: EvalConfig) -> dict[str, Any]:
    """Hard-path codelength averaged over ``codelength_repeats`` dithers, and the learned Δ, b."""
    totals, gaps = [], []
    for repeat in range(cfg.codelength_repeats):
        report = codelength_report(model, x_test, seed=cfg.seed + 100 + 2 * repeat)
        totals.append(report.codelength.total)
        gaps.append(report.codelength.total - report.neg_elbo.total)
    spacing, scale = model.bottleneck.spacing.detach(), model.bottleneck.scale.detach()
    mean_gap = sum(gaps) / len(gaps)
    return {
        "test_codelength_hard": sum(totals) / len(totals),
        "codelength_minus_neg_elbo": mean_gap,
        "codelength_repeats": cfg.codelength_repeats,
        "spacing": _summary(spacing),
        "laplace_scale": _summary(scale),
    }


def _good_lattice_metrics(model, x_test: torch.Tensor, cfg: EvalConfig) -> dict[str, Any]:
    """Hard-path codelength (Monte-Carlo rate at the eval sample counts), the learned scales, and
    the bias of the Monte-Carlo log-density at the training and eval sample counts, measured on
    the first ``bias_examples`` test images' training-path y_hat against a large reference (drawn
    with the tilted proposal under a Laplace prior: a box reference is itself biased for Λ24)."""
    from ..bottlenecks.good_lattice import log_density_bias

    neck = model.bottleneck
    totals, gaps = [], []
    for repeat in range(cfg.codelength_repeats):
        report = codelength_report(model, x_test, seed=cfg.seed + 100 + 2 * repeat)
        totals.append(report.codelength.total)
        gaps.append(report.codelength.total - report.neg_elbo.total)
    model.train()
    with torch.no_grad():
        x = x_test[: cfg.bias_examples]
        y_hat = model(x).bottleneck.y_hat
    model.eval()
    reference = (cfg.bias_reference_samples, cfg.bias_reference_prior_samples)
    train_counts = (neck.samples, neck.prior_samples)
    eval_counts = (neck.eval_samples, neck.eval_prior_samples)
    # a box reference is itself biased for Λ24: measure against the tilted proposal's
    tilted = "tilted" if neck.prior_name == "laplace" else None
    bias = {
        key: log_density_bias(
            neck, y_hat, counts, reference, debias=neck.debias, reference_proposal=tilted
        )
        for key, counts in (("train", train_counts), ("eval", eval_counts))
    }
    if neck.debias:  # IWAE's log_prior keeps the uncorrected estimate
        bias["iwae"] = log_density_bias(
            neck, y_hat, eval_counts, reference, reference_proposal=tilted
        )
    return {
        "lattice": neck.geometry.name,
        "test_codelength_hard": sum(totals) / len(totals),
        "codelength_minus_neg_elbo": sum(gaps) / len(gaps),
        "codelength_repeats": cfg.codelength_repeats,
        "block_spacing": [round(v, 5) for v in neck.block_spacing.detach().tolist()],
        **(
            {"coordinate_spacing": _summary(neck.spacing.detach())}
            if neck.spacing_per == "coordinate"
            else {}
        ),
        "prior_scale": _summary(neck.scale.detach()),
        "log_density_bias": bias,
    }


def _summary(t: torch.Tensor) -> dict[str, float]:
    return {
        "mean": t.mean().item(),
        "min": t.min().item(),
        "max": t.max().item(),
        "values": [round(v, 5) for v in t.tolist()],
    }


def reproduce(
    *,
    quick: bool = False,
    models: list[str] | None = None,
    overrides: list[str] | None = None,
    data_dir: str | None = None,
    runs_dir: str | Path = "runs",
    results_dir: str | Path = RESULTS_DIR,
    command: str = "",
) -> dict[str, Any]:
    """Run every model (resumable), write ``<results>/lattice-mnist[-quick].json`` and Figure 3."""
    custom.check_reproduce(
        quick=quick,
        overrides=overrides,
        runs_dir=runs_dir,
        results_dir=results_dir,
        data_dir=data_dir,
        command=command,
        models=models,
    )
    stem = "lattice-mnist-quick" if quick else "lattice-mnist"
    models = list(models or DEFAULT_MODELS)
    configs = {name: model_config(name, quick=quick, overrides=overrides or []) for name in models}
    data = load_data(next(iter(configs.values())), data_dir)
    started = provenance(command)
    out = {}
    for name in models:
        print(f"== {LABELS[name]} ==", flush=True)
        out[name] = run_model(name, configs[name], data, Path(runs_dir) / stem / name)
        out[name]["provenance"] = started
    results_dir = Path(results_dir)
    path = results_dir / f"{stem}.json"
    previous = _previous_rows(path, configs[models[0]].data)
    all_configs = {**previous.get("configs", {}), **{n: to_dict(c) for n, c in configs.items()}}
    rows = {**previous.get("models", {}), **out}
    latent_dim = configs[models[0]].model.latent_dim
    payload = {
        **provenance(command),
        "models": {name: rows[name] for name in MODELS if name in rows},
        "paper": {"test_nll_iwae1000": PAPER_IWAE1000, "data": "static binarized MNIST"},
        "data": configs[models[0]].data,
        "theoretical_gap_nats": latent_dim * integer_lattice(1).kl_to_gaussian().item(),
        "theoretical_gaps_nats": {name: theoretical_gap(name) for name in rows},
        "optimizer": configs[models[0]].train.optimizer,
        "configs": {name: all_configs[name] for name in MODELS if name in all_configs},
    }
    write_json(payload, path)
    figure_3(payload["models"], results_dir / f"{stem}-fig3.png")  # every row of the table
    figure_gain(payload["models"], results_dir / f"{stem}-gain.png")
    return payload


#: the fields of a results row that the markdown table and the figures read, and their kinds
#: (None: a NaN or infinity as the results file holds it, which the table shows as missing)
_ROW_FIELDS = {
    "epochs": "integer",
    "best_epoch": "integer",
    "epoch_cap_hit": "flag",
    "val_neg_elbo_curve": "list",
    "test_neg_elbo": "number or None",
    "test_nll_iwae_se": "number or None",
    "iwae_samples": "integer",
    "test_codelength_hard": "number or None or missing",
}
_DEFENSIVE_FIELDS = {
    "test_nll_iwae_defensive_se": "number or None",
    "iwae_defensive_minus_own": "number or None",
    "iwae_defensive_minus_own_se": "number or None",
}


def _row_problem(row: Any) -> str | None:
    """What keeps a row of a results file from being drawn and tabled, or None."""
    wrong = problem(row, _ROW_FIELDS, "row")
    if wrong:
        return wrong
    curve = row["val_neg_elbo_curve"]
    if not curve or not all(problem({"v": v}, {"v": "number or None"}) is None for v in curve):
        return "its val_neg_elbo_curve is no list of numbers"  # null: an epoch not finite
    fields = {f"test_nll_iwae{row['iwae_samples']}": "number or None"}
    if "iwae_defensive" in row:
        defensive = f"test_nll_iwae{row['iwae_samples']}_defensive"
        fields |= _DEFENSIVE_FIELDS | {defensive: "number or None"}
    return problem(row, fields, "row")


def _payload_problem(payload: Any) -> str | None:
    """What keeps a results payload from being tabled (:func:`markdown_table`), or None."""
    wrong = problem(
        payload,
        {
            "models": "table",
            "theoretical_gaps_nats": "table or missing",
            "theoretical_gap_nats": "number or None or missing",
        },
        "the payload",
    )
    if wrong:
        return wrong
    for name, row in payload["models"].items():
        if name not in LABELS:
            return f"models holds the unknown row {name!r}; known: {list(LABELS)}"
        wrong = _row_problem(row)
        if wrong:
            return f"the row {name!r} cannot be tabled ({wrong})"
    for name, gap in payload.get("theoretical_gaps_nats", {}).items():
        wrong = problem({name: gap}, {name: "number or None"}, "theoretical_gaps_nats")
        if wrong:
            return wrong
    models = payload["models"]
    if "rect_lattice" in models and "gaussian_lattice" in models:
        return problem(payload, {"theoretical_gap_nats": "number or None"}, "the payload")
    return None


def _difference(a: float | None, b: float | None, spec: str) -> str:
    """``a − b`` formatted by ``spec``; missing where either is (:func:`~qlatent.results.cell`)."""
    return cell(a - b if finite(a) and finite(b) else None, spec)


def _previous_rows(path: Path, data: str) -> dict[str, Any]:
    """The rows already in ``path`` (same data set), so that running a subset of the table adds
    to it; rows written before per-row provenance get the file's own."""
    old = read_json(path)
    if not isinstance(old, dict) or old.get("data") != data:
        return {}
    # what cannot be a table's rows and configs is dropped, as an unreadable file is
    rows = old.get("models")
    old["models"] = {}
    for name, row in rows.items() if isinstance(rows, dict) else []:
        wrong = _row_problem(row)
        if wrong is None:
            old["models"][name] = row
        else:  # the table and the figures read these fields: a row without them is dropped
            print(terminal_text(f"{path}: dropping the row {name!r} ({wrong})"), flush=True)
    if not isinstance(old.get("configs"), dict):
        old["configs"] = {}
    keys = ("command", "commit", "dirty", "machine", "date")
    for row in old["models"].values():
        row.setdefault("provenance", {k: old.get(k) for k in keys})
    return old


def figure_3(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Validation negative ELBO per epoch, one line per model (the paper's Figure 3)."""
    from matplotlib import colormaps

    from ..eval.plots import epoch_axis, isolated_markers, save_figure, subplots

    # beside the axes once there are more rows than a legend inside can leave room for; a colour
    # per row from a 20-colour map (the default cycle repeats after 10)
    many = len(models) > 6
    fig, ax = subplots(figsize=(11, 4.5) if many else (6, 4))
    colors = colormaps["tab20"].colors
    for i, (name, result) in enumerate(models.items()):
        curve = _curve(result)
        color = colors[(2 * i) % 20 + (2 * i // 20) % 2]  # the dark shades first
        ax.plot(
            range(1, len(curve) + 1), curve, label=LABELS[name], color=color,
            **isolated_markers(curve),
        )  # fmt: skip
        ax.axvline(result["best_epoch"], color=color, ls=":", lw=0.8)
    low = min((v for r in models.values() for v in _curve(r) if math.isfinite(v)), default=None)
    if low is not None:  # matplotlib refuses NaN limits
        ax.set_ylim(low - 2, low + 30)
    epoch_axis(ax)
    ax.set_ylabel("validation negative ELBO (nats)")
    ax.set_title("binarized MNIST, m = 40 (dotted: best epoch)")
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def _curve(row: dict[str, Any]) -> list[float]:
    """A row's validation negative ELBO per epoch, NaN (a gap in its line) where an epoch's
    value was not finite: null in a results file read back."""
    return [number(v) for v in row["val_neg_elbo_curve"]]


#: the rectangular rows the gain figure measures the others against, one panel each
RECTANGULAR_ROWS = ("rect_lattice", "rect_gauss_lattice", "rect_gl_lattice")


def control_row(name: str) -> str | None:
    """The rectangular row trained like lattice row ``name`` in all but the cell: the same prior
    and the same start (``rect_gl_lattice`` for a row started from the Gaussian-lattice VAE,
    ``rect_gauss_lattice`` for a Gaussian prior from scratch, ``rect_lattice`` for a Laplace
    prior from scratch). None for the rectangular rows themselves and rows without a lattice."""
    if name not in BLOCK_NSM or name in RECTANGULAR_ROWS:
        return None
    cfg = model_config(name, quick=False, overrides=[])
    if cfg.init_from == "gaussian_lattice":
        return "rect_gl_lattice"
    gaussian = cfg.model.bottleneck_args.get("prior", "laplace") == "gaussian"
    return "rect_gauss_lattice" if gaussian else "rect_lattice"


def figure_gain(models: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Each lattice row's validation negative ELBO minus that of the rectangular row with its
    prior and start (:func:`control_row`), per epoch, one panel per rectangular row, with the
    row's theoretical gain over the rectangular cell (7.06 minus its own gap) dashed: where in
    training a better cell pays. None (no figure) where no lattice row has its rectangular row."""
    from ..eval.plots import epoch_axis, isolated_markers, save_figure, subplots

    panels: dict[str, list[str]] = {}
    for name in models:
        control = control_row(name)
        if control in models:
            panels.setdefault(control, []).append(name)
    if not panels:
        return None
    full = theoretical_gap("rect_lattice")
    order = [c for c in RECTANGULAR_ROWS if c in panels]
    fig, axes = subplots(1, len(order), figsize=(6 * len(order), 4.5), squeeze=False)
    for ax, control in zip(axes[0], order, strict=True):
        base = _curve(models[control])
        for name in panels[control]:
            curve = _curve(models[name])
            epochs = min(len(curve), len(base))
            diff = [curve[i] - base[i] for i in range(epochs)]
            ax.plot(range(1, epochs + 1), diff, label=LABELS[name], **isolated_markers(diff))
            gain = theoretical_gap(name) - full
            ax.axhline(gain, color=ax.lines[-1].get_color(), ls="--", lw=0.8)
        ax.axhline(0.0, color="black", lw=0.6)
        epoch_axis(ax)
        ax.set_ylabel("validation −ELBO − the rectangular row's (nats)")
        ax.set_title(f"against: {LABELS[control]}", fontsize="medium")
        ax.legend(fontsize="x-small")
    fig.suptitle("binarized MNIST, m = 40 (dashed: −(theoretical gain over Z^40))")
    fig.tight_layout()
    return save_figure(fig, path)


def markdown_table(payload: dict[str, Any]) -> str:
    """The table of ``payload`` (:func:`reproduce`'s, or its JSON file read back); ValueError
    naming the first field that keeps it from being one (:func:`_payload_problem`)."""
    wrong = _payload_problem(payload)
    if wrong:
        raise ValueError(f"lattice-mnist results: {wrong}")
    models = payload["models"]
    gaps = payload.get("theoretical_gaps_nats", {})
    lines = [
        "| model | IWAE NLL (ours) | paper (IWAE-1000) | −ELBO (ours) | − Gaussian-lattice "
        "| ideal-lattice gap (theory) | epochs | best | cap hit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref = models.get("gaussian_lattice")
    ref_nll = ref[f"test_nll_iwae{ref['iwae_samples']}"] if ref else None
    for name, r in models.items():
        key = f"test_nll_iwae{r['iwae_samples']}"
        paper = PAPER_IWAE1000.get(name)
        delta = (
            ""
            if ref is None or name == "gaussian_lattice"
            else _difference(r[key], ref_nll, "+.2f")
        )
        gap = gaps.get(name)
        lines.append(
            f"| {LABELS[name]} | {cell(r[key], '.2f')} ± {cell(r['test_nll_iwae_se'], '.2f')} "
            f"(S={r['iwae_samples']}) | {'' if paper is None else f'{paper:.2f}'} "
            f"| {cell(r['test_neg_elbo'], '.2f')} | {delta} "
            f"| {'' if gap is None else cell(gap, '.2f')} "
            f"| {r['epochs']} | {r['best_epoch']} | {'yes' if r['epoch_cap_hit'] else 'no'} |"
        )
    for name, r in models.items():
        if "test_codelength_hard" in r:
            lines.append("")
            # the paired gap: each repeat's codelength against a −ELBO of the same images drawn
            # beside it (the −ELBO column is another draw, so its difference is not the gap)
            paired = r.get("codelength_minus_neg_elbo")
            repeats = r.get("codelength_repeats")
            lines.append(
                f"{LABELS[name]}, hard-path two-part codelength: "
                f"{cell(r['test_codelength_hard'], '.2f')} nats (−ELBO "
                f"{cell(r['test_neg_elbo'], '.2f')}; Theorem 1: equal in expectation"
                + (
                    f"; over {repeats} repeats of both, codelength − −ELBO = {cell(paired, '+.2f')}"
                    if paired is not None and repeats
                    else ""
                )
                + ")"
            )
    for name, r in models.items():
        if "iwae_defensive" in r:
            s = r["iwae_samples"]
            lines.append("")
            lines.append(
                f"{LABELS[name]}, IWAE-{s} under the defensive proposal {r['iwae_defensive']} "
                f"(α:k, covers the neighbouring cells): "
                f"{cell(r[f'test_nll_iwae{s}_defensive'], '.2f')} ± "
                f"{cell(r['test_nll_iwae_defensive_se'], '.2f')} "
                f"({cell(r['iwae_defensive_minus_own'], '+.2f')} ± "
                f"{cell(r['iwae_defensive_minus_own_se'], '.2f')} from its own proposal's)"
            )
    if "rect_lattice" in models and ref:
        a = models["rect_lattice"]
        gap = _difference(a[f"test_nll_iwae{a['iwae_samples']}"], ref_nll, ".2f")
        lines.append(
            f"rectangular − Gaussian-lattice gap: {gap} nats (paper 5.10; at most "
            f"{cell(payload['theoretical_gap_nats'], '.2f')} = m·½·log(2πe/12) for an ideal "
            "lattice)"
        )
    return "\n".join(lines)
