"""The typed sections of a ``qlatent train CONFIG`` run (:class:`RunConfig` and its parts) and the
checks on their values: each section checks itself when built, and a new run is refused a setting
that its data, model family or bottleneck would record and not use (:func:`check_new_run`).
:mod:`~qlatent.experiments.custom` re-exports every name; the paper tables' modules build their
runs in this schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from .._utils import MAX_WEIGHT
from ..bottlenecks import BOTTLENECKS
from ..train import TrainConfig
from ..train.loop import check_seed

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
    #: trained with the LeakyReLU and are rebuilt with it
    #: (:func:`~._custom_model.legacy_run_config`).
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
