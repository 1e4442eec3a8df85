"""Direct sums of lattices, decoded block by block (E8^5, Λ24 ⊕ Λ16, A2^20, D4^10 ...).

A row of the sum is the concatenation of its blocks; consecutive equal blocks are decoded in one
batched call on a ``(..., count, n)`` view, so E8^5 costs one E8 call on five times the rows.
Volumes multiply and second moments average, so G(Λ^k) = G(Λ); with its blocks scaled to equal
volume per dimension (as the dithered bottleneck does), G of a sum is the dimension-weighted mean
of the blocks' G.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .an import RootLatticeA
from .base import LATTICES, Lattice, check_dense, check_rows
from .bw16 import BarnesWallLattice
from .dn import CheckerboardLattice, DualCheckerboardLattice
from .e8 import GossetLattice
from .leech import LeechLattice
from .rectangular import integer_lattice

#: the most runs of equal consecutive blocks in a :class:`DirectSum`: each run is one decoder
#: call (699,050 alternating Z and D2 blocks took 37 s and 1.2 GB to decode one row)
MAX_RUNS = 2**10


@LATTICES.register("sum")
class DirectSum(Lattice):
    """Λ_1 ⊕ Λ_2 ⊕ … given as a list of blocks (each a :class:`Lattice`).

    m is the sum of the blocks' dimensions; a row ``(..., m)`` is split in order into the
    blocks' coordinates, and every method works block by block (``closest_point`` is exact
    where every block's is). Blocks that are the same object and adjacent form one run, decoded
    in one call. ValueError for ``blocks`` that is not a non-empty sequence of lattices, or that
    makes more than :data:`MAX_RUNS` runs.
    """

    def __init__(self, blocks: Sequence[Lattice]) -> None:
        if isinstance(blocks, str | Tensor) or not isinstance(blocks, Iterable):
            raise ValueError(f"blocks must be a list of lattices, got {type(blocks).__name__}")
        self.blocks = list(blocks)
        if not self.blocks:
            raise ValueError("a direct sum needs at least one block")
        for i, block in enumerate(self.blocks):
            if not isinstance(block, Lattice):
                raise ValueError(f"blocks[{i}] must be a Lattice, got {type(block).__name__}")
        #: (lattice, count, start) runs of identical consecutive blocks
        self.runs: list[tuple[Lattice, int, int]] = []
        start = 0
        for block in self.blocks:
            if self.runs and self.runs[-1][0] is block:
                lat, count, first = self.runs[-1]
                self.runs[-1] = (lat, count + 1, first)
            else:
                self.runs.append((block, 1, start))
            start += block.dim
        if len(self.runs) > MAX_RUNS:
            raise ValueError(
                f"a direct sum takes at most {MAX_RUNS} runs of equal consecutive blocks, "
                f"got {len(self.runs)}"
            )
        self._dim = start
        self.name = " ⊕ ".join(
            f"{lat.name}^{count}" if count > 1 else lat.name for lat, count, _ in self.runs
        )

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def generator_matrix(self) -> Tensor:
        check_dense(self.dim, self.name)
        return torch.block_diag(*(block.generator_matrix for block in self.blocks))

    def _per_run(self, x: Tensor, method: str) -> Tensor:
        check_rows(x, self.dim, self.name, floating=method not in ("coordinates", "points"))
        parts = []
        for lat, count, start in self.runs:
            n = lat.dim
            piece = x[..., start : start + count * n].unflatten(-1, (count, n))
            parts.append(getattr(lat, method)(piece).flatten(-2))
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def closest_point(self, x: Tensor) -> Tensor:
        return self._per_run(x, "closest_point")

    def dither_point(self, y: Tensor) -> Tensor:
        return self._per_run(y, "dither_point")

    def coordinates(self, points: Tensor) -> Tensor:
        return self._per_run(points, "coordinates")

    def points(self, coords: Tensor) -> Tensor:
        return self._per_run(coords, "points")

    def points_from_unit(self, r: Tensor) -> Tensor:
        return self._per_run(r, "points_from_unit")

    @property
    def log_volume(self) -> Tensor:
        # block by block in order, each run's volume formed once; float64 scalars are summed
        # as Python floats (the same additions, without a tensor per block: Z^(2^20) took 5 s)
        volumes = [(lat.log_volume, count) for lat, count, _ in self.runs]
        if all(_plain_float64(v) for v, _ in volumes):
            total = 0.0
            for v, count in volumes:
                v = float(v)
                for _ in range(count):
                    total += v
            return torch.tensor(total, dtype=torch.float64)
        total = 0
        for v, count in volumes:
            for _ in range(count):
                total = total + v
        return total


def _plain_float64(t: Tensor) -> bool:
    """A float64 CPU scalar outside autograd, whose sums Python floats reproduce bit for bit."""
    return (
        isinstance(t, Tensor)
        and t.dtype == torch.float64
        and t.device.type == "cpu"
        and t.dim() == 0
        and not t.requires_grad
    )


_FIXED = {
    "e8": GossetLattice,
    "bw16": BarnesWallLattice,
    "leech": LeechLattice,
}
_FAMILIES = {"a": RootLatticeA, "d": CheckerboardLattice}


def lattice_by_name(name: str, *, compile: bool = False) -> Lattice:
    """One block from its name: ``z`` (Z^1), ``a<n>`` (A_n; ``a2`` hexagonal), ``d<n>``,
    ``d<n>*`` (D_n*), ``e8``, ``bw16``, ``leech``. Case-insensitive. ``compile``: the Leech, E8
    and Λ16 decoders fused by ``torch.compile`` (:class:`LeechLattice`, :class:`GossetLattice`,
    :class:`BarnesWallLattice`; the others ignore it). ValueError for a name that is not a
    string or not one of these (the message lists them), or an ``n`` below the family's least
    (A_n: 1; D_n, D_n*: 2); a name gives ``n`` in at most three digits."""
    if not isinstance(name, str):
        raise ValueError(f"a lattice name must be a string, got {name!r}")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")
    key = name.strip().lower()
    if key in _FIXED:
        return _FIXED[key](compile=compile)
    if key == "z":
        return integer_lattice(1)
    match = re.fullmatch(r"([ad])(\d{1,3})(\*?)", key, re.ASCII)  # not other scripts' digits
    if match:
        family, n, dual = match.group(1), int(match.group(2)), match.group(3)
        if dual and family == "d":
            return DualCheckerboardLattice(n)
        if not dual:
            return _FAMILIES[family](n)
    raise ValueError(f"unknown lattice {name!r}; {LATTICE_NAMES}")


#: the most coordinates :func:`tile` fills: a list of 2^40 blocks exhausted the memory (a good
#: lattice's bottleneck takes at most 2^14)
MAX_TILE_DIM = 2**20

LATTICE_NAMES = "known: z, a<n> (a2 hexagonal), d<n>, d<n>*, e8, bw16, leech"
#: name (as :func:`tile` takes it) -> the literature normalized second moment G(Λ) (Conway &
#: Sloane, SPLAG Table 2.3; Λ16 from Pook-Kolb, Agrell & Allen 2023)
LITERATURE_NSM = {
    "z": 1 / 12,
    "a2": 5 / (36 * math.sqrt(3)),
    "d3*": 19 / (192 * 2 ** (1 / 3)),
    "d4": 13 / (120 * math.sqrt(2)),
    "e8": 929 / 12960,
    "bw16": 0.0682976,
    "leech": 0.0657710,
}


def tile(spec: str | Sequence[str], dim: int, *, compile: bool = False) -> DirectSum:
    """The direct sum that fills ``dim`` coordinates: one name repeated (``"e8"``, dim 40 ->
    E8^5; must divide ``dim``), or a list of names whose dimensions add up to ``dim``
    (``["leech", "bw16"]`` -> Λ24 ⊕ Λ16). Equal names share one block object, so consecutive
    equal blocks decode in one call. ``compile`` as in :func:`lattice_by_name`.

    ValueError for a ``dim`` that is not an integer in [1, 2^20], a name that
    :func:`lattice_by_name` refuses, a single block whose dimension does not divide ``dim``, or a
    list whose dimensions do not add up to ``dim``."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if dim > MAX_TILE_DIM:
        raise ValueError(f"dim must be at most 2^20 ({MAX_TILE_DIM}), got {dim}")
    if isinstance(spec, str):
        names = [spec]
    elif isinstance(spec, list | tuple) and spec and all(isinstance(n, str) for n in spec):
        names = list(spec)
    else:
        raise ValueError(f"lattice must be a name or a non-empty list of names, got {spec!r}")
    cache: dict[str, Lattice] = {}
    for n in names:  # each distinct name once
        key = n.strip().lower()
        if key not in cache:
            cache[key] = lattice_by_name(n, compile=compile)
    blocks = [cache[n.strip().lower()] for n in names]
    total = sum(b.dim for b in blocks)
    if isinstance(spec, str):
        if dim % total:
            raise ValueError(f"lattice {spec!r} has dimension {total}, which does not divide {dim}")
        blocks = blocks * (dim // total)
    elif total != dim:
        raise ValueError(f"lattice blocks {names} add up to dimension {total}, expected {dim}")
    return DirectSum(blocks)
