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
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from .._size import sized
from .._utils import (
    NoModuleBackwardHooks,
    autocast_off,
    check_generator,
    from_rows,
    recording_graph,
    to_rows,
)
from ..registry import Registry

# the contract's checks, its constructor values with their record beside the weights, and the
# generators of forwards recomputed by a checkpoint; besides what this module uses, the names
# that the methods, the tests and the documents import from it
from . import _constructor_values, _contract_checks, _recomputation
from ._constructor_values import _RECORD, Fixed, Setting, check_flag  # noqa: F401
from ._contract_checks import MAX_POSTERIOR_NUMBERS  # noqa: F401
from ._recomputation import (  # noqa: F401
    _Draw,
    _fingerprint_device,
    _row_sums,
    _same_rows,
    recomputed_record,
    recomputing,
)


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
    # the generator the forward of ``rows`` ``(N, in_dim)`` draws from (the class docstring says
    # how; :func:`~._recomputation.generator_for`, the module its first argument)
    _generator_for = torch.compiler.disable(_recomputation.generator_for)

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
        shape = _contract_checks.check_indices_input(self, indices)
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

    # ------------------------------------------------------- what the weights mean
    # Weights of the same shapes can mean other things: E8 scales loaded into a D8 bottleneck,
    # a Laplace prior's into a Gaussian one, went in without a word and quantized on another
    # lattice (the library's own checkpoints rebuild from their saved config, a user's
    # ``load_state_dict`` did not). The structural constructor values travel in the state dict's
    # metadata, where torch keeps each module's ``version``: the keys stay tensors, a state dict
    # without the record (older, or rebuilt as a plain dict) loads as before. The record and its
    # checks: the functions of :mod:`._constructor_values` named alike, the module their first
    # argument.
    _identity = _constructor_values.identity
    _identity_problem = _constructor_values.identity_problem
    _check_exponential = staticmethod(_constructor_values.check_exponential)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        metadata = getattr(destination, "_metadata", None)
        local = metadata.get(prefix[:-1]) if isinstance(metadata, dict) else None
        if isinstance(local, dict):
            local[_RECORD] = {"class": type(self).__name__, "fixed": self._identity()}
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        problem = self._identity_problem(args[0] if args else None, prefix)
        if problem:  # nothing of this module is loaded; torch raises it with the others
            args[-1].append(problem)
            return
        _constructor_values.check_loaded(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)

    #: parameters held as logarithms (a spacing, a scale, a variance): their exponential must be
    #: a positive finite number in the parameter's dtype when they are loaded (a finite log-scale
    #: of 1e30 gave NaN rates on every row, or an error that blamed the input)
    LOG_PARAMETERS: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ helpers
    def _require_discrete(self) -> None:
        if not self.discrete:
            raise TypeError(f"{type(self).__name__} has no discrete code to quantize to")

    # the contract's checks: the functions of :mod:`._contract_checks` named alike (without the
    # underscore), the module their first argument. ``_check_values`` runs eagerly, also within
    # a caller's ``torch.compile`` (see there).
    _check_input = _contract_checks.check_input
    _check_rank_and_size = staticmethod(_contract_checks.check_rank_and_size)
    _assert_values = _contract_checks.assert_values
    _check_values = torch.compiler.disable(_contract_checks.check_values)
    _batched_state = _contract_checks.batched_state
    _check_traceable = _contract_checks.check_traceable
    _check_prior_input = _contract_checks.check_prior_input
    _check_density_input = _contract_checks.check_density_input

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
