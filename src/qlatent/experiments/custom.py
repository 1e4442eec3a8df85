"""Any bottleneck, any model family, any dataset, from one config file.

What ``qlatent train CONFIG`` and ``qlatent eval CHECKPOINT`` run. A config is a TOML file of plain
values; every key is optional (the defaults are the lattice paper's MNIST model) and every key is
checked before anything is loaded or trained, so a typo is one line naming it::

    [data]        # image datasets give (N, C, H, W) in [0, 1]; text ones token ids
    name = "binarized-mnist"   # "mnist", "fashion-mnist", "folder", "synthetic", "text-en",
                               #  "synthetic-text"
    folder = "..."             # with name = "folder": every image under it, recursively
    image_size = 28            # folder: side of the centre-cropped square
    channels = 1               # folder, synthetic: 1 (grey) or 3 (RGB)
    val_size = 5000            # held out for validation (mnist, fashion-mnist, folder)
    test_size = 1000           # held out for testing (folder; the others have their test sets)
    split_seed = 0             # the draw of those splits (all but binarized-mnist and text-en,
                               #  whose splits are fixed)
    synthetic_size = 600       # synthetic, synthetic-text: items, split 4:1:1
    vocab_size = 8000          # text: the most frequent training words kept (others: UNK)
    max_tokens = 20            # text: longer sentences are left out

    # a new run refuses a split or image setting its data does not read (DATA_SETTINGS), a
    # model setting its family does not read (MODEL_SETTINGS), and a loss weight or annealing
    # its bottleneck leaves without effect (CONSTANT_RATE, NO_AUX_LOSS): check_new_run

    [model]
    family = "gated_mlp"       # "relu_mlp" (both on flattened images), "conv" (strided convs
                               #  and residual layers; hidden = channel widths, one per halving)
                               #  or "text_gru" (text only; hidden = [encoder, decoder] widths)
    hidden = [300, 300]
    latent_dim = 40            # the code's dimension (conv: channels per position)
    likelihood = "bernoulli"   # or "squared_error": Σ (x̂ − x)² / variance, x̂ = sigmoid(output)
    variance = 0.0             # squared_error's variance; 0: the training images' variance
    embed = 128                # text_gru: word embedding size
    layers = 1                 # text_gru: GRU layers
    latent_activation = false  # conv: end the encoder in the LL-VQ reference's LeakyReLU

    [bottleneck]
    name = "lattice"           # any registered bottleneck (``qlatent train --list``)
    args = { }                 # its keyword arguments, e.g. { num_codes = 512 }

    [loss]
    rate_weight = 1.0          # λ (β) on the rate; warm-up: train.warmup_epochs, train.anneal_steps
    aux_weight = 1.0           # on the bottleneck's auxiliary loss (codebook, commitment ...)

    [train]                    # qlatent.train.TrainConfig: epochs, batch_size, lr, optimizer ...

    eval_seed = 2020           # the test-time dithers and the coded files
    out_dir = "runs/train"
    init_from = "..."          # a checkpoint whose matching weights start the model (warm start)

The encoder's output width is the bottleneck's ``in_dim`` (2·latent_dim for ``gaussian``,
latent_dim + K for ``soft_vq`` ...), so one line changes the method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import stat
import time
import tomllib
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from .._size import check_size
from .._utils import MAX_WEIGHT, check_folder, expanded
from ..bottlenecks import BOTTLENECKS, build
from ..config import apply_mapping, apply_overrides, to_dict
from ..data import DataError
from ..losses import RateDistortionLoss, evaluate_objective
from ..models import Autoencoder, sized
from ..nn import Bernoulli, SquaredError, gated_mlp
from ..nn.conv import conv_decoder, conv_encoder
from ..nn.mlp import relu_mlp
from ..results import provenance, write_json
from ..train import TrainConfig, fit, load_weights
from ..train.distributed import launched_as_main
from ..train.lock import hold
from ..train.loop import check_seed, check_tensorboard

DatasetName = Literal[
    "binarized-mnist", "mnist", "fashion-mnist", "folder", "synthetic", "text-en", "synthetic-text"
]
FamilyName = Literal["gated_mlp", "relu_mlp", "conv", "text_gru"]
DATASETS = get_args(DatasetName)
FAMILIES = get_args(FamilyName)
TEXT_DATA = ("text-en", "synthetic-text")


@dataclass
class DataConfig:
    """The data of a run. Which settings each data set reads (:data:`DATA_SETTINGS`): the
    binarized MNIST split is fixed (50,000 / 10,000 / the 10,000 test images); MNIST and
    FashionMNIST hold out ``val_size`` training images by ``split_seed`` and test on their test
    set; a folder reads every setting of images; synthetic images split 4:1:1 by
    ``split_seed``; ``text-en`` is split by document, fixed; ``synthetic-text`` splits 4:1:1 by
    ``split_seed``. A new run that sets a split or image setting its data does not read to
    another value than its default is refused (:func:`check_data_settings`)."""

    name: DatasetName = "binarized-mnist"
    folder: str | None = None
    image_size: int = 28
    channels: int = 1
    val_size: int = 5000
    test_size: int = 1000
    split_seed: int = 0
    synthetic_size: int = 600
    vocab_size: int = 8000  #: text: the most frequent training words kept (others are UNK)
    max_tokens: int = 20  #: text: longer sentences are left out

    def __post_init__(self) -> None:
        check_choice(self.name, "data.name", DATASETS)
        check_positive(self, "data", ("image_size", "val_size", "synthetic_size", "vocab_size"))
        check_positive(self, "data", ("max_tokens",))
        if self.synthetic_size < 3:  # one item each for train, val and test
            raise ValueError(f"data.synthetic_size must be at least 3, got {self.synthetic_size}")
        check_seed(self.split_seed, "data.split_seed")
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels!r}")
        if not isinstance(self.test_size, int) or self.test_size < 1:
            raise ValueError(f"data.test_size must be a positive integer, got {self.test_size!r}")


#: the data settings each data set reads (the others it ignores)
DATA_SETTINGS: dict[str, tuple[str, ...]] = {
    "binarized-mnist": (),
    "mnist": ("val_size", "split_seed"),
    "fashion-mnist": ("val_size", "split_seed"),
    "folder": ("folder", "image_size", "channels", "val_size", "test_size", "split_seed"),
    "synthetic": ("synthetic_size", "channels", "split_seed"),
    "text-en": ("vocab_size", "max_tokens"),
    "synthetic-text": ("synthetic_size", "split_seed", "vocab_size", "max_tokens"),
}


#: the settings that say which images a run sees and how they are split: one its data ignores
#: is refused (:func:`check_data_settings`); the sizes of the synthetic sets and the text
#: settings a config may carry for other data
SPLIT_SETTINGS = ("folder", "image_size", "channels", "val_size", "test_size", "split_seed")


def check_data_settings(
    cfg: Any,
    *,
    reads: tuple[str, ...] | None = None,
    defaults: Any = None,
    settings: tuple[str, ...] = SPLIT_SETTINGS,
) -> None:
    """ValueError naming a setting of ``settings`` that ``cfg.name``'s data does not read
    (``reads``; by default :data:`DATA_SETTINGS`) but that is set to another value than its
    default (in ``defaults``; by default :class:`DataConfig`'s): the run would not see what it
    says (a ``data.split_seed`` on binarized MNIST trained on the same fixed split as every
    other seed; a ``data.folder`` without ``name = "folder"`` on MNIST). A paper table passes
    its own data's reads and defaults, and every setting (its configs are no templates)."""
    reads = DATA_SETTINGS[cfg.name] if reads is None else reads
    defaults = DataConfig() if defaults is None else defaults
    for name in settings:
        if name in reads:
            continue
        value = getattr(cfg, name)
        if value != getattr(defaults, name):
            listed = ", ".join(f"data.{k}" for k in reads) or "none of them"
            raise ValueError(
                f"data.{name} = {value!r} has no effect on data.name = {cfg.name!r}, which "
                f"reads {listed}; leave it out"
            )


#: the range of a loss weight and of ``model.variance``, as the loss and the likelihood take
#: them (a float32 loss scaled by more overflows)
MIN_WEIGHT = 1e-30

#: the most layers a model config may ask for (``hidden``'s length, ``num_residual``, ``layers``)
MAX_LAYERS = 64


@dataclass
class ModelConfig:
    family: FamilyName = "gated_mlp"
    hidden: list[int] = field(default_factory=lambda: [300, 300])
    latent_dim: int = 40
    num_residual: int = 2
    embed: int = 128  #: text_gru: word embedding size
    layers: int = 1  #: text_gru: GRU layers of the encoder and of the decoder
    likelihood: Literal["bernoulli", "squared_error"] = "bernoulli"
    variance: float = 0.0
    #: conv: end the encoder in a LeakyReLU after its last 1×1 convolution, as the LL-VQ-VAE
    #: reference code (and that table) does. It scales every negative latent by 0.01: a
    #: Gaussian's μ and log σ², a lattice's or Soft VQ's input; so by default the encoder of
    #: ``qlatent train`` ends in the convolution. Checkpoints from before this setting were
    #: trained with the LeakyReLU and are rebuilt with it (:func:`legacy_run_config`).
    latent_activation: bool = False

    def __post_init__(self) -> None:
        check_choice(self.family, "model.family", FAMILIES)
        if not isinstance(self.latent_activation, bool):
            raise ValueError(
                f"model.latent_activation must be true or false, got {self.latent_activation!r}"
            )
        check_choice(self.likelihood, "model.likelihood", ("bernoulli", "squared_error"))
        check_positive(self, "model", ("latent_dim", "embed", "layers"))
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
        # a config (or a checkpoint's saved one) of 100,000 layers built modules for minutes
        for name, depth in [
            ("hidden", len(self.hidden)),
            ("num_residual", self.num_residual),
            ("layers", self.layers),
        ]:
            if depth > MAX_LAYERS:
                raise ValueError(
                    f"model.{name} asks for {depth:,} layers, more than the {MAX_LAYERS} "
                    "a model may have here"
                )
        if not (
            isinstance(self.variance, int | float)
            and not isinstance(self.variance, bool)
            and (self.variance == 0 or MIN_WEIGHT <= self.variance <= MAX_WEIGHT)
        ):
            raise ValueError(
                f"model.variance must be 0 (the data's) or lie in [{MIN_WEIGHT:g}, "
                f"{MAX_WEIGHT:g}], got {self.variance!r}"
            )


#: the model settings each family reads (the others it ignores); ``variance`` is read by the
#: ``squared_error`` likelihood only
MODEL_SETTINGS: dict[str, tuple[str, ...]] = {
    "gated_mlp": ("hidden", "latent_dim", "likelihood", "variance"),
    "relu_mlp": ("hidden", "latent_dim", "likelihood", "variance"),
    "conv": ("hidden", "latent_dim", "num_residual", "likelihood", "variance", "latent_activation"),
    "text_gru": ("hidden", "latent_dim", "embed", "layers"),
}


def check_model_settings(cfg: ModelConfig) -> None:
    """ValueError naming a model setting that ``cfg.family`` does not read
    (:data:`MODEL_SETTINGS`; ``variance`` without ``likelihood = "squared_error"``) but that is
    set to another value than its default: ``--set model.num_residual=1`` on an MLP table, or
    ``model.latent_activation`` on the text model, was recorded and changed nothing. The paper
    tables (``qlatent reproduce``) check their runs with it, ``qlatent train`` its new runs
    (:func:`check_new_run`)."""
    reads = MODEL_SETTINGS[cfg.family]
    if cfg.likelihood != "squared_error":
        reads = tuple(k for k in reads if k != "variance")
    defaults = ModelConfig()
    for f in fields(ModelConfig):
        if f.name == "family" or f.name in reads:
            continue
        value = getattr(cfg, f.name)
        if value != getattr(defaults, f.name):
            family = f"model.family = {cfg.family!r}"
            if "likelihood" in reads:
                family += f" with model.likelihood = {cfg.likelihood!r}"
            raise ValueError(
                f"model.{f.name} = {value!r} has no effect on {family}, which reads "
                f"{', '.join(f'model.{k}' for k in reads)}; leave it out"
            )


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
            if not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and 0 <= value <= MAX_WEIGHT
            ):
                raise ValueError(
                    f"loss.{name} must be a number in [0, {MAX_WEIGHT:g}], got {value!r}"
                )


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
    #: a checkpoint whose weights start the model where names and shapes match (a warm start;
    #: ignored when resuming)
    init_from: str | None = None
    #: evaluation settings of a paper table's pipeline (``qlatent reproduce`` reads them, e.g.
    #: ``iwae_samples``; ``qlatent train`` evaluates with its own)
    eval: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.out_dir, str) or not self.out_dir.strip():
            raise ValueError("out_dir must name a folder")
        check_eval_seed(self.eval_seed, "eval_seed")
        if not isinstance(self.eval, dict):
            raise ValueError(f"eval must be a table, got {self.eval!r}")


