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

import sys
from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..data import binarized_mnist, synthetic_binary
from ..lattices import integer_lattice
from ..results import RESULTS_DIR, provenance, write_json
from ..train import CheckpointError, fit, load, load_weights, save_atomic
from . import custom
from ._lattice_mnist_config import BLOCK_NSM as BLOCK_NSM
from ._lattice_mnist_config import DATA_DIM as DATA_DIM
from ._lattice_mnist_config import (
    DEFAULT_MODELS,
    LABELS,
    MODELS,
    PAPER_IWAE1000,
    LatticeMnistConfig,
    _gated_vae,
    model_config,
    theoretical_gap,
)
from ._lattice_mnist_config import GOOD_LATTICE_ROWS as GOOD_LATTICE_ROWS
from ._lattice_mnist_config import EvalConfig as EvalConfig
from ._lattice_mnist_config import VAEConfig as VAEConfig
from ._lattice_mnist_config import from_run_config as from_run_config
from ._lattice_mnist_config import trained_config as trained_config
from ._lattice_mnist_eval import _cached_evaluation, _eval_key, evaluate
from ._lattice_mnist_eval import _chunked_iwae as _chunked_iwae
from ._lattice_mnist_figures import RECTANGULAR_ROWS as RECTANGULAR_ROWS
from ._lattice_mnist_figures import control_row as control_row
from ._lattice_mnist_figures import figure_3, figure_gain
from ._lattice_mnist_results import _previous_rows
from ._lattice_mnist_results import _row_problem as _row_problem
from ._lattice_mnist_results import markdown_table as markdown_table
from ._lattice_mnist_warm_start import _warm_start
from ._lattice_mnist_warm_start import gaussian_lattice_start as gaussian_lattice_start


def load_data(cfg: LatticeMnistConfig, data_dir: str | None) -> dict[str, torch.Tensor]:
    if cfg.data == "synthetic":
        return synthetic_binary(n=1800, seed=cfg.train.seed)
    return binarized_mnist(data_dir)


def build_model(cfg: LatticeMnistConfig, data_dim: int):
    """The gated-MLP VAE of a row, initialised from the row's seed."""
    torch.manual_seed(cfg.train.seed)
    return _gated_vae(cfg, data_dim)


def load_trained(
    row: str, runs_dir: str | Path, data_dir: str | None = None
) -> tuple[LatticeMnistConfig, dict[str, torch.Tensor], torch.nn.Module, dict[str, Any]]:
    """A trained row as the analysis scripts under ``examples/`` read it: its config (as
    configured, no overrides, with the model section the checkpoint was trained with:
    :func:`trained_config`), the data, its model with the weights of
    ``<runs_dir>/lattice-mnist/<row>/best.pt`` in eval mode, and that checkpoint's dict. Raises
    FileNotFoundError or :class:`~qlatent.train.CheckpointError`, each naming the file, when the
    checkpoint is missing or unreadable or holds another model. Where the row's model config
    has changed since the run, what changed is printed on stderr."""
    path = Path(runs_dir) / "lattice-mnist" / row / "best.pt"
    checkpoint = load(path)
    if "model" not in checkpoint:
        raise CheckpointError(f"{path} holds no model weights")
    cfg, changes = trained_config(model_config(row, quick=False, overrides=[]), checkpoint, path)
    if changes:
        print(f"{path}: trained with {'; '.join(changes)}", file=sys.stderr)
    data = load_data(cfg, data_dir)
    model = build_model(cfg, data["test"].shape[1])
    load_weights(model, checkpoint["model"], path)
    return cfg, data, model.eval(), checkpoint


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
