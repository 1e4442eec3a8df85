"""Models built from the bottlenecks and networks."""

from .autoencoder import Autoencoder, AutoencoderOutput
from .lattice_vae import lattice_vae

__all__ = ["Autoencoder", "AutoencoderOutput", "lattice_vae"]
