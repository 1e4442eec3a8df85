"""The contract every bottleneck shares (DESIGN.md section 1).

A bottleneck maps the encoder output ``y`` to what the decoder consumes, ``y_hat``, and says what
that costs in nats. ``self.training`` selects the path:

    training:  y --(dither / noise / soft / straight-through)--> y_hat, rate estimate
    eval:      y --quantize--> indices --dequantize--> y_hat,     exact rate of the indices

Shapes: ``y`` is ``(B, D_in)`` or ``(B, D_in, *spatial)``; the code dimension is always axis 1.
``y_hat`` has the same shape except that axis 1 has ``self.dim`` entries. ``D_in = self.in_dim``
equals ``self.dim`` for every method except those whose encoder also predicts the posterior's
parameters (the Gaussian VAE takes ``(μ, log σ²)``, ``in_dim = 2·dim``). Internally methods work on
rows ``(N, D_in)`` with ``N = B * prod(spatial)``.

Methods with a density view (a posterior ``q(y_hat | y)`` and a prior density) also implement
``posterior_sample`` and ``log_prior``, which is all importance-sampled likelihood needs
(``qlatent.eval.iwae``).
"""

from __future__ import annotations

import collections
import copy
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor

from .._size import sized
from .._utils import (
    NoModuleBackwardHooks,
    autocast_off,
    check_finite,
    check_generator,
    from_rows,
    in_transform,
    recording_graph,
    to_rows,
)
from ..registry import Registry
from ..rng import SeedKeys


def _fake(y: Tensor) -> bool:
    """Whether ``y`` is a FakeTensor or becomes one (a ``FakeTensorMode`` is active)."""
    fake = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
    return fake is not None or isinstance(y, FakeTensor)


@dataclass
class BottleneckOutput:
    """What every bottleneck returns.

    y_hat:    what the decoder consumes: the input's shape with ``dim`` channels on axis 1,
              ``(B, dim)`` or ``(B, dim, *spatial)`` (``in_dim`` may differ from ``dim``).
    rate:     ``(B,)`` representation cost in nats per example, summed over channels and
              positions (zeros where a method has none).
    aux_loss: ``()`` extra training terms (codebook, commitment ...); ``zeros(())`` if none.
    indices:  the discrete symbols on the hard path, ``(B, symbols_per_row, *spatial)`` int64
              (``index_kind`` "vector") or ``(B, *spatial)`` (``"scalar"``, a codeword index);
              ``None`` on a soft, noisy or dithered training path (``vq`` and ``vq_ema``, whose
              training path is the hard assignment, return them there too).
    stats:    detached diagnostics, never part of the loss.
    """

    y_hat: Tensor
    rate: Tensor
    aux_loss: Tensor
    indices: Tensor | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)


# a pytree node: ``torch.export.export`` of a bottleneck (or of a model that returns it) takes it as
# an output and the exported program returns one; unregistered, export refused the module
# ("Found <class BottleneckOutput> in output, which is not a known type")
torch.export.register_dataclass(BottleneckOutput, serialized_type_name="qlatent.BottleneckOutput")

BOTTLENECKS: Registry[Bottleneck] = Registry("bottleneck")

#: the most numbers one ``posterior_sample`` call draws (num_samples × rows × dim): the
#: counter-based dither draws fewer than 2^31 per key (10^12 samples tried to allocate 48 TB)
MAX_POSTERIOR_NUMBERS = 2**31 - 1


class _Kept:
    """A constructor value kept in the instance's ``__dict__`` under the attribute's name;
    subclasses decide what an assignment may do."""

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, owner=None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


class Setting(_Kept):
    """A constructor value kept as an attribute and checked on every assignment, in
    ``__init__`` and after it: ``check(value, name)`` (or the module's method of that name, for
    checks that read the module) returns the value to keep or raises ValueError naming it (a
    temperature of 0 set after construction failed in ``torch.multinomial``, an EMA decay of
    1.5 turned the codebook into garbage without a word)."""

    def __init__(self, check) -> None:
        self.check = check

    def __set__(self, obj, value) -> None:
        check = getattr(obj, self.check) if isinstance(self.check, str) else self.check
        obj.__dict__[self.name] = check(value, self.name)


class Fixed(_Kept):
    """A structural constructor value (a size, a layout), assigned once in ``__init__`` and
    read-only after it: the tensors built from it keep their shapes, so a later assignment
    (``num_codes`` of a built codebook, say) was taken without a word and then disagreed with
    them (indices checked against the new K, a rate of log K' for K codes). AttributeError,
    naming the attribute and the constructor argument (``argument``, default the same name)
    to build a new one with."""

    def __init__(self, argument: str | None = None) -> None:
        self.argument = argument

    def __set__(self, obj, value) -> None:
        if self.name in obj.__dict__:
            raise AttributeError(
                f"{self.name} of {type(obj).__name__} is fixed at construction (what it holds "
                f"was built from it): build a new one with {self.argument or self.name}={value!r}"
            )
        obj.__dict__[self.name] = value


