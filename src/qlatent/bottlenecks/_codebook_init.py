"""Codebook initialisations (:data:`CODEBOOK_INITS`, :func:`init_codebook`), among them that of
the reference code, TensorFlow's ``uniform_unit_scaling``: U(±sqrt(3/d)). Used by the codebook
methods and :class:`~._ema_codebook.EMACodebook`, and re-exported by :mod:`._codebook`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def uniform_unit_scaling(num_codes: int, dim: int) -> Tensor:
    """``(K, d)`` codewords drawn from U(−sqrt(3/d), sqrt(3/d)) with torch's global RNG.

    Each row then has expected squared norm 1, whatever ``d`` is. The reference code of both the
    Soft VQ-VAE paper and Roy et al. initialises its codebook this way.
    """
    bound = math.sqrt(3.0 / dim)
    return torch.empty(num_codes, dim).uniform_(-bound, bound)


#: codebook initialisations: the Soft VQ-VAE and tensor2tensor code ("unit_scaling"), the
#: VQ-VAE code of zalandoresearch / AntixK used by LL-VQ-VAE for VQ ("uniform_inverse_k",
#: U(±1/K)) and for VQ-EMA ("normal", N(0, 1))
CODEBOOK_INITS = ("unit_scaling", "uniform_inverse_k", "normal")


def init_codebook(kind: str, num_codes: int, dim: int) -> Tensor:
    """``(K, d)`` initial codewords of the named kind (:data:`CODEBOOK_INITS`), global RNG."""
    if kind == "unit_scaling":
        return uniform_unit_scaling(num_codes, dim)
    if kind == "uniform_inverse_k":
        return torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
    if kind == "normal":
        return torch.randn(num_codes, dim)
    raise ValueError(f"init must be one of {list(CODEBOOK_INITS)}, got {kind!r}")
