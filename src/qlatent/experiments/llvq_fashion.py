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

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch

from .._size import check_size
from ..bottlenecks import build
from ..coding import compress, decompress, ideal_bits, unpack
from ..config import apply_mapping, to_dict
from ..data import load_fashion_mnist
from ..data.folder import load_image_folder
from ..eval import code_usage, reconstruction_rows
from ..losses import RateDistortionLoss
from ..models import Autoencoder, sized
from ..nn import SquaredError
from ..nn.conv import conv_decoder, conv_encoder
from ..results import RESULTS_DIR, cell, provenance, write_json, write_text
from ..train import TrainConfig, fit, load_weights, save_atomic
from . import custom
from ._cache import first_problem, problem, read_cache, refused

ROWS = ("vq", "vq_ema", "ll_vq", "ll_vq_dense")
SCHEDULES = ("reference", "constant")
#: the data sets a table is run on: FashionMNIST (the paper's), or an image folder read as the
#: file of that name in ``configs/llvq`` says
DATASETS = ("fashion", "celeba", "ffhq")
LABELS = {
    "vq": "VQ-VAE",
    "vq_ema": "VQ-VAE-EMA",
    "ll_vq": "LL-VQ-VAE (sparse, γ = +1)",
    "ll_vq_dense": "LL-VQ-VAE (dense, γ = −1)",
}

#: the paper's Table 5 (FashionMNIST): test MSE and number of embeddings used
PAPER = {
    "vq": {"test_mse": 0.013, "unique_codes": 32},
    "vq_ema": {"test_mse": 0.047, "unique_codes": 63_566},
    "ll_vq": {"test_mse": 0.009, "unique_codes": 1_781},
    "ll_vq_dense": {"test_mse": 0.007, "unique_codes": None},
}
#: the counts the reference code released (``experiments/reconstructions/*/*.json``)
RELEASED_COUNTS = {"vq": 17, "vq_ema": 201, "ll_vq": 457}


@dataclass
class DataConfig:
    name: Literal["fashion_mnist", "folder", "synthetic"] = "fashion_mnist"
    folder: str | None = None  #: the image folder for ``name = "folder"``
    image_size: int = 64  #: side of the square images read from a folder
    channels: int = 1
    val_size: int = 5000
    test_size: int = 10000  #: held out from a folder (FashionMNIST has its own test set)
    split_seed: int = 2
    synthetic_size: int = 160  #: images of the synthetic set (tests)


#: the data settings each of the table's data sets reads: FashionMNIST holds out ``val_size``
#: training images and tests on its own test set; the synthetic images are 28 × 28 and held out
#: like a folder's (:func:`load_data`)
DATA_READS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": custom.DATA_SETTINGS["fashion-mnist"],
    "folder": custom.DATA_SETTINGS["folder"],
    "synthetic": ("synthetic_size", "channels", "val_size", "test_size", "split_seed"),
}


@dataclass
class ModelConfig:
    bottleneck: str = "vq"
    latent_dim: int = 64
    hidden: list[int] = field(default_factory=lambda: [64])
    num_residual: int = 2
    bottleneck_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the checks of ``qlatent train``'s conv models and bottlenecks (sizes, at most 64
        # layers, a registered bottleneck whose args are a table): ValueError naming the key
        custom.ModelConfig(
            family="conv",
            hidden=self.hidden,
            latent_dim=self.latent_dim,
            num_residual=self.num_residual,
        )
        custom.BottleneckConfig(name=self.bottleneck, args=self.bottleneck_args)


@dataclass
class LLVQConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            epochs=5, batch_size=64, eval_batch_size=500, lr=1e-3, seed=2, keep="last"
        )
    )
    figure_images: int = 10


