"""Command line: ``qlatent data | train | eval | demo | reproduce | update | compress |
decompress | inspect | bench``.

:func:`main` runs one command and returns its exit code (:mod:`._main`); :func:`build_parser`
is its argument parser (:mod:`._parser`); the commands live by concern in :mod:`._train`,
:mod:`._coding` and :mod:`._bench`, their argument types and checks in :mod:`._args`."""

from __future__ import annotations

# the private names are read from ``qlatent.cli`` by the tests
from ._args import _names  # noqa: F401
from ._coding import (  # noqa: F401
    _CODING_DATA,
    _draw_decoded,
    _write_png_folder,
    _write_reconstructions,
)
from ._interrupt import _interrupted  # noqa: F401
from ._main import console, main
from ._parser import BENCH_DEVICE_HELP, build_parser
from ._train import _lattice_config  # noqa: F401

__all__ = ["BENCH_DEVICE_HELP", "build_parser", "console", "main"]
