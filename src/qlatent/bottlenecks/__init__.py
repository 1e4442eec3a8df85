"""Bottlenecks: one method per file, all behind the contract in ``base``.

>>> from qlatent.bottlenecks import build
>>> bottleneck = build("lattice", dim=8)
"""

from . import (  # noqa: F401  (importing registers them)
    gaussian,
    gaussian_dither,
    gaussian_lattice,
    identity,
    info_dropout,
    lattice,
    learnable_lattice,
    scalar_st,
    soft_em_vq,
    soft_vq,
    vector_st,
    vq,
    vq_ema,
)
from .base import BOTTLENECKS, Bottleneck, BottleneckOutput, build
from .gaussian import GaussianVAE
from .gaussian_dither import GaussianDither
from .gaussian_lattice import GaussianLattice
from .identity import Identity
from .info_dropout import InformationDropout
from .lattice import DitheredLattice
from .learnable_lattice import LearnableLattice
from .scalar_st import ScalarST
from .soft_em_vq import SoftEMVectorQuantizer
from .soft_vq import SoftVectorQuantizer
from .vector_st import VectorST
from .vq import VectorQuantizer
from .vq_ema import EMAVectorQuantizer

__all__ = [
    "BOTTLENECKS",
    "Bottleneck",
    "BottleneckOutput",
    "DitheredLattice",
    "EMAVectorQuantizer",
    "GaussianDither",
    "GaussianLattice",
    "GaussianVAE",
    "Identity",
    "InformationDropout",
    "LearnableLattice",
    "ScalarST",
    "SoftEMVectorQuantizer",
    "SoftVectorQuantizer",
    "VectorQuantizer",
    "VectorST",
    "build",
]