def model_config(
    name: str,
    schedule: str,
    *,
    quick: bool = False,
    dataset: str = "fashion",
    overrides: list[str] | None = None,
) -> LLVQConfig:
    """The row's run: ``configs/llvq/base.toml``, the row's file, the schedule's, the dataset's,
    ``quick.toml``, then command-line overrides, all in the schema of ``qlatent train``
    (:func:`~qlatent.experiments.custom.paper_config`), read into this table's config."""
    if name not in ROWS:
        raise ValueError(f"unknown row {name!r}; known: {list(ROWS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {list(SCHEDULES)}")
    parts = [name, f"schedule-{schedule}", *([] if dataset == "fashion" else [dataset])]
    parts += ["quick"] if quick else []
    run = custom.paper_config("llvq", parts, overrides)
    if overrides and run.data.name in DATA_READS:  # a --set data setting the data ignores
        custom.check_data_settings(
            run.data,
            reads=DATA_READS[run.data.name],
            defaults=custom.paper_config("llvq", parts).data,
            settings=tuple(f.name for f in fields(custom.DataConfig) if f.name != "name"),
        )
    return from_run_config(run)


@dataclass
class _EvalConfig:
    figure_images: int = 10  #: test images in the reconstruction figure

    def __post_init__(self) -> None:
        custom.check_positive(self, "", ("figure_images",))


def from_run_config(run: custom.RunConfig) -> LLVQConfig:
    """This table's config from a run described in the common schema; ValueError for what the
    table's pipeline cannot run (another model family, a rate term ...)."""
    m, d = run.model, run.data
    custom.require(
        {
            "data.name": (d.name, ("fashion-mnist", "folder", "synthetic")),
            "model.family": (m.family, ("conv",)),
            "model.likelihood": (m.likelihood, ("squared_error",)),
            "model.variance (0: the pipeline's)": (m.variance, (0.0,)),
            # the table's encoder is the reference's, its final LeakyReLU included
            "model.latent_activation (unset: the reference's LeakyReLU)": (
                m.latent_activation,
                (False,),
            ),
            "loss.rate_weight": (run.loss.rate_weight, (0.0,)),
            "loss.aux_weight": (run.loss.aux_weight, (1.0,)),
            "init_from": (run.init_from, (None,)),
            # no draw of the table's evaluation is seeded by it (its codes are coded with seed 0)
            "eval_seed": (run.eval_seed, (custom.RunConfig().eval_seed,)),
            "train.anneal_steps (no rate term to anneal)": (run.train.anneal_steps, (None,)),
        },
        "llvq",
    )
    data = DataConfig(
        name="fashion_mnist" if d.name == "fashion-mnist" else d.name,  # type: ignore[arg-type]
        folder=d.folder,
        image_size=d.image_size,
        channels=d.channels,
        val_size=d.val_size,
        test_size=d.test_size,
        split_seed=d.split_seed,
        synthetic_size=d.synthetic_size,
    )
    model = ModelConfig(
        bottleneck=run.bottleneck.name,
        latent_dim=m.latent_dim,
        hidden=list(m.hidden),
        num_residual=m.num_residual,
        bottleneck_args=dict(run.bottleneck.args),
    )
    figures = custom.paper_eval(_EvalConfig, run).figure_images
    channels, height, width = image_shape(data)  # sizes counted before the data is read
    check_size(lambda: _autoencoder(model, channels, channels * height * width))
    return LLVQConfig(data=data, model=model, train=run.train, figure_images=figures)


def data_config(*, quick: bool = False) -> DataConfig:
    """The table's data: FashionMNIST, or with ``quick`` the synthetic images of ``quick.toml``."""
    return model_config(ROWS[0], SCHEDULES[0], quick=quick).data


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


def build_model(cfg: ModelConfig, channels: int, pixels: int) -> Autoencoder:
    """Conv encoder → bottleneck on the ``(B, D, h, w)`` latent → conv decoder; the distortion
    Σ (x̂ − x)² / ``pixels`` (values per image) averages over a batch to mse(x̂, x). Sized on
    the meta device first (:func:`~qlatent._size.sized`)."""
    return sized(lambda: _autoencoder(cfg, channels, pixels))


