"""Any bottleneck, any model family, any dataset, from one config file.

What ``qlatent train CONFIG`` and ``qlatent eval CHECKPOINT`` run. A config is a TOML file of plain
values; every key is optional (the defaults are the lattice paper's MNIST model) and every key is
checked before anything is loaded or trained, so a typo is one line naming it::

    [data]        # every dataset gives images (N, C, H, W) in [0, 1]
    name = "binarized-mnist"   # "mnist", "fashion-mnist", "folder", "synthetic"
    folder = "..."             # with name = "folder": every image under it, recursively
    image_size = 28            # folder: side of the centre-cropped square
    channels = 1               # folder: 1 (grey) or 3 (RGB)
    val_size = 5000            # held out for validation (mnist, fashion-mnist, folder)
    test_size = 1000           # held out for testing (folder; the others have their test sets)

    [model]
    family = "gated_mlp"       # "relu_mlp" (both on flattened images) or "conv" (strided convs
                               #  and residual layers; hidden = channel widths, one per halving)
    hidden = [300, 300]
    latent_dim = 40            # the code's dimension (conv: channels per position)
    likelihood = "bernoulli"   # or "squared_error": Σ (x̂ − x)² / variance, x̂ = sigmoid(output)
    variance = 0.0             # squared_error's variance; 0: the training images' variance

    [bottleneck]
    name = "lattice"           # any registered bottleneck (``qlatent train --list``)
    args = { }                 # its keyword arguments, e.g. { num_codes = 512 }

    [loss]
    rate_weight = 1.0          # λ (β) on the rate; warm-up is train.warmup_epochs
    aux_weight = 1.0           # on the bottleneck's auxiliary loss (codebook, commitment ...)

    [train]                    # qlatent.train.TrainConfig: epochs, batch_size, lr, optimizer ...

The encoder's output width is the bottleneck's ``in_dim`` (2·latent_dim for ``gaussian``,
latent_dim + K for ``soft_vq`` ...), so one line changes the method.
"""

from __future__ import annotations

import json
import math
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..bottlenecks import BOTTLENECKS, build
from ..config import apply_mapping, apply_overrides, to_dict
from ..losses import RateDistortionLoss, evaluate_objective
from ..models import Autoencoder
from ..nn import Bernoulli, SquaredError, gated_mlp
from ..nn.conv import conv_decoder, conv_encoder
from ..nn.mlp import relu_mlp
from ..results import provenance, write_json
from ..train import TrainConfig, fit, load_weights

DATASETS = ("binarized-mnist", "mnist", "fashion-mnist", "folder", "synthetic")
FAMILIES = ("gated_mlp", "relu_mlp", "conv")


@dataclass
class DataConfig:
    name: Literal["binarized-mnist", "mnist", "fashion-mnist", "folder", "synthetic"] = (
        "binarized-mnist"
    )
    folder: str | None = None
    image_size: int = 28
    channels: int = 1
    val_size: int = 5000
    test_size: int = 1000
    split_seed: int = 0
    synthetic_size: int = 600

    def __post_init__(self) -> None:
        _positive(self, "data", ("image_size", "val_size", "synthetic_size"))
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels!r}")
        if not isinstance(self.test_size, int) or self.test_size < 1:
            raise ValueError(f"data.test_size must be a positive integer, got {self.test_size!r}")


@dataclass
class ModelConfig:
    family: Literal["gated_mlp", "relu_mlp", "conv"] = "gated_mlp"
    hidden: list[int] = field(default_factory=lambda: [300, 300])
    latent_dim: int = 40
    num_residual: int = 2
    likelihood: Literal["bernoulli", "squared_error"] = "bernoulli"
    variance: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "model", ("latent_dim",))
        if (
            not isinstance(self.hidden, list)
            or not self.hidden
            or not all(
                isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in self.hidden
            )
        ):
            raise ValueError(
                f"model.hidden must be a list of positive integers, got {self.hidden!r}"
            )
        if not isinstance(self.num_residual, int) or self.num_residual < 0:
            raise ValueError(f"model.num_residual must be >= 0, got {self.num_residual!r}")
        if not (isinstance(self.variance, int | float) and 0 <= self.variance < math.inf):
            raise ValueError(f"model.variance must be >= 0 (0: the data's), got {self.variance!r}")