#: the bottlenecks whose training-path rate carries no gradient: a constant (log K of a codebook
#: index) or none at all (zeros). The rate weight λ, and its annealing, scale a term whose
#: gradient is zero, so the weights train the same at every λ (the validation objective that
#: picks the best epoch is at weight 1 whatever λ is)
CONSTANT_RATE = ("identity", "learnable_lattice", "soft_em_vq", "soft_vq", "vq", "vq_ema")
#: the bottlenecks without an auxiliary loss (their ``aux_loss`` is zero): ``loss.aux_weight``
#: scales nothing, unless the argument :data:`AUX_LOSS_OPTIONS` names is set
NO_AUX_LOSS = (
    *("gaussian", "gaussian_dither", "gaussian_lattice", "identity", "info_dropout"),
    *("lattice", "scalar_st", "vector_st"),
)
#: the bottlenecks of :data:`NO_AUX_LOSS` that have one when an argument is set (not ``None``):
#: the straight-through quantizers' VQ-style codebook + commitment terms (DESIGN.md §3.3)
AUX_LOSS_OPTIONS = {"scalar_st": "commitment", "vector_st": "commitment"}


def has_aux_loss(cfg: BottleneckConfig) -> bool:
    """Whether the bottleneck ``cfg`` builds has an auxiliary loss for ``loss.aux_weight``."""
    option = AUX_LOSS_OPTIONS.get(cfg.name)
    return cfg.name not in NO_AUX_LOSS or (option is not None and cfg.args.get(option) is not None)


def check_loss_settings(cfg: RunConfig, *, shared_schedule: bool = False) -> None:
    """ValueError naming a loss or schedule setting that ``cfg.bottleneck`` leaves without
    effect, set to another value than its default: ``loss.rate_weight`` with a bottleneck of
    :data:`CONSTANT_RATE` (a "sweep" of λ on ``vq`` trained the same weights at every λ),
    ``loss.aux_weight`` with one of :data:`NO_AUX_LOSS` (unless :func:`has_aux_loss`), and
    ``train.anneal_steps`` where the rate it anneals has no gradient (such a bottleneck, or
    ``loss.rate_weight = 0``).
    ``shared_schedule``: the run is one point of a sweep whose points share one schedule
    (``text-rd``'s fine-tuning, its no-bottleneck point included), so the annealing is kept.

    ``train.warmup_epochs`` is not refused: besides scaling λ it keeps the warm-up epochs out
    of early stopping's count (``train.patience``, which a resumed run may set)."""
    name, loss, defaults = cfg.bottleneck.name, cfg.loss, LossConfig()
    if name in CONSTANT_RATE and loss.rate_weight != defaults.rate_weight:
        raise ValueError(
            f"loss.rate_weight = {loss.rate_weight!r} has no effect on bottleneck.name = "
            f"{name!r}, whose training rate is a constant without gradient; leave it out"
        )
    if not has_aux_loss(cfg.bottleneck) and loss.aux_weight != defaults.aux_weight:
        raise ValueError(
            f"loss.aux_weight = {loss.aux_weight!r} has no effect on bottleneck.name = "
            f"{name!r}, which has no auxiliary loss"
            + (
                f" unless bottleneck.args.{AUX_LOSS_OPTIONS[name]} is set"
                if name in AUX_LOSS_OPTIONS
                else ""
            )
            + "; leave it out"
        )
    if cfg.train.anneal_steps is not None and not shared_schedule:
        if name in CONSTANT_RATE or loss.rate_weight == 0:
            why = (
                "loss.rate_weight = 0"
                if loss.rate_weight == 0
                else f"bottleneck.name = {name!r}, whose training rate has no gradient"
            )
            raise ValueError(
                f"train.anneal_steps = {cfg.train.anneal_steps!r} has no effect with {why}: "
                "it anneals the rate weight only; leave it out"
            )