def _autoencoder(cfg: ModelConfig, channels: int, pixels: int) -> Autoencoder:
    return Autoencoder(
        encoder=conv_encoder(channels, cfg.hidden, cfg.latent_dim, num_residual=cfg.num_residual),
        bottleneck=build(cfg.bottleneck, dim=cfg.latent_dim, **cfg.bottleneck_args),
        decoder=conv_decoder(cfg.latent_dim, cfg.hidden, channels, num_residual=cfg.num_residual),
        likelihood=SquaredError(variance=float(pixels)),
    )


#: the pixel values of every image set of these tables
VALUE_RANGE = (-0.5, 0.5)


def image_shape(cfg: DataConfig) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images :func:`load_data` gives for ``cfg``."""
    if cfg.name == "folder":
        return cfg.channels, cfg.image_size, cfg.image_size
    return (1 if cfg.name == "fashion_mnist" else cfg.channels), 28, 28


def is_checkpoint(ckpt: Any) -> bool:
    """Whether a loaded checkpoint was written by this experiment (by the config saved in it)."""
    run = ckpt.get("run_config") if isinstance(ckpt, dict) else None
    return (
        isinstance(run, dict)
        and isinstance(run.get("model"), dict)
        and "num_residual" in run["model"]
    )


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> Autoencoder:
    """The autoencoder of a checkpoint of this experiment, in eval mode, rebuilt from the
    resolved config that the training loop saved beside the weights (``run_config``); a config
    that describes no model, or weights that do not fit it, are one error naming ``path``."""
    try:
        saved = ckpt["run_config"]
        if isinstance(saved, dict):  # what the run recorded of its data is not a config field
            saved = {k: v for k, v in saved.items() if k != "derived"}
        cfg = apply_mapping(LLVQConfig(), saved)
        channels, height, width = image_shape(cfg.data)
        model = build_model(cfg.model, channels, channels * height * width)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: its saved config does not describe a model ({err})") from None
    load_weights(model, ckpt.get("model"), path)
    return model.eval()


def quantizer_size(bottleneck: torch.nn.Module) -> dict[str, int]:
    """Learned parameters, and the numbers that define the quantizer at test time (parameters
    plus an EMA codebook kept in a buffer; not the EMA's running counts and sums)."""
    trainable = sum(p.numel() for p in bottleneck.parameters())
    ema = getattr(bottleneck, "ema", None)
    return {
        "quantizer_params": trainable + (ema.codebook.numel() if ema is not None else 0),
        "quantizer_trainable_params": trainable,
    }


@torch.no_grad()
def test_mse(model: Autoencoder, x: torch.Tensor, batch_size: int = 500) -> float:
    """Mean squared error per pixel on the hard path."""
    model.eval()
    total = 0.0
    for xb in x.split(batch_size):
        total += (model.reconstruct(xb) - xb).square().sum().item()
    return total / x.numel()


#: what a cached evaluation must hold (:func:`~._cache.problem`): what the table reads
_METRIC_FIELDS = {
    "test_mse": "number",
    **dict.fromkeys(
        ("unique_codes_trainval", "total_vectors", "unique_codes_test", "total_vectors_test"),
        "integer",
    ),
    **dict.fromkeys(("quantizer_params", "quantizer_trainable_params"), "integer"),
}
#: what a cached coding of the test set that was coded must hold
_CODED_FIELDS = {"coded_bits_per_image": "number", "round_trip_exact": "flag"}


def run_row(
    name: str,
    schedule: str,
    cfg: LLVQConfig,
    data: dict[str, torch.Tensor],
    out_dir: Path,
    *,
    folder_split: str | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Train (or resume) one row under one schedule; score it (cached in ``eval.pt``).

    ``folder_split`` (:func:`~qlatent.experiments.custom.folder_split` of an image folder's
    data) is saved with the run, so that resuming it on a folder whose files changed since,
    and whose splits are drawn anew, is refused. Returns the row's metrics and its
    reconstructions of the first test images."""
    channels = data["train"].shape[1]
    pixels = data["train"][0].numel()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, channels, pixels)
    loss_fn = RateDistortionLoss(lmbda=0.0, aux_weight=1.0)
    split = {"train": data["train"], "val": data["val"]}
    run_config = to_dict(cfg)
    if folder_split is not None:
        run_config["derived"] = {"folder_split": folder_split}
    result = fit(model, split, cfg.train, out_dir=out_dir, loss_fn=loss_fn, run_config=run_config)

    cache, key = out_dir / "eval.pt", {"config": to_dict(cfg), "steps": result.history[-1]["step"]}
    metrics = read_cache(cache, {"key": key}, "metrics", _METRIC_FIELDS)
    if metrics is None:
        trainval = code_usage(model, [data["train"], data["val"]])
        test_usage = code_usage(model, [data["test"]])
        metrics = {
            "test_mse": test_mse(model, data["test"]),
            "unique_codes_trainval": trainval.unique_codes,
            "total_vectors": trainval.total_vectors,
            "unique_codes_test": test_usage.unique_codes,
            "total_vectors_test": test_usage.total_vectors,
            **quantizer_size(model.bottleneck),
        }
        spacing = getattr(model.bottleneck, "spacing", None)
        if spacing is not None:
            metrics["spacing_mean"] = spacing.mean().item()
            metrics["spacing_min"] = spacing.min().item()
            metrics["spacing_max"] = spacing.max().item()
        save_atomic({"key": key, "metrics": metrics}, cache)
    coding_cache = out_dir / "coding.pt"
    coding = read_cache(coding_cache, {"key": key}, "coding", {"coded": "flag"})
    wrong = problem(coding, _CODED_FIELDS, "coding") if coding and coding["coded"] else None
    if wrong:
        raise refused(coding_cache, wrong)
    if coding is None:
        coding = code_test_images(model, [data["train"], data["val"]], data["test"])
        save_atomic({"key": key, "coding": coding}, coding_cache)
    row = {
        **metrics,
        "coding": coding,
        "train_steps": result.history[-1]["step"],
        "wall_s": result.wall_s,
        "stopped": result.stopped,
        # the distortion is Σ (x̂ − x)² / pixels per image: the validation set's MSE per pixel
        "final_val_mse": result.history[-1]["val_distortion"],
        "val_mse_per_epoch": [h["val_distortion"] for h in result.history],
    }
    model.eval()
    with torch.no_grad():
        recon = model.reconstruct(data["test"][: cfg.figure_images])
    return row, recon


@torch.no_grad()
def code_test_images(
    model: Autoencoder, fit_on: list[torch.Tensor], test: torch.Tensor, batch_size: int = 500
) -> dict[str, Any]:
    """The test set's codes as one file: the bottleneck's counted code model is learned from
    ``fit_on`` (``update()``), then the test latents are compressed, decompressed and checked
    against the hard path. Bits per image include the header."""
    model.eval()
    neck = model.bottleneck
    try:
        neck.update(model.encoder(xb) for x in fit_on for xb in x.split(batch_size))
    except ValueError as err:  # e.g. a spacing so fine that a coordinate spans > 2^16 values
        return {"coded": False, "reason": str(err)}
    y = torch.cat([model.encoder(xb) for xb in test.split(batch_size)])
    started = time.perf_counter()
    data = compress(neck, y, seed=0)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    y_hat = decompress(neck, data)
    decode_s = time.perf_counter() - started
    n = test.shape[0]
    ideal = ideal_bits(neck, y, seed=0)
    return {
        "coded": True,
        "coded_bits_per_image": 8 * len(data) / n,
        "ideal_bits_per_image": ideal / n,
        "payload_bits": 8 * len(unpack(data)[1]),
        "ideal_bits": ideal,
        "payload_overhead_percent": 100 * (8 * len(unpack(data)[1]) - ideal) / ideal,
        "fixed_rate_bits_per_image": (
            y[:, 0].numel() / n * math.log2(neck.num_codes) if neck.index_kind == "scalar" else None
        ),
        "round_trip_exact": bool(torch.equal(y_hat, neck(y).y_hat)),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }


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


def _grid(results: dict[str, dict[str, Any]], images: int) -> str:
    """The latent grid the code counts ran over, from the vectors a row counted over
    ``images`` images: "14×14" for FashionMNIST, "32×32" for 64-pixel CelebA images."""
    row = next(row for rows in results.values() for row in rows.values())
    positions = row["total_vectors"] // images
    side = math.isqrt(positions)
    return f"{side}×{side}" if side * side == positions else f"{positions} latent"


#: the fields of a row that :func:`markdown_table` reads, and their kinds (None: a NaN or
#: infinity as the results file holds it, which the table shows as missing)
_ROW_FIELDS = {
    "test_mse": "number or None",
    "unique_codes_trainval": "integer",
    "unique_codes_test": "integer",
    "quantizer_params": "integer",
    "wall_s": "number or None",
    "coding": "table or missing",
}
#: the fields of the paper's row that :func:`markdown_table` reads
_PAPER_FIELDS = {
    "test_mse": "number or None or missing",
    "unique_codes": "integer or None or missing",
}


def _row_problem(row: Any, where: str) -> str | None:
    """What keeps the results row at ``where`` (``rows.<schedule>.<name>``) from being tabled,
    or None."""
    wrong = problem(row, _ROW_FIELDS, where)
    if wrong or "coding" not in row:
        return wrong
    coded = problem(row["coding"], {"coded": "flag or missing"}, f"{where}.coding")
    if coded or not row["coding"].get("coded"):
        return coded
    return problem(row["coding"], {"coded_bits_per_image": "number or None"}, f"{where}.coding")


def _payload_checks(payload: Any) -> Iterator[str | None]:
    """What keeps a results payload from being tabled (:func:`markdown_table`), checked in
    order (:func:`~._cache.first_problem`)."""
    yield problem(
        payload,
        {"rows": "table", "paper": "table", "reference_code_released_counts": "table"},
        "the payload",
    )
    for name, p in payload["paper"].items():
        yield problem(p, _PAPER_FIELDS, f"paper.{name}")
    for name, count in payload["reference_code_released_counts"].items():
        yield problem({name: count}, {name: "integer"}, "reference_code_released_counts")
    for schedule, rows in payload["rows"].items():
        yield problem({schedule: rows}, {schedule: "table"}, "rows")
        for name, row in rows.items():
            if name not in LABELS:
                yield f"rows.{schedule} holds the unknown row {name!r}; known: {list(LABELS)}"
            yield _row_problem(row, f"rows.{schedule}.{name}")


def markdown_table(payload: dict[str, Any]) -> str:
    """Per schedule: our test MSE and code counts beside the paper's and the released ones;
    ValueError naming the first field that keeps ``payload`` from being tabled."""
    wrong = first_problem(_payload_checks(payload))
    if wrong:
        raise ValueError(f"llvq results: {wrong}")
    lines = [
        "| schedule | model | test MSE | paper | codes (train+val) | paper | released "
        "| codes (test) | quantizer params | coded bits/image | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    paper, released = payload["paper"], payload["reference_code_released_counts"]
    for schedule, rows in payload["rows"].items():
        for name, r in rows.items():
            p = paper.get(name, {})
            rel = f"{released[name]:,}" if name in released else "–"
            coding = r.get("coding", {})
            bits = cell(coding["coded_bits_per_image"], ",.1f") if coding.get("coded") else "–"
            lines.append(
                f"| {schedule} | {LABELS[name]} | {cell(r['test_mse'], '.4f')} "
                f"| {cell(p.get('test_mse'), '.3f')} "
                f"| {r['unique_codes_trainval']:,} | {cell(p.get('unique_codes'), ',')} | {rel} "
                f"| {r['unique_codes_test']:,} | {r['quantizer_params']:,} | {bits} "
                f"| {cell(r['wall_s'], '.0f')} |"
            )
    return "\n".join(lines)