#: the key of a bottleneck's record in its state dict's metadata (:meth:`Bottleneck._identity`)
_RECORD = "qlatent"
#: how :meth:`Bottleneck._check_traceable` names a ``make_fx`` trace
_MAKE_FX = "make_fx (torch.fx.experimental.proxy_tensor; torch.func.linearize traces with it)"


def _plain(value) -> Any:
    """A value as ``torch.load(weights_only=True)`` reads it back: numbers, strings, flags and
    ``None`` themselves, sequences as lists, anything else as its ``repr``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return repr(value)


def _recorded(value) -> bool:
    """Whether a value read from a state dict's record is one :func:`_plain` could have made of
    a structural value: a number, string, flag or ``None``, or a flat list of at most 256 of
    them. Anything else is not walked at all (a list nested thousands deep, or one sharing
    itself 60 levels down, would overflow the stack or never end)."""

    def scalar(v) -> bool:  # an int past 4,300 digits has no repr
        return (
            v is None
            or isinstance(v, bool | float | str)
            or type(v) is int
            and -(2**63) <= v < 2**63
        )

    if scalar(value):
        return True
    return type(value) is list and len(value) <= 256 and all(scalar(v) for v in value)


def _short(value) -> str:
    """``repr(value)`` cut to 80 characters (strings cut before, to keep repr cheap), for values
    read from a file that :func:`_recorded` accepted."""
    if isinstance(value, str):
        value = value[:80]
    elif isinstance(value, list):
        value = [v[:80] if isinstance(v, str) else v for v in value[:16]]
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_flag(value, name: str) -> bool:
    """Switches are True or False: a truthy string would have switched one on."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def build(name: str, **kwargs) -> Bottleneck:
    """Build a registered bottleneck by name, e.g. ``build("lattice", dim=40)``: counted first
    on the meta device, so sizes past :data:`~qlatent._size.MAX_MODEL_NUMBERS` (a
    codebook of 2^40 codes, say) are a ValueError naming them, not an allocation failure.

    An unknown name raises :class:`~qlatent.registry.UnknownNameError` (a KeyError) listing the
    known names; bad constructor arguments raise the class's own ValueError.
    """
    sizes = ", ".join(
        f"{key}={value}"
        for key, value in kwargs.items()
        if isinstance(value, int) and not isinstance(value, bool)
    )
    return sized(lambda: BOTTLENECKS.build(name, **kwargs), f"bottleneck {name!r} ({sizes})")


# ------------------------------------------------------- forwards recomputed by a checkpoint
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


