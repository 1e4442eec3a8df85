"""The model of a ``qlatent train CONFIG`` run, built from its config (:func:`build_model`), and
read back from a checkpoint (:func:`model_from_checkpoint`, :func:`legacy_run_config`) or started
from another run's weights (:func:`warm_start`). :mod:`~qlatent.experiments.custom` re-exports
every name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..bottlenecks import build
from ..config import apply_mapping
from ..models import Autoencoder, sized
from ..nn import Bernoulli, SquaredError, gated_mlp
from ..nn.conv import conv_decoder, conv_encoder
from ..nn.mlp import relu_mlp
from ..train import load_weights
from ._custom_config import RunConfig


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
