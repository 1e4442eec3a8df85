"""What the codebook methods (``vq``, ``vq_ema``, ``soft_em_vq``, ``soft_vq``) share.

Stateless maths as plain functions, plus :class:`EMACodebook`, the one piece with state:

- :func:`uniform_unit_scaling` — the codebook initialisation of the reference code (TensorFlow's
  ``uniform_unit_scaling``: U(±sqrt(3/d))).
- :func:`squared_distances` and :func:`nearest_codeword` — ‖z − e_k‖² and its argmin, in row
  chunks so that a large codebook never materialises an ``N×K`` matrix bigger than a few MB.
- :func:`mean_square_error` — ``mse_loss`` without overflow where only the sum of squares would.
- :func:`usage_stats` — codes used and perplexity exp(H(usage)) from (possibly fractional) counts.
- :func:`row_counts` — how often each distinct integer row occurs (code vectors of a lattice);
  :func:`padded_row_counts` the same counts as ``torch.export`` records them.
- :class:`CodebookQuantizer` — the hard path of one-index-per-row methods (lookup, log K rate).
- :class:`EMACodebook` — the M-step of hard and soft EM (Roy et al. 2018, arXiv 1805.11063):
  exponential moving averages of counts and sums with Laplace smoothing. Under
  ``torch.distributed`` the batch statistics are all-reduced first, so every rank applies the
  same update and keeps the same codebook (not inside :func:`local_updates`, for passes whose
  updates are put back). A forward recomputed by ``torch.utils.checkpoint`` (:func:`recomputing`)
  repeats the forward it recomputes, with no second update (:meth:`EMACodebook.recorded_step`).

Shapes: ``z`` ``(N, d)`` rows, codebook ``e`` ``(K, d)``, indices ``(N,)`` int64.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._utils import (
    anchor,
    apply_function,
    compiled_or_plain,
    first_order,
    forward_mode_possible,
    forward_tangent,
    in_transform,
    plain_cache,
    recording_graph,
    save_for_first_order,
    saved_for_first_order,
    shown_compile,
    shown_setting,
    with_plain_twin,
)
from ._code_model import CountedCodeModel
from .base import (
    Bottleneck,
    BottleneckOutput,
    Fixed,
    Setting,
    _row_sums,
    check_flag,
    recomputed_record,
    recomputing,
)

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


def check_num_codes(num_codes: int) -> int:
    if not isinstance(num_codes, int) or isinstance(num_codes, bool) or num_codes < 2:
        raise ValueError(f"num_codes must be an integer >= 2, got {num_codes!r}")
    return num_codes


def check_indices(indices: Tensor, num_codes: int) -> Tensor:
    """Codeword indices must lie in [0, K): a clear error instead of an index fault."""
    if indices.numel() and (indices.min() < 0 or indices.max() >= num_codes):
        raise ValueError(
            f"codeword indices must lie in [0, {num_codes}), got values in "
            f"[{indices.min().item()}, {indices.max().item()}]"
        )
    return indices.long()


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


def mean_square_error(a: Tensor, b: Tensor) -> Tensor:
    """``F.mse_loss(a, b)`` (the mean of (a − b)², differentiable in both) that stays finite
    where the sum of squares passes the dtype's range but the mean does not
    (:func:`_rescaled_mean_square`)."""
    diff = a - b
    mean_square = diff.square().mean()
    if diff.numel() and recording_graph():
        return _finite_or_rescaled(mean_square, diff.reshape(-1))
    if diff.numel() and not bool(torch.isfinite(mean_square)):
        mean_square = _rescaled_mean_square(diff.reshape(-1))
    return mean_square


def _mean_square(flat: Tensor) -> Tensor:
    """Σ e²/n of a flat tensor as one dot product: no rows × d temporary (each costs page faults
    on the CPU), with the same fallback as :func:`mean_square_error`."""
    mean_square = torch.dot(flat, flat) / flat.numel()
    if flat.numel() and recording_graph():
        return _finite_or_rescaled(mean_square, flat)
    if flat.numel() and not bool(torch.isfinite(mean_square)):
        mean_square = _rescaled_mean_square(flat)
    return mean_square


def _finite_or_rescaled(mean_square: Tensor, flat: Tensor) -> Tensor:
    """The fallback of :func:`_mean_square` as ``torch.export`` can record it, which cannot
    branch on a value: both computed, the rescaled one taken where the plain one is not finite
    (the same value; the peak kept from 0 so that an all-zero ``flat`` gives no NaN beside it)."""
    wide = flat.float() if flat.element_size() < 4 else flat
    peak = wide.detach().abs().amax().clamp_min(torch.finfo(wide.dtype).tiny)
    unit = wide / peak
    rescaled = (peak.square() * (torch.dot(unit, unit) / flat.numel())).to(flat.dtype)
    return torch.where(mean_square.isfinite(), mean_square, rescaled)


def _rescaled_mean_square(flat: Tensor) -> Tensor:
    """Σ e²/n formed from e/max|e|, in float32 at least, and scaled back: for where the sum of
    squares passes the dtype's range and the mean does not (a row's squared norm is bounded by
    the input limit, not the sum over rows; any ordinary batch of a float16 module)."""
    wide = flat.float() if flat.element_size() < 4 else flat
    peak = wide.detach().abs().amax()
    unit = wide / peak
    return (peak.square() * (torch.dot(unit, unit) / flat.numel())).to(flat.dtype)


@with_plain_twin
class _CodebookAndCommitment(torch.autograd.Function):
    """VQ-VAE's straight-through output and auxiliary loss from one difference e = q − z:

        y_hat = z + sg(e),   aux = ‖q − sg(z)‖² + β ‖z − sg(q)‖²   (means; both equal mean e²)

    so ∂aux/∂q = 2e/n and ∂aux/∂z = −2βe/n. Three passes forward (e, its mean square, y_hat)
    where the composed form takes eight, and two rows × d allocations (e and y_hat, or e alone
    with ``reuse_q``). Forward mode (``jvp``) as the composed form's: ẏ_hat = ż,
    ȧux = Σ 2e·(q̇ − βż)/n."""

    outputs = 2  # the real outputs (:func:`~qlatent._utils.with_plain_twin`)

    @staticmethod
    def forward(z: Tensor, q: Tensor, beta: float, reuse_q: bool):
        e = q - z
        mean_square = _mean_square(e.reshape(-1))
        # with ``reuse_q``, y_hat in the buffer of q, which the caller gave up
        y_hat = torch.add(z, e, out=q) if reuse_q else z + e
        return y_hat, (1.0 + beta) * mean_square, e, anchor(e)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, q, beta, reuse_q = inputs
        _, _, e, kept = output
        if reuse_q:
            ctx.mark_dirty(q)
        save_for_first_order(ctx, kept, (e,), (e,), (e,))
        ctx.beta = beta

    @staticmethod
    @first_order
    def backward(ctx, grad_y_hat: Tensor | None, grad_aux: Tensor | None, *_):
        (e,) = saved_for_first_order(ctx)
        if grad_y_hat is None:
            grad_y_hat = torch.zeros_like(e)
        if grad_aux is None:
            grad_aux = e.new_zeros(())
        scaled = e * (grad_aux * (2.0 / e.numel()))
        grad_z = grad_y_hat - ctx.beta * scaled if ctx.needs_input_grad[0] else None
        grad_q = scaled if ctx.needs_input_grad[1] else None
        return grad_z, grad_q, None, None

    @staticmethod
    def jvp(ctx, t_z, t_q, *_):
        (e,) = ctx.saved_tensors
        t_y_hat = torch.zeros_like(e) if t_z is None else t_z.clone()
        slope = e * (2.0 / e.numel())
        t_aux = forward_tangent((slope, t_q), (-ctx.beta * slope, t_z)).sum()
        return t_y_hat, t_aux, None, anchor(e)


def codebook_and_commitment(
    z: Tensor, q: Tensor, beta: float, *, reuse_q: bool = False
) -> tuple[Tensor, Tensor]:
    """``(y_hat, aux)`` of VQ-VAE: the straight-through output ``z + sg(q − z)`` and
    ``mse(q, sg(z)) + β·mse(z, sg(q))``, with the gradients of those expressions.

    ``reuse_q=True`` writes y_hat into q's buffer (q must be a temporary the caller no longer
    reads, e.g. the codewords just gathered, and not a leaf that requires grad): one rows × d
    allocation fewer."""
    # (not into q's buffer where forward mode may run: its tangent would have to be
    # rewritten in place; nor while exporting: the program recorded the ``out=`` write, which
    # failed wherever the codebook requires grad, and strict export refused the dirty input)
    reuse_q = reuse_q and not (forward_mode_possible() or recording_graph())
    y_hat, aux, *_ = apply_function(_CodebookAndCommitment, z, q, float(beta), reuse_q)
    return y_hat, aux


def straight_through(z: Tensor, q: Tensor) -> Tensor:
    """Forward value ``q``, gradient copied to ``z``: ``z + sg(q − z)``."""
    return z + (q - z).detach()


def _check_decay(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
    return float(value)


def _check_eps(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    # an infinite eps made every smoothed count NaN, and with it the codebook
    if not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


#: how many :func:`local_updates` blocks are open (their M-steps are this rank's own)
_LOCAL_UPDATES = 0


@contextlib.contextmanager
def local_updates() -> Iterator[None]:
    """Inside it an :class:`EMACodebook` update uses this rank's batch alone, with no
    all-reduce: for a pass whose updates are put back afterwards (validation on the training
    path), where the ranks run different numbers of batches (shards of unequal size). An
    all-reduce per batch there paired one rank's codebook statistics with another's metric
    totals, and the run failed on a collective mismatch."""
    global _LOCAL_UPDATES
    _LOCAL_UPDATES += 1
    try:
        yield
    finally:
        _LOCAL_UPDATES -= 1


def _synchronized() -> bool:
    """Whether an update sums its statistics over the ranks of a world larger than one."""
    if _LOCAL_UPDATES:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass
class TrainingStep:
    """What one training-mode forward quantized with, kept for its recomputation: the sums of
    its input rows (:func:`_row_sums`, to recognise them), its codebook before the M-step
    ``(K, d)``, soft EM's sampled codes ``(N, m)`` (``None`` for hard EM), and the graph task
    that last recomputed it (a second recomputation in one backward pass is of another forward
    with the same input)."""

    row_sums: Tensor
    codebook: Tensor
    samples: Tensor | None = None
    task: int = -1


class EMACodebook(nn.Module):
    """Codebook kept by exponential moving averages (the M-step of hard / soft EM).

    With batch statistics n_k (counts, fractional for soft EM) and s_k = Σ_i w_ik z_i::

        c_k ← λ c_k + (1 − λ) n_k          m_k ← λ m_k + (1 − λ) s_k
        c̃_k = (c_k + ε) / (Σ c + K ε) · Σ c  (Laplace smoothing)      e_k = m_k / c̃_k

    ``c`` starts at zero and ``m`` at the initial codebook, as in tensor2tensor and the common
    VQ-VAE-EMA code. A code that is never chosen keeps m_k = λ^t m_k(0) over a smoothed count of
    about ε, so it drifts far away and stays unused ("dead"); that is the method, not a bug.

    ``store_smoothed=True`` writes c̃ back into ``c`` (c ← c̃), as zalandoresearch's
    ``VectorQuantizerEMA`` and the LL-VQ-VAE reference code built on it do; tensor2tensor and
    Sonnet keep c̃ local. It changes what happens to a dead code: its count no longer decays to 0
    but settles at about ε / (1 − λ) (1e-3 for λ = 0.99, ε = 1e-5), so e_k = λ^t m_k(0) / c̃_k
    shrinks back towards the data after about 700 steps instead of about 1,150 (for
    ‖m_k(0)‖ ≈ 8 and data of norm about 10), and the code can be revived while the network
    still learns.

    Under ``torch.distributed`` (world size > 1) n and s are summed over ranks before the update,
    so every rank computes the same codebook from the global batch.

    The M-step belongs to the forward, not the backward: a quantizer records each training-mode
    forward's codebook (:meth:`record_step`) so that a recomputation under
    ``torch.utils.checkpoint`` quantizes with it and skips the update (:meth:`recorded_step`).
    The last ``RECOMPUTABLE`` forwards are kept, recognised by their input rows (to rounding:
    :func:`_same_rows`). A recomputation after more training-mode forwards than that, or after
    a ``.to()`` or cast of the module, raises RuntimeError, as does a training-mode forward run
    inside a backward pass by other means (a backward hook, a custom Function's backward).
    Several checkpointed forwards of one input before one backward are matched latest first,
    the order in which the autograd engine recomputes them.
    """

    #: how many training-mode forwards a recomputation can find, the latest first
    RECOMPUTABLE = 4

    codebook: Tensor
    ema_count: Tensor
    ema_sum: Tensor
    num_codes = Fixed()
    decay = Setting(_check_decay)
    eps = Setting(_check_eps)
    store_smoothed = Setting(check_flag)
    # the M-step of training reads these; the codebook itself is the code
    _FREE_OF_CODE = {"decay": 0.99, "eps": 1e-5, "store_smoothed": False}

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        decay: float,
        eps: float,
        init: str = "unit_scaling",
        store_smoothed: bool = False,
    ) -> None:
        super().__init__()
        self.num_codes, self.decay, self.eps = num_codes, decay, eps
        self.store_smoothed = store_smoothed
        initial = init_codebook(init, num_codes, dim)
        self.register_buffer("codebook", initial)
        self.register_buffer("ema_count", torch.zeros(num_codes))
        self.register_buffer("ema_sum", initial.clone())
        self._steps: collections.deque[TrainingStep] = collections.deque(maxlen=self.RECOMPUTABLE)

    @torch.compiler.disable
    def record_step(self, rows: Tensor, codebook: Tensor, samples: Tensor | None = None) -> None:
        """Keeps what a training-mode forward of ``rows`` ``(N, d)`` quantized with (its
        ``codebook`` before the M-step, soft EM's ``samples``) for its recomputation. Not under
        ``torch.inference_mode``, whose forwards have no backward to recompute them, nor under
        a ``torch.func`` transform, whose tensors die with it."""
        if not (torch.is_inference_mode_enabled() or in_transform()):
            self._steps.append(TrainingStep(_row_sums(rows), codebook, samples))

    @torch.compiler.disable
    def recorded_step(self, rows: Tensor) -> TrainingStep | None:
        """Inside a backward pass (:func:`recomputing`), the recorded forward of ``rows`` that
        this one recomputes: the latest whose input matches, to rounding, and that this backward
        has not recomputed yet; ``None`` outside a backward pass. RuntimeError when none is
        recorded (more than ``RECOMPUTABLE`` training-mode forwards since, a ``.to()`` or cast
        in between, or a training-mode forward run inside a backward pass by other means). A
        checkpoint nested in another recomputes its forward twice in one backward pass: the
        second time, the forward found the first time."""
        self._check_transformed(rows)
        if not recomputing():
            return None
        step = recomputed_record(self._steps, rows)
        if step is not None:
            return step
        raise RuntimeError(
            "a training-mode forward of an EMA codebook quantizer inside a backward pass "
            "(torch.utils.checkpoint's recomputation) matches none of its last "
            f"{self.RECOMPUTABLE} training-mode forwards: backpropagate a checkpointed forward "
            f"before {self.RECOMPUTABLE} more, and do not move or cast the module in between"
        )

    def _check_transformed(self, rows: Tensor) -> None:
        """RuntimeError when a ``torch.func`` transform (``grad``, ``vjp``, ``jacrev``) runs
        the training forward of ``rows`` while the statistics the M-step writes in place are
        not among the transformed inputs: torch refuses to write into such captured tensors,
        with an error that names neither the module nor a way out."""
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        if not wrapped(rows):
            return
        captured = [
            name for name in ("codebook", *self._STATISTICS) if not wrapped(getattr(self, name))
        ]
        if captured:
            raise RuntimeError(
                "a training-mode forward of an EMA codebook quantizer (vq_ema, soft_em_vq) "
                "updates its codebook in place, and under this torch.func transform its "
                f"buffers {captured} are captured tensors, which torch does not let it write: "
                "pass the floating-point buffers among the transformed inputs "
                "(functional_call with them in an argnums argument), take the gradients with "
                "torch.autograd, or run the module in eval mode inside the transform"
            )

    def __getstate__(self) -> dict:
        """As ``nn.Module``'s, without the recorded forwards: a copy (pickle, ``deepcopy``,
        ``torch.save`` of the whole module) has no forward of its own to recompute, and the
        old codebooks made a saved ``vq_ema`` three times its size."""
        state = super().__getstate__()
        state["_steps"] = collections.deque(maxlen=self.RECOMPUTABLE)
        return state

    def __setstate__(self, state: dict) -> None:
        """As ``nn.Module.__setstate__``; a module pickled before forwards were recorded
        (``torch.save`` of the whole module) gets an empty record, as a new one has."""
        super().__setstate__(state)
        if "_steps" not in self.__dict__:
            self._steps = collections.deque(maxlen=self.RECOMPUTABLE)

    @torch.no_grad()
    def update(self, counts: Tensor, sums: Tensor) -> None:
        """One M-step from this batch's ``counts`` ``(K,)`` and ``sums`` ``(K, d)``.
        RuntimeError when a buffer it writes is parametrized (:meth:`_check_unparametrized`)."""
        self._check_unparametrized()
        stats = torch.cat([counts.reshape(-1, 1), sums], dim=1).to(self.ema_sum.dtype)
        if _synchronized():
            dist.all_reduce(stats)  # the global batch: every rank gets the same codebook
        self.ema_count.mul_(self.decay).add_(stats[:, 0], alpha=1.0 - self.decay)
        self.ema_sum.mul_(self.decay).add_(stats[:, 1:], alpha=1.0 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (total + self.num_codes * self.eps) * total
        # before any code has been counted the smoothed counts are zero; keep the codebook then
        if total > 0:
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
            if self.store_smoothed:
                self.ema_count.copy_(smoothed)

    def _check_unparametrized(self) -> None:
        """RuntimeError when ``torch.nn.utils.parametrize`` holds the codebook or a statistic:
        a parametrized tensor is computed afresh at every read, so the M-step's in-place writes
        went into a temporary and were lost without a word (the codebook never moved)."""
        held = [
            name
            for name in ("codebook", *self._STATISTICS)
            if nn.utils.parametrize.is_parametrized(self, name)
        ]
        if held:
            raise RuntimeError(
                f"the EMA codebook's buffers {held} are parametrized (torch.nn.utils."
                "parametrize), and the M-step of a training-mode forward writes them in place, "
                "which a parametrization would discard: remove the parametrization, or run the "
                "quantizer in eval mode, which only reads its codebook"
            )

    #: the running statistics, kept in float32 at least whatever the module is cast to
    _STATISTICS = ("ema_count", "ema_sum")

    def _apply(self, fn, recurse: bool = True):
        """As ``nn.Module._apply``, except that ``ema_count`` and ``ema_sum`` never drop below
        float32: an update moves a count by (1 − λ)(n − c), less than half a bfloat16 step of
        c beyond c = 32 (λ = 0.99), so in bfloat16 the counts and sums stalled at different
        points and a codeword settled at 0.256 instead of its cluster's mean 0.3. The codebook
        itself follows the module's dtype (what the bottleneck computes in)."""
        # (a statistic held by a parametrization is no buffer of this module: not kept here)
        before = {name: self._buffers[name] for name in self._STATISTICS if name in self._buffers}
        self._steps.clear()  # kept in the old device and dtype: a recomputation refuses them
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is None or not new.is_floating_point() or new.element_size() >= 4:
                continue
            kept = torch.empty(new.shape, dtype=torch.float32, device=new.device)
            if not (old.is_meta or new.is_meta):
                kept.copy_(old)  # the values before the cast, not their rounding
            self._buffers[name] = kept
        return self

    def extra_repr(self) -> str:
        extra = ", store_smoothed=True" if shown_setting(self, "store_smoothed") else ""
        decay, eps = shown_setting(self, "decay"), shown_setting(self, "eps")
        return f"num_codes={self.num_codes}, decay={decay}, eps={eps}{extra}"


class EMASettings:
    """``decay`` and ``eps`` of a quantizer's EMA codebook (``self.ema``) read and set on the
    quantizer itself, checked as :class:`EMACodebook` checks them: ``neck.decay = 1.5`` made
    an attribute nothing read, while the codebook went on at its own decay. Also what refuses
    a trace or an export of its training-mode forward
    (:attr:`~qlatent.bottlenecks.base.Bottleneck._UNTRACEABLE`)."""

    ema: EMACodebook
    _UNTRACEABLE = {
        "training": (
            "its M-step rewrites the codebook in place after Python decisions (the first "
            "counted batch, torch.distributed, a checkpoint's recomputation) and with the "
            "decay and eps of the tracing call, which a trace fixes as constants, and the "
            "trace itself runs M-steps. Trace it in eval mode, which only reads the codebook, "
            "or export the eval-mode module with torch.export.export"
        )
    }
    _UNEXPORTABLE = {
        "training": (
            "its M-step rewrites the codebook in place after Python decisions on values (the "
            "first counted batch) and keeps records for a checkpoint's recomputation, which an "
            "exported program cannot hold. Export it in eval mode, which only reads the "
            "codebook, and train it eagerly or under torch.compile"
        )
    }

    @property
    def decay(self) -> float:
        return self.ema.decay

    @decay.setter
    def decay(self, value: float) -> None:
        self.ema.decay = value

    @property
    def eps(self) -> float:
        return self.ema.eps

    @eps.setter
    def eps(self, value: float) -> None:
        self.ema.eps = value


class CodebookQuantizer(CountedCodeModel, Bottleneck):
    """Hard path shared by the methods with one codeword index per row (``vq``, ``vq_ema``,
    ``soft_em_vq``): nearest codeword, ``dequantize`` by lookup, rate log K per row.

    Subclasses set ``num_codes`` and provide ``codebook`` ``(K, d)`` (a Parameter or a buffer).
    ``update(latents)`` learns the index frequencies that entropy coding uses
    (:class:`~qlatent.bottlenecks._code_model.CountedCodeModel`). ``compile``: search the
    nearest codewords with the ``torch.compile``-fused search on the CPU
    (:func:`nearest_codeword`).
    """

    index_kind = "scalar"
    num_codes = Fixed()  # set by the subclass: the codebook's K rows
    codebook: Tensor
    compile = Setting(check_flag)

    def __init__(self, *, dim: int, in_dim: int | None = None, compile: bool = False) -> None:
        super().__init__(dim=dim, in_dim=in_dim)
        self.compile = compile
        self._init_code_model()

    def _fixed_support(self) -> tuple[int, int]:
        return 0, self.num_codes

    def _hard_path(self, y: Tensor, codebook: Tensor | None = None) -> BottleneckOutput:
        """Eval-mode output: nearest codewords, their indices and usage, zero aux loss
        (with ``codebook`` ``(K, d)`` in place of ``self.codebook`` when given)."""
        codebook = self.codebook if codebook is None else codebook
        indices = nearest_codeword(y, codebook, compile=self.compile)
        stats = usage_stats(code_counts(indices, self.num_codes))
        q = codebook.index_select(0, indices)  # backward: one index_add into the codebook
        return BottleneckOutput(q, self._fixed_rate(y), y.new_zeros(()), indices, stats)

    def _fixed_rate(self, y: Tensor) -> Tensor:
        """log K nats per row: a fixed-length code under a uniform code prior."""
        return y.new_full((y.shape[0],), math.log(self.num_codes))

    def code_model(self):
        """Counted index frequencies after ``update()``; before it, uniform indices (log2 K
        bits each, the hard path's own rate)."""
        if self.code_model_ready:
            return self._counted_code_model()
        from ..coding.models import UniformIndex

        return UniformIndex(
            self.num_codes,
            lambda rows: self._quantize_rows(rows, None),
            lambda symbols: self._dequantize_rows(symbols, None),
        )

    def _quantize_rows(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        return nearest_codeword(y, self.codebook, compile=self.compile)

    def _compile_repr(self) -> str:
        return ", compile=True" if shown_compile(self.compile) else ""

    def _dequantize_rows(self, indices: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.codebook.detach()[check_indices(indices, self.num_codes)]
