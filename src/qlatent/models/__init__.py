"""Models built from the bottlenecks and networks."""

from .autoencoder import Autoencoder, AutoencoderOutput
from .lattice_vae import gated_vae, lattice_vae
from .size import MAX_MODEL_NUMBERS, sized

__all__ = [
    "MAX_MODEL_NUMBERS",
    "Autoencoder",
    "AutoencoderOutput",
    "gated_vae",
    "lattice_vae",
    "sized",
]
