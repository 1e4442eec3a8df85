"""Effective codebook size: how many distinct code vectors a quantizer emits over a dataset.

The LL-VQ-VAE reference code (``experiments/utils.py``) quantizes every spatial position of every
image in the train and validation loaders and counts the distinct quantized vectors (11.76 M
vectors for FashionMNIST: 60,000 images × 14 × 14). We count the same thing from the hard path's
symbols:

- one codeword index per position (``vq``, ``vq_ema``, ...): distinct indices, exactly;
- one integer vector per position (lattices): distinct rows of the ``(N, D)`` integer matrix.
  A fine lattice can emit millions of distinct 64-dimensional rows, too many to sort as they
  are, so each row is first reduced to two 64-bit random linear hashes (wrapping int64
  arithmetic). Two distinct rows share both hashes with probability at most about 2^−126 per
  pair (for difference vectors with an odd coordinate; a factor 2^v more when every difference is
  divisible by 2^v), so for 10^7 rows the chance that the count is off by even one is below
  10^−24. :func:`distinct_rows` can check this against ``torch.unique`` on small inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import check_count, tqdm

#: odd multipliers of the two row hashes, drawn once from this seed (fixed, so counts are stable)
_HASH_SEED = 20231015


@dataclass
class CodeUsage:
    """:func:`code_usage`'s count: the effective codebook size of the LL-VQ-VAE table (Khalil
    et al., arXiv 2310.09382) and the number of vectors it was counted over."""

    unique_codes: int  #: distinct code vectors
    total_vectors: int  #: spatial positions quantized (images × H × W)


def _hash_weights(dim: int) -> Tensor:
    g = torch.Generator().manual_seed(_HASH_SEED)
    w = torch.randint(-(2**62), 2**62, (2, dim), generator=g, dtype=torch.int64)
    return w | 1  # odd multipliers


def _check_rows(rows: Tensor) -> None:
    if not isinstance(rows, Tensor) or rows.dim() != 2:
        got = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
        raise ValueError(f"rows must be a 2-D tensor (N, D), got {got}")
    if rows.is_floating_point() or rows.is_complex():
        # .long() truncated them: 0.2 and 0.7 counted as one code
        raise ValueError(f"rows must be integers (code symbols), got {rows.dtype}")


def row_hashes(rows: Tensor) -> Tensor:
    """``(N, D)`` integers → ``(N, 2)`` int64: two random linear hashes modulo 2^64.

    The multipliers are fixed (drawn once from a constant seed), so hashes are the same in every
    run. Raises ValueError unless ``rows`` is a 2-D integer tensor.
    """
    _check_rows(rows)
    rows = rows.long()
    w = _hash_weights(rows.shape[1]).to(rows.device)
    return torch.stack([(rows * w[0]).sum(1), (rows * w[1]).sum(1)], dim=1)


def distinct_rows(rows: Tensor, *, exact: bool = False) -> Tensor:
    """The distinct rows of ``(N, D)`` integers, or of their hashes (``(M, 2)``) by default.

    With ``exact=True`` the result is the ``(M, D)`` distinct rows themselves (sorted, as
    ``torch.unique`` returns them); either way M is the number of distinct codes. Raises
    ValueError unless ``rows`` is a 2-D integer tensor.
    """
    _check_rows(rows)
    return torch.unique(rows.long() if exact else row_hashes(rows), dim=0)


@torch.no_grad()
def code_usage(
    model: torch.nn.Module,
    datasets: list[Tensor],
    *,
    batch_size: int = 500,
    progress: bool = True,
    seed: int = 0,
) -> CodeUsage:
    """Distinct hard-path codes of ``model`` (an :class:`~qlatent.models.Autoencoder`) over the
    images of all ``datasets`` together, and how many positions were quantized.

    Each dataset is an input tensor ``(N, *image)`` that ``model.encoder`` takes batch by batch
    (e.g. ``(N, 784)`` or ``(N, 1, 28, 28)``); the codes are ``model.bottleneck.quantize`` of the
    encoder output ``(B, dim, *spatial)``, one code per example and spatial position. The
    protocol of the LL-VQ-VAE reference code (Khalil et al., arXiv 2310.09382).

    A dithered quantizer's dither comes from one CPU generator seeded with ``seed`` for the whole
    call, so every batch draws its own, as a coder's stream does; a fresh generator per batch
    gave every batch the same dither, and with ``batch_size=1`` every image the same one (a
    rectangular lattice then counted 7 codes on 300 images where one dither per image gives
    21 to 30). Deterministic quantizers (codebooks, LL-VQ) do not read it. Every module's
    previous train/eval mode is restored afterwards, also on error.

    ValueError unless ``datasets`` is a list (or tuple) of tensors, ``batch_size`` a positive
    integer and ``seed`` one torch's generators take."""
    from ..train.loop import check_seed

    check_count(batch_size, "batch_size")
    check_seed(seed, "seed")
    if not isinstance(datasets, list | tuple) or not all(isinstance(x, Tensor) for x in datasets):
        # one tensor was taken row by row, each image as a batch without its batch axis
        raise ValueError(f"datasets must be a list of tensors, got {type(datasets).__name__}")
    generator = torch.Generator().manual_seed(seed)
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        return _count_codes(model, datasets, batch_size, generator, progress)
    finally:
        # left in eval mode, a model counted between epochs went on training on its hard path
        for module, training in modes:
            module.training = training


def _count_codes(
    model: torch.nn.Module,
    datasets: list[Tensor],
    batch_size: int,
    generator: torch.Generator,
    progress: bool,
) -> CodeUsage:
    """:func:`code_usage`'s count, batch by batch, the dither drawn from ``generator``."""
    bottleneck = model.bottleneck
    seen: list[Tensor] = []
    total = 0
    batches = [xb for x in datasets for xb in x.split(batch_size)]
    for xb in tqdm(batches, desc="counting codes", disable=not progress, leave=False):
        symbols = bottleneck.quantize(model.encoder(xb), generator=generator)
        if bottleneck.index_kind == "scalar":
            keys = symbols.reshape(-1, 1)
        else:
            keys = row_hashes(symbols.movedim(1, -1).reshape(-1, symbols.shape[1]))
        total += keys.shape[0]
        seen.append(torch.unique(keys, dim=0))
        if len(seen) >= 64:  # keep memory bounded: merge what we have so far
            seen = [torch.unique(torch.cat(seen), dim=0)]
    unique = torch.unique(torch.cat(seen), dim=0).shape[0] if seen else 0
    return CodeUsage(unique_codes=unique, total_vectors=total)
