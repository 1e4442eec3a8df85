"""LL-VQ-VAE's FashionMNIST table: learnable lattice against VQ-VAE and VQ-VAE-EMA.

Paper: A. Khalil, R. Piechocki, R. Santos-Rodriguez, "LL-VQ-VAE: Learnable Lattice
Vector-Quantization for Efficient Representations" (arXiv 2310.09382), Table 5. Protocol of its
official code (``../shared/notes/reference-protocols.md`` §C):

- FashionMNIST scaled to [−0.5, 0.5]; 55,000 train / 5,000 validation (a seeded split of the
  60,000 training images) / the official 10,000 test images;
- conv encoder to a 14×14×64 latent, mirror decoder (:mod:`qlatent.nn.conv`), loss
  ``mse(x̂, x) + quantizer loss`` (plain MSE over pixels, no rate term);
- D = 64, target K = 512, batch 64, Adam 1e-3, 5 epochs (4,300 steps), seed 2 for every row;
- rows ``vq`` (codebook U(±1/K)), ``vq_ema`` (codebook N(0, 1), decay 0.99), ``ll_vq`` (γ = +1,
  b ~ U(±B), B = 1/(K^{1/D} − 1)), ``ll_vq_dense`` (γ = −1, b ~ U(±1));
- two schedules: ``reference`` is the code's ``ExponentialLR(gamma=0)`` stepped per epoch, which
  sets the learning rate to 0 after the first epoch (so the released models had 860 steps of
  gradient training; the EMA codebook keeps moving), and ``constant`` keeps 1e-3 for all 5 epochs.

Per row and schedule we report the test MSE on the hard path, the distinct code vectors over
train+validation (the reference code's count) and over test, the number of quantized vectors,
training wall time and the quantizer's size (its learned parameters plus an EMA codebook).
``data = "folder"`` runs the same on a user's image folder (CelebA, FFHQ configs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import to_dict
from ..data import load_fashion_mnist
from ..data.folder import load_image_folder
from ..eval import reconstruction_rows
from ..results import RESULTS_DIR, provenance, write_json, write_text
from . import custom
from ._llvq_fashion_config import DATA_READS as DATA_READS
from ._llvq_fashion_config import (
    DATASETS,
    LABELS,
    PAPER,
    RELEASED_COUNTS,
    ROWS,
    SCHEDULES,
    VALUE_RANGE,
    DataConfig,
    model_config,
)
from ._llvq_fashion_config import LLVQConfig as LLVQConfig
from ._llvq_fashion_config import ModelConfig as ModelConfig
from ._llvq_fashion_config import build_model as build_model
from ._llvq_fashion_config import data_config as data_config
from ._llvq_fashion_config import from_run_config as from_run_config
from ._llvq_fashion_config import image_shape as image_shape
from ._llvq_fashion_config import is_checkpoint as is_checkpoint
from ._llvq_fashion_config import model_from_checkpoint as model_from_checkpoint
from ._llvq_fashion_eval import code_test_images as code_test_images
from ._llvq_fashion_eval import quantizer_size as quantizer_size
from ._llvq_fashion_eval import run_row
from ._llvq_fashion_eval import test_mse as test_mse
from ._llvq_fashion_results import _grid, markdown_table


def load_data(cfg: DataConfig, data_dir: str | None = None) -> dict[str, torch.Tensor]:
    """``train`` / ``val`` / ``test`` images ``(N, C, H, W)`` in [−0.5, 0.5]."""
    if cfg.name == "fashion_mnist":
        train, _ = load_fashion_mnist("train", data_dir)
        test, _ = load_fashion_mnist("test", data_dir)
        train = train.unsqueeze(1).float() / 255.0 - 0.5
        test = test.unsqueeze(1).float() / 255.0 - 0.5
        return _split(train, cfg.val_size, 0, cfg.split_seed) | {"test": test}
    if cfg.name == "folder":
        if not cfg.folder:
            raise ValueError("data.folder must name an image folder when data.name = 'folder'")
        images = load_image_folder(cfg.folder, size=cfg.image_size, channels=cfg.channels)
        return _split(images, cfg.val_size, cfg.test_size, cfg.split_seed)
    if cfg.name == "synthetic":
        g = torch.Generator().manual_seed(cfg.split_seed)
        # smooth blobs: low-resolution noise upsampled, so that reconstructions are learnable
        low = torch.rand(cfg.synthetic_size, cfg.channels, 7, 7, generator=g)
        images = torch.nn.functional.interpolate(low, size=28, mode="bilinear") - 0.5
        return _split(images, cfg.val_size, cfg.test_size, cfg.split_seed)
    raise ValueError(f"unknown data.name {cfg.name!r}")


def _split(images: torch.Tensor, val: int, test: int, seed: int) -> dict[str, torch.Tensor]:
    if val < 1 or test < 0 or val + test >= images.shape[0]:
        raise ValueError(
            f"cannot hold out {val} validation and {test} test images from {images.shape[0]}"
        )
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    parts = {"val": images[order[:val]], "train": images[order[val + test :]]}
    if test:
        parts["test"] = images[order[val : val + test]]
    return parts


def reproduce(
    *,
    quick: bool = False,
    models: list[str] | None = None,
    schedules: list[str] | None = None,
    dataset: str = "fashion",
    overrides: list[str] | None = None,
    data_dir: str | None = None,
    runs_dir: str | Path = "runs",
    results_dir: str | Path = RESULTS_DIR,
    command: str = "",
) -> dict[str, Any]:
    """Every row under every schedule (resumable); ``<results>/llvq-<dataset>[-quick].json``,
    a markdown table and a figure of test reconstructions per schedule."""
    custom.check_reproduce(
        quick=quick,
        overrides=overrides,
        runs_dir=runs_dir,
        results_dir=results_dir,
        data_dir=data_dir,
        command=command,
        models=models,
        schedules=schedules,
    )
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}: got {dataset!r}")
    stem = f"llvq-{dataset}" + ("-quick" if quick else "")
    models = list(models or ROWS)
    schedules = list(schedules or SCHEDULES)
    configs = {
        (s, m): model_config(m, s, quick=quick, dataset=dataset, overrides=overrides)
        for s in schedules
        for m in models
    }
    first = next(iter(configs.values()))
    data = load_data(first.data, data_dir)
    # a folder's splits are drawn from its file list: recorded, so a resume cannot re-split it
    split = custom.folder_split(first.data) if first.data.name == "folder" else None
    results: dict[str, dict[str, Any]] = {s: {} for s in schedules}
    results_dir = Path(results_dir)
    for schedule in schedules:
        figure = {"original": data["test"][: first.figure_images]}
        for name in models:
            print(f"== {LABELS[name]}, {schedule} schedule ==", flush=True)
            out_dir = Path(runs_dir) / stem / schedule / name
            row, recon = run_row(
                name, schedule, configs[schedule, name], data, out_dir, folder_split=split
            )
            results[schedule][name] = row
            figure[LABELS[name]] = recon
        reconstruction_rows(figure, results_dir / f"{stem}-{schedule}.png", value_range=VALUE_RANGE)
    payload: dict[str, Any] = {
        **provenance(command),
        "rows": results,
        "paper": {m: PAPER[m] for m in models} if dataset == "fashion" else {},
        "reference_code_released_counts": (
            {m: RELEASED_COUNTS[m] for m in models if m in RELEASED_COUNTS}
            if dataset == "fashion"
            else {}
        ),
        "schedules": {
            "reference": "ExponentialLR(gamma=0) stepped per epoch: lr 1e-3 in epoch 1, then 0 "
            "(the EMA codebook keeps updating; weights are frozen)",
            "constant": "lr 1e-3 for every epoch",
        },
        "counts_note": "unique_codes_trainval: distinct quantized vectors over every "
        f"{_grid(results, len(data['train']) + len(data['val']))} position of the "
        "train+validation images (the reference code's count); "
        "unique_codes_test: the same over the test set",
        "data": to_dict(first.data),
        "configs": {f"{s}/{m}": to_dict(c) for (s, m), c in configs.items()},
    }
    write_json(payload, results_dir / f"{stem}.json")
    write_text(markdown_table(payload) + "\n", results_dir / f"{stem}.md")
    return payload