@dataclass
class BottleneckConfig:
    name: str = "lattice"
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in BOTTLENECKS.names():
            raise ValueError(
                f"bottleneck.name {self.name!r} is not registered; known: {BOTTLENECKS.names()}"
            )
        if not isinstance(self.args, dict):
            raise ValueError(f"bottleneck.args must be a table, got {self.args!r}")
        if "dim" in self.args:
            raise ValueError("bottleneck.args must not set dim: it is model.latent_dim")


@dataclass
class LossConfig:
    rate_weight: float = 1.0
    aux_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("rate_weight", "aux_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {value!r}")


@dataclass
class RunConfig:
    """A whole run; saved in every checkpoint (``run_config``) and as ``config.json``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10))
    eval_seed: int = 2020  #: seed of the test-time dithers and of the coded files
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        if not isinstance(self.out_dir, str) or not self.out_dir.strip():
            raise ValueError("out_dir must name a folder")


def _positive(section: Any, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(section, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{prefix}.{name} must be a positive integer, got {value!r}")


# ------------------------------------------------------------------------------ config files
def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """The defaults, the TOML file at ``path`` (if any), then ``key=value`` overrides.

    Raises ValueError with one line naming the file or the key for an unreadable file, bad TOML,
    an unknown key, a value of the wrong type, or a bottleneck that rejects its arguments.
    """
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ValueError(f"cannot read config {path}: {err.strerror or err}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"config {path} is not valid TOML: {err}") from None
        cfg = _apply(lambda c: apply_mapping(c, table), cfg, f"config {path}")
    cfg = _apply(lambda c: apply_overrides(c, overrides or []), cfg, "--set")
    # checks across keys, once every key is set
    if cfg.data.name == "folder" and not cfg.data.folder:
        raise ValueError("data.folder must name an image folder when data.name = 'folder'")
    check_bottleneck(cfg)
    return cfg


def _apply(step, cfg: RunConfig, where: str) -> RunConfig:
    try:
        return step(cfg)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


def check_bottleneck(cfg: RunConfig) -> None:
    """Build the bottleneck once so that a bad argument fails before any data is read."""
    try:
        build(cfg.bottleneck.name, dim=cfg.model.latent_dim, **cfg.bottleneck.args)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"bottleneck {cfg.bottleneck.name!r} with args {cfg.bottleneck.args}: {err}"
        ) from None


def components() -> str:
    """What ``qlatent train --list`` prints."""
    return "\n".join(
        [
            f"datasets (data.name):       {', '.join(DATASETS)}",
            f"model families (model.family): {', '.join(FAMILIES)}",
            "likelihoods (model.likelihood): bernoulli, squared_error",
            f"bottlenecks (bottleneck.name): {', '.join(BOTTLENECKS.names())}",
        ]
    )


# ------------------------------------------------------------------------------------- data
def load_data(
    cfg: DataConfig, data_dir: str | None = None, *, progress: bool = True
) -> dict[str, Tensor]:
    """``train`` / ``val`` / ``test`` images ``(N, C, H, W)`` in [0, 1], float32 (``progress``:
    a bar while an image folder is read)."""
    from ..data import binarized_mnist, load_fashion_mnist, load_mnist
    from ..data.folder import load_image_folder

    if cfg.name == "binarized-mnist":
        splits = binarized_mnist(data_dir)
        return {k: v.view(-1, 1, 28, 28) for k, v in splits.items()}
    if cfg.name in ("mnist", "fashion-mnist"):
        loader = load_mnist if cfg.name == "mnist" else load_fashion_mnist
        train = loader("train", data_dir)[0].unsqueeze(1).float() / 255.0
        test = loader("test", data_dir)[0].unsqueeze(1).float() / 255.0
        return _split(train, cfg.val_size, 0, cfg.split_seed) | {"test": test}
    if cfg.name == "folder":
        images = load_image_folder(
            cfg.folder, size=cfg.image_size, channels=cfg.channels, progress=progress
        )
        images = images + 0.5
        return _split(images, cfg.val_size, cfg.test_size, cfg.split_seed)
    # synthetic: smooth blobs (low-resolution noise upsampled), learnable in a few steps
    g = torch.Generator().manual_seed(cfg.split_seed)
    low = torch.rand(cfg.synthetic_size, cfg.channels, 7, 7, generator=g)
    images = torch.nn.functional.interpolate(low, size=28, mode="bilinear").clamp(0, 1)
    n = cfg.synthetic_size
    return _split(images, max(1, n // 6), max(1, n // 6), cfg.split_seed)


def _split(images: Tensor, val: int, test: int, seed: int) -> dict[str, Tensor]:
    return {k: images[v] for k, v in _split_indices(images.shape[0], val, test, seed).items()}


def _split_indices(n: int, val: int, test: int, seed: int) -> dict[str, Tensor]:
    if val + test >= n:
        raise ValueError(f"cannot hold out {val} validation and {test} test images from {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = {"val": order[:val], "train": order[val + test :]}
    if test:
        parts["test"] = order[val : val + test]
    return parts


def load_labels(cfg: DataConfig, data_dir: str | None = None) -> dict[str, Tensor]:
    """The class labels of :func:`load_data`'s splits, in the same order (MNIST, FashionMNIST
    and binarized MNIST); ValueError for data without labels."""
    from ..data import load_fashion_mnist, load_mnist
    from ..data.datasets import N_VAL

    if cfg.name in ("folder", "synthetic"):
        raise ValueError(f"data.name = {cfg.name!r} has no class labels for the downstream tasks")
    loader = load_fashion_mnist if cfg.name == "fashion-mnist" else load_mnist
    train, test = loader("train", data_dir)[1], loader("test", data_dir)[1]
    if cfg.name == "binarized-mnist":  # the last N_VAL training images are its validation set
        return {"train": train[:-N_VAL], "val": train[-N_VAL:], "test": test}
    index = _split_indices(train.shape[0], cfg.val_size, 0, cfg.split_seed)
    return {k: train[v] for k, v in index.items()} | {"test": test}


def prepare(cfg: RunConfig, images: dict[str, Tensor]) -> dict[str, Tensor]:
    """The images as the model family takes them: flattened for the MLPs."""
    if cfg.model.family == "conv":
        return images
    return {k: v.flatten(1) for k, v in images.items()}


# ------------------------------------------------------------------------------------ model
def build_model(cfg: RunConfig, image_shape: tuple[int, int, int], variance: float) -> Autoencoder:
    """Encoder → bottleneck → decoder for images of ``image_shape`` ``(C, H, W)``.

    ``variance``: the training images' variance, used by ``squared_error`` when
    ``model.variance`` is 0."""
    m = cfg.model
    neck = build(cfg.bottleneck.name, dim=m.latent_dim, **cfg.bottleneck.args)
    channels, height, width = image_shape
    if m.family == "conv":
        halvings = len(m.hidden)
        if height % 2**halvings or width % 2**halvings:
            raise ValueError(
                f"model.hidden has {halvings} halvings, which do not divide images of "
                f"{height}×{width}"
            )
        encoder = conv_encoder(channels, m.hidden, neck.in_dim, num_residual=m.num_residual)
        decoder = conv_decoder(
            m.latent_dim, m.hidden, channels, num_residual=m.num_residual, final_activation=False
        )
    else:
        mlp = gated_mlp if m.family == "gated_mlp" else relu_mlp
        size = channels * height * width
        encoder = mlp([size, *m.hidden, neck.in_dim])
        decoder = mlp([m.latent_dim, *m.hidden[::-1], size])
    if m.likelihood == "bernoulli":
        likelihood = Bernoulli()
    else:
        likelihood = SquaredError(variance=m.variance or max(variance, 1e-12), link="sigmoid")
    return Autoencoder(encoder, neck, decoder, likelihood)


def is_checkpoint(ckpt: Any) -> bool:
    """Whether a loaded checkpoint was written by ``qlatent train CONFIG``."""
    run = ckpt.get("run_config") if isinstance(ckpt, dict) else None
    return isinstance(run, dict) and isinstance(run.get("bottleneck"), dict) and "loss" in run


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint"):
    """``(model in eval mode, RunConfig)`` from a checkpoint of :func:`train` (or ``update``)."""
    try:
        run = dict(ckpt["run_config"])
        derived = run.pop("derived")
        cfg = apply_mapping(RunConfig(), run)
        shape = tuple(int(v) for v in derived["image_shape"])
        model = build_model(cfg, shape, float(derived["data_variance"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: its saved config does not describe a model ({err})") from None
    load_weights(model, ckpt["model"], path)
    return model.eval(), cfg


# ------------------------------------------------------------------------------------ train
def train(
    cfg: RunConfig, *, data_dir: str | None = None, fresh: bool = False, command: str = ""
) -> dict[str, Any]:
    """Train (resuming from ``out_dir/last.pt`` unless ``fresh``), then evaluate on the test
    set and write ``config.json``, ``summary.json``, ``training_curves.png`` and
    ``reconstructions.png`` beside the checkpoints. Returns the summary."""
    from ..eval import training_curves

    out_dir = Path(cfg.out_dir)
    images = load_data(cfg.data, data_dir, progress=cfg.train.progress)
    shape = tuple(images["train"].shape[1:])
    variance = float(images["train"].var())
    data = prepare(cfg, images)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg, shape, variance)
    loss_fn = RateDistortionLoss(lmbda=cfg.loss.rate_weight, aux_weight=cfg.loss.aux_weight)
    # saved in every checkpoint: the config, and what rebuilding the model needs from the data
    run_config = to_dict(cfg) | {"derived": {"image_shape": list(shape), "data_variance": variance}}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(to_dict(cfg), out_dir / "config.json")
    result = fit(
        model,
        data,
        cfg.train,
        out_dir=out_dir,
        loss_fn=loss_fn,
        run_config=run_config,
        resume=not fresh,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return {}  # under torchrun, rank 0 alone evaluates and writes the summary
    training_curves(result.history, out_dir / "training_curves.png", title=_title(cfg))
    report = evaluate(model, cfg, data, shape, out_dir=out_dir)
    summary = {
        **provenance(command),
        "config": to_dict(cfg),
        "train": {
            "epochs": len(result.history),
            "best_epoch": result.best_epoch,
            "stopped": result.stopped,
            "wall_s": result.wall_s,
        },
        "test": report,
    }
    write_json(summary, out_dir / "summary.json")
    return summary


def _title(cfg: RunConfig) -> str:
    return f"{cfg.bottleneck.name} · {cfg.model.family} · {cfg.data.name}"


# ------------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate(
    model: Autoencoder,
    cfg: RunConfig,
    data: dict[str, Tensor],
    image_shape: tuple[int, ...],
    *,
    out_dir: Path | None = None,
    iwae_samples: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """What fits the model, on ``data["test"]`` (nats per image unless named otherwise):

    * training path (dither / noise) and hard path (``eval()``): distortion and rate; at
      ``rate_weight`` 1 their sum on the training path is the negative ELBO;
    * IWAE NLL with ``iwae_samples`` samples where the bottleneck has a density view
      (``posterior_sample`` and ``log_prior``);
    * for a discrete bottleneck with a code model: the test set written to a real ``.qlc``
      stream (bits per image) and read back exactly;
    * for codebooks: codes used and their perplexity on the hard path.
    """
    from ..eval import iwae_nll, iwae_summary, reconstruction_rows

    model.eval()
    x = data["test"]
    loss_fn = RateDistortionLoss(lmbda=cfg.loss.rate_weight, aux_weight=cfg.loss.aux_weight)
    gen = lambda k: torch.Generator().manual_seed(cfg.eval_seed + k)  # noqa: E731
    report: dict[str, Any] = {"images": int(x.shape[0])}
    for key, hard in (("training_path", False), ("hard_path", True)):
        parts = evaluate_objective(
            model, loss_fn, x, batch_size=cfg.train.eval_batch_size, hard=hard, generator=gen(hard)
        )
        report[key] = {
            "distortion": parts["distortion"].mean().item(),
            "rate": parts["rate"].mean().item(),
            "total": (parts["distortion"] + parts["rate"]).mean().item(),
        }
    neck = model.bottleneck
    if iwae_samples and hasattr(neck, "posterior_sample") and hasattr(neck, "log_prior"):
        nll = iwae_nll(model, x, num_samples=iwae_samples, generator=gen(2), progress=progress)
        report["iwae"] = iwae_summary(nll)
        report["iwae_samples"] = iwae_samples
    report["coded"] = _coded_size(model, x, cfg.eval_seed)
    if getattr(neck, "index_kind", None) == "scalar":  # codebooks: one index per position
        report["codes"] = _code_stats(model, x)
    if out_dir is not None:
        sample = x[:10]
        recon = model.reconstruct(sample, generator=gen(3)).view(-1, *image_shape)
        reconstruction_rows(
            {"test image": sample.view(-1, *image_shape), "hard path": recon},
            out_dir / "reconstructions.png",
        )
    return report


def _coded_size(model: Autoencoder, x: Tensor, seed: int) -> dict[str, Any] | None:
    """The test set as a real file: its size and whether it decodes to the hard path."""
    from ..coding import code_model
    from ..image_coding import compress_images, decompress_images

    try:
        code_model(model.bottleneck)
    except (TypeError, ValueError) as err:
        return {"available": False, "why": str(err)}
    started = time.perf_counter()
    data = compress_images(model, x, seed=seed)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    decoded = decompress_images(model, data)
    decode_s = time.perf_counter() - started
    if decoded.shape != x.shape:
        raise RuntimeError(f"decoded {tuple(decoded.shape)} images, expected {tuple(x.shape)}")
    return {
        "available": True,
        "bytes": len(data),
        "bits_per_image": 8 * len(data) / max(1, x.shape[0]),
        "encode_s": encode_s,
        "decode_s": decode_s,
    }


def _code_stats(model: Autoencoder, x: Tensor) -> dict[str, Any]:
    """Codes used on the hard path and the perplexity exp(H) of their usage."""
    counts: Tensor | None = None
    for xb in x.split(1000):
        symbols = model.bottleneck.quantize(model.encoder(xb), generator=torch.Generator())
        flat = symbols.reshape(-1).long()
        c = torch.bincount(flat)
        counts = c if counts is None else _add_counts(counts, c)
    if counts is None or counts.sum() == 0:
        return {"used": 0, "perplexity": 0.0}
    p = counts[counts > 0].double() / counts.sum()
    return {"used": int((counts > 0).sum()), "perplexity": math.exp(-(p * p.log()).sum().item())}


def _add_counts(a: Tensor, b: Tensor) -> Tensor:
    n = max(a.numel(), b.numel())
    return torch.nn.functional.pad(a, (0, n - a.numel())) + torch.nn.functional.pad(
        b, (0, n - b.numel())
    )


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as a few readable lines."""
    t, h = report["training_path"], report["hard_path"]
    lines = [
        f"test set, {report['images']} images, nats per image:",
        f"  training path: distortion {t['distortion']:.3f}  rate {t['rate']:.3f}  "
        f"sum {t['total']:.3f}",
        f"  hard path:     distortion {h['distortion']:.3f}  rate {h['rate']:.3f}  "
        f"sum {h['total']:.3f}",
    ]
    if "iwae" in report:
        i = report["iwae"]
        lines.append(
            f"  IWAE NLL: {i['mean']:.3f} ± {i['se']:.3f} ({report['iwae_samples']} samples)"
        )
    coded = report.get("coded")
    if coded and coded.get("available"):
        lines.append(
            f"  coded file: {coded['bits_per_image']:.2f} bits per image "
            f"({coded['bits_per_image'] * math.log(2):.2f} nats; {coded['bytes']:,} bytes), "
            "decoded back"
        )
    elif coded:
        lines.append(f"  coded: no code model ({coded['why']})")
    if "downstream" in report:
        d = report["downstream"]
        lines.append(
            f"  downstream: k-means accuracy {100 * d['kmeans_acc']:.2f}%, NMI {d['nmi']:.3f}, "
            f"linear probe {100 * d['linear_acc']:.2f}%"
        )
    if "codes" in report:
        codes = report["codes"]
        lines.append(f"  codes used: {codes['used']}, perplexity {codes['perplexity']:.1f}")
    return "\n".join(lines)


