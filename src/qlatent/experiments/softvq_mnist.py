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
from pathlib import Path
from typing import Any

import torch

from .._utils import terminal_text
from ..config import apply_mapping, to_dict
from ..data import load_mnist, synthetic_labelled
from ..eval import tsne_grid
from ..losses import RateDistortionLoss
from ..results import RESULTS_DIR, provenance, write_json, write_text
from ..train import CheckpointError, fit, save_atomic
from . import custom
from ._jobs import run_jobs
from ._softvq_mnist_config import CAUSE_ROWS as CAUSE_ROWS
from ._softvq_mnist_config import (
    DEFAULT_MODELS,
    LABELS,
    MODELS,
    SoftVQMnistConfig,
    build_model,
    model_config,
)
from ._softvq_mnist_config import NOTEBOOK_OUTPUT as NOTEBOOK_OUTPUT
from ._softvq_mnist_config import PAPER as PAPER
from ._softvq_mnist_config import PAPER_ROW as PAPER_ROW
from ._softvq_mnist_config import PERPLEXITY_ROWS as PERPLEXITY_ROWS
from ._softvq_mnist_config import ROWS as ROWS
from ._softvq_mnist_config import EvalConfig as EvalConfig
from ._softvq_mnist_config import ModelConfig as ModelConfig
from ._softvq_mnist_config import from_run_config as from_run_config
from ._softvq_mnist_eval import ACTIVE_KL as ACTIVE_KL
from ._softvq_mnist_eval import downstream_scores, encode, reconstruction_metrics
from ._softvq_mnist_results import _payload, markdown_table
from ._softvq_mnist_runs import _RERUN_FEATURES, _recorded, _saved_features, seed_statistics
from ._softvq_mnist_runs import SEED_METRICS as SEED_METRICS


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
    _check_seeds(seeds)
    results_dir = Path(results_dir)
    configs = {name: model_config(name, quick=quick, overrides=overrides or []) for name in models}
    first = next(iter(configs.values()))
    tasks = _tasks(
        models,
        configs,
        seeds,
        runs=Path(runs_dir) / stem,
        records=results_dir / f"{stem}-runs",
        data_dir=data_dir,
    )
    done = run_jobs(_run_task, tasks, jobs=jobs)
    rows = _rows(tasks, done, seeds)
    payload = _payload(command, rows, models, configs, seeds)
    write_json(payload, results_dir / f"{stem}.json")
    write_text(markdown_table(payload) + "\n", results_dir / f"{stem}.md")
    _draw_tsne(tasks, first, data_dir, results_dir / f"{stem}-tsne.png")
    return payload


def _check_seeds(seeds: list[int] | None) -> None:
    """``seeds``, where given, are distinct non-negative integers (a ValueError naming them)."""
    if seeds is None:
        return
    if (
        not isinstance(seeds, list | tuple)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ValueError(f"seeds must be distinct non-negative integers, got {seeds}")


def _tasks(
    models: list[str],
    configs: dict[str, SoftVQMnistConfig],
    seeds: list[int] | None,
    *,
    runs: Path,
    records: Path,
    data_dir: str | None,
) -> list[dict[str, Any]]:
    """The keyword arguments of :func:`_run_task` for each row (once per seed with ``seeds``, its
    run folder under ``runs`` and its record under ``records``), row by row."""
    tasks = []
    for name in models:
        for seed in seeds or [None]:
            cfg, folder, record = configs[name], runs / name, None
            if seed is not None:
                cfg = apply_mapping(cfg, {"train": {"seed": seed}, "eval": {"seed": seed}})
                folder = folder / f"seed-{seed}"
                record = records / name / f"seed-{seed}.json"
            tasks.append(dict(name=name, cfg=cfg, out_dir=folder, data_dir=data_dir, record=record))
    return tasks


def _rows(
    tasks: list[dict[str, Any]], done: list[dict[str, Any]], seeds: list[int] | None
) -> dict[str, dict[str, Any]]:
    """Each row's scores from its tasks' metrics ``done``: its one run's, or with ``seeds`` its
    statistics over them (:func:`seed_statistics`)."""
    runs: dict[str, dict[Any, dict[str, Any]]] = {}
    for task, metrics in zip(tasks, done, strict=True):
        runs.setdefault(task["name"], {})[task["cfg"].train.seed] = metrics
    if seeds is None:
        return {name: next(iter(per_seed.values())) for name, per_seed in runs.items()}
    return {name: seed_statistics(name, per_seed) for name, per_seed in runs.items()}


def _draw_tsne(
    tasks: list[dict[str, Any]], first: SoftVQMnistConfig, data_dir: str | None, figure: Path
) -> None:
    """The t-SNE of each row's first run whose features are on this machine, at ``figure`` (none
    drawn where no run's are)."""
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
            figure,
            seed=first.eval.seed,
            max_points=first.eval.tsne_points,
            perplexity=min(30.0, (min(first.eval.tsne_points or 10**9, len(y_test)) - 1) / 3),
        )


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