class Bottleneck(NoModuleBackwardHooks, nn.Module, ABC):
    """Base class: input checks, rows <-> ``(B, D, *spatial)`` reshaping, and the public API.

    Subclasses implement the row-wise methods ``_forward_rows`` and, when ``discrete`` is true,
    ``_quantize_rows`` / ``_dequantize_rows``. Row methods receive ``(N, D)`` and return per-row
    rates ``(N,)``; the base sums them per example.

    Shapes (B batch, N = B·prod(spatial) rows)::

        forward(y)          y (B, in_dim[, *spatial]) -> BottleneckOutput, y_hat (B, dim[, ...])
        quantize(y)         y (B, in_dim[, *spatial]) -> indices (see BottleneckOutput), int64
        dequantize(indices) indices                   -> y_hat (B, dim[, *spatial])

    ``self.training`` selects the training path; in eval mode ``forward(y).y_hat`` equals
    ``dequantize(quantize(y))`` given the same dither (DESIGN.md section 1).

    Under ``torch.utils.checkpoint`` (``use_reentrant`` True or False) the recomputed forward
    draws what its original drew. Torch restores only its global RNG for a recomputation; a
    ``generator=`` of the caller (a ``torch.Generator`` or :class:`~qlatent.rng.SeedKeys`) was
    drawn from a second time: other dither or noise than the output's (wrong gradients) and a
    generator advanced twice. So a forward with a generator, in either mode and outside
    ``torch.inference_mode``, records the generator's state before its draws with its input's
    row sums; a forward run inside a backward pass (:func:`recomputing`) is matched to the
    latest recorded forward of the same rows (to rounding, :func:`_same_rows`) that this
    backward has not recomputed yet, and draws from a private copy of the generator set to the
    recorded state, leaving the caller's generator alone. The last ``RECOMPUTABLE`` forwards
    are kept; a ``.to()`` or cast clears them. A forward with a generator inside a backward
    pass that matches none of them (more forwards than that before the backward, a move or
    cast in between, or a forward run there by other means) raises RuntimeError. A forward
    outside a backward pass draws exactly as without the record.

    Raises ValueError for a ``dim``/``in_dim`` that is not a positive integer, and for an input
    that is not a real floating-point tensor of rank ≥ 2 with ``in_dim`` channels on axis 1, or
    that holds NaN/Inf; TypeError for ``quantize``/``dequantize`` on a method without a discrete
    hard path.
    """

    _returns = "a BottleneckOutput"  # (:class:`~qlatent._utils.NoModuleBackwardHooks`)
    _hook_instead = "its tensors instead (out.y_hat.register_hook(...), or the input's)"

    #: whether the method has a discrete hard path (``quantize`` / ``dequantize``)
    discrete: ClassVar[bool] = True
    #: shape of one row's symbols: "vector" (``symbols_per_row`` integers: one per coordinate,
    #: like y, or one per group of coordinates) or "scalar" (one integer per row, e.g. a
    #: codeword index)
    index_kind: ClassVar[Literal["vector", "scalar"]] = "vector"
    #: what the input's channels hold when ``in_dim != dim``, named in the wrong-width error
    input_layout: ClassVar[str] = ""
    dim = Fixed()
    in_dim = Fixed()
    #: :class:`Fixed` values that leave the weights' meaning alone (how a path runs, which
    #: estimate of the rate it takes), so weights move freely between their settings; every
    #: other one is kept beside the weights in a state dict (:meth:`_identity`)
    _FREE_OF_WEIGHTS: ClassVar[frozenset[str]] = frozenset({"compile"})
    #: the settings that change no code (neither the coded bytes nor the decoded ``y_hat``: a
    #: training loss's weight, a Monte-Carlo rate's sample count), each with its constructor
    #: default, which ``repr`` shows in their place within :func:`~qlatent._utils.
    #: repr_for_digest` (:func:`~qlatent._utils.shown_setting`): a file's model digest then
    #: names the same model whatever they are set to
    _FREE_OF_CODE: ClassVar[Mapping[str, Any]] = {}
    #: how many forwards with a generator a checkpoint's recomputation can find, latest first
    RECOMPUTABLE: ClassVar[int] = 8

    def __init__(self, *, dim: int, in_dim: int | None = None) -> None:
        super().__init__()
        from .._size import MAX_MODEL_NUMBERS

        for name, value in (("dim", dim), ("in_dim", dim if in_dim is None else in_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            # a width's square (an N x N map) would overflow torch's storage sizes before the
            # model could be counted on the meta device
            if value > MAX_MODEL_NUMBERS:
                raise ValueError(
                    f"{name} must be at most {MAX_MODEL_NUMBERS:,} (the numbers a model may "
                    f"hold), got {value!r}"
                )
        self.dim = dim
        self.in_dim = dim if in_dim is None else in_dim
        self._draws: collections.deque[_Draw] = collections.deque(maxlen=self.RECOMPUTABLE)

    # ----------------------------------------------------------------- module hooks
    # A module backward hook fires only on a module whose output is a tensor or a tuple of
    # them; torch skips it on a BottleneckOutput with a warning (full hooks) or fails inside
    # the forward (the legacy hook). Refused where it is registered instead.
    # ------------------------------------------------------ checkpoint recomputations
    @torch.compiler.disable
    def _generator_for(
        self, rows: Tensor, generator: torch.Generator | SeedKeys
    ) -> torch.Generator | SeedKeys:
        """The generator the forward of ``rows`` ``(N, in_dim)`` draws from: ``generator``
        itself, its state recorded first, outside a backward pass; inside one (a checkpoint's
        recomputation) a private copy at the state its original forward started from (see the
        class docstring). RuntimeError when no recorded forward matches."""
        if torch.is_inference_mode_enabled():
            return generator
        draws = self.__dict__.get("_draws")
        if draws is None:  # a module pickled before the record existed
            draws = self.__dict__["_draws"] = collections.deque(maxlen=self.RECOMPUTABLE)
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
            f"a forward of {type(self).__name__} with a generator inside a backward pass "
            f"matches none of its last {self.RECOMPUTABLE} forwards with one, so it cannot be "
            "torch.utils.checkpoint's recomputation of them: backpropagate a checkpointed "
            f"forward before {self.RECOMPUTABLE} more, do not move or cast the module in "
            "between, and run no forward with a generator in a backward hook"
        )

    def __getstate__(self) -> dict:
        """As ``nn.Module``'s, without the recorded forwards (:meth:`_generator_for`): a copy
        (pickle, ``deepcopy``, ``torch.save`` of the whole module) has none of its own to
        recompute."""
        state = super().__getstate__()
        if "_draws" in state:
            state["_draws"] = collections.deque(maxlen=self.RECOMPUTABLE)
        return state

    def _apply(self, fn, recurse: bool = True):
        """As ``nn.Module._apply``; the recorded forwards (:meth:`_generator_for`) are dropped,
        their row sums being in the old device and dtype."""
        draws = self.__dict__.get("_draws")
        if draws is not None:
            draws.clear()
        return super()._apply(fn, recurse)

    # ----------------------------------------------------------------- public API
    @autocast_off
    def forward(self, y: Tensor, *, generator: torch.Generator | None = None) -> BottleneckOutput:
        """``y`` ``(B, in_dim)`` or ``(B, in_dim, *spatial)`` -> :class:`BottleneckOutput`.

        The path follows ``self.training``; dither or noise comes from ``generator`` (a
        ``torch.Generator`` or :class:`qlatent.rng.SeedKeys`; on the hard path a CPU one).
        ValueError for a bad input or generator.
        """
        if torch.jit.is_tracing() or recording_graph():
            self._check_traceable()
        self._check_input(y)
        # the hard path's dither is common randomness: CPU only; training noise on any device
        check_generator(generator, cpu=not self.training)
        y = self._cast(y)
        batch = y.shape[0]
        shape = (batch, self.dim, *y.shape[2:])
        if y.numel() == 0:
            return self._empty_output(y, shape)
        rows = _to_rows(y)
        if generator is not None:  # (a call that torch.compile leaves out of its graph)
            generator = self._generator_for(rows, generator)
        out = self._forward_rows(rows, generator)
        return BottleneckOutput(
            y_hat=_from_rows(out.y_hat, shape),
            rate=out.rate.reshape(batch, -1).sum(1),
            aux_loss=out.aux_loss,
            indices=None if out.indices is None else self._indices_from_rows(out.indices, y.shape),
            stats=out.stats,
        )

    #: why ``torch.jit.trace`` cannot record this method's forward faithfully, by mode
    #: ("training", "eval"), and the way out; a mode not named here traces
    _UNTRACEABLE: ClassVar[Mapping[str, str]] = {}
    #: the same for ``torch.export.export``
    _UNEXPORTABLE: ClassVar[Mapping[str, str]] = {}
    #: the same for ``make_fx`` (and ``torch.func.linearize``) where it records more than
    #: ``torch.jit.trace`` does (the branches of :func:`~qlatent._utils.recording_graph`);
    #: None: :attr:`_UNTRACEABLE`
    _UNRECORDABLE: ClassVar[Mapping[str, str] | None] = None

    def _check_traceable(self, mode: str | None = None) -> None:
        """RuntimeError, naming this module and the way out, for a ``torch.jit.trace``, a
        ``make_fx`` (:func:`~qlatent._utils.proxy_tracing`) or a ``torch.export.export`` of a
        forward (or, ``mode="eval"``, of ``quantize`` / ``dequantize``) that it cannot record
        faithfully (:attr:`_UNTRACEABLE`, :attr:`_UNEXPORTABLE`, :attr:`_UNRECORDABLE`). A
        trace keeps the tensor ops of one call and fixes every Python decision and every value
        read back at what they were while tracing: such a trace failed deep inside torch or,
        worse, ran and differed from the module."""
        mode = mode or ("training" if self.training else "eval")  # (the hard path: "eval")
        if torch.jit.is_tracing():
            tool, reason = "torch.jit.trace", self._UNTRACEABLE.get(mode)
        elif torch.compiler.is_exporting():
            tool, reason = "torch.export", self._UNEXPORTABLE.get(mode)
        else:  # make_fx keeps one call's ops, and takes the export branches
            refused = self._UNTRACEABLE if self._UNRECORDABLE is None else self._UNRECORDABLE
            tool, reason = _MAKE_FX, refused.get(mode)
        if reason:
            raise RuntimeError(
                f"{tool} cannot record the {mode}-mode forward of {type(self).__name__} "
                f"faithfully: {reason}"
            )

    @autocast_off
    def quantize(self, y: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Hard path, first half: the discrete symbols of ``y``.

        ``y`` ``(B, in_dim[, *spatial])`` -> int64 ``(B, symbols_per_row[, *spatial])`` or, for
        a codeword index (``index_kind == "scalar"``), ``(B[, *spatial])``.
        """
        self._require_discrete()
        if torch.jit.is_tracing() or recording_graph():
            self._check_traceable("eval")
        self._check_input(y)
        check_generator(generator)
        y = self._cast(y)
        if y.numel() == 0:
            return torch.zeros(self._index_shape(y.shape), dtype=torch.long, device=y.device)
        return self._indices_from_rows(self._quantize_rows(_to_rows(y), generator), y.shape)

    @autocast_off
    def dequantize(self, indices: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Hard path, second half: ``y_hat`` from the symbols (and the same dither).

        Indices shaped as :meth:`quantize` returns them -> ``(B, dim[, *spatial])``. ValueError
        for indices that are not an integer tensor of that shape.
        """
        self._require_discrete()
        if torch.jit.is_tracing() or recording_graph():
            self._check_traceable("eval")
        check_generator(generator)
        if not isinstance(indices, Tensor):
            raise ValueError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
        if self.index_kind == "vector":
            self._check_rank_and_size(indices, "indices", self.symbols_per_row)
            shape = (indices.shape[0], self.dim, *indices.shape[2:])
        else:
            if indices.dim() < 1:
                raise ValueError("indices must have shape (B,) or (B, *spatial), got a scalar")
            shape = (indices.shape[0], self.dim, *indices.shape[1:])
        if indices.numel() == 0:
            dtype = self._compute_dtype() or torch.get_default_dtype()
            return torch.zeros(shape, dtype=dtype, device=indices.device)
        rows = _to_rows(indices) if self.index_kind == "vector" else indices.reshape(-1)
        return _from_rows(self._dequantize_rows(rows, generator), shape)

    def code_model(self):
        """The entropy model :func:`qlatent.coding.compress` codes the hard path's symbols with
        (the protocol of :mod:`qlatent.coding.models`), built from the current parameters; a
        method with files overrides this. TypeError if the method has none (yet)."""
        raise TypeError(
            f"{type(self).__name__} has no entropy model to code its symbols with "
            "(supported: lattice, vq, vq_ema, soft_em_vq, learnable_lattice, scalar_st, vector_st)"
        )

    def compress(self, y: Tensor, *, seed: int) -> bytes:
        """The hard-path symbols of ``y`` entropy-coded into a ``.qlc`` byte string
        (:func:`qlatent.coding.compress`); TypeError for a method without a code model."""
        from ..coding import compress

        return compress(self, y, seed=seed)

    def decompress(self, data: bytes) -> Tensor:
        """``y_hat`` from :meth:`compress`'s bytes: exactly ``forward(y).y_hat`` in eval mode
        with ``generator=qlatent.rng.SeedKeys(seed)``."""
        from ..coding import decompress

        return decompress(self, data)

    # ------------------------------------------------------- subclass interface
    @abstractmethod
    def _forward_rows(self, y: Tensor, generator: torch.Generator | None) -> BottleneckOutput:
        """Rows ``(N, D)`` in, output over rows (``rate`` of shape ``(N,)``)."""

    def _quantize_rows(self, y: Tensor, generator: torch.Generator | None) -> Tensor:
        raise TypeError(f"{type(self).__name__} has no discrete hard path")

    def _dequantize_rows(self, indices: Tensor, generator: torch.Generator | None) -> Tensor:
        raise TypeError(f"{type(self).__name__} has no discrete hard path")

    # --------------------------------------- density view (importance-sampled likelihood)
    def posterior_sample(
        self, y: Tensor, num_samples: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``num_samples`` draws of ``y_hat`` from q(y_hat | y) with their log-densities.

        ``y``: ``(B, in_dim)`` -> ``(z, log_q)`` with ``z``: ``(S, B, dim)``, ``log_q``: ``(S, B)``.
        """
        raise TypeError(f"{type(self).__name__} has no posterior density")

    def log_prior(self, z: Tensor) -> Tensor:
        """Log-density of the prior the rate is measured against: ``(S, B, dim)`` -> ``(S, B)``."""
        raise TypeError(f"{type(self).__name__} has no prior density")

    def _check_prior_input(self, z: Tensor) -> None:
        """Input checks for ``log_prior``: real floating-point points ``(..., dim)``, finite (a
        wrong width failed inside the prior's maths, a complex ``z`` gave a complex density, a
        NaN a NaN density)."""
        if not isinstance(z, Tensor):
            raise ValueError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise ValueError(f"z must be a floating-point tensor, got {z.dtype}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z must end in the code dimension {self.dim}, got {tuple(z.shape)}")
        check_finite("z", z)

    def _check_density_input(self, y: Tensor, num_samples: int, generator=None) -> None:
        """Input checks for ``posterior_sample``: ``(B, in_dim)`` only, ``num_samples >= 1``,
        a generator as ``forward`` takes it on the training path."""
        self._check_input(y)
        if y.dim() != 2:
            raise ValueError(f"posterior_sample takes (B, {self.in_dim}), got {tuple(y.shape)}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if num_samples * y.shape[0] * self.dim > MAX_POSTERIOR_NUMBERS:
            raise ValueError(
                f"num_samples={num_samples} draws {num_samples * y.shape[0] * self.dim:,} numbers "
                f"for {y.shape[0]} rows of {self.dim}, more than {MAX_POSTERIOR_NUMBERS:,} at once"
            )
        check_generator(generator, cpu=False)

    # ------------------------------------------------------- what the weights mean
    # Weights of the same shapes can mean other things: E8 scales loaded into a D8 bottleneck,
    # a Laplace prior's into a Gaussian one, went in without a word and quantized on another
    # lattice (the library's own checkpoints rebuild from their saved config, a user's
    # ``load_state_dict`` did not). The structural constructor values travel in the state dict's
    # metadata, where torch keeps each module's ``version``: the keys stay tensors, a state dict
    # without the record (older, or rebuilt as a plain dict) loads as before.
    def _identity(self) -> dict[str, Any]:
        """Every :class:`Fixed` value but those of ``_FREE_OF_WEIGHTS``, as plain values (kept
        through ``torch.save`` and ``torch.load(weights_only=True)``), by attribute name."""
        record = {}
        for cls in type(self).__mro__:
            for name, attr in vars(cls).items():
                if (
                    isinstance(attr, Fixed)
                    and name not in record
                    and name not in self._FREE_OF_WEIGHTS
                    and name in self.__dict__
                ):
                    record[name] = _plain(self.__dict__[name])
        return record

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        metadata = getattr(destination, "_metadata", None)
        local = metadata.get(prefix[:-1]) if isinstance(metadata, dict) else None
        if isinstance(local, dict):
            local[_RECORD] = {"class": type(self).__name__, "fixed": self._identity()}
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _identity_problem(self, local_metadata, prefix: str) -> str | None:
        """Why weights saved with ``local_metadata`` do not fit this module (a structural
        value that differs, or a record that is not one), or ``None``."""
        saved = local_metadata.get(_RECORD) if isinstance(local_metadata, dict) else None
        if saved is None:
            return None
        where = f"{prefix[:-1]}: " if prefix else ""
        fixed = saved.get("fixed") if isinstance(saved, dict) else None
        if not isinstance(fixed, dict):
            what = type(fixed if isinstance(saved, dict) else saved).__name__
            what = f"its 'fixed' is a {what}" if isinstance(saved, dict) else f"a {what}"
            return f"{where}the state dict's record of its bottleneck is not one ({what})"
        kind = saved.get("class")
        kind = kind if isinstance(kind, str) and kind.isidentifier() else "bottleneck"
        descriptors = {
            name: attr
            for cls in reversed(type(self).__mro__)
            for name, attr in vars(cls).items()
            if isinstance(attr, Fixed)
        }
        for name, mine in self._identity().items():
            if name not in fixed:
                continue
            argument = descriptors[name].argument or name
            if not _recorded(fixed[name]):
                return (
                    f"{where}the state dict's record of its bottleneck is not one ({argument} "
                    f"is a {type(fixed[name]).__name__} of no form a bottleneck records)"
                )
            if fixed[name] != mine:
                return (
                    f"{where}the weights were saved from a {kind[:60]} with {argument}="
                    f"{_short(fixed[name])}; this one has {argument}={_short(mine)} (build it "
                    f"with {argument}={_short(fixed[name])}, or load dict(state_dict) to skip "
                    "the check)"
                )
        return None

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        problem = self._identity_problem(args[0] if args else None, prefix)
        if problem:  # nothing of this module is loaded; torch raises it with the others
            args[-1].append(problem)
            return
        # weights loaded directly (not through qlatent.train.load_weights, which checks them
        # first) are refused with a NaN or an infinity too: every output became NaN without a word
        for key, value in state_dict.items():
            if key.startswith(prefix) and isinstance(value, Tensor) and value.is_floating_point():
                check_finite(key, value)
        for name in self.LOG_PARAMETERS:
            value, own = state_dict.get(prefix + name), getattr(self, name, None)
            if isinstance(value, Tensor) and isinstance(own, Tensor) and value.is_floating_point():
                self._check_exponential(prefix + name, value.detach().to(own.dtype))
        super()._load_from_state_dict(state_dict, prefix, *args)

    #: parameters held as logarithms (a spacing, a scale, a variance): their exponential must be
    #: a positive finite number in the parameter's dtype when they are loaded (a finite log-scale
    #: of 1e30 gave NaN rates on every row, or an error that blamed the input)
    LOG_PARAMETERS: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def _check_exponential(key: str, value: Tensor) -> None:
        exp = value.exp()
        bad = int((~(exp.isfinite() & (exp > 0))).sum())
        if bad:
            raise ValueError(
                f"{key} holds {bad} logarithm(s) whose exponential is 0 or infinite in "
                f"{value.dtype} (values in [{value.min().item():.4g}, {value.max().item():.4g}])"
            )

    # ------------------------------------------------------------------ helpers
    def _require_discrete(self) -> None:
        if not self.discrete:
            raise TypeError(f"{type(self).__name__} has no discrete code to quantize to")

    def _check_rank_and_size(self, y: Tensor, name: str, size: int) -> None:
        if y.dim() < 2:
            raise ValueError(
                f"{name} must have shape (B, {size}) or (B, {size}, *spatial), "
                f"got rank {y.dim()} shape {tuple(y.shape)}"
            )
        if y.shape[1] != size:
            raise ValueError(
                f"{name} has code dimension (axis 1) of size {y.shape[1]}, expected {size}"
            )

    def _check_input(self, y: Tensor) -> None:
        if isinstance(y, torch.fx.Proxy):
            # torch.fx.symbolic_trace runs the forward on a Proxy, which has no values to check
            # and on which the Python branches below cannot be recorded
            raise RuntimeError(
                f"torch.fx.symbolic_trace cannot trace into {type(self).__name__}: its forward "
                "checks and branches on the input's values. Keep it a leaf of the trace (a "
                "torch.fx.Tracer whose is_leaf_module is True for it), or trace with "
                "torch.export.export or make_fx, which run it on tensors"
            )
        if not isinstance(y, Tensor):
            raise ValueError(f"expected a torch.Tensor, got {type(y).__name__}")
        if not y.is_floating_point():
            raise ValueError(f"input must be a floating-point tensor, got {y.dtype}")
        if y.is_meta:  # "Cannot copy out of meta tensor; no data!" from the checks below
            raise ValueError(
                f"input is on the meta device: it has a shape {tuple(y.shape)} but no values"
            )
        # a module sized on the meta device has every parameter there: its first one tells
        # (all of them took 37 µs a call)
        first = next((p for p in self._parameters.values() if p is not None), None)
        if first is not None and first.is_meta:
            raise ValueError(
                f"{type(self).__name__} is on the meta device: it has shapes but no values "
                "(load its weights or build it on a real device first)"
            )
        if torch._C._functorch.is_batchedtensor(y):
            # the value checks below read the input back ("Cannot access data pointer of Tensor
            # that doesn't have storage" under vmap)
            raise ValueError(
                "input is batched by torch.func.vmap, which bottlenecks do not support: pass "
                "the whole batch as (B, D, *spatial) instead"
            )
        if in_transform() and self._batched_state():
            # an ensemble's stacked states (torch.func.stack_module_state): torch failed inside
            # the forward, on random draws, in-place writes or the custom Functions, or not
            raise ValueError(
                f"{type(self).__name__}'s parameters or buffers are batched by torch.func.vmap "
                "(an ensemble of stacked module states), which bottlenecks do not support: "
                "call each member on its own"
            )
        if self.input_layout and y.dim() >= 2 and y.shape[1] != self.in_dim:
            raise ValueError(
                f"input has {y.shape[1]} channels on axis 1, expected {self.in_dim} "
                f"({self.input_layout})"
            )
        self._check_rank_and_size(y, "input", self.in_dim)
        if y.numel() == 0:
            return
        if recording_graph():
            self._assert_values(y)
        else:
            self._check_values(y)

    def _assert_values(self, y: Tensor) -> None:
        """Within ``torch.export``: :meth:`_check_values`'s checks as assertions of the exported
        program (a RuntimeError naming them when it runs on such an input). Export cannot read
        values back to Python: the eager check failed there (strict: on its
        ``torch.compiler.disable``; non-strict: "Could not guard on data-dependent expression").
        (``torch.jit.trace`` drops such assertions from its graph: a traced module keeps no
        check of later inputs.)"""
        values = y.detach()
        limit = self.input_limit(y.dtype)
        torch._assert_async(values.isfinite().all(), "input holds NaN or Inf")
        torch._assert_async(
            (values.abs() <= limit).all(),
            f"input magnitudes beyond this bottleneck's limit {limit:.3g} in "
            f"{self._target_dtype(y.dtype)} (squared distances or coordinates would overflow)",
        )

    def _batched_state(self) -> bool:
        """Whether a parameter or buffer of this module is batched by ``torch.func.vmap``."""
        batched = torch._C._functorch.is_batchedtensor
        return any(batched(t) for t in itertools.chain(self.parameters(), self.buffers()))

    @torch.compiler.disable
    def _check_values(self, y: Tensor) -> None:
        """The input's values finite and within :meth:`input_limit` (read back to Python).

        Runs eagerly, also within a caller's ``torch.compile``: Dynamo failed on the strides of
        an input whose channel count it had made symbolic (a second bottleneck of another width
        compiled in the same process: "Cannot construct ConstantVariable ... SymInt"), and the
        values are read back to Python, a graph break either way."""
        values = y.detach()
        if _fake(values):
            # a FakeTensorMode (memory estimators) has shapes but no values to read back: torch
            # failed here with "DataDependentOutputException: aten._local_scalar_dense.default"
            raise ValueError(
                f"{type(self).__name__} got a fake tensor (torch._subclasses.FakeTensorMode): it "
                "has a shape but no values, and a bottleneck checks and branches on its input's "
                "values. Run it on real tensors, or record it with torch.export or make_fx"
            )
        if 0 in values.stride():
            # an expanded view (``expand``, broadcasting) repeats its stored values along the
            # axes of stride 0: one slice of each holds them all. Over the whole view aminmax
            # first copied it (2^34 numbers for zeros(1, 64).expand(2**28, 64))
            values = values[
                tuple(slice(0, 1) if step == 0 else slice(None) for step in values.stride())
            ]
        # one reduction for both checks: min/max propagate NaN, an Inf is its own min or max;
        # read back in one transfer (on an accelerator each read waits for the device)
        low, high = torch.stack(torch.aminmax(values)).tolist()
        if not (math.isfinite(low) and math.isfinite(high)):
            check_finite("input", values)  # counts and reports the non-finite values
        limit = self.input_limit(y.dtype)
        if max(-low, high) > limit:
            raise ValueError(
                f"input magnitudes reach {max(-low, high):.3g}, beyond this "
                f"bottleneck's limit {limit:.3g} in {self._target_dtype(y.dtype)} "
                "(squared distances or coordinates would overflow)"
            )

    def input_limit(self, dtype: torch.dtype | None = None) -> float:
        """The largest input magnitude |y| accepted: sqrt(max / (4·in_dim)) of the dtype the
        method computes in (its parameters', or ``dtype`` for a method without any), so that
        no squared norm or distance can overflow. Larger inputs are refused with a ValueError,
        the same for every method (docs/hostile-input-and-edge-cases.md, "Float extremes")."""
        dtype = self._target_dtype(dtype or torch.get_default_dtype())
        return math.sqrt(torch.finfo(dtype).max / (4 * self.in_dim))

    def _compute_dtype(self) -> torch.dtype | None:
        """The dtype of the method's floating-point parameters (or buffers); None if none."""
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        for tensor in self.buffers():
            if tensor.is_floating_point():
                return tensor.dtype
        return None

    def _target_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype an input of ``dtype`` is computed in: the parameters'; for a method
        without parameters the input's, at least float32 (a rate in float16 overflows at
        |y| ≈ 256)."""
        return self._compute_dtype() or torch.promote_types(dtype, torch.float32)

    def _cast(self, y: Tensor) -> Tensor:
        """``y`` in :meth:`_target_dtype` (float16, bfloat16 and float64 inputs of a float32
        module are computed in float32)."""
        dtype = self._target_dtype(y.dtype)
        return y if y.dtype == dtype else y.to(dtype)

    @property
    def symbols_per_row(self) -> int:
        """Symbols of one row on the hard path when ``index_kind == "vector"``: one per
        coordinate (``dim``); a method that quantizes groups of coordinates has fewer."""
        return self.dim

    def _index_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """Shape of the symbols of an input of ``shape``."""
        if self.index_kind == "vector":
            return (shape[0], self.symbols_per_row, *shape[2:])
        return (shape[0], *shape[2:])

    def _empty_output(self, y: Tensor, shape: tuple[int, ...]) -> BottleneckOutput:
        """The output for an input without elements (B = 0 or a zero-size spatial axis): empty
        ``y_hat``, zero rate and aux loss, still attached to ``y``'s graph."""
        anchor = y.sum() * 0
        indices = None
        if self.discrete and not self.training:
            indices = torch.zeros(self._index_shape(y.shape), dtype=torch.long, device=y.device)
        return BottleneckOutput(
            y_hat=y.new_zeros(shape) + anchor,
            rate=y.new_zeros(shape[0]) + anchor,
            aux_loss=anchor,
            indices=indices,
        )

    def _indices_from_rows(self, indices: Tensor, shape: torch.Size) -> Tensor:
        if self.index_kind == "vector":
            return _from_rows(indices, (shape[0], self.symbols_per_row, *shape[2:]))
        return indices.reshape(shape[0], *shape[2:])


_to_rows, _from_rows = to_rows, from_rows  # the names the methods use
