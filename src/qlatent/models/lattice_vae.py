"""The lattice paper's MNIST model: gated MLPs around a dithered rectangular lattice."""

from __future__ import annotations

from ..bottlenecks import build
from ..nn import Bernoulli, gated_mlp
from .autoencoder import Autoencoder


def lattice_vae(
    *, latent_dim: int = 40, hidden: int = 300, data_dim: int = 784, **bottleneck_kwargs
) -> Autoencoder:
    """784-300-300-m gated encoder, ``"lattice"`` bottleneck, m-300-300-784 gated decoder.

    Extra keyword arguments go to the bottleneck (e.g. ``init_spacing``, ``compile``).
    """
    return Autoencoder(
        encoder=gated_mlp([data_dim, hidden, hidden, latent_dim]),
        bottleneck=build("lattice", dim=latent_dim, **bottleneck_kwargs),
        decoder=gated_mlp([latent_dim, hidden, hidden, data_dim]),
        likelihood=Bernoulli(),
    )
