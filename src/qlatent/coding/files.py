"""Images to ``.qlc`` files and back with a trained autoencoder (what ``qlatent compress`` and
``qlatent decompress`` run).

The file's digest is that of the whole autoencoder (encoder, bottleneck, decoder), so a file
decodes only with the checkpoint that wrote it. Files are written atomically: a failed run leaves
no partial output.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..models import Autoencoder
from ..train import load
from .codec import compress, decompress, model_digest
from .container import CodingError, unpack


def load_lattice_vae(checkpoint: str | os.PathLike[str]) -> Autoencoder:
    """The rectangular-lattice VAE (gated MLPs around ``lattice``, as trained by ``qlatent demo``,
    ``qlatent train`` or ``qlatent reproduce coding-mnist``) from a training checkpoint.

    The sizes are read from the weights themselves: m from the bottleneck's spacings, the hidden
    width and data size from the decoder's last layer.
    """
    from ..models import lattice_vae

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = load(path, map_location="cpu")
    except Exception as err:  # a file torch cannot read: say which
        raise ValueError(f"{path} is not a readable checkpoint ({err})") from err
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or "bottleneck.log_spacing" not in state:
        raise ValueError(f"{path} does not hold a rectangular-lattice VAE")
    last = state.get("decoder.2.weight")
    if last is None or last.dim() != 2:
        raise ValueError(f"{path} does not hold the gated-MLP decoder of the lattice VAE")
    model = lattice_vae(
        latent_dim=state["bottleneck.log_spacing"].shape[0],
        hidden=last.shape[1],
        data_dim=last.shape[0],
    )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path} does not hold lattice-VAE weights: {err}") from err
    return model.eval()


@torch.no_grad()
def compress_images(model: Autoencoder, x: Tensor, *, seed: int, batch_size: int = 2000) -> bytes:
    """Encode ``x`` ``(N, D)`` and entropy-code the bottleneck's symbols into one file."""
    model.eval()
    y = torch.cat([model.encoder(xb) for xb in x.split(batch_size)])
    return compress(model.bottleneck, y, seed=seed, digest=model_digest(model))


@torch.no_grad()
def decompress_images(model: Autoencoder, data: bytes, *, batch_size: int = 2000) -> Tensor:
    """Reconstructions E[x | y_hat] ``(N, D)`` from a file written by :func:`compress_images`."""
    model.eval()
    y_hat = decompress(model.bottleneck, data, digest=model_digest(model))
    return torch.cat([model.likelihood.mean(model.decoder(yb)) for yb in y_hat.split(batch_size)])


def images_in(data: bytes) -> int:
    """How many examples a file holds (from its header, without decoding)."""
    header, _ = unpack(data)
    return header.shape[0]


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = [
    "CodingError",
    "compress_images",
    "decompress_images",
    "images_in",
    "load_lattice_vae",
    "write_atomic",
]
