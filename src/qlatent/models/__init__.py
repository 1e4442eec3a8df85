"""Models built from the bottlenecks and networks."""

from .autoencoder import Autoencoder, AutoencoderOutput
from .lattice_vae import gated_vae, lattice_vae

__all__ = ["Autoencoder", "AutoencoderOutput", "gated_vae", "lattice_vae"]
