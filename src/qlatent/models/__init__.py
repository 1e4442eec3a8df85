"""Models built from the bottlenecks and networks."""

from .._size import MAX_MODEL_NUMBERS, sized
from .autoencoder import Autoencoder, AutoencoderOutput
from .lattice_vae import gated_vae, lattice_vae

__all__ = [
    "MAX_MODEL_NUMBERS",
    "Autoencoder",
    "AutoencoderOutput",
    "gated_vae",
    "lattice_vae",
    "sized",
]
