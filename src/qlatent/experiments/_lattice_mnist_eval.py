"""The test-set evaluation of a trained lattice-mnist row (:func:`evaluate`): IWAE NLL, cached
chunk by chunk so an interrupted evaluation resumes (:func:`_chunked_iwae`), the negative ELBO,
and for the lattice rows the hard-path codelength, the learned scales and the Monte-Carlo
log-density bias; and the row's cached evaluation read back and checked
(:func:`_cached_evaluation`). Called by :func:`~qlatent.experiments.lattice_mnist.run_model`,
which re-exports :func:`evaluate`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..eval import codelength_report, iwae_nll, iwae_summary
from ..eval.proposals import parse_mixture
from ..losses import RateDistortionLoss, evaluate_objective
from ..train import load, save_atomic
from ._cache import described, problem, read_cache, refused, unplain
from ._lattice_mnist_config import BLOCK_NSM, EvalConfig, LatticeMnistConfig


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
