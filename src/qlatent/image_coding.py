"""Images to ``.qlc`` files and back with a trained autoencoder (what ``qlatent compress`` and
``qlatent decompress`` run). The encoder may be an MLP on ``(N, D)`` images or a conv net on
``(N, C, H, W)`` ones; the bottleneck codes whatever latent it produces.

The file's digest is that of the whole autoencoder (encoder, bottleneck, decoder), so a file
decodes only with the checkpoint that wrote it. Files are written atomically: a failed run leaves
no partial output.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from ._modes import in_eval_mode
from ._utils import autocast_off, check_count, write_atomic
from .coding.codec import MAX_ELEMENTS, compress, decompress, model_digest
from .coding.container import CodingError, unpack
from .models import Autoencoder
from .train import CheckpointError, load, load_weights


def read_checkpoint(checkpoint: str | os.PathLike[str]) -> dict:
    """A training checkpoint (or one written by ``qlatent update``) as the dict it holds, with a
    clear error for a missing file, one torch cannot read, or one without model weights."""
    path = Path(checkpoint)
    if not path.is_file():
        missing = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {missing}")
    ckpt = load(path, map_location="cpu")  # as data, digest checked: CheckpointError if not
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} holds no model weights")
    return ckpt


def load_gated_vae(checkpoint: str | os.PathLike[str]) -> Autoencoder:
    """A gated-MLP VAE (as trained by ``qlatent demo``, ``qlatent train`` or ``qlatent reproduce
    coding-mnist``) from a training checkpoint or one written by ``qlatent update``
    (:func:`gated_vae_from_checkpoint` of :func:`read_checkpoint`)."""
    return gated_vae_from_checkpoint(read_checkpoint(checkpoint), checkpoint)


def gated_vae_from_checkpoint(
    ckpt: dict, path: str | os.PathLike[str] = "checkpoint"
) -> Autoencoder:
    """The gated-MLP VAE whose weights ``ckpt["model"]`` holds; ``path`` names it in errors.

    A good lattice (E8, Leech ... from ``qlatent reproduce lattice-mnist``) is recognised by
    the config saved with its weights. Otherwise the bottleneck is recognised from the weights:
    ``lattice`` (spacings), ``vq`` (a codebook
    parameter) or an EMA codebook, loaded as ``vq_ema`` (``soft_em_vq``'s hard path, the only
    one coding uses, is the same nearest-codeword lookup). The sizes are read from the weights
    too: the code dimension, the hidden width and data size from the decoder's last layer, K
    from the codebook. A counted code model saved with the weights comes with them.
    """
    from .models import gated_vae

    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path} holds no model weights")
    state = ckpt["model"]

    def weight(key: str, rank: int) -> Tensor | None:
        value = state.get(key)
        if value is not None and (not isinstance(value, Tensor) or value.dim() != rank):
            raise CheckpointError(f"{path}: {key} is not a rank-{rank} tensor")
        return value

    last = weight("decoder.2.weight", 2)
    if last is None:
        raise ValueError(f"{path} does not hold a gated-MLP VAE (lattice, vq or vq_ema)")
    sizes = {"hidden": last.shape[1], "data_dim": last.shape[0]}
    good = _good_lattice_args(ckpt.get("run_config"), path)
    if good is not None and "bottleneck.log_scale" in state:
        # a good lattice (lattice-mnist's E8 / Leech rows): its lattice is in the config
        latent_dim = weight("bottleneck.log_scale", 1).shape[0]
        try:
            model = gated_vae("lattice", latent_dim=latent_dim, **sizes, **good)
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: its config does not build a model ({err})") from None
    elif "bottleneck.log_spacing" in state:
        model = gated_vae(
            "lattice", latent_dim=weight("bottleneck.log_spacing", 1).shape[0], **sizes
        )
    elif "bottleneck.codebook" in state or "bottleneck.ema.codebook" in state:
        name = "vq" if "bottleneck.codebook" in state else "vq_ema"
        codebook = weight("bottleneck.codebook" if name == "vq" else "bottleneck.ema.codebook", 2)
        num_codes, dim = codebook.shape
        model = gated_vae(name, latent_dim=dim, num_codes=num_codes, **sizes)
    else:
        raise ValueError(f"{path} holds a bottleneck that the coder does not know")
    load_weights(model, state, path)
    return model.eval()


#: the good-lattice arguments a checkpoint's config may set, with their types
_GOOD_ARGS = {
    "lattice": (str, list),
    "prior": (str,),
    "proposal": (str,),
    "spacing_per": (str,),
    "samples": (int,),
    "prior_samples": (int,),
    "eval_samples": (int,),
    "eval_prior_samples": (int,),
    "debias": (bool,),
    "density": (str,),
}


def _good_lattice_args(run_config, path) -> dict | None:
    """The bottleneck arguments of a good-lattice row (``model.bottleneck = "lattice"`` with a
    ``lattice`` other than the rectangular one) from an untrusted config: only known keys of
    plain types, sample counts capped; None when the config names no good lattice."""
    model = run_config.get("model") if isinstance(run_config, dict) else None
    if not isinstance(model, dict) or model.get("bottleneck") != "lattice":
        return None
    args = model.get("bottleneck_args")
    if not isinstance(args, dict) or args.get("lattice") in (None, "z", "rectangular"):
        return None
    out = {}
    for key, value in args.items():
        kinds = _GOOD_ARGS.get(key)
        # bool is an int subclass; an unknown key (kinds None) is refused below, whatever its value
        bad_bool = isinstance(value, bool) and bool not in (kinds or ())
        if kinds is None or bad_bool or not isinstance(value, kinds):
            raise CheckpointError(f"{path}: unexpected bottleneck argument {key}={value!r}")
        if type(value) is int and not 1 <= value <= 1 << 16:
            raise CheckpointError(f"{path}: {key}={value} is out of range")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise CheckpointError(f"{path}: lattice must be names, got {value!r}")
        out[key] = value
    return out


def load_lattice_vae(checkpoint: str | os.PathLike[str]) -> Autoencoder:
    """:func:`load_gated_vae`, insisting on the rectangular-lattice bottleneck."""
    model = load_gated_vae(checkpoint)
    if "bottleneck.log_spacing" not in model.state_dict():
        raise ValueError(f"{checkpoint} does not hold a rectangular-lattice VAE")
    return model


@torch.no_grad()
@autocast_off
def update_code_model(model: Autoencoder, x: Tensor, *, batch_size: int = 2000) -> dict[str, float]:
    """Learn the bottleneck's counted code model from the images ``x`` ``(N, D)`` or
    ``(N, C, H, W)`` (:meth:`~qlatent.bottlenecks._code_model.CountedCodeModel.update`); an
    error for a bottleneck whose code model is not learned from counts (ValueError: the
    lattice's is its prior). The model runs in eval mode; every module's own mode is put back
    afterwards."""
    from .bottlenecks._code_model import CountedCodeModel

    _check_call(model, x, batch_size)
    neck = model.bottleneck
    if not isinstance(neck, CountedCodeModel):
        raise ValueError(
            f"{type(neck).__name__} codes its symbols with its own prior; there is no counted "
            "code model to update"
        )
    if x.shape[0] == 0:
        raise ValueError("x holds no images: a code model is counted over at least one")
    with in_eval_mode(model), _images_fit(x, model):
        return neck.update(model.encoder(xb) for xb in x.split(batch_size))


def _check_call(model, x, batch_size: int) -> None:
    """TypeError or ValueError naming the argument that is not what the coding functions take:
    an :class:`Autoencoder`, images as a floating-point tensor with a batch axis, a positive
    ``batch_size``."""
    if not isinstance(model, Autoencoder):
        raise TypeError(f"model must be a qlatent Autoencoder, got {type(model).__name__}")
    check_count(batch_size, "batch_size")
    if x is None:
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must hold floating-point images, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be images (N, D) or (N, C, H, W), got shape {tuple(x.shape)}")


def _out_of_memory(err: RuntimeError) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err)


def _weights_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter, or None if it has none."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


@contextmanager
def _images_fit(x: Tensor, model: Autoencoder):
    """Turn the encoder's error on images it was not made for into a clear ValueError naming
    what does not fit: their dtype where it is not that of the encoder's weights (float64 images,
    made under ``torch.set_default_dtype(torch.float64)`` or from NumPy, were said not to fit by
    their shape), else their shape. An allocation failure stays what it is."""
    try:
        yield
    except RuntimeError as err:
        if _out_of_memory(err):
            raise
        dtype = _weights_dtype(model.encoder)
        if dtype is not None and x.dtype != dtype:
            raise ValueError(
                f"images of dtype {x.dtype} do not fit this model's encoder, whose weights are "
                f"{dtype}: convert them with x.to({dtype}) ({err})"
            ) from err
        raise ValueError(
            f"images of shape {tuple(x.shape[1:])} do not fit this model's encoder ({err})"
        ) from err


@torch.no_grad()
@autocast_off
def compress_images(model: Autoencoder, x: Tensor, *, seed: int, batch_size: int = 2000) -> bytes:
    """Encode ``x`` ``(N, D)`` or ``(N, C, H, W)`` and entropy-code the bottleneck's symbols
    into one file. The model runs in eval mode; every module's own mode is put back afterwards
    (:func:`in_eval_mode`)."""
    _check_call(model, x, batch_size)
    with in_eval_mode(model):
        with _images_fit(x, model):
            y = torch.cat([model.encoder(xb) for xb in x.split(batch_size)])
        return compress(model.bottleneck, y, seed=seed, digest=model_digest(model))


@torch.no_grad()
@autocast_off
def decompress_images(
    model: Autoencoder, data: bytes, *, batch_size: int = 2000, max_elements: int = MAX_ELEMENTS
) -> Tensor:
    """Reconstructions E[x | y_hat], shaped like the images, from a file written by
    :func:`compress_images`; ``max_elements`` bounds the decoded code (:func:`decompress`), and
    reconstructions that would not fit in this machine's memory are refused before decoding.
    The model runs in eval mode; every module's own mode is put back afterwards."""
    _check_call(model, None, batch_size)
    with in_eval_mode(model):
        return _decoded_images(model, data, batch_size, max_elements)


