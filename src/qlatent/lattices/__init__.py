"""Lattice geometry (no parameters). One lattice per file, registered in ``LATTICES``."""

from .base import LATTICES, Lattice
from .rectangular import RectangularLattice, integer_lattice

__all__ = ["LATTICES", "Lattice", "RectangularLattice", "integer_lattice"]
