"""The scores of a trained softvq-mnist row: the pre-quantisation code z_e (:func:`encode`), k-means
and the linear probes on it, cached in the row's run folder (:func:`downstream_scores`), and the
test NMSE, code usage and KL per dimension (:func:`reconstruction_metrics`). Called by
:func:`~qlatent.experiments.softvq_mnist.run_model`; :mod:`~qlatent.experiments.softvq_mnist`
re-exports the public names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..bottlenecks import GaussianVAE, SoftEMVectorQuantizer
from ..bottlenecks._codebook import code_counts, squared_distances, usage_stats
from ..config import to_dict
from ..eval import downstream_report, linear_probe_converged
from ..models import Autoencoder
from ..train import save_atomic
from ._cache import problem, read_cache, refused
from ._softvq_mnist_config import SoftVQMnistConfig

#: a latent dimension counts as active when its mean KL to the prior exceeds this (nats)
ACTIVE_KL = 0.01


@torch.no_grad()
def encode(model: Autoencoder, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """The pre-quantisation code z_e: the first ``d`` encoder outputs (μ for the VAE, f for
    information dropout, z_e for the VQ family; the rest are scales the bottleneck consumes)."""
    model.eval()
    dim = model.bottleneck.dim
    return torch.cat([model.encoder(xb)[:, :dim] for xb in x.split(batch_size)])


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