def _decoded_images(model: Autoencoder, data: bytes, batch_size: int, max_elements: int) -> Tensor:
    """:func:`decompress_images` once the model is in eval mode."""
    y_hat = decompress(model.bottleneck, data, model=model, max_elements=max_elements)
    try:
        shape = _image_shape(model, y_hat)
        _check_fits(y_hat.shape[0], shape)
        parts = [model.likelihood.mean(model.decoder(yb)) for yb in y_hat.split(batch_size)]
    except RuntimeError as err:  # a code of a shape this decoder was not made for
        if _out_of_memory(err):
            raise
        raise CodingError(
            f"the file's code of shape {tuple(y_hat.shape)} does not fit this model's decoder"
        ) from err
    if not parts:  # a file of zero images
        return y_hat.new_zeros(0, *shape)
    return torch.cat(parts)


def _image_shape(model: Autoencoder, y_hat: Tensor) -> tuple[int, ...]:
    """The decoder's output shape for one example, found by decoding one zero code."""
    probe = y_hat.new_zeros(1, *y_hat.shape[1:])
    return tuple(model.likelihood.mean(model.decoder(probe)).shape[1:])


def _check_fits(n: int, shape: tuple[int, ...]) -> None:
    """CodingError if ``n`` reconstructions of ``shape`` (float32) exceed this machine's memory:
    a file's code is bounded by ``max_elements``, its images can be far larger."""
    from .data.sources import physical_memory

    need, total = 4 * n * math.prod(shape), physical_memory()
    if total is not None and need > total:
        raise CodingError(
            f"the file's {n:,} images of shape {shape} would take {need / 2**30:,.1f} GiB, more "
            f"than this machine's {total / 2**30:,.1f} GiB of memory"
        )


def images_in(data: bytes) -> int:
    """How many examples a file holds (from its header, without decoding)."""
    header, _ = unpack(data)
    return header.shape[0]


__all__ = [
    "CodingError",
    "compress_images",
    "decompress_images",
    "gated_vae_from_checkpoint",
    "images_in",
    "load_gated_vae",
    "load_lattice_vae",
    "read_checkpoint",
    "update_code_model",
    "write_atomic",
]
