"""Forwards recomputed by ``torch.utils.checkpoint``: whether a call runs inside a backward pass
(:func:`recomputing`), fingerprints of a forward's input rows that recognise its recomputation
(:func:`_row_sums`, :func:`_same_rows`, :func:`recomputed_record`), and the generator a forward
with a caller's generator draws from (:func:`generator_for`: its own record, or a private copy
at the recorded state). Used by :class:`~.base.Bottleneck` and the EMA codebook
(:mod:`._ema_codebook`), and re-exported by :mod:`.base`.
"""

from __future__ import annotations

import collections
import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._utils import in_transform, recording_graph
from ..rng import SeedKeys


@torch.compiler.disable  # asked at every call, never traced as a constant
def recomputing() -> bool:
    """Whether this call runs inside a backward pass, as a forward recomputed by
    ``torch.utils.checkpoint`` does in either flavour (the non-reentrant one when a discarded
    saved tensor is unpacked, the reentrant one in its node's backward): the autograd engine has
    a graph task running on this thread."""
    return torch._C._current_graph_task_id() != -1


#: relative tolerance of :func:`_same_rows`: a recomputation on an accelerator may round the
#: encoder's output differently (atomic additions), a different batch differs by far more
_ROWS_RTOL = 1e-3


def _row_weights(d: int, device: torch.device) -> Tensor:
    """``(d, 2)`` float64: two fixed, unequal weightings of a row's ``d`` entries, 1 + {jφ}
    and (−1)^j (1 + {j√2}) at entry j ({·} the fractional part)."""
    j = torch.arange(d, dtype=torch.float64)
    first = 1 + torch.remainder(j * ((1 + math.sqrt(5)) / 2), 1.0)
    second = (1 - 2 * torch.remainder(j, 2)) * (1 + torch.remainder(j * math.sqrt(2), 1.0))
    return torch.stack([first, second], 1).to(device)


def _fingerprint_device(device: torch.device) -> torch.device:
    """Where :func:`_row_sums` works in float64: the rows' own device, but the CPU for MPS, which
    has no float64 (converting an MPS tensor to it raises TypeError, so every training forward
    of an EMA codebook and every forward with a generator failed there)."""
    return torch.device("cpu") if device.type == "mps" else device


def _row_sums(rows: Tensor) -> Tensor:
    """``(N, 2)`` float64 (no overflow near the float32 limit), on the rows' device or the CPU
    (:func:`_fingerprint_device`): two weighted sums of each row
    (:func:`_row_weights`), to recognise ``rows`` ``(N, d)`` later. Plain sums told too
    little apart: a LayerNorm's rows all sum to 0, so a recomputation took another batch's
    forward for its own (wrong gradients)."""
    device = _fingerprint_device(rows.device)
    rows = rows.detach().to(device).to(torch.float64)
    return rows @ _row_weights(rows.shape[1], device)


def _same_rows(sums: Tensor, rows: Tensor) -> bool:
    """Whether ``rows`` ``(N, d)`` are, up to rounding, the rows whose :func:`_row_sums` are
    ``sums``: each weighted sum within ``_ROWS_RTOL`` of the same weighting of the row's
    absolute values (NaN matches NaN)."""
    if sums.shape != (rows.shape[0], 2):
        return False
    now = _row_sums(rows)
    device = _fingerprint_device(rows.device)
    weights = _row_weights(rows.shape[1], device).abs()
    bound = _ROWS_RTOL * (rows.detach().to(device).abs().to(torch.float64) @ weights)
    return bool(((sums - now).abs() <= bound).logical_or_(sums.isnan() & now.isnan()).all())


def recomputed_record(records: Iterable[Any], rows: Tensor) -> Any | None:
    """Inside a backward pass, the record (oldest first in ``records``; each with ``row_sums``
    and ``task``) of the forward that this forward of ``rows`` ``(N, d)`` recomputes: the
    latest of the same rows (:func:`_same_rows`) that this backward pass has not recomputed
    yet, marked as recomputed now; else the latest it has (a checkpoint nested in another
    recomputes its forward twice in one pass, in the outer recomputation and in its own);
    ``None`` where no record matches."""
    task = torch._C._current_graph_task_id()
    matching = [r for r in reversed(records) if _same_rows(r.row_sums, rows)]
    for record in matching:
        if record.task != task:
            record.task = task
            return record
    return next((r for r in matching if r.task == task), None)


@dataclass
class _Draw:
    """Where one forward's draws started, kept for its recomputation: the sums of its input
    rows (:func:`_row_sums`), the caller's generator state before the forward drew anything
    (``torch.Generator.get_state()``, 5 KB for a CPU one, or a :class:`~qlatent.rng.SeedKeys`'
    call count), and the graph task that last recomputed it."""

    row_sums: Tensor
    state: Tensor | int
    task: int = -1


def _generator_state(generator: torch.Generator | SeedKeys) -> Tensor | int:
    return generator.calls if isinstance(generator, SeedKeys) else generator.get_state()


def _generator_at(
    generator: torch.Generator | SeedKeys, state: Tensor | int
) -> torch.Generator | SeedKeys:
    """A private generator of ``generator``'s kind and device set to ``state``: it draws what
    ``generator`` drew from there, and ``generator`` itself is left as it is."""
    if isinstance(generator, SeedKeys):
        twin = copy.copy(generator)
        twin.calls = state
        return twin
    twin = torch.Generator(device=generator.device)
    twin.set_state(state)
    return twin


def generator_for(
    module, rows: Tensor, generator: torch.Generator | SeedKeys
) -> torch.Generator | SeedKeys:
    """:meth:`~.base.Bottleneck._generator_for`: the generator the forward of ``module`` on
    ``rows`` ``(N, in_dim)`` draws from: ``generator`` itself, its state recorded first, outside
    a backward pass; inside one (a checkpoint's recomputation) a private copy at the state its
    original forward started from (see :class:`~.base.Bottleneck`'s docstring). RuntimeError
    when no recorded forward matches."""
    if torch.is_inference_mode_enabled():
        return generator
    draws = module.__dict__.get("_draws")
    if draws is None:  # a module pickled before the record existed
        draws = module.__dict__["_draws"] = collections.deque(maxlen=module.RECOMPUTABLE)
    if not recomputing():
        # (not under a torch.func transform, whose tensors die with it: a checkpoint's
        # recomputation there finds no record and says so; nor while a graph is recorded,
        # whose calls do not run this, and whose tensors may be fake ones)
        if not (in_transform() or recording_graph()):
            draws.append(_Draw(_row_sums(rows), _generator_state(generator)))
        return generator
    draw = recomputed_record(draws, rows)
    if draw is not None:
        return _generator_at(generator, draw.state)
    raise RuntimeError(
        f"a forward of {type(module).__name__} with a generator inside a backward pass "
        f"matches none of its last {module.RECOMPUTABLE} forwards with one, so it cannot be "
        "torch.utils.checkpoint's recomputation of them: backpropagate a checkpointed "
        f"forward before {module.RECOMPUTABLE} more, do not move or cast the module in "
        "between, and run no forward with a generator in a backward hook"
    )