def check_new_run(cfg: RunConfig, *, shared_schedule: bool = False) -> None:
    """The checks of a new run of ``qlatent train CONFIG`` (a resumed one runs as it began):
    no data setting its data ignores (:func:`check_data_settings`), no model setting its
    family ignores (:func:`check_model_settings`), no loss or schedule setting its bottleneck
    ignores (:func:`check_loss_settings`); ValueError naming the setting."""
    check_data_settings(cfg.data)
    check_model_settings(cfg.model)
    check_loss_settings(cfg, shared_schedule=shared_schedule)


#: the most samples or repeats a paper table's evaluation takes per image or per model (its
#: protocols take 1 to 30,000; beyond this an evaluation would run for days after the training)
MAX_EVAL_COUNT = 1 << 20


def check_positive(
    section: Any, prefix: str, names: tuple[str, ...], *, at_most: int | None = None
) -> None:
    """Each field ``names`` of ``section`` is an integer >= 1 (and <= ``at_most``); ValueError
    naming ``prefix.name`` (``name`` alone where ``prefix`` is empty) otherwise."""
    for name in names:
        value = getattr(section, name)
        key = f"{prefix}.{name}" if prefix else name
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if at_most is not None and value > at_most:
            raise ValueError(f"{key} must be at most {at_most:,}, got {value:,}")


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    """``value`` is one of ``choices``; ValueError naming ``name`` otherwise (a config built in
    Python is not parsed: a misspelt choice fell through to another branch without a word)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_eval_seed(seed: Any, name: str, *, below: int = 2**63) -> None:
    """An evaluation's seed: an integer in [0, ``below``) (the evaluations add small offsets to
    it, which must stay within torch's seeds); ValueError naming ``name`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < below:
        bound = f"2^{below.bit_length() - 1}"
        raise ValueError(f"{name} must be an integer in [0, {bound}), got {seed!r}")


# ------------------------------------------------------------------------------ config files
#: the largest config file read (a paper table's base and row files are a few kB)
_MAX_CONFIG_BYTES = 1 << 20


