"""The checks of a good lattice's constructor arguments and settings (:mod:`.good_lattice`).

:func:`check_arguments` checks the structural arguments of
:class:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice` (its size within
:data:`MAX_DIM`, the prior, the proposal, the layout of the scales) in the order the constructor
takes them; :func:`check_samples`, :func:`check_draw_counts`, :func:`check_density` and
:func:`check_proposal` are the checks of its Monte-Carlo settings, run on every assignment
(:class:`~.base.Setting`), the module their first argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lattice_counts import _draw_counts, _sample_count

if TYPE_CHECKING:
    from .good_lattice import DitheredGoodLattice

#: the most coordinates a good-lattice bottleneck takes: its tables (the coordinates' blocks and,
#: where it is small or the Monte Carlo needs it, a (dim, blocks) matrix) are built from values,
#: also while a model is sized on the meta device
MAX_DIM = 1 << 14


def check_arguments(dim: int, prior, proposal, spacing_per, scale_per) -> None:
    """The constructor's ``dim`` (at most :data:`MAX_DIM`), ``prior``, ``proposal`` (for that
    prior), ``spacing_per`` and ``scale_per``, in this order; ValueError naming the first
    wrong one."""
    if dim > MAX_DIM:
        raise ValueError(f"dim must be at most {MAX_DIM} for a good lattice, got {dim}")
    if prior not in ("laplace", "gaussian"):
        raise ValueError(f"prior must be 'laplace' or 'gaussian', got {prior!r}")
    _check_proposal(proposal, "proposal", prior)
    if spacing_per not in ("block", "coordinate"):
        raise ValueError(f"spacing_per must be 'block' or 'coordinate', got {spacing_per!r}")
    if scale_per not in ("coordinate", "block"):
        raise ValueError(f"scale_per must be 'coordinate' or 'block', got {scale_per!r}")


def check_samples(neck: DitheredGoodLattice, value, name: str) -> int:
    return _sample_count(value, name, neck.dim)


def check_draw_counts(neck: DitheredGoodLattice, value, name: str) -> int | tuple[int, ...]:
    return _draw_counts(value, name, len(neck.geometry.blocks), neck.dim)


def check_density(neck: DitheredGoodLattice, value, name: str) -> str:
    if not isinstance(value, str) or value not in ("monte_carlo", "gaussian"):
        raise ValueError(f"{name} must be 'monte_carlo' or 'gaussian', got {value!r}")
    return value


def check_proposal(neck: DitheredGoodLattice, value, name: str) -> str:
    return _check_proposal(value, name, neck.prior_name)


def _check_proposal(value, name: str, prior: str) -> str:
    if value not in ("prior", "box", "tilted"):
        raise ValueError(f"{name} must be 'prior', 'box' or 'tilted', got {value!r}")
    if value == "box" and prior != "laplace":
        raise ValueError(f"{name}={value!r} needs the Laplace prior")
    return value
