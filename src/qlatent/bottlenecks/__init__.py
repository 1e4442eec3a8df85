"""Bottlenecks: one method per file, all behind the contract in ``base``.

>>> from qlatent.bottlenecks import build
>>> bottleneck = build("lattice", dim=8)
"""

from . import gaussian, gaussian_lattice, identity, lattice  # noqa: F401  (importing registers them)
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput, build
from .gaussian import GaussianVAE
from .gaussian_lattice import GaussianLattice
from .identity import Identity
from .lattice import DitheredLattice

__all__ = [
    "BOTTLENECKS",
    "Bottleneck",
    "BottleneckOutput",
    "DitheredLattice",
    "GaussianLattice",
    "GaussianVAE",
    "Identity",
    "build",
]
