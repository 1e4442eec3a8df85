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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._utils import expanded
from ..config import to_dict
from ..losses import RateDistortionLoss
from ..models import Autoencoder
from ..results import provenance, write_json
from ..train import fit
from ..train.distributed import launched_as_main
from ..train.lock import hold
from ..train.loop import check_tensorboard
from ._custom_config import (
    AUX_LOSS_OPTIONS,
    CONSTANT_RATE,
    DATA_SETTINGS,
    MODEL_SETTINGS,
    NO_AUX_LOSS,
    SPLIT_SETTINGS,
    TEXT_DATA,
    BottleneckConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    RunConfig,
    check_data_settings,
    check_loss_settings,
    check_model_settings,
    check_new_run,
    has_aux_loss,
)
from ._custom_config import DATASETS as DATASETS
from ._custom_config import FAMILIES as FAMILIES
from ._custom_config import MAX_EVAL_COUNT as MAX_EVAL_COUNT
from ._custom_config import MAX_LAYERS as MAX_LAYERS
from ._custom_config import MIN_WEIGHT as MIN_WEIGHT
from ._custom_config import DatasetName as DatasetName
from ._custom_config import FamilyName as FamilyName
from ._custom_config import check_choice as check_choice
from ._custom_config import check_eval_seed as check_eval_seed
from ._custom_config import check_positive as check_positive
from ._custom_data import SYNTHETIC_SENTENCES as SYNTHETIC_SENTENCES
from ._custom_data import _split as _split
from ._custom_data import _split_indices as _split_indices
from ._custom_data import _synthetic_text as _synthetic_text
from ._custom_data import (
    check_folder_split,
    checkpoint_data,
    folder_split,
    load_data,
    load_labels,
    load_split,
    load_text_data,
    prepare,
)
from ._custom_eval import (
    _check_eval_arguments,
    _check_iwae,
    _evaluate,
    downstream_scores,
    format_report,
)
from ._custom_load import check_bottleneck as check_bottleneck
from ._custom_load import check_model as check_model
from ._custom_load import check_names as check_names
from ._custom_load import check_reproduce as check_reproduce
from ._custom_load import components, load_config
from ._custom_load import fixed_data as fixed_data
from ._custom_load import image_shape as image_shape
from ._custom_load import paper_config as paper_config
from ._custom_load import paper_eval as paper_eval
from ._custom_load import require as require
from ._custom_model import (
    build_model,
    check_resumed_architecture,
    is_checkpoint,
    legacy_run_config,
    model_from_checkpoint,
    warm_start,
)

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
    data, shape, variance, derived = _run_data(cfg, data_dir)
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


def _run_data(
    cfg: RunConfig, data_dir: str | None
) -> tuple[dict[str, Tensor], tuple[int, ...], float, dict[str, Any]]:
    """:func:`train`'s splits, as the model family takes them, with the image shape, the
    training images' variance and what rebuilding the model needs from the data (``derived``,
    saved in every checkpoint)."""
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
    return data, shape, variance, derived


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
    from ..image_coding import read_checkpoint

    iwae_defensive = _check_eval_arguments(iwae_samples, iwae_defensive, limit, downstream)
    ckpt = read_checkpoint(checkpoint)
    if not is_checkpoint(ckpt):
        raise ValueError(
            f"{checkpoint} was not written by `qlatent train CONFIG` (no run config with "
            "data, model, bottleneck and loss sections)"
        )
    model, cfg = model_from_checkpoint(ckpt, checkpoint)
    words = ckpt["run_config"]["derived"].get("vocabulary")
    _check_iwae(model, cfg, words, iwae_samples, iwae_defensive)
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
    "load_split",
    "load_text_data",
    "model_from_checkpoint",
    "train",
    "warm_start",
]
