"""The lattice paper's MNIST models: gated MLPs around a bottleneck (section 4).

    encoder  784 ─GatedDense→ 300 ─GatedDense→ 300 ─Linear→ in_dim   (in_dim = 2m for "gaussian")
    decoder    m ─GatedDense→ 300 ─GatedDense→ 300 ─Linear→ 784      (Bernoulli logits)

Only the bottleneck differs between the rows of the paper's Table 1: ``"lattice"`` (rectangular
lattice VAE), ``"gaussian_lattice"`` and ``"gaussian"``.
"""

from __future__ import annotations

from .._size import sized
from ..bottlenecks import build
from ..nn import Bernoulli, gated_mlp
from .autoencoder import Autoencoder


def gated_vae(
    bottleneck: str = "lattice",
    *,
    latent_dim: int = 40,
    hidden: int = 300,
    data_dim: int = 784,
    **bottleneck_kwargs,
) -> Autoencoder:
    """Gated-MLP encoder and decoder around the named bottleneck.

    The encoder's output width is the bottleneck's ``in_dim``; extra keyword arguments go to the
    bottleneck (e.g. ``init_spacing``, ``compile``). Sizes whose model would hold more than
    :data:`~qlatent._size.MAX_MODEL_NUMBERS` numbers raise ValueError before anything is
    allocated (:func:`~qlatent._size.sized`). An unknown bottleneck name raises the
    registry's error, which lists the known names.

    The model takes ``x`` ``(B, data_dim)`` (flattened images in [0, 1]) and returns Bernoulli
    logits ``(B, data_dim)``; the latent is ``(B, latent_dim)``. L. A. Lastras, "Lattice
    Representation Learning" (arXiv 2006.13833), section 4.
    """

    def make() -> Autoencoder:
        neck = build(bottleneck, dim=latent_dim, **bottleneck_kwargs)
        return Autoencoder(
            encoder=gated_mlp([data_dim, hidden, hidden, neck.in_dim]),
            bottleneck=neck,
            decoder=gated_mlp([latent_dim, hidden, hidden, data_dim]),
            likelihood=Bernoulli(),
        )

    return sized(make)


def lattice_vae(**kwargs) -> Autoencoder:
    """The rectangular-lattice VAE: :func:`gated_vae` with the ``"lattice"`` bottleneck.

    The lattice paper's (arXiv 2006.13833) Table 1 model with the Laplace prior: ``x``
    ``(B, 784)`` → ``(B, 40)`` lattice code → ``(B, 784)`` Bernoulli logits by default. Keyword
    arguments and errors as :func:`gated_vae`.
    """
    return gated_vae("lattice", **kwargs)
