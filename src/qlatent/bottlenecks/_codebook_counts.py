"""Counting codes: how often each codeword index occurs (:func:`code_counts`), the codes used
and the perplexity of those counts (:func:`usage_stats`), and how often each distinct integer
row occurs (:func:`row_counts`, code vectors of a lattice; :func:`padded_row_counts` the same
counts as ``torch.export`` records them). Used by the codebook methods, the learnable lattice
and the experiments' usage reports, and re-exported by :mod:`._codebook`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import plain_cache


def code_counts(indices: Tensor, num_codes: int) -> Tensor:
    """How often each code occurs: ``(...,)`` int64 -> ``(K,)`` float. On an accelerator by
    ``index_add_`` (``bincount`` there waits for the device to size its output)."""
    flat = indices.reshape(-1)
    if flat.device.type == "cpu":
        return torch.bincount(flat, minlength=num_codes).float()
    counts = torch.zeros(num_codes, device=flat.device)
    return counts.index_add_(0, flat, torch.ones(flat.shape, device=flat.device))


@torch.no_grad()
def usage_stats(counts: Tensor, prefix: str = "") -> dict[str, Tensor]:
    """``codes_used`` (count > 0) and ``perplexity`` = exp(H(counts / Σ counts)), detached.

    Perplexity is the effective number of codes: K for uniform use, 1 for a collapsed codebook.
    """
    counts = counts.detach().float()
    p = counts / counts.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return {
        f"{prefix}codes_used": (counts > 0).sum().float(),
        f"{prefix}perplexity": entropy.exp(),
    }


#: seed of the row hash's odd multipliers (fixed: a row's hash is the same in every process)
_ROW_HASH_SEED = 20261205


@plain_cache
def _row_hash_weights(dim: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(_ROW_HASH_SEED)
    return (torch.randint(-(2**62), 2**62, (dim,), generator=g, dtype=torch.int64) | 1).to(device)


@torch.compiler.disable  # data-dependent (a sort, a branch on ties): runs eagerly, also within
@torch.no_grad()  # a caller's torch.compile
def row_counts(rows: Tensor) -> Tensor:
    """How often each distinct row of the integer matrix ``rows`` ``(N, D)`` occurs: ``(M,)``
    int64 for the M distinct rows, in no particular order. Exact.

    ``torch.unique(rows, dim=0)`` sorts the rows lexicographically, D comparisons deep, which
    made the learnable lattice's eval path 12× slower than its quantization. Here each row is
    reduced to one random linear hash (wrapping int64 arithmetic), the N hashes are sorted, and
    only the rows that share a hash with their neighbour in that order are compared in full:
    if two of them differ (a collision, about N²/2^64 likely), the counts come from
    ``torch.unique`` instead, so the result never depends on the hash.
    """
    keys = rows.detach().long()
    # a product and a sum, not a matrix product: CUDA has no int64 matmul
    hashes = (keys * _row_hash_weights(keys.shape[1], keys.device)).sum(1)
    hashes, order = torch.sort(hashes)
    ties = (hashes[1:] == hashes[:-1]).nonzero().squeeze(1)
    if ties.numel():
        first, second = (keys.index_select(0, order[at]) for at in (ties, ties + 1))
        if bool((first != second).any()):
            return torch.unique(keys, dim=0, return_counts=True)[1]
    return torch.unique_consecutive(hashes, return_counts=True)[1]


# a constant of the program: strict export cannot trace the seeded generator that draws them
_exported_hash_weights = torch._dynamo.assume_constant_result(_row_hash_weights)


@torch.no_grad()
def padded_row_counts(rows: Tensor) -> Tensor:
    """:func:`row_counts` as ``torch.export`` can record it, which can neither branch on a
    value nor size a tensor by a count: ``(N,)`` int64, the counts of the distinct rows of
    ``rows`` ``(N, D)`` in the order :func:`row_counts` gives them, then zeros (which
    :func:`usage_stats` passes over). Exact without a fallback: the rows are ordered by one
    stable sort per column and then by their hash, so that equal rows are neighbours also
    where two distinct rows share a hash, and each run of equal neighbours is one row."""
    keys = rows.detach().long()
    order = torch.arange(keys.shape[0], device=keys.device)
    hashes = (keys * _exported_hash_weights(keys.shape[1], keys.device)).sum(1)
    for column in [*(keys[:, j] for j in reversed(range(keys.shape[1]))), hashes]:
        order = order.index_select(0, column.index_select(0, order).sort(stable=True).indices)
    ordered = keys.index_select(0, order)
    # each row against the one before it (the first against none): as a roll, not as slices
    # ``[1:]`` / ``[:-1]``, whose size N − 1 held a dynamic batch size at 3 or more
    later = torch.arange(keys.shape[0], device=keys.device) > 0
    starts = (ordered != ordered.roll(1, 0)).any(1) & later
    run = starts.long().cumsum(0)
    return torch.zeros_like(run).index_add_(0, run, torch.ones_like(run))
