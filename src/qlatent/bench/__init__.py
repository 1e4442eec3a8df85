"""Throughput benchmarks (``qlatent bench``). Numbers go to ``results/``, never into tests."""

from .lattice import bench_lattice
from .quantizers import (
    COMPILED_KWARGS,
    FSQ_LEVELS,
    MODES,
    PEER_CODEBOOK_SIZES,
    QUANTIZER_KWARGS,
    SPEEDUP_TARGET,
    bench_quantizers,
    format_quantizers,
)
from .timing import time_cases

__all__ = [
    "COMPILED_KWARGS",
    "FSQ_LEVELS",
    "MODES",
    "PEER_CODEBOOK_SIZES",
    "QUANTIZER_KWARGS",
    "SPEEDUP_TARGET",
    "bench_lattice",
    "bench_quantizers",
    "format_quantizers",
    "time_cases",
]