def _read_config_text(path: Path) -> str:
    """The text of the config file at ``path``: a regular file of at most
    :data:`_MAX_CONFIG_BYTES` (a FIFO would block and a device or a huge file fill the memory:
    ValueError before reading)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"config {path} is not a regular file")
    if info.st_size > _MAX_CONFIG_BYTES:
        raise ValueError(
            f"config {path} has {info.st_size:,} bytes, more than a config's {_MAX_CONFIG_BYTES:,}"
        )
    with path.open("rb") as f:
        return f.read(_MAX_CONFIG_BYTES + 1).decode("utf-8")


def load_config(
    path: str | Path | list[str | Path] | None, overrides: list[str] | None = None
) -> RunConfig:
    """The defaults, the TOML file at ``path`` (if any; several files are merged in order,
    table by table, as a paper table's base and row files are), then ``key=value`` overrides.

    Raises ValueError with one line naming the file or the key for an unreadable file, bad TOML,
    an unknown key, a value of the wrong type, or a bottleneck that rejects its arguments.
    """
    cfg = RunConfig()
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    table: dict[str, Any] = {}
    for item in map(Path, paths):
        try:
            table = _merge(table, tomllib.loads(_read_config_text(item)))
        except OSError as err:
            raise ValueError(f"cannot read config {item}: {err.strerror or err}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"config {item} is not valid TOML: {err}") from None
        except RecursionError:
            raise ValueError(f"config {item} is not valid TOML: nested too deeply") from None
    if paths:
        where = "config " + " + ".join(map(str, paths))
        cfg = _apply(lambda c: apply_mapping(c, table), cfg, where)
    cfg = _apply(lambda c: apply_overrides(c, overrides or []), cfg, "--set")
    # checks across keys, once every key is set
    if cfg.data.name == "folder" and not cfg.data.folder:
        raise ValueError("data.folder must name an image folder when data.name = 'folder'")
    if (cfg.model.family == "text_gru") != (cfg.data.name in TEXT_DATA):
        raise ValueError(
            f"model.family = 'text_gru' goes with text data ({', '.join(TEXT_DATA)}) and only "
            f"with it; got model.family = {cfg.model.family!r} and data.name = {cfg.data.name!r}"
        )
    if cfg.model.latent_activation and cfg.model.family != "conv":
        raise ValueError(
            f"model.latent_activation is for the conv family's encoder; model.family = "
            f"{cfg.model.family!r} ends in its own output layer"
        )
    if cfg.model.family == "text_gru" and len(cfg.model.hidden) != 2:
        raise ValueError(
            "model.hidden must be [encoder width per direction, decoder width] for text_gru, "
            f"got {cfg.model.hidden}"
        )
    check_model(cfg)
    return cfg


def paper_config(
    experiment: str, parts: list[str], overrides: list[str] | None = None
) -> RunConfig:
    """A paper table's run in this schema: the defaults, ``configs/<experiment>/base.toml`` (the
    table's shared protocol), then each of ``parts`` (the row's file, a schedule's, ``quick``)
    merged table by table, then ``key=value`` overrides; the bottleneck is built once, counted
    on the meta device (:func:`check_bottleneck`). Errors as :func:`load_config`'s."""
    from ..configs import load

    table: dict[str, Any] = {}
    for part in ("base", *parts):
        table = _merge(table, load(experiment, part))
    where = f"config {experiment}/{'+'.join(parts) or 'base'}"
    cfg = _apply(lambda c: apply_mapping(c, table), RunConfig(), where)
    cfg = _apply(lambda c: apply_overrides(c, overrides or []), cfg, "--set")
    if cfg.data.folder is not None and cfg.data.name != "folder":
        # a table that reads no folder trained on its own data whatever folder was named
        raise ValueError(
            f"data.folder = {cfg.data.folder!r} has no effect on data.name = "
            f"{cfg.data.name!r} ({where}); leave it out"
        )
    if cfg.out_dir != RunConfig().out_dir:  # each row's folder is under the table's --runs-dir
        raise ValueError(
            f"out_dir = {cfg.out_dir!r} has no effect on {experiment}: its rows' runs go under "
            "--runs-dir; leave it out"
        )
    check_model_settings(cfg.model)
    check_model(cfg)
    return cfg


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; tables present in both merge key by key, except ``args`` (a
    bottleneck's arguments are stated whole)."""
    out = dict(base)
    for key, value in top.items():
        if key != "args" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def paper_eval(cls: type, run: RunConfig, **defaults: Any):
    """The pipeline's evaluation config ``cls`` from ``run.eval`` (keys named ``eval.*`` in
    errors), starting from ``defaults``."""
    try:
        return apply_mapping(cls(**defaults), run.eval)
    except (TypeError, ValueError) as err:
        raise ValueError(f"eval: {err}") from None


def require(checks: dict[str, tuple[Any, Any]], table: str) -> None:
    """Refuse a run that sets a key to a value the pipeline of ``table`` cannot honour:
    ``checks`` maps a key to (its value, the allowed values)."""
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise ValueError(f"{table} runs {key} = {list(allowed)} only, got {value!r}")


def fixed_data(data: DataConfig) -> dict[str, tuple[Any, Any]]:
    """:func:`require` checks for a table whose data sets are its own (MNIST's fixed split, a
    synthetic set of its own size and shape drawn from ``train.seed``): the data keys it does
    not read stay at the schema's defaults, where a value set was recorded and changed nothing."""
    default = DataConfig()
    return {
        f"data.{name}": (getattr(data, name), (getattr(default, name),))
        for name in (
            *("split_seed", "synthetic_size", "channels", "image_size", "test_size"),
            *("vocab_size", "max_tokens"),  # text settings: no image table reads them
        )
    }


def _apply(step, cfg: RunConfig, where: str) -> RunConfig:
    try:
        return step(cfg)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


def check_names(names: Any, argument: str) -> list[str] | None:
    """A list of row names as the tables' ``reproduce`` take it (None: the default rows): a
    list of distinct names, one at least; the tables themselves refuse an unknown name. A string
    would be read letter by letter, an empty list would run the default rows."""
    if names is None:
        return None
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{argument} must be a list of names or None, got {names!r}")
    if not names:
        raise ValueError(f"{argument} must name at least one (None: the defaults), got []")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{argument} names {', '.join(twice)} more than once")
    return list(names)


def check_reproduce(
    *,
    quick: Any,
    overrides: Any,
    runs_dir: Any,
    results_dir: Any,
    data_dir: Any,
    command: Any,
    **names: Any,
) -> None:
    """The arguments the tables' ``reproduce`` share, checked before anything is trained:
    ``quick`` a bool, ``overrides`` None or a list of ``key=value`` strings, each folder
    (``data_dir`` may be None) one that exists or can be made (no regular file on its path),
    ``command`` a string (recorded in the results) and each of ``names`` as :func:`check_names`
    takes it."""
    if not isinstance(command, str):
        raise TypeError(f"command must be a string (the command recorded), got {command!r}")
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be True or False, got {quick!r}")
    if overrides is not None and (
        not isinstance(overrides, list | tuple) or not all(isinstance(o, str) for o in overrides)
    ):
        raise TypeError(f"overrides must be a list of 'key=value' strings, got {overrides!r}")
    folders = [("runs_dir", runs_dir), ("results_dir", results_dir)]
    if data_dir is not None:
        folders.append(("data_dir", data_dir))
    for argument, folder in folders:
        if not isinstance(folder, str | Path):
            raise TypeError(f"{argument} must name a folder, got {folder!r}")
        check_folder(folder, argument)
    for argument, value in names.items():
        check_names(value, argument)


def image_shape(data: DataConfig) -> tuple[int, int, int] | None:
    """The ``(C, H, W)`` of the images ``data`` names, known from the config alone (``None``
    for text)."""
    if data.name in TEXT_DATA:
        return None
    if data.name == "folder":
        return data.channels, data.image_size, data.image_size
    return (data.channels if data.name == "synthetic" else 1), 28, 28


def check_model(cfg: RunConfig) -> None:
    """The bottleneck (:func:`check_bottleneck`), then for image data the whole model, counted
    on the meta device from the config's image shape: an image size or width past
    :data:`~qlatent._size.MAX_MODEL_NUMBERS` fails before a folder of images is read
    and resized (text models are sized by the vocabulary the data gives, counted later)."""
    check_bottleneck(cfg)
    shape = image_shape(cfg.data)
    if shape is not None:
        check_size(lambda: _assemble(cfg, shape, 1.0, None))


def check_bottleneck(cfg: RunConfig) -> None:
    """Build the bottleneck once, counted first on the meta device (:func:`sized`), so that a
    bad argument or a size past :data:`~qlatent._size.MAX_MODEL_NUMBERS` fails before any
    data is read."""
    try:
        sized(
            lambda: build(cfg.bottleneck.name, dim=cfg.model.latent_dim, **cfg.bottleneck.args),
            "the bottleneck",
        )
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"bottleneck {cfg.bottleneck.name!r} with args {cfg.bottleneck.args}: {err}"
        ) from None


def components() -> str:
    """What ``qlatent train --list`` prints: the registered parts, and where the paper tables'
    config files are installed (``src/qlatent/configs`` in a checkout, under site-packages in
    an installed package), each table a folder of a ``base.toml`` and one file per row."""
    from importlib import resources

    folder = resources.files("qlatent.configs")
    tables = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name[0] != "_")
    return "\n".join(
        [
            f"datasets (data.name):       {', '.join(DATASETS)}",
            f"model families (model.family): {', '.join(FAMILIES)}",
            "likelihoods (model.likelihood): bernoulli, squared_error",
            f"bottlenecks (bottleneck.name): {', '.join(BOTTLENECKS.names())}",
            f"paper-table configs (train BASE ROW): {folder}/TABLE/*.toml, TABLE one of "
            f"{', '.join(tables)}",
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
    from ..data.sources import check_fits

    check_fits(
        cfg.synthetic_size * cfg.channels * 28 * 28,
        4,
        f"{cfg.synthetic_size:,} synthetic images of {cfg.channels} × 28 × 28 float32",
        "data.synthetic_size",
    )
    g = torch.Generator().manual_seed(cfg.split_seed)
    low = torch.rand(cfg.synthetic_size, cfg.channels, 7, 7, generator=g)
    images = torch.nn.functional.interpolate(low, size=28, mode="bilinear").clamp(0, 1)
    n = cfg.synthetic_size
    return _split(images, max(1, n // 6), max(1, n // 6), cfg.split_seed)


def _split(images: Tensor, val: int, test: int, seed: int) -> dict[str, Tensor]:
    return {k: images[v] for k, v in _split_indices(images.shape[0], val, test, seed).items()}


def _split_indices(n: int, val: int, test: int, seed: int) -> dict[str, Tensor]:
    if val + test >= n:
        raise ValueError(
            f"cannot hold out {val} validation and {test} test images from {n} "
            "(data.val_size, data.test_size)"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts = {"val": order[:val], "train": order[val + test :]}
    if test:
        parts["test"] = order[val : val + test]
    return parts


def folder_split(cfg: DataConfig) -> str:
    """SHA-256 of the files of ``cfg.folder`` as :func:`load_data` splits them: each split's
    files, in split order, by their path under the folder. ``cfg`` is this schema's data
    section or the LL-VQ table's (:mod:`~qlatent.experiments.llvq_fashion`), which split a
    folder the same way.

    A run on a folder records it (``derived.folder_split``): the split is a permutation of the
    sorted file list, drawn again whenever the folder is read, so one image added, removed or
    renamed re-draws every split, and the test images of the new split are mostly the run's
    training images. Only the file names are read (what the split depends on), no image: a
    folder moved, or its images re-encoded under the same names, still matches."""
    from ..data.folder import image_files

    root, files = expanded(cfg.folder), image_files(cfg.folder)
    index = _split_indices(len(files), cfg.val_size, cfg.test_size, cfg.split_seed)
    digest = hashlib.sha256()
    for split in ("train", "val", "test"):
        digest.update(split.encode())
        for i in index[split].tolist():
            digest.update(b"\0" + os.fsencode(files[i].relative_to(root)))
    return digest.hexdigest()


def check_folder_split(cfg: DataConfig, derived: dict[str, Any]) -> None:
    """DataError unless ``cfg.folder`` still splits into the files the run recorded
    (:func:`folder_split`); nothing for other data, whose splits their seeds fix, nor for a run
    that recorded none."""
    recorded = derived.get("folder_split") if isinstance(derived, dict) else None
    if cfg.name == "folder" and recorded is not None and folder_split(cfg) != recorded:
        raise DataError(
            f"the image folder {cfg.folder} no longer holds the images it was trained on (files "
            "added, removed or renamed since): its splits would be drawn anew, the test images "
            "mostly the run's training images"
        )


def checkpoint_data(cfg: DataConfig, derived: Any) -> DataConfig:
    """The data section of a checkpoint's run, to read its data again (``eval``, ``compress
    --data checkpoint-*``, ``update``): a folder the config names by a relative path is read
    from where the run found it (``derived.folder_path``, absolute), so that the checkpoint
    needs nothing else from any working folder; where that folder is gone, the configured path
    as given. DataError unless the folder still splits as the run recorded
    (:func:`check_folder_split`)."""
    if cfg.name == "folder" and isinstance(derived, dict) and cfg.folder:
        recorded = derived.get("folder_path")
        try:
            found = isinstance(recorded, str) and Path(recorded).is_dir()
            relative = not expanded(cfg.folder).is_absolute()
        except (OSError, ValueError):  # a recorded path that names nothing this system has
            found = False
        if found and relative:
            cfg = dataclasses.replace(cfg, folder=recorded)
    check_folder_split(cfg, derived if isinstance(derived, dict) else {})
    return cfg


#: the synthetic sentences' words: subject, verb, object, place (a small regular language)
_SUBJECTS = ("the cat", "a dog", "the old man", "my sister", "the bird", "a child")
_VERBS = ("sees", "likes", "follows", "paints", "finds", "hears")
_OBJECTS = ("the ball", "a red house", "the river", "some bread", "the moon", "a green tree")
_PLACES = ("", "in the park", "at night", "near the sea", "every day")


_LANGUAGE = (_SUBJECTS, _VERBS, _OBJECTS, _PLACES)
#: the sentences of that language: 6 · 6 · 6 · 5
SYNTHETIC_SENTENCES = math.prod(map(len, _LANGUAGE))


def _synthetic_sentence(index: int) -> list[str]:
    """Sentence ``index`` (0 … :data:`SYNTHETIC_SENTENCES` − 1) of the synthetic language, its
    words then ".": the index read as one digit per part of the sentence."""
    words = []
    for part in _LANGUAGE:
        index, k = divmod(index, len(part))
        words += part[k].split()
    return words + ["."]


def _synthetic_text(n: int, seed: int) -> dict[str, list[list[str]]]:
    """``n`` distinct sentences of a small regular language, drawn by ``seed`` and split 4:1:1
    (tests and smoke runs). No sentence is in two splits: drawn with replacement, a third of
    the test sentences of 600 were training sentences too. ValueError naming
    ``data.synthetic_size`` past the language's :data:`SYNTHETIC_SENTENCES`."""
    from ..data.sources import check_fits

    # about 0.6 KB a sentence as a Python list of word strings
    check_fits(n, 640, f"{n:,} synthetic sentences", "data.synthetic_size")
    if n > SYNTHETIC_SENTENCES:
        raise ValueError(
            f"data.synthetic_size must be at most {SYNTHETIC_SENTENCES:,} for synthetic-text "
            f"(the sentences of its language, each in one split), got {n:,}"
        )
    order = torch.randperm(SYNTHETIC_SENTENCES, generator=torch.Generator().manual_seed(seed))
    lines = [_synthetic_sentence(k) for k in order[:n].tolist()]
    cut = max(1, n // 6)
    return {"val": lines[:cut], "test": lines[cut : 2 * cut], "train": lines[2 * cut :]}


def load_text_data(cfg: DataConfig, data_dir: str | None = None, *, words: list[str] | None = None):
    """``(splits, vocabulary)``: ``train`` / ``val`` / ``test`` as ``(N, max_tokens + 1)``
    int64 token ids (words, EOS, PAD) of the sentences of at most ``max_tokens`` words, and the
    :class:`~qlatent.data.text.Vocabulary` of the ``vocab_size`` most frequent training words
    (or of ``words``, a saved one)."""
    from ..data.sources import check_fits
    from ..data.text import MAX_TOKENS, Vocabulary, load_text

    if cfg.name == "text-en":
        splits = load_text(data_dir)
    else:
        splits = _synthetic_text(cfg.synthetic_size, cfg.split_seed)
    splits = {k: [s for s in v if len(s) <= cfg.max_tokens] for k, v in splits.items()}
    count = sum(map(len, splits.values()))
    check_fits(
        count * (cfg.max_tokens + 1),
        8,
        f"{count:,} sentences of {cfg.max_tokens:,} tokens as int64 ids",
        "the most tokens per sentence (data.max_tokens)",
    )
    if cfg.max_tokens > MAX_TOKENS:  # every sentence is padded to it: minutes of padding
        raise DataError(
            f"data.max_tokens must be at most {MAX_TOKENS} (no text dataset here has longer "
            f"sentences; more only pads them), got {cfg.max_tokens:,}"
        )
    for name, sentences in splits.items():
        if not sentences:
            raise DataError(
                f"the {name} split has no sentence of at most data.max_tokens = "
                f"{cfg.max_tokens} words"
            )
    if words is None:
        vocab = Vocabulary.build(splits["train"], cfg.vocab_size)
    else:
        vocab = Vocabulary(words)
    return {k: vocab.encode(v, cfg.max_tokens) for k, v in splits.items()}, vocab


def load_labels(cfg: DataConfig, data_dir: str | None = None) -> dict[str, Tensor]:
    """The class labels of :func:`load_data`'s splits, in the same order (MNIST, FashionMNIST
    and binarized MNIST); ValueError for data without labels."""
    from ..data import load_fashion_mnist, load_mnist
    from ..data.datasets import N_VAL

    if cfg.name in ("folder", "synthetic", *TEXT_DATA):
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
def build_model(
    cfg: RunConfig,
    image_shape: tuple[int, ...],
    variance: float,
    *,
    vocabulary: int | None = None,
) -> Autoencoder:
    """Encoder → bottleneck → decoder for images of ``image_shape`` ``(C, H, W)``, or the
    sentence autoencoder (``text_gru``) over ``vocabulary`` words (reserved ids excluded).

    ``variance``: the training images' variance, used by ``squared_error`` when
    ``model.variance`` is 0. Sizes come from configs and checkpoints: a model that would hold
    more than :data:`~qlatent._size.MAX_MODEL_NUMBERS` numbers raises ValueError before
    anything is allocated (:func:`~qlatent._size.sized`)."""
    if (
        not isinstance(image_shape, tuple)
        or len(image_shape) != (0 if cfg.model.family == "text_gru" else 3)
        or not all(isinstance(v, int) and v > 0 for v in image_shape)
    ):
        raise ValueError(f"image shape must be (channels, height, width), got {image_shape!r}")

    return sized(lambda: _assemble(cfg, image_shape, variance, vocabulary))


def _assemble(
    cfg: RunConfig, image_shape: tuple[int, ...], variance: float, vocabulary: int | None
) -> Autoencoder:
    """:func:`build_model`'s model, built on the default device."""
    m = cfg.model
    neck = build(cfg.bottleneck.name, dim=m.latent_dim, **cfg.bottleneck.args)
    if m.family == "text_gru":
        from ..models.text import TextAutoencoder
        from ..nn.text import TextModelConfig

        text = TextModelConfig(
            vocab_size=vocabulary or cfg.data.vocab_size,
            max_tokens=cfg.data.max_tokens,
            embed=m.embed,
            encoder_hidden=m.hidden[0],
            encoder_layers=m.layers,
            code_dim=m.latent_dim,
            decoder_hidden=m.hidden[1],
            decoder_layers=m.layers,
        )
        return TextAutoencoder(neck, text)
    channels, height, width = image_shape
    if m.family == "conv":
        halvings = len(m.hidden)
        if height % 2**halvings or width % 2**halvings:
            raise ValueError(
                f"model.hidden has {halvings} halvings, which do not divide images of "
                f"{height}×{width}"
            )
        encoder = conv_encoder(
            channels,
            m.hidden,
            neck.in_dim,
            num_residual=m.num_residual,
            final_activation=m.latent_activation,
        )
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


def legacy_run_config(run: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's saved config as today's schema reads it: a conv model saved before
    ``model.latent_activation`` existed was trained with the encoder's final LeakyReLU, so it
    gets ``latent_activation = true`` (rebuilt without it, its encoder would compute another
    function of the same weights). ``run`` itself is left as it is."""
    model = run.get("model")
    if isinstance(model, dict) and model.get("family") == "conv":
        if "latent_activation" not in model:
            return run | {"model": model | {"latent_activation": True}}
    return run


def check_resumed_architecture(cfg: RunConfig, last: Path) -> None:
    """ValueError where the run in ``last`` (its ``last.pt``) was trained with the conv
    encoder's final LeakyReLU from before ``model.latent_activation``, and ``cfg`` would resume
    it without: the resume would go on with another encoder on the same weights. Nothing where
    the checkpoint cannot be read (the loop names that)."""
    if cfg.model.family != "conv" or cfg.model.latent_activation:
        return
    try:
        saved = torch.load(last, map_location="cpu", weights_only=True).get("run_config")
    except Exception:  # noqa: BLE001 -- an unreadable checkpoint is the loop's to report
        return
    if isinstance(saved, dict) and legacy_run_config(saved) is not saved:
        raise ValueError(
            f"{last} was trained with the conv encoder's final LeakyReLU (saved before "
            "model.latent_activation existed): resume it with --set model.latent_activation=true"
        )


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "checkpoint"):
    """``(model in eval mode, RunConfig)`` from a checkpoint of :func:`train` (or ``update``);
    a config from before a setting reads as it was trained (:func:`legacy_run_config`)."""
    try:
        run = legacy_run_config(dict(ckpt["run_config"]))
        derived = run.pop("derived")
        cfg = apply_mapping(RunConfig(), run)
        shape = tuple(int(v) for v in derived["image_shape"])
        words = derived.get("vocabulary")
        if cfg.model.family == "text_gru" and not (isinstance(words, list) and words):
            # an empty list fell back to data.vocab_size; none read sentences as images
            raise ValueError(
                "a sentence model needs its saved vocabulary, a list of words; got "
                + (
                    "none"
                    if words is None
                    else "an empty list"
                    if isinstance(words, list)
                    else f"a {type(words).__name__}"
                )  # fmt: skip
            )
        if cfg.model.family != "text_gru" and words is not None:
            raise ValueError(f"a {cfg.model.family} model has no vocabulary, yet one is saved")
        vocabulary = None if words is None else len(words)
        model = build_model(cfg, shape, float(derived["data_variance"]), vocabulary=vocabulary)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: its saved config does not describe a model ({err})") from None
    load_weights(model, ckpt["model"], path)
    return model.eval(), cfg


# ------------------------------------------------------------------------------------ train
#: what :func:`train` writes beside the checkpoints once trained (a text run draws no
#: reconstructions); those of the run in its folder go with the first checkpoint it writes
RESULT_FILES = ("summary.json", "training_curves.png", "reconstructions.png")


def train(
    cfg: RunConfig,
    *,
    data_dir: str | None = None,
    fresh: bool = False,
    command: str = "",
    shared_schedule: bool = False,
) -> dict[str, Any]:
    """Train (resuming from ``out_dir/last.pt`` unless ``fresh``), then evaluate on the test
    set and write ``config.json``, ``summary.json``, ``training_curves.png`` and
    ``reconstructions.png`` beside the checkpoints. Returns the summary. A new run is checked
    first (:func:`check_new_run`; ``shared_schedule`` as :func:`check_loss_settings` takes
    it): ValueError naming a setting the run would record and not use, or ``train.tensorboard``
    without the tensorboard package (before the data is read)."""
    from ..eval import training_curves

    check_tensorboard(cfg.train)
    out_dir = Path(cfg.out_dir)
    if fresh or not (out_dir / "last.pt").is_file():  # a run from before resumes as it began
        check_new_run(cfg, shared_schedule=shared_schedule)
    else:
        check_resumed_architecture(cfg, out_dir / "last.pt")
    derived: dict[str, Any]
    if cfg.data.name in TEXT_DATA:
        data, vocab = load_text_data(cfg.data, data_dir)
        shape, variance = (), 0.0
        derived = {"image_shape": [], "data_variance": 0.0, "vocabulary": vocab.words[4:]}
    else:
        images = load_data(cfg.data, data_dir, progress=cfg.train.progress)
        shape = tuple(images["train"].shape[1:])
        variance = float(images["train"].var())
        data = prepare(cfg, images)
        derived = {"image_shape": list(shape), "data_variance": variance}
        if cfg.data.name == "folder":  # its splits are checked against it when it is read again
            derived["folder_split"] = folder_split(cfg.data)
            # where it lay: the checkpoint finds it from any working folder (checkpoint_data)
            derived["folder_path"] = str(expanded(cfg.data.folder).resolve())
    torch.manual_seed(cfg.train.seed)
    vocabulary = len(derived["vocabulary"]) if "vocabulary" in derived else None
    model = build_model(cfg, shape, variance, vocabulary=vocabulary)
    if cfg.init_from and (fresh or not (out_dir / "last.pt").is_file()):
        warm_start(model, cfg.init_from, words=derived.get("vocabulary"))
    loss_fn = RateDistortionLoss(lmbda=cfg.loss.rate_weight, aux_weight=cfg.loss.aux_weight)
    # saved in every checkpoint: the config, and what rebuilding the model needs from the data
    run_config = to_dict(cfg) | {"derived": derived}
    main = launched_as_main()
    recorded: list[bool] = []

    def record_config(_epoch: dict[str, Any] | None = None) -> None:
        """``config.json`` once ``fit`` has taken the run: with the first checkpoint it writes,
        or, where it trained nothing (a finished run), with the summary of the new evaluation.
        Written before, a refused resume (a damaged ``last.pt``, another config's) left the new
        config beside the old checkpoint, and a finished run evaluated again with another
        ``eval_seed`` or ``eval`` table, then interrupted, left it beside the earlier summary."""
        if main and not recorded:
            write_json(to_dict(cfg), out_dir / "config.json")
            recorded.append(True)

    # from the config to the summary, no other process writes into the folder (fit holds it too)
    with hold(out_dir) if main else nullcontext():
        out_dir.mkdir(parents=True, exist_ok=True)
        result = fit(
            model,
            data,
            cfg.train,
            out_dir=out_dir,
            loss_fn=loss_fn,
            run_config=run_config,
            resume=not fresh,
            on_epoch_end=record_config,
            results=RESULT_FILES,  # another run's, or an earlier config's: gone with last.pt
        )
        if not result.is_main:
            return {}  # under torchrun, rank 0 alone evaluates and writes the summary
        unit = "sentence" if cfg.data.name in TEXT_DATA else "image"  # as format_report's
        training_curves(
            result.history, out_dir / "training_curves.png", title=_title(cfg), unit=unit
        )
        words = derived.get("vocabulary")
        report = evaluate(model, cfg, data, shape, out_dir=out_dir, words=words)
        summary = {
            **provenance(command),
            "config": to_dict(cfg),
            "train": result.summary(),
            "test": report,
        }
        write_json(summary, out_dir / "summary.json")
        record_config()  # each written atomically: only a crash between the two parts them
    return summary


def warm_start(
    model: torch.nn.Module, checkpoint: str | Path, *, words: list[str] | None = None
) -> list[str]:
    """Copy the weights of ``checkpoint`` into ``model`` where a name and shape match (the
    encoder and decoder of another bottleneck's run); returns the names left as initialised.
    The checkpoint's weights are checked as :func:`~qlatent.train.checkpoint.load_weights`
    checks them (names as keys, tensors, finite values, the dtype kind of each weight copied):
    CheckpointError naming the file. ``words``: a sentence model's vocabulary; a checkpoint
    saved with another vocabulary of the same size is refused (ValueError)."""
    from ..image_coding import read_checkpoint
    from ..train.checkpoint import CheckpointError, check_state_dict, check_weight_kinds

    source = f"{checkpoint} (init_from)"
    ckpt = read_checkpoint(checkpoint)
    theirs = _saved_vocabulary(ckpt)
    # word embeddings and output rows match by shape alone: from a vocabulary of the same size
    # built from other data (another split seed or data.max_tokens orders the words
    # differently) each row would start another word
    if words is not None and isinstance(theirs, list) and len(theirs) == len(words):
        if theirs != list(words):
            raise ValueError(
                f"{checkpoint} (init_from) was trained on another vocabulary of {len(words):,} "
                "words: its word embeddings would start other words of this run"
            )
    saved = check_state_dict(ckpt["model"], source)
    own = model.state_dict()
    shared = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    if not shared:
        raise ValueError(f"{checkpoint} shares no weights with this model (init_from)")
    check_weight_kinds(shared, own, source)
    try:
        model.load_state_dict(shared, strict=False)
    except ValueError as err:  # a buffer whose contents the module refuses, named in err
        raise CheckpointError(f"{checkpoint} (init_from): {err}") from None
    return sorted(set(own) - set(shared))


def _saved_vocabulary(ckpt: Any) -> Any:
    """The vocabulary a ``qlatent train CONFIG`` checkpoint saved (None if it saved none)."""
    run = ckpt.get("run_config") if isinstance(ckpt, dict) else None
    derived = run.get("derived") if isinstance(run, dict) else None
    return derived.get("vocabulary") if isinstance(derived, dict) else None


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
    iwae_defensive: tuple[float, float] | None = None,
    words: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """What fits the model, on ``data["test"]`` (nats per image or sentence unless named
    otherwise; for text also bits per word, EOS counted in the numerator only):

    * training path (dither / noise) and hard path (``eval()``): distortion and rate; at
      ``rate_weight`` 1 their sum on the training path is the negative ELBO;
    * IWAE NLL with ``iwae_samples`` samples where the bottleneck has a density view
      (``posterior_sample`` and ``log_prior``), and with ``iwae_defensive`` = (α, k) also under
      the defensive mixture proposal on the same draws' seed (:mod:`qlatent.eval.proposals`);
    * for a discrete bottleneck with a code model: the test set written to a real ``.qlc``
      stream (bits per image) and read back exactly;
    * for codebooks: codes used and their perplexity on the hard path.

    Every draw comes from generators seeded with ``cfg.eval_seed``, torch's global CPU one
    included (a good lattice's Monte-Carlo density points), whose state is put back afterwards:
    the report of a good lattice no longer depends on what the process drew before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(cfg.eval_seed)
        return _evaluate(
            model,
            cfg,
            data,
            image_shape,
            out_dir=out_dir,
            iwae_samples=iwae_samples,
            iwae_defensive=iwae_defensive,
            words=words,
            progress=progress,
        )


def _evaluate(
    model: Autoencoder,
    cfg: RunConfig,
    data: dict[str, Tensor],
    image_shape: tuple[int, ...],
    *,
    out_dir: Path | None,
    iwae_samples: int,
    iwae_defensive: tuple[float, float] | None,
    words: list[str] | None,
    progress: bool,
) -> dict[str, Any]:
    """:func:`evaluate`'s work, under its seeded global generator."""
    from ..eval import iwae_nll, iwae_summary, reconstruction_rows

    model.eval()
    x = data["test"]
    loss_fn = RateDistortionLoss(lmbda=cfg.loss.rate_weight, aux_weight=cfg.loss.aux_weight)
    gen = lambda k: torch.Generator().manual_seed(cfg.eval_seed + k)  # noqa: E731
    text = words is not None
    report: dict[str, Any] = {"sentences" if text else "images": int(x.shape[0])}
    if text:  # words per sentence, for bits per word
        report["words"] = int(((x != 0) & (x != 2)).sum())
    for key, hard in (("training_path", False), ("hard_path", True)):
        parts = evaluate_objective(
            model, loss_fn, x, batch_size=cfg.train.eval_batch_size, hard=hard, generator=gen(hard)
        )
        report[key] = {
            "distortion": parts["distortion"].mean().item(),
            "rate": parts["rate"].mean().item(),
            "total": (parts["distortion"] + parts["rate"]).mean().item(),
        }
        if text:
            per_word = math.log(2) * max(1, report["words"])
            report[key]["distortion_bits_per_word"] = parts["distortion"].sum().item() / per_word
            report[key]["rate_bits_per_word"] = parts["rate"].sum().item() / per_word
    neck = model.bottleneck
    if iwae_samples and _has_density_view(neck):
        nll = iwae_nll(model, x, num_samples=iwae_samples, generator=gen(2), progress=progress)
        report["iwae"] = iwae_summary(nll)
        report["iwae_samples"] = iwae_samples
        if getattr(neck, "density", None) == "gaussian":  # a good lattice's approximate prior
            report["iwae"]["approximate_prior"] = True
        if isinstance(model.likelihood, SquaredError):
            # Σ(x̂ − x)²/v is a Gaussian's −log p (variance v/2) without its normalising term
            pixels = x[0].numel()
            report["iwae"]["gaussian_constant"] = (
                0.5 * pixels * math.log(math.pi * model.likelihood.variance)
            )
        if iwae_defensive is not None:
            wide = iwae_nll(
                model,
                x,
                num_samples=iwae_samples,
                generator=gen(2),
                progress=progress,
                defensive=iwae_defensive,
            )
            diff = wide - nll
            count = diff.numel()
            report["iwae_defensive"] = {
                "mixture": list(iwae_defensive),
                **iwae_summary(wide),
                "minus_own": diff.mean().item(),
                "minus_own_se": diff.std().item() / math.sqrt(count) if count > 1 else math.nan,
            }
    if callable(getattr(neck, "shaping_gap", None)) and x.shape[0]:
        # eq. 12, logged beside every lattice result (DESIGN.md §3.1): per code vector, times
        # the code vectors of one example (a conv encoder's positions)
        with torch.no_grad():
            vectors = _latents(model, x[:1]).numel() // neck.in_dim
        gap = float(neck.shaping_gap())
        report["shaping_gap"] = {"nats": gap * vectors, "per_dimension": gap / neck.dim}
    report["coded"] = _coded_size(model, x, cfg.eval_seed, data.get("train"))
    if text and report["coded"].get("available"):
        n_words = max(1, report["words"])
        report["coded"]["bits_per_word"] = 8 * report["coded"]["bytes"] / n_words
        report["coded"]["ideal_bits_per_word"] = report["coded"]["ideal_bits"] / n_words
    if getattr(neck, "index_kind", None) == "scalar":  # codebooks: one index per position
        report["codes"] = _code_stats(model, x)
    if text:
        from ..data.text import Vocabulary

        vocab = Vocabulary(words)
        decoded = model.greedy(x[:8], generator=gen(3))
        report["examples"] = [
            {"sentence": " ".join(vocab.decode(a)), "hard path": " ".join(vocab.decode(b))}
            for a, b in zip(x[:8], decoded, strict=True)
        ]
    elif out_dir is not None:
        sample = x[:10]
        recon = model.reconstruct(sample, generator=gen(3)).view(-1, *image_shape)
        reconstruction_rows(
            {"test image": sample.view(-1, *image_shape), "hard path": recon},
            out_dir / "reconstructions.png",
        )
    return report


def _latents(model, x: Tensor) -> Tensor:
    """The bottleneck inputs of ``x``: the sentence encoder's, or the encoder network's."""
    encode = getattr(model, "encode", None) or model.encoder
    return torch.cat([encode(xb) for xb in x.split(1000)])


def _coded_size(
    model: Autoencoder, x: Tensor, seed: int, train: Tensor | None = None
) -> dict[str, Any] | None:
    """The test set's codes as a real file (``qlatent.coding.compress``), its size, and the
    time to write it and read it back. A bottleneck whose code model is counted and has none
    yet (``scalar_st``, ``learnable_lattice``) counts the ``train`` images' symbols first, in
    memory only (``qlatent update`` saves such a model)."""
    from ..coding import code_model
    from ..coding.codec import compress, decompress, ideal_bits, model_digest

    counted_here = False
    try:
        code_model(model.bottleneck)
    except (TypeError, ValueError) as err:
        if train is None or not hasattr(model.bottleneck, "update"):
            return {"available": False, "why": str(err)}
        model.eval()
        model.bottleneck.update(_latents(model, train))
        counted_here = True
    model.eval()
    y = _latents(model, x)
    started = time.perf_counter()
    digest = model_digest(model)
    data = compress(model.bottleneck, y, seed=seed, digest=digest)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    y_hat = decompress(model.bottleneck, data, digest=digest)
    decode_s = time.perf_counter() - started
    if y_hat.shape[0] != y.shape[0]:
        raise RuntimeError(f"decoded {y_hat.shape[0]} codes, expected {y.shape[0]}")
    ideal = ideal_bits(model.bottleneck, y, seed=seed)
    return {
        "available": True,
        "bytes": len(data),
        "bits_per_image": 8 * len(data) / max(1, x.shape[0]),
        #: Σ −log2 P(symbol) under the same code model: the file less the coder's overhead
        "ideal_bits": ideal,
        "overhead": 8 * len(data) / ideal - 1 if ideal > 0 else None,
        "encode_s": encode_s,
        "decode_s": decode_s,
        "code_model_counted_on_train": counted_here,
    }


def _code_stats(model: Autoencoder, x: Tensor) -> dict[str, Any]:
    """Codes used on the hard path and the perplexity exp(H) of their usage (codebooks)."""
    from ..bottlenecks._codebook import code_counts, usage_stats

    neck = model.bottleneck
    # summed in float64: a float32 count stops at 2^24 (16.8 M uses of one code), which a test
    # set of spatial latents reaches (one code per position)
    counts = torch.zeros(neck.num_codes, dtype=torch.float64)
    for xb in x.split(1000):
        counts += code_counts(neck.quantize(_latents(model, xb), generator=torch.Generator()),
                              neck.num_codes)  # fmt: skip
    stats = usage_stats(counts)
    return {"used": int(stats["codes_used"]), "perplexity": float(stats["perplexity"])}


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as a few readable lines."""
    t, h = report["training_path"], report["hard_path"]
    unit = "sentence" if "sentences" in report else "image"
    lines = [
        f"test set, {report.get('images', report.get('sentences'))} {unit}s, nats per {unit}:",
        f"  training path: distortion {t['distortion']:.3f}  rate {t['rate']:.3f}  "
        f"sum {t['total']:.3f}",
        f"  hard path:     distortion {h['distortion']:.3f}  rate {h['rate']:.3f}  "
        f"sum {h['total']:.3f}",
    ]
    if "words" in report:
        lines.append(
            f"  bits per word ({report['words']:,} words): training path distortion "
            f"{t['distortion_bits_per_word']:.3f} rate {t['rate_bits_per_word']:.3f}; hard path "
            f"distortion {h['distortion_bits_per_word']:.3f} rate {h['rate_bits_per_word']:.3f}"
        )
    if "iwae" in report:
        i = report["iwae"]
        lines.append(
            f"  IWAE NLL: {i['mean']:.3f} ± {i['se']:.3f} ({report['iwae_samples']} samples)"
        )
        if i.get("approximate_prior"):
            lines.append(
                "    (density='gaussian': the prior's density is approximated, so this is an "
                "estimate, not a bound on log p(x))"
            )
        if "gaussian_constant" in i:
            lines.append(
                f"    (the squared-error likelihood leaves out the Gaussian's normalising term: "
                f"add {i['gaussian_constant']:.3f} nats for a density NLL)"
            )
    if "iwae_defensive" in report:
        d = report["iwae_defensive"]
        alpha, k = d["mixture"]
        lines.append(
            f"  IWAE NLL, defensive proposal {alpha:g}:{k:g}: {d['mean']:.3f} ± {d['se']:.3f} "
            f"({d['minus_own']:+.3f} ± {d['minus_own_se']:.3f} from the own proposal's)"
        )
    if "shaping_gap" in report:
        g = report["shaping_gap"]
        lines.append(
            f"  the lattice cell's shaping gap (eq. 12): {g['nats']:.3f} nats per {unit} "
            f"({g['per_dimension']:.4f} per dimension), what an ideal lattice's cell would save"
        )
    coded = report.get("coded")
    if coded and coded.get("available"):
        per = (
            f"{coded['bits_per_word']:.3f} bits per word"
            if "bits_per_word" in coded
            else f"{coded['bits_per_image']:.2f} bits per image "
            f"({coded['bits_per_image'] * math.log(2):.2f} nats)"
        )
        counted = (
            ", code model counted on the training set"
            if coded.get("code_model_counted_on_train")
            else ""
        )
        over = coded.get("overhead")
        over = f", {100 * over:.2f}% over the code model's ideal" if over is not None else ""
        lines.append(f"  coded file: {per}; {coded['bytes']:,} bytes{counted}{over}, decoded back")
    elif coded:
        lines.append(f"  coded: no code model ({coded['why']})")
    if "downstream" in report:
        d = report["downstream"]
        lines.append(
            f"  downstream: k-means accuracy {100 * d['kmeans_acc']:.2f}%, NMI {d['nmi']:.3f}, "
            f"linear probe {100 * d['linear_acc']:.2f}%"
        )
    for example in report.get("examples", [])[:3]:
        lines.append(f"  {example['sentence']!r} -> {example['hard path']!r}")
    if "codes" in report:
        codes = report["codes"]
        lines.append(f"  codes used: {codes['used']}, perplexity {codes['perplexity']:.1f}")
    return "\n".join(lines)


def eval_checkpoint(
    checkpoint: str | Path,
    *,
    data_dir: str | None = None,
    iwae_samples: int = 0,
    iwae_defensive: tuple[float, float] | None = None,
    limit: int | None = None,
    downstream: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """:func:`evaluate` for a checkpoint written by ``qlatent train CONFIG``; with
    ``downstream``, also :func:`downstream_scores` (data with class labels only). ValueError
    before any data is read for bad arguments (``iwae_samples`` an integer in [0, 2^20],
    ``limit`` None or a positive integer), and for an IWAE NLL the model cannot give (a sentence
    model, a bottleneck without a density view, an ``iwae_defensive`` its bottleneck cannot
    take); and before the evaluation for an IWAE NLL of fewer than 2 test images (its standard
    error would be NaN)."""
    from ..eval.iwae import MAX_SAMPLES
    from ..eval.proposals import check_mixture
    from ..image_coding import read_checkpoint

    if isinstance(iwae_samples, bool) or not isinstance(iwae_samples, int):
        raise ValueError(f"iwae_samples must be an integer, got {iwae_samples!r}")
    if not 0 <= iwae_samples <= MAX_SAMPLES:
        raise ValueError(f"iwae_samples must lie in [0, {MAX_SAMPLES:,}], got {iwae_samples:,}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        # 0 evaluated no image (a report of NaN), -1 dropped the last one without a word
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(downstream, bool):
        raise ValueError(f"downstream must be True or False, got {downstream!r}")
    if iwae_defensive is not None:
        iwae_defensive = check_mixture(iwae_defensive)
        if not iwae_samples:
            raise ValueError("a defensive proposal is for the IWAE NLL: give --iwae S too")
    ckpt = read_checkpoint(checkpoint)
    if not is_checkpoint(ckpt):
        raise ValueError(
            f"{checkpoint} was not written by `qlatent train CONFIG` (no run config with "
            "data, model, bottleneck and loss sections)"
        )
    model, cfg = model_from_checkpoint(ckpt, checkpoint)
    words = ckpt["run_config"]["derived"].get("vocabulary")
    if iwae_samples and words is not None:
        # iwae_nll read the token ids as images: "x must be a floating-point tensor"
        raise ValueError("the IWAE NLL (--iwae) is for image models, not a sentence model")
    if iwae_defensive is not None:
        from ..eval import DefensiveProposal

        try:
            DefensiveProposal(model.bottleneck, *iwae_defensive)
        except TypeError as err:
            raise ValueError(str(err)) from None
    if iwae_samples and not _has_density_view(model.bottleneck):
        # the bottleneck's TypeError ended the command in a traceback after the evaluation
        raise ValueError(
            f"the IWAE NLL (--iwae) needs a bottleneck with a density view (posterior_sample and "
            f"log_prior: lattice, gaussian, gaussian_lattice); {cfg.bottleneck.name} has none"
        )
    labels = load_labels(cfg.data, data_dir) if downstream else None  # refuse before the work
    if words is not None:
        data, _ = load_text_data(cfg.data, data_dir, words=words)
        shape: tuple[int, ...] = ()
    else:
        # from where the run found it, split as it was (before the images are read)
        cfg = dataclasses.replace(
            cfg, data=checkpoint_data(cfg.data, ckpt["run_config"]["derived"])
        )
        images = load_data(cfg.data, data_dir)
        data = prepare(cfg, images)
        shape = tuple(images["test"].shape[1:])
    # a code model counted here (evaluate) is counted on the whole training set, limit or not:
    # counted on the first N training items it would be another code model, and the file of
    # the N test items another size than under the full evaluation's code model
    counted_on = data["train"]
    if limit is not None:
        data = {k: v[:limit] for k, v in data.items()}
    if iwae_samples and data["test"].shape[0] < 2:
        raise ValueError(
            f"the IWAE NLL (--iwae) needs at least 2 test images for its standard error, "
            f"got {data['test'].shape[0]}" + (f" (--limit {limit})" if limit is not None else "")
        )
    report = evaluate(
        model,
        cfg,
        data | {"train": counted_on},
        shape,
        iwae_samples=iwae_samples,
        iwae_defensive=iwae_defensive,
        words=words,
        progress=progress,
    )
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


def _has_density_view(bottleneck: torch.nn.Module) -> bool:
    """Whether ``bottleneck`` implements ``posterior_sample`` and ``log_prior`` (the base class
    has both, raising TypeError)."""
    from ..bottlenecks.base import Bottleneck

    return all(
        getattr(type(bottleneck), name, None) not in (None, getattr(Bottleneck, name))
        for name in ("posterior_sample", "log_prior")
    )


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
    features (``qlatent.eval.downstream_report``); the features are the pre-quantisation code,
    the first ``bottleneck.dim`` channels of the encoder's output (μ of a Gaussian VAE, z_e of
    Soft VQ; the other channels are scales the bottleneck consumes), flattened, as the Soft
    VQ-VAE table takes them. Fewer k-means initialisations and probe steps than that table
    (100 and 30,000): a quick look, not a reproduction."""
    from ..eval import downstream_report

    model.eval()
    dim = model.bottleneck.dim
    features = {
        k: torch.cat([model.encoder(xb)[:, :dim].flatten(1) for xb in data[k].split(1000)])
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


__all__ = [
    "AUX_LOSS_OPTIONS",
    "CONSTANT_RATE",
    "DATA_SETTINGS",
    "MODEL_SETTINGS",
    "NO_AUX_LOSS",
    "SPLIT_SETTINGS",
    "BottleneckConfig",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "RunConfig",
    "build_model",
    "check_data_settings",
    "check_folder_split",
    "check_loss_settings",
    "check_model_settings",
    "check_new_run",
    "checkpoint_data",
    "components",
    "downstream_scores",
    "eval_checkpoint",
    "evaluate",
    "folder_split",
    "format_report",
    "has_aux_loss",
    "is_checkpoint",
    "legacy_run_config",
    "load_config",
    "load_data",
    "load_labels",
    "load_text_data",
    "model_from_checkpoint",
    "train",
    "warm_start",
]
