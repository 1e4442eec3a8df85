"""The nearest-codeword search of the codebook methods: ``‖z − e_k‖²`` and its argmin over the
codebook, in row chunks so that a large codebook never materialises an ``N×K`` matrix bigger
than a few MB (:func:`nearest_codeword`, :func:`squared_distances`). Used by
:class:`~._codebook.CodebookQuantizer` and ``soft_vq``, and re-exported by :mod:`._codebook`.

Shapes: ``z`` ``(N, d)`` rows, codebook ``e`` ``(K, d)``, indices ``(N,)`` int64.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .._utils import compiled_or_plain, recording_graph

#: entries of one N×K distance chunk (4 MB in float32), one buffer reused by every chunk. With
#: a fresh chunk per step, 1 MB chunks were best (K = 512, 16384 × 64 rows, two threads: 15.8 ms
#: against 21.5 with 16 MB chunks and 31 unchunked: large blocks are mapped and faulted in anew);
#: with the buffer reused, 1, 2, 4 and 8 MB chunks took 2.91, 2.83, 2.81 and 2.87 ms at K = 128
#: and 9.96, 9.87, 9.74 and 9.77 ms at K = 512 (medians of 100 alternated calls) ...
_CHUNK_ELEMENTS = 1 << 20
#: ... but at least this many rows per chunk, or large codebooks run many tiny matrix products
#: (K = 4096 with 64-row chunks took twice as long as with 1024-row ones)
_MIN_CHUNK_ROWS = 1024
#: on an accelerator there is no cache to fit: chunks only bound the memory of the distances
#: (512 MB in float32), since each chunk costs kernel launches
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 27


def squared_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """``‖z_i − e_k‖²`` for all pairs: ``(N, d), (K, d) -> (N, K)``, never negative.

    Expanded as ‖z‖² − 2 z·e + ‖e‖² (one matrix product); rounding can make the expansion
    slightly negative for near-coincident points, so it is clamped at zero.
    """
    cross = torch.addmm(codebook.square().sum(1), z, codebook.t(), alpha=-2.0)
    return (cross + z.square().sum(1, keepdim=True)).clamp_min(0.0)


@torch.no_grad()
def nearest_codeword(z: Tensor, codebook: Tensor, *, compile: bool = False) -> Tensor:
    """``argmin_k ‖z_i − e_k‖²``: ``(N, d), (K, d) -> (N,)`` int64.

    ‖z‖² is the same for every k, so only ‖e‖² − 2 z·e is formed — one fused ``addmm`` per chunk
    of rows, with ``N×K`` never held at once for large codebooks. Ties go to the lowest index,
    as ``torch.min`` along the rows gives them; on the CPU the index comes from
    :func:`_first_minimum` (the same indices, without ``torch.min``'s scalar loop).

    ``compile``: on the CPU, float32 and float64 inputs of at least ``_COMPILED_MIN_ROWS`` rows
    take :func:`_nearest_compiled` (the search after each ``addmm`` fused by ``torch.compile``):
    the same indices.
    """
    z = z.detach()
    codebook = codebook.detach()
    norms = codebook.square().sum(1)
    num_codes = codebook.shape[0]
    budget = _CHUNK_ELEMENTS if z.device.type == "cpu" else _CHUNK_ELEMENTS_ACCELERATOR
    rows = max(_MIN_CHUNK_ROWS, budget // num_codes)
    if recording_graph():
        # one search: the branches on the row count below bounded a dynamic batch size (and
        # an unbounded one failed inside torch: "Expected op to be '==', got <")
        return torch.addmm(norms, z, codebook.t(), alpha=-2.0).min(1).indices
    if (
        compile
        and z.device.type == "cpu"
        and z.dtype in _SEARCH_DTYPES
        and z.shape[0] >= _COMPILED_MIN_ROWS
    ):
        return _nearest_compiled(z, codebook, norms, min(rows, z.shape[0]))
    weighted = (
        z.device.type == "cpu"
        and z.dtype in _SEARCH_DTYPES
        and num_codes <= _WEIGHTED_MAX_CODES
        and z.shape[0] * num_codes >= _WEIGHTED_MIN_ELEMENTS
    )
    if z.shape[0] <= rows and not weighted:
        return torch.addmm(norms, z, codebook.t(), alpha=-2.0).min(1).indices
    # one distance buffer for every full chunk and the indices written in place: a fresh
    # chunk of 16 MB (K = 4096) is mapped and faulted in again on every allocation
    out = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    rows = min(rows, z.shape[0])
    # the weighted search's work space (at most one budget's worth of rows: a large codebook's
    # chunk is searched in parts) in the same allocation as the distances: glibc keeps one
    # freed block of this size for the next call, where two went back to the system and were
    # faulted in again on every call (2,048 page faults a call at K = 128, 16384 rows)
    part = min(rows, max(1, budget // num_codes)) if weighted else 0
    space = z.new_empty((rows + part) * num_codes)
    distances = space[: rows * num_codes].view(rows, num_codes)
    work = space[rows * num_codes :].view(part, num_codes)
    minima = None if weighted else z.new_empty(rows)
    for start in range(0, z.shape[0], rows):
        chunk = z[start : start + rows]
        n = chunk.shape[0]
        torch.addmm(norms, chunk, codebook.t(), alpha=-2.0, out=distances[:n])
        if not weighted:
            torch.min(distances[:n], 1, out=(minima[:n], out[start : start + n]))
            continue
        for first in range(0, n, part):
            last = min(first + part, n)
            _first_minimum(
                distances[first:last], work[: last - first], out[start + first : start + last]
            )
    return out


#: fewer rows (and a shorter last chunk) take the eager search under ``compile=True``: a
#: compiled call costs tens of microseconds, and one row would be compiled apart
_COMPILED_MIN_ROWS = 64


def _first_nearest(distances: Tensor, codes: Tensor) -> Tensor:
    """The first nearest code of each row: ``distances`` ``(n, K)``, ``codes`` ``(1, K)`` int64
    (0 … K − 1) -> ``(n,)`` int64, the least k attaining the row's minimum (as ``torch.min``
    gives it), or K in a row whose minimum is NaN.

    Two reductions along each row, the minimum and then the least code equal to it, which
    ``torch.compile`` fuses into one loop over the rows (:func:`_compiled_first_nearest`)."""
    least = distances.amin(1, keepdim=True)
    return torch.where(distances == least, codes, codes.shape[1]).amin(1)


@functools.cache
def _compiled_first_nearest():
    """:func:`_first_nearest` fused by ``torch.compile`` (dynamic shapes: one compilation per
    dtype for every K and number of rows; compiled on first use)."""
    return torch.compile(_first_nearest, dynamic=True)


def _nearest_compiled(z: Tensor, codebook: Tensor, norms: Tensor, rows: int) -> Tensor:
    """:func:`nearest_codeword` with ``compile=True`` on the CPU, in chunks of ``rows`` rows:
    per chunk the eager search's ``addmm`` into one reused buffer and one compiled pass over it
    (:func:`_compiled_first_nearest`) in place of the weighted search's four passes, so the same
    distances and the same indices bit for bit. A last chunk of fewer than
    ``_COMPILED_MIN_ROWS`` rows and the rows whose distances hold a NaN take ``torch.min``, as
    eagerly."""
    search = compiled_or_plain(_compiled_first_nearest, _first_nearest)
    num_codes = codebook.shape[0]
    codes = torch.arange(num_codes, device=z.device).unsqueeze(0)
    out = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    space = z.new_empty(rows * num_codes)  # one distance buffer for every chunk
    for start in range(0, z.shape[0], rows):
        chunk = z[start : start + rows]
        n = chunk.shape[0]
        distances = space[: n * num_codes].view(n, num_codes)
        torch.addmm(norms, chunk, codebook.t(), alpha=-2.0, out=distances)
        found = out[start : start + n]
        if n < _COMPILED_MIN_ROWS:
            torch.min(distances, 1, out=(distances.new_empty(n), found))
            continue
        found.copy_(search(distances, codes))
        missed = found == num_codes  # a NaN among the row's distances
        if bool(missed.any()):
            rest = missed.nonzero().squeeze(1)
            found[rest] = distances.index_select(0, rest).min(1).indices
    return out


#: the float types the weighted search (and the compiled one) handles
_SEARCH_DTYPES = (torch.float32, torch.float64)
#: at most 2^16 codes: at 2^16 a chunk's work space is already searched in parts of 16 rows
#: (weights up to 2^24 would still be exact in float32); beyond, ``torch.min``
_WEIGHTED_MAX_CODES = 1 << 16
#: below this many distances ``torch.min``'s one call costs about as much as the search's
#: several (measured for an earlier search of a dozen calls; one thread, 64-d rows: 0.33 against
#: 0.35 ms at 1024 × 128, 0.65 against 0.57 at 2048 × 128, 1.21 against 0.96 at 1024 × 512)
_WEIGHTED_MIN_ELEMENTS = 1 << 18


def _first_minimum(distances: Tensor, work: Tensor, out: Tensor) -> None:
    """``out = distances.min(1).indices`` (the first minimum of each row), bit for bit, from
    vectorized passes: on the CPU ``torch.min`` with its index runs a scalar loop, about ten
    times slower per element than the minimum alone (``amin``). ``(n, K)`` float32 / float64
    rows, ``work`` a buffer of the same shape and dtype, ``out`` ``(n,)`` int64.

    The row minima m (``amin``), the mask of the distances equal to them written as 0/1 floats
    (a comparison into a ``bool`` tensor costs several times as much), the mask weighted
    K, K − 1, …, 1 by code, and its ``amax``: the largest weight, K − k, marks the first code k
    attaining m. Every number here is an integer below 2^24, so exact. ±0 tie (they compare
    equal) and ±inf is its own row minimum, as in ``torch.min``; a row holding a NaN has a NaN
    minimum and an empty mask (weight 0, code K) and takes ``torch.min``.
    """
    num_codes = distances.shape[1]
    torch.eq(distances, distances.amin(1, keepdim=True), out=work)
    work.mul_(torch.arange(num_codes, 0, -1, dtype=work.dtype, device=work.device))
    first = work.amax(1).neg_().add_(num_codes)  # K − (K − k)
    out.copy_(first)
    if float(first.amax()) == num_codes:  # a NaN in some row
        rest = (first == num_codes).nonzero().squeeze(1)
        out[rest] = distances.index_select(0, rest).min(1).indices
