"""Table 1 of the Soft VQ-VAE paper: downstream accuracy of MNIST latents, d = 64.

Wu and Flierl, "Vector Quantization-Based Regularization for Autoencoders" (AAAI 2020), Table 1:
k-means accuracy (Hungarian matching), NMI and single-layer-classifier accuracy on the encoder
output z_e of the MNIST test set, for raw pixels, an autoencoder, VAE, β-VAE (β = 20), information
dropout, VQ-VAE (K = 128) and Soft VQ-VAE (K = 128). Every model has the same ReLU MLP
784-500-500-2000-d encoder and mirror decoder and differs only in the bottleneck
(``configs/softvq-mnist/*.toml``).

Protocol (paper, and the reference notebook where the paper is silent; see the config files):
MNIST in [0, 1], 60k training images, Adam 3e-4, 40,000 updates of batch 32 (the paper; the
notebook used 64), evaluation after the last update. Distortion is the notebook's squared error
normalised by the data variance, summed over pixels (784 × its NMSE), so the notebook's loss
weights carry over as: VAE rate weight β, information dropout 0.5/d, codebook terms 3·784.

A further row, soft-EM VQ (Roy et al. 2018), is trained with the same recipe as VQ-VAE to test
the VIB reading of Wu & Flierl (arXiv 1808.01048): soft EM should use its codes more evenly
(higher perplexity) at comparable reconstruction.

Seeds (``--seeds 0,1,2``) run every row once per seed (the same seeds for every row: training
and evaluation seed), report per row the mean, sd, min and max of each score, and mark a paper
value as reproduced when it lies within mean ± 2 sd. Each finished seed run is also recorded as
a small JSON under ``<results>/softvq-mnist-runs/<row>/seed-<s>.json`` (config, scores,
provenance), and a run whose record matches its config is read back, not trained again: a sweep
longer than one sitting resumes from the committed records (a record that cannot be used is
written anew). ``--jobs 2`` trains the runs in two
single-thread processes.

Beyond the table (``CAUSE_ROWS``), rows that test the causes of its gaps one factor at a time:
VQ-VAE with the VQ-VAE paper's commitment 0.25; Soft VQ-VAE with eq. (5)'s weights and no noise,
and with the notebook's weights and noise; β-VAE at batch 64 and at β ∈ {5, 10, 40}. Every row
also reports a linear probe trained to convergence (L-BFGS, L2 strength chosen on a validation
split) beside the notebook's fixed-budget probe, and the Gaussian rows their KL per dimension.

Every stage is resumable: training from its checkpoint, each row's evaluation from a cache in its
run folder. Rows can be run in separate processes (``--models``) and collected by a final run.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .._size import check_size
from .._utils import terminal_text
from ..bottlenecks import GaussianVAE, SoftEMVectorQuantizer, build
from ..bottlenecks._codebook import code_counts, squared_distances, usage_stats
from ..config import apply_mapping, to_dict
from ..data import load_mnist, synthetic_labelled
from ..eval import downstream_report, linear_probe_converged, tsne_grid
from ..eval.downstream import PROBE_CS
from ..losses import RateDistortionLoss
from ..models import Autoencoder, sized
from ..nn import SquaredError, relu_mlp
from ..results import RESULTS_DIR, cell, finite, provenance, read_json, write_json, write_text
from ..train import CheckpointError, TrainConfig, fit, load, save_atomic
from . import custom
from ._cache import described, first_problem, problem, read_cache, refused
from ._jobs import run_jobs

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
#: a latent dimension counts as active when its mean KL to the prior exceeds this (nats)
ACTIVE_KL = 0.01
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


def load_data(cfg: SoftVQMnistConfig, data_dir: str | None) -> dict[str, torch.Tensor]:
    """Flattened images in [0, 1] and labels: ``x_train, y_train, x_test, y_test`` (read once
    per process; the tensors are shared, never written)."""
    seed = cfg.train.seed if cfg.data == "synthetic" else None  # the synthetic set's own seed
    return _load_data(cfg.data, seed, data_dir)


@functools.cache
def _load_data(name: str, seed: int | None, data_dir: str | None) -> dict[str, torch.Tensor]:
    if name == "synthetic":
        x, y = synthetic_labelled(n=1200, seed=seed)
        return {"x_train": x[:1000], "y_train": y[:1000], "x_test": x[1000:], "y_test": y[1000:]}
    out = {}
    for split in ("train", "test"):
        images, labels = load_mnist(split, data_dir)
        out[f"x_{split}"] = images.reshape(images.shape[0], -1).float() / 255.0
        out[f"y_{split}"] = labels
    return out


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


@torch.no_grad()
def encode(model: Autoencoder, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """The pre-quantisation code z_e: the first ``d`` encoder outputs (μ for the VAE, f for
    information dropout, z_e for the VQ family; the rest are scales the bottleneck consumes)."""
    model.eval()
    dim = model.bottleneck.dim
    return torch.cat([model.encoder(xb)[:, :dim] for xb in x.split(batch_size)])


def run_model(
    name: str, cfg: SoftVQMnistConfig, data: dict[str, torch.Tensor], out_dir: Path
) -> dict[str, Any]:
    """Train (or resume; a finished run returns at once) one row, then score its features."""
    trained: dict[str, Any] = {}
    if name == "raw":
        train_features, test_features = data["x_train"], data["x_test"]
    else:
        variance = data["x_train"].var().item()
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model, data["x_train"].shape[1], variance)
        loss_fn = RateDistortionLoss(lmbda=cfg.model.lmbda, aux_weight=cfg.model.aux_weight)
        split = {"train": data["x_train"], "val": data["x_train"][: cfg.monitor_examples]}
        result = fit(
            model, split, cfg.train, out_dir=out_dir, loss_fn=loss_fn, run_config=to_dict(cfg)
        )
        trained = {
            "train_steps": result.history[-1]["step"] if result.history else 0,
            "stopped": result.stopped,
            "wall_s": result.wall_s,
            "quantizer_params": sum(p.numel() for p in model.bottleneck.parameters()),
            **reconstruction_metrics(model, data["x_test"], variance),
        }
        train_features = encode(model, data["x_train"])
        test_features = encode(model, data["x_test"])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_atomic({"features": test_features}, out_dir / "test_features.pt")
    return {**downstream_scores(cfg, data, train_features, test_features, out_dir), **trained}


#: what the cached evaluation contributes to a row (the probe's own settings get a prefix)
_SCORE_KEYS = {
    "kmeans_acc": "kmeans_acc",
    "nmi": "nmi",
    "nmi_geometric": "nmi_geometric",
    "inertia": "kmeans_inertia",
    "n_init": "kmeans_n_init",
    "linear_acc": "linear_acc",
    "train_acc": "linear_train_acc",
    "steps": "probe_steps",
    "lr": "probe_lr",
    "batch_size": "probe_batch_size",
    "feature_dim": "feature_dim",
    "eval_wall_s": "eval_wall_s",
}


#: what a cached evaluation must hold (:func:`~._cache.problem`): what :func:`_scores` reads
_EVAL_FIELDS = {
    **dict.fromkeys(("kmeans_acc", "nmi", "nmi_geometric", "inertia", "linear_acc"), "number"),
    **dict.fromkeys(("train_acc", "lr", "eval_wall_s"), "number"),
    **dict.fromkeys(("n_init", "steps", "batch_size", "feature_dim"), "integer"),
    "converged": "table or None or missing",
}
#: and of the converged probe, where it was fitted
_CONVERGED_FIELDS = {
    **dict.fromkeys(("linear_acc", "train_acc", "C"), "number"),
    "val_acc": "table",
    "iterations": "integer",
    "converged": "flag",
}


def downstream_scores(
    cfg: SoftVQMnistConfig,
    data: dict[str, torch.Tensor],
    train_features: torch.Tensor,
    test_features: torch.Tensor,
    out_dir: Path,
) -> dict[str, Any]:
    """k-means (test set) and linear probe (train → test), cached in ``out_dir/eval.pt``."""
    cache, config_key = out_dir / "eval.pt", to_dict(cfg)
    cached = read_cache(cache, {"config": config_key}, "metrics", _EVAL_FIELDS)
    if cached is not None:
        converged = cached.get("converged")
        wrong = problem(converged, _CONVERGED_FIELDS, "metrics.converged") if converged else None
        if wrong:
            raise refused(cache, wrong)
        return _scores(cached)
    started = time.perf_counter()
    scores = downstream_report(
        train_features,
        data["y_train"],
        test_features,
        data["y_test"],
        n_init=cfg.eval.kmeans_n_init,
        probe_steps=cfg.eval.probe_steps,
        seed=cfg.eval.seed,
    )
    converged = None
    if cfg.eval.converged_probe:
        converged = linear_probe_converged(
            train_features,
            data["y_train"],
            test_features,
            data["y_test"],
            Cs=tuple(cfg.eval.probe_cs),
            seed=cfg.eval.seed,
        )
    metrics = {
        **scores,
        "converged": converged,
        "feature_dim": test_features.shape[1],
        "eval_wall_s": time.perf_counter() - started,
    }
    save_atomic({"config": config_key, "metrics": metrics}, cache)
    return _scores(metrics)


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """A row's scores from its evaluation: the notebook's probe as ``linear_acc``, the
    converged one as ``linear_acc_converged`` (with the L2 strength it chose)."""
    out = {new: metrics[old] for old, new in _SCORE_KEYS.items()}
    converged = metrics.get("converged")
    if converged:
        out.update(
            {
                "linear_acc_converged": converged["linear_acc"],
                "linear_train_acc_converged": converged["train_acc"],
                "probe_converged_C": converged["C"],
                "probe_converged_val_acc": converged["val_acc"],
                "probe_converged_iterations": converged["iterations"],
                "probe_converged": converged["converged"],
            }
        )
    return out


@torch.no_grad()
def reconstruction_metrics(model: Autoencoder, x: torch.Tensor, variance: float) -> dict[str, Any]:
    """Test NMSE on the eval path (hard codes where there are codes) and code usage.

    For soft EM also the perplexity of the stochastic encoder's average code distribution
    mean_i τ_i (the VIB reading's p(Z)), next to the perplexity of its hard codes.
    """
    model.eval()
    bottleneck = model.bottleneck
    squared, counts, soft = 0.0, None, None
    for xb in x.split(2000):
        out = model(xb, generator=torch.Generator().manual_seed(0))
        squared += (model.likelihood.mean(out.params) - xb).square().sum().item()
        if out.bottleneck.indices is not None:
            batch = code_counts(out.bottleneck.indices, bottleneck.num_codes)
            counts = batch if counts is None else counts + batch
        if isinstance(bottleneck, SoftEMVectorQuantizer):
            z = model.encoder(xb)
            distances = squared_distances(z, bottleneck.codebook)
            tau = torch.softmax(-distances / bottleneck.temperature, dim=1).sum(0)
            soft = tau if soft is None else soft + tau
    metrics: dict[str, Any] = {"test_nmse": squared / x.numel() / variance}
    if isinstance(bottleneck, GaussianVAE):
        kl = torch.cat([bottleneck.kl_per_dimension(model.encoder(xb)) for xb in x.split(2000)])
        per_dim = kl.mean(0)
        metrics["kl_per_dim"] = [round(v, 6) for v in per_dim.tolist()]
        metrics["active_dims"] = int((per_dim > ACTIVE_KL).sum())
    if counts is not None:
        metrics.update({k: v.item() for k, v in usage_stats(counts, prefix="test_").items()})
    if soft is not None:
        metrics["test_posterior_perplexity"] = usage_stats(soft)["perplexity"].item()
    return metrics


def reproduce(
    *,
    quick: bool = False,
    models: list[str] | None = None,
    overrides: list[str] | None = None,
    data_dir: str | None = None,
    runs_dir: str | Path = "runs",
    results_dir: str | Path = RESULTS_DIR,
    command: str = "",
    seeds: list[int] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run every row (resumable; once per seed with ``seeds``, in ``jobs`` processes); write
    ``<results>/softvq-mnist[-quick].json``, .md and the t-SNE figure."""
    custom.check_reproduce(
        quick=quick,
        overrides=overrides,
        runs_dir=runs_dir,
        results_dir=results_dir,
        data_dir=data_dir,
        command=command,
        models=models,
    )
    stem = "softvq-mnist-quick" if quick else "softvq-mnist"
    models = list(models or DEFAULT_MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; known: {list(MODELS)}")
    if seeds is not None:
        if (
            not isinstance(seeds, list | tuple)
            or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")
    results_dir = Path(results_dir)
    configs = {name: model_config(name, quick=quick, overrides=overrides or []) for name in models}
    first = next(iter(configs.values()))
    tasks = []
    for name in models:
        for seed in seeds or [None]:
            cfg, folder, record = configs[name], Path(runs_dir) / stem / name, None
            if seed is not None:
                cfg = apply_mapping(cfg, {"train": {"seed": seed}, "eval": {"seed": seed}})
                folder = folder / f"seed-{seed}"
                record = results_dir / f"{stem}-runs" / name / f"seed-{seed}.json"
            tasks.append(dict(name=name, cfg=cfg, out_dir=folder, data_dir=data_dir, record=record))
    done = run_jobs(_run_task, tasks, jobs=jobs)
    runs: dict[str, dict[Any, dict[str, Any]]] = {}
    for task, metrics in zip(tasks, done, strict=True):
        runs.setdefault(task["name"], {})[task["cfg"].train.seed] = metrics
    if seeds is None:
        rows = {name: next(iter(per_seed.values())) for name, per_seed in runs.items()}
    else:
        rows = {name: seed_statistics(name, per_seed) for name, per_seed in runs.items()}

    payload: dict[str, Any] = {
        **provenance(command),
        "rows": rows,
        "paper": {  # a cause row: the values of the paper row it is compared with
            name: dict(
                zip(
                    ("kmeans_acc", "nmi", "linear_acc"),
                    PAPER[PAPER_ROW.get(name, name)],
                    strict=True,
                )
            )
            for name in models
            if PAPER_ROW.get(name, name) in PAPER
        },
        "notebook_output": {k: v for k, v in NOTEBOOK_OUTPUT.items() if k in models},
        "nmi_averaging": "arithmetic, 2I/(H(y)+H(ŷ)) as the paper defines it "
        "('nmi'); geometric in 'nmi_geometric'",
        "batch_size": first.train.batch_size,
        "batch_size_note": "the paper's 32; the reference notebook used 64",
        "data": first.data,
        "configs": {name: to_dict(cfg) for name, cfg in configs.items()},
    }
    if seeds is not None:
        payload["seeds"] = list(seeds)
        payload["configs_note"] = (
            "each row ran once per seed with this config's train.seed and eval.seed set to "
            "the seed (the values here are the row's own, which no run used)"
        )
        payload["reproduced_rule"] = "the paper's value lies within mean ± 2 sd of the seeds"
    if "vq" in rows and "soft_em_vq" in rows:
        compared = [name for name in PERPLEXITY_ROWS if name in rows]
        payload["perplexity"] = {name: rows[name].get("test_perplexity") for name in compared}
        payload["perplexity_test_nmse"] = {name: rows[name].get("test_nmse") for name in compared}
        payload["perplexity_note"] = (
            "exp(H) of the hard (nearest-codeword) codes of the 10,000 test images; "
            "rows.soft_em_vq.test_posterior_perplexity is that of soft EM's mean posterior"
        )
    write_json(payload, results_dir / f"{stem}.json")
    write_text(markdown_table(payload) + "\n", results_dir / f"{stem}.md")
    # t-SNE of each row's first run whose features are on this machine
    features, paths = {}, {}
    for task in tasks:
        path = task["out_dir"] / "test_features.pt"
        if LABELS[task["name"]] not in features and path.is_file():
            features[LABELS[task["name"]]] = _saved_features(path)
            paths[LABELS[task["name"]]] = path
    if features:
        y_test = load_data(first, data_dir)["y_test"]
        for label, x in features.items():
            if x.shape[0] != len(y_test):
                raise CheckpointError(
                    f"{paths[label]} holds features of {x.shape[0]:,} images, not of the "
                    f"{len(y_test):,} test images{_RERUN_FEATURES}"
                )
        tsne_grid(
            features,
            y_test,
            results_dir / f"{stem}-tsne.png",
            seed=first.eval.seed,
            max_points=first.eval.tsne_points,
            perplexity=min(30.0, (min(first.eval.tsne_points or 10**9, len(y_test)) - 1) / 3),
        )
    return payload


#: what to do about a test-features file that cannot be drawn
_RERUN_FEATURES = ": delete it, or run the row again with its run folder, to draw the t-SNE figure"


def _saved_features(path: Path) -> torch.Tensor:
    """The test features that a row's run saved (:func:`run_model`): a 2-D floating-point
    tensor of finite values; a file holding anything else is refused, naming it. A bare tensor
    without a digest, as earlier versions saved it, is still read (as data)."""
    try:
        features = load(path).get("features")  # plain data, digest checked
    except CheckpointError as err:  # damaged, or a bare tensor as earlier versions saved
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - whatever the unpickler says, the first error stands
            features = None
        if not isinstance(features, torch.Tensor):
            raise CheckpointError(f"{err}{_RERUN_FEATURES}") from None
    if (
        not isinstance(features, torch.Tensor)
        or features.dim() != 2
        or not features.is_floating_point()
        or not torch.isfinite(features).all()
    ):
        raise CheckpointError(
            f"{path}: features is {described(features)}, not a 2-D floating-point tensor of "
            f"finite values{_RERUN_FEATURES}"
        )
    return features


def _record_fields(name: str) -> dict[str, str]:
    """What a run's recorded scores must hold (:func:`~._cache.problem`): what
    :func:`seed_statistics`, the perplexity comparison and :func:`markdown_table` read."""
    # None: a NaN or infinity as a record holds it, which the table shows as missing (the
    # accuracies and the NMI of a finished run are numbers)
    fields = dict.fromkeys(SEED_METRICS, "number or None or missing")
    fields |= dict.fromkeys(("kmeans_acc", "nmi", "linear_acc"), "number")
    fields["wall_s"] = "number or None or missing"
    if name in PERPLEXITY_ROWS:
        fields |= dict.fromkeys(("test_perplexity", "test_nmse"), "number or None")
    return fields


def _recorded(record: Path, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The scores in ``record`` when it was written for ``config`` and holds what the table
    reads (:func:`_record_fields`); None otherwise. A record that cannot be used is written
    anew, as one that cannot be read is (:func:`~qlatent.results.read_json`): the run is
    resumed from its folder, or trained again, and says so."""
    saved = read_json(record)
    if not isinstance(saved, dict) or saved.get("config") != config:
        return None
    wrong = problem(saved, {"metrics": "table"}) or problem(
        saved["metrics"], _record_fields(name), "metrics"
    )
    if wrong:
        print(terminal_text(f"{record} cannot be used ({wrong}): running it again"), flush=True)
        return None
    return saved["metrics"]


def _run_task(
    *, name: str, cfg: SoftVQMnistConfig, out_dir: Path, data_dir: str | None, record: Path | None
) -> dict[str, Any]:
    """One row at one seed: read back from its ``record`` when that was written for the same
    config (:func:`_recorded`), else trained (or resumed) and scored, and recorded."""
    config = json.loads(json.dumps(to_dict(cfg)))
    if record is not None and record.is_file():
        metrics = _recorded(record, name, config)
        if metrics is not None:
            recorded = f"== {LABELS[name]}, seed {cfg.train.seed} (recorded: {record}) =="
            print(terminal_text(recorded), flush=True)
            return metrics
    seed = f", seed {cfg.train.seed}" if record is not None else ""
    print(f"== {LABELS[name]}{seed} ==", flush=True)
    metrics = run_model(name, cfg, load_data(cfg, data_dir), out_dir)
    if record is not None:
        write_json({**provenance(""), "row": name, "config": config, "metrics": metrics}, record)
    return metrics


#: the scores whose spread over seeds a row reports
SEED_METRICS = (
    "kmeans_acc",
    "nmi",
    "linear_acc",
    "linear_acc_converged",
    "test_nmse",
    "test_codes_used",
    "test_perplexity",
    "active_dims",
)


def seed_statistics(name: str, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A row over seeds: each run's scores (``runs``), per score the mean, sd (n − 1), min and
    max (``stats``), the means at the top level (where one run's scores would be), and per paper
    score whether the paper's value lies within mean ± 2 sd (``reproduced``)."""
    stats = {}
    for key in SEED_METRICS:
        values = [r[key] for r in per_seed.values() if key in r and r[key] is not None]
        if not values:
            continue
        n = len(values)
        mean = sum(values) / n
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        stats[key] = {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n}
    row: dict[str, Any] = {key: value["mean"] for key, value in stats.items()}
    row.update({"runs": {str(seed): r for seed, r in per_seed.items()}, "stats": stats})
    paper = PAPER.get(PAPER_ROW.get(name, name))
    if paper is not None:
        row["reproduced"] = {
            key: abs(value - stats[key]["mean"]) <= 2 * stats[key]["sd"]
            for key, value in zip(("kmeans_acc", "nmi", "linear_acc"), paper, strict=True)
        }
        row["compared_with"] = PAPER_ROW.get(name, name)
    return row


def _scaled(value: float | None, scale: float, digits: int) -> str:
    """``value × scale`` to ``digits`` decimals, or missing (:func:`~qlatent.results.cell`)."""
    return cell(value * scale if finite(value) else None, f".{digits}f")


#: the fields of a row that :func:`markdown_table` reads, and their kinds (None: a NaN or
#: infinity as a results file holds it, shown as missing)
_ROW_FIELDS = dict.fromkeys((*SEED_METRICS, "wall_s"), "number or None or missing") | {
    "runs": "table or missing",
    "stats": "table or missing",
    "reproduced": "table or missing",
}
_STAT_FIELDS = {"mean": "number or None", "sd": "number or None", "n": "integer"}
_PAPER_FIELDS = dict.fromkeys(("kmeans_acc", "nmi", "linear_acc"), "number")


def _payload_checks(payload: Any) -> Iterator[str | None]:
    """What keeps a results payload from being tabled (:func:`markdown_table`), checked in
    order (:func:`~._cache.first_problem`)."""
    yield problem(
        payload,
        {
            "rows": "table",
            "paper": "table",
            "seeds": "list or missing",
            "perplexity": "table or missing",
            "perplexity_test_nmse": "table or missing",
        },
        "the payload",
    )
    for name, p in payload["paper"].items():
        yield problem(p, _PAPER_FIELDS, f"paper.{name}")
    for name, row in payload["rows"].items():
        if name not in LABELS:
            yield f"rows holds the unknown row {name!r}; known: {list(LABELS)}"
        yield problem(row, _ROW_FIELDS, f"rows.{name}")
        for seed, run in row.get("runs", {}).items():
            yield problem(run, {"wall_s": "number or None or missing"}, f"rows.{name}.runs.{seed}")
        for key, stats in row.get("stats", {}).items():
            yield problem(stats, _STAT_FIELDS, f"rows.{name}.stats.{key}")
        if "reproduced" in row:
            marks = dict.fromkeys(_PAPER_FIELDS, "flag")
            yield problem(row["reproduced"], marks, f"rows.{name}.reproduced")
    if "perplexity" in payload:
        yield problem(payload, {"perplexity_test_nmse": "table"}, "the payload")
        for name, value in payload["perplexity"].items():
            if name not in LABELS:
                yield f"perplexity holds the unknown row {name!r}; known: {list(LABELS)}"
            yield problem({name: value}, {name: "number or None"}, "perplexity")
            nmse = payload["perplexity_test_nmse"]
            yield problem(nmse, {name: "number or None"}, "perplexity_test_nmse")


def markdown_table(payload: dict[str, Any]) -> str:
    """Our rows beside the paper's, in percent (NMI as a fraction); mean ± sd over seeds when the
    rows were run with several, and the converged probe where it was fitted. ValueError naming
    the first field that keeps ``payload`` from being tabled."""
    wrong = first_problem(_payload_checks(payload))
    if wrong:
        raise ValueError(f"softvq-mnist results: {wrong}")
    lines = [
        "| model | k-means acc | paper | NMI | paper | linear acc | paper | linear acc, "
        "converged | test NMSE | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def score(row: dict[str, Any], key: str, scale: float, digits: int) -> str:
        if key not in row:
            return "–"
        stats = row.get("stats", {}).get(key)
        if stats and stats["n"] > 1:
            return (
                f"{_scaled(stats['mean'], scale, digits)} ± {_scaled(stats['sd'], scale, digits)}"
            )
        return _scaled(row[key], scale, digits)

    for name, r in payload["rows"].items():
        paper = payload["paper"].get(name)
        p = [f"{paper[k] * 100:.2f}" for k in ("kmeans_acc", "linear_acc")] if paper else ["–"] * 2
        p_nmi = f"{paper['nmi']:.4f}" if paper else "–"
        runs = r.get("runs", {}).values()
        walls = [run["wall_s"] for run in runs if finite(run.get("wall_s"))]
        wall = cell(r.get("wall_s"), ".0f")
        if walls:
            wall = f"{sum(walls) / len(walls):.0f}"
        lines.append(
            f"| {LABELS[name]} | {score(r, 'kmeans_acc', 100, 2)} | {p[0]} "
            f"| {score(r, 'nmi', 1, 4)} | {p_nmi} | {score(r, 'linear_acc', 100, 2)} | {p[1]} "
            f"| {score(r, 'linear_acc_converged', 100, 2)} | {score(r, 'test_nmse', 1, 4)} "
            f"| {wall} |"
        )
    if "seeds" in payload:
        lines.append("")
        lines.append(
            f"seeds {', '.join(map(str, payload['seeds']))}: mean ± sd (n − 1); train s is the "
            "mean wall time of one run"
        )
        lines.append("")
        lines.append("| model | paper within mean ± 2 sd (k-means, NMI, linear) | codes used "
                     "| code perplexity | active dims |")  # fmt: skip
        lines.append("|---|---|---|---|---|")
        for name, r in payload["rows"].items():
            verdict = r.get("reproduced")
            # one seed has no spread (its sd is recorded as 0), so "within mean ± 2 sd" would
            # read "no" for any paper value that is not the run's own: no verdict there
            stats = r.get("stats", {})
            if any(stats.get(k, {}).get("n", 0) < 2 for k in _PAPER_FIELDS):
                verdict = None
            marks = (
                ", ".join(
                    "yes" if verdict[k] else "no" for k in ("kmeans_acc", "nmi", "linear_acc")
                )
                if verdict
                else "–"
            )
            lines.append(
                f"| {LABELS[name]} | {marks} | {score(r, 'test_codes_used', 1, 1)} "
                f"| {score(r, 'test_perplexity', 1, 1)} | {score(r, 'active_dims', 1, 1)} |"
            )
    if "perplexity" in payload:
        pp, nm = payload["perplexity"], payload["perplexity_test_nmse"]
        parts = [
            f"{LABELS[name]} {cell(pp[name], '.1f')} at NMSE {cell(nm[name], '.4f')}" for name in pp
        ]
        lines.append("")
        lines.append("code perplexity on the test set (K = 128): " + "; ".join(parts))
    return "\n".join(lines)
