"""The Monte-Carlo counts of :class:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice`.

Their command-line form (:func:`monte_carlo_counts`, :func:`counts_text`, read by the CLI and the
example scripts), the check that a count per block names every block
(:func:`check_block_counts`), and the constructor's checks of each count against what one row's
estimate may hold (:data:`ROW_NUMBERS`) and one key of the counter-based generator draws.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def monte_carlo_counts(text: str) -> tuple[int, int | tuple[int, ...]]:
    """``"S_u,S_q"`` (cell points, proposal draws, as given on a command line) -> ``(S_u, S_q)``,
    or ``"S_u,S_q1:S_q2:..."`` (one draw count per block, as ``prior_samples=[...]``) ->
    ``(S_u, (S_q1, S_q2, ...))``; an ``argparse`` type: ``argparse.ArgumentTypeError``
    (argparse prints its message) unless S_u is even and >= 2 (antithetic pairs) and every
    S_q >= 0."""
    cells, sep, draws = str(text).partition(",")
    try:
        count = int(cells)
        per_block = tuple(int(d) for d in draws.split(":")) if sep else ()
    except ValueError:
        per_block = ()
    if not per_block:
        raise argparse.ArgumentTypeError(
            f"expected S_u,S_q or S_u,S_q1:S_q2 (integers), got {text!r}"
        )
    if count < 2 or count % 2 or min(per_block) < 0:
        raise argparse.ArgumentTypeError(f"S_u must be even and >= 2, S_q >= 0, got {text!r}")
    return count, per_block[0] if len(per_block) == 1 else per_block


def counts_text(counts: tuple[int, int | tuple[int, ...]]) -> str:
    """The command-line form of :func:`monte_carlo_counts`' pair, ``"S_u,S_q"`` or
    ``"S_u,S_q1:S_q2"``."""
    cells, draws = counts
    return f"{cells},{':'.join(map(str, draws)) if isinstance(draws, tuple) else draws}"


def check_block_counts(pairs: Sequence[tuple[int, int | tuple[int, ...]]], blocks: int) -> None:
    """ValueError unless every pair of :func:`monte_carlo_counts` that gives one draw count per
    block gives ``blocks`` of them."""
    for pair in pairs:
        if isinstance(pair[1], tuple) and len(pair[1]) != blocks:
            raise ValueError(f"counts {counts_text(pair)} name {len(pair[1])} blocks, not {blocks}")


#: the most numbers (count · dim) one row's Monte-Carlo estimate may form per kind of draw.
#: One row is the smallest chunk of :meth:`DitheredGoodLattice.log_density`, and its
#: temporaries came to about 19 bytes per number: one row at this limit peaked at 2.6 GB (E8)
#: and 2.7 GB (Λ24), both kinds of draw at the limit, no gradient; at the generator's limit
#: (below), the only one before, it would be tens of GB
ROW_NUMBERS = 1 << 26


def _count_limit(dim: int) -> int:
    """The largest Monte-Carlo count per row: one row's draws (up to 2·dim numbers each, the
    tilted proposal's) must fit the 2^31 counters of one key of :func:`counter_uniform`, and
    the row's estimate at most :data:`ROW_NUMBERS` numbers per kind of draw."""
    return min((2**31 - 1) // (2 * dim), ROW_NUMBERS // dim)


def _sample_count(value, name: str, dim: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
        raise ValueError(f"{name} must be an even integer >= 2 (antithetic pairs), got {value!r}")
    return _within_limit(value, name, dim)


def _count(value, name: str, dim: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return _within_limit(value, name, dim)


def _within_limit(value: int, name: str, dim: int) -> int:
    if value > _count_limit(dim):
        raise ValueError(
            f"{name} = {value} is more draws per row than one row's estimate may hold at dim "
            f"{dim}: at most {_count_limit(dim):,} ({ROW_NUMBERS:,} numbers, and within a key "
            "of the counter-based generator)"
        )
    return value


def _draw_counts(value, name: str, blocks: int, dim: int) -> int | tuple[int, ...]:
    """A proposal-draw count: one non-negative integer for every block, or one per block."""
    if isinstance(value, (list, tuple)):
        if len(value) != blocks:
            raise ValueError(f"{name} gives {len(value)} counts for {blocks} blocks: {value!r}")
        counts = tuple(_count(v, name, dim) for v in value)
        return counts[0] if len(set(counts)) == 1 else counts
    return _count(value, name, dim)
