"""Bottlenecks: one method per file, all behind the contract in ``base``.

>>> from qlatent.bottlenecks import build
>>> bottleneck = build("lattice", dim=8)
"""

from . import identity, lattice  # noqa: F401  (importing registers them)
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput, build
from .identity import Identity
from .lattice import DitheredLattice

__all__ = ["BOTTLENECKS", "Bottleneck", "BottleneckOutput", "DitheredLattice", "Identity", "build"]
