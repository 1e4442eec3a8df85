"""The LL-VQ table's rows, schedules, paper numbers and configs, and its model: built from a config,
or rebuilt from a checkpoint's saved one. Used by :mod:`qlatent.experiments.llvq_fashion` (which
re-exports the public names) and its evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .._size import check_size
from ..bottlenecks import build
from ..config import apply_mapping
from ..models import Autoencoder, sized
from ..nn import SquaredError
from ..nn.conv import conv_decoder, conv_encoder
from ..train import TrainConfig, load_weights
from . import custom

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
#: like a folder's (:func:`~.llvq_fashion.load_data`)
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
    """``(C, H, W)`` of the images :func:`~.llvq_fashion.load_data` gives for ``cfg``."""
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
