"""Lattice geometry (no parameters). One lattice family per file, registered in ``LATTICES``.

>>> from qlatent.lattices import tile
>>> tile("e8", 40).name   # E8^5
'E8^5'
"""

from ._utils import triangular_basis
from .an import RootLatticeA, hexagonal_lattice
from .base import LATTICES, Lattice
from .bw16 import BarnesWallLattice
from .dn import CheckerboardLattice, DualCheckerboardLattice
from .e8 import GossetLattice
from .leech import LeechLattice
from .rectangular import RectangularLattice, integer_lattice
from .sums import LATTICE_NAMES, LITERATURE_NSM, DirectSum, lattice_by_name, tile

__all__ = [
    "LATTICES",
    "LATTICE_NAMES",
    "LITERATURE_NSM",
    "BarnesWallLattice",
    "CheckerboardLattice",
    "DirectSum",
    "DualCheckerboardLattice",
    "GossetLattice",
    "Lattice",
    "LeechLattice",
    "RectangularLattice",
    "RootLatticeA",
    "hexagonal_lattice",
    "integer_lattice",
    "lattice_by_name",
    "tile",
    "triangular_basis",
]