def eval_checkpoint(
    checkpoint: str | Path,
    *,
    data_dir: str | None = None,
    iwae_samples: int = 0,
    limit: int | None = None,
    downstream: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate` for a checkpoint written by ``qlatent train CONFIG``; with
    ``downstream``, also :func:`downstream_scores` (data with class labels only)."""
    from ..image_coding import read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    if not is_checkpoint(ckpt):
        raise ValueError(
            f"{checkpoint} was not written by `qlatent train CONFIG` (no run config with "
            "data, model, bottleneck and loss sections)"
        )
    model, cfg = model_from_checkpoint(ckpt, checkpoint)
    images = load_data(cfg.data, data_dir)
    data = prepare(cfg, images)
    if limit is not None:
        data = {k: v[:limit] for k, v in data.items()}
    shape = tuple(images["test"].shape[1:])
    labels = load_labels(cfg.data, data_dir) if downstream else None  # refuse before the work
    report = evaluate(model, cfg, data, shape, iwae_samples=iwae_samples, progress=progress)
    if labels is not None:
        if limit is not None:
            labels = {k: v[:limit] for k, v in labels.items()}
        report["downstream"] = downstream_scores(model, data, labels, progress=progress)
    return {
        "checkpoint": str(checkpoint),
        "epoch": ckpt.get("epoch"),
        "config": to_dict(cfg),
        **report,
    }


@torch.no_grad()
def downstream_scores(
    model: Autoencoder,
    data: dict[str, Tensor],
    labels: dict[str, Tensor],
    *,
    n_init: int = 10,
    probe_steps: int = 5000,
    progress: bool = True,
) -> dict[str, Any]:
    """k-means accuracy and NMI on the test features, and a linear probe trained on the train
    features (``qlatent.eval.downstream_report``); the features are the encoder's outputs,
    flattened. Fewer k-means initialisations and probe steps than the Soft VQ-VAE table (100
    and 30,000): a quick look, not a reproduction."""
    from ..eval import downstream_report

    model.eval()
    features = {
        k: torch.cat([model.encoder(xb).flatten(1) for xb in data[k].split(1000)])
        for k in ("train", "test")
    }
    report = downstream_report(
        features["train"],
        labels["train"],
        features["test"],
        labels["test"],
        n_init=n_init,
        probe_steps=probe_steps,
        progress=progress,
    )
    return dict(report)


def dumps(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)


__all__ = [
    "BottleneckConfig",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "RunConfig",
    "build_model",
    "components",
    "eval_checkpoint",
    "evaluate",
    "format_report",
    "is_checkpoint",
    "load_config",
    "load_data",
    "model_from_checkpoint",
    "train",
]
