"""The command line's argument types (``type=`` of its options: seeds, IWAE samples, seconds,
benchmark sizes, a file's seed) and the checks its commands make before any work (no output
over an input, folders that can be made). Used by every command and by :mod:`._parser`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .._utils import check_folder, positive_int


def _refuse_overwrite(outputs: Sequence[str | None], inputs: Sequence[str | None]) -> None:
    """No command may write over one of its inputs (or write two outputs to one file): a
    ValueError naming the clash, checked before any work is done."""
    import os

    def same(a: str, b: str) -> bool:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return os.path.abspath(a) == os.path.abspath(b)

    outputs = [o for o in outputs if o]
    for i, out in enumerate(outputs):
        for other in [p for p in inputs if p] + outputs[:i]:
            if same(out, other):
                raise ValueError(f"refusing to write {out}: it is the same file as {other}")
        if os.path.isdir(out):
            raise ValueError(f"{out} is a folder; name the file to write")
        if os.path.exists(out) and not os.path.isfile(out):
            # a device, a pipe or a socket: the atomic write would replace it by a file
            raise ValueError(f"refusing to write {out}: it is not a regular file")


def _check_folders(*folders: str) -> None:
    """Each folder exists or can be made (no regular file on its path): a ValueError now."""

    for folder in folders:
        check_folder(folder, folder)


def _mixture(text: str) -> tuple[float, float]:
    from ..eval.proposals import parse_mixture

    try:
        return parse_mixture(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct integers in [0, 2^32)."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from None
    # k-means and the probes of the table take seeds below 2^32
    if any(not 0 <= s < 2**32 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and in [0, 2^32): {text!r}")
    return seeds


def _names(text: str | None, option: str) -> list[str] | None:
    """A comma-separated list of row names (None when not given), as the tables'
    ``reproduce`` take it (:func:`~qlatent.experiments.custom.check_names`: a name given twice
    would train and report its row twice)."""
    from ..experiments.custom import check_names

    return check_names(text.split(","), option) if text else None


def _good_lattice_name(text: str) -> str:
    """An argparse type: a lattice block's name (``qlatent.lattices.lattice_by_name``)."""
    from ..lattices import lattice_by_name

    try:
        lattice_by_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.strip().lower()


#: the most IWAE samples ``eval --iwae`` takes (the papers use 1,000 to 5,000; each sample
#: costs a decoder pass over every test image)
_MAX_IWAE_SAMPLES = 1 << 20


def _iwae_samples(text: str) -> int:
    """argparse type of ``--iwae``: an integer in [1, :data:`_MAX_IWAE_SAMPLES`]."""
    value = positive_int(text)
    if value > _MAX_IWAE_SAMPLES:
        raise argparse.ArgumentTypeError(f"at most {_MAX_IWAE_SAMPLES:,} samples, got {value:,}")
    return value


def _seconds(text: str) -> float:
    """argparse type of a time budget: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number, got {text}")
    return value


def _relative_error(text: str) -> float:
    """argparse type of a target relative standard error: a number in (0, 1) (0, a negative
    number or NaN is never reached: the estimate would run to its cap of samples)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text}")
    return value


#: the most timed calls a benchmark case takes (--repeats, --min-repeats)
_MAX_REPEATS = 10_000
#: the most rows (2^24) and the widest input (2^16) a benchmark takes: past them, the timed
#: tensors alone are gigabytes
_MAX_ROWS, _MAX_DIM = 1 << 24, 1 << 16
#: --threads may oversubscribe the cores this many times, no more
_THREADS_PER_CORE = 4


def _at_most(limit: int, what: str):
    """argparse type: an integer in [1, ``limit``]; ``what`` names the unit in the error."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"at most {limit:,} {what}, got {value:,}")
        return value

    return parse


def _threads(text: str) -> int:
    """argparse type of a benchmark's --threads: an integer in [1, 4 × the cores]."""
    import os

    cores = os.cpu_count() or 1
    return _at_most(_THREADS_PER_CORE * cores, f"threads on {cores} core(s)")(text)


def _file_seed(text: str) -> int:
    """argparse type of ``compress --seed``: an integer in [0, 2^63), as a file stores it
    (checked here, not by the coder after the images were encoded)."""
    from ..coding.codec import _check_seed

    try:
        return _check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer in [0, 2^63) (the seed a file stores), got {text!r}"
        ) from None


_repeats = _at_most(_MAX_REPEATS, "timed calls")
_rows = _at_most(_MAX_ROWS, "rows")
_dim = _at_most(_MAX_DIM, "columns")
