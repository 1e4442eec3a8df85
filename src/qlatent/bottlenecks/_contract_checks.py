"""The checks of the bottleneck contract that every method shares: of the input to ``forward``
and ``quantize`` (:func:`check_input`: a real floating-point tensor of ``in_dim`` channels on axis
1, finite and within the method's input limit, eagerly or as assertions of an exported program),
of the indices to ``dequantize`` (:func:`check_indices_input`), of the density view's inputs
(:func:`check_prior_input`, :func:`check_density_input`), and of a trace or export that a method
cannot record faithfully (:func:`check_traceable`). Each takes the bottleneck as ``module`` and
raises an error naming what was wrong; :class:`~.base.Bottleneck`'s methods of the same names
call them, and :mod:`.base` re-exports :data:`MAX_POSTERIOR_NUMBERS`.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor

from .._utils import check_finite, check_generator, in_transform, recording_graph

#: the most numbers one ``posterior_sample`` call draws (num_samples × rows × dim): the
#: counter-based dither draws fewer than 2^31 per key (10^12 samples tried to allocate 48 TB)
MAX_POSTERIOR_NUMBERS = 2**31 - 1

#: how :func:`check_traceable` names a ``make_fx`` trace
_MAKE_FX = "make_fx (torch.fx.experimental.proxy_tensor; torch.func.linearize traces with it)"


def _fake(y: Tensor) -> bool:
    """Whether ``y`` is a FakeTensor or becomes one (a ``FakeTensorMode`` is active)."""
    fake = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)
    return fake is not None or isinstance(y, FakeTensor)


def check_traceable(module, mode: str | None = None) -> None:
    """:meth:`~.base.Bottleneck._check_traceable`: RuntimeError, naming ``module`` and the way
    out, for a ``torch.jit.trace``, a ``make_fx`` (:func:`~qlatent._utils.proxy_tracing`) or a
    ``torch.export.export`` of a forward (or, ``mode="eval"``, of ``quantize`` /
    ``dequantize``) that it cannot record faithfully (its ``_UNTRACEABLE``, ``_UNEXPORTABLE``,
    ``_UNRECORDABLE``). A trace keeps the tensor ops of one call and fixes every Python decision
    and every value read back at what they were while tracing: such a trace failed deep inside
    torch or, worse, ran and differed from the module."""
    mode = mode or ("training" if module.training else "eval")  # (the hard path: "eval")
    if torch.jit.is_tracing():
        tool, reason = "torch.jit.trace", module._UNTRACEABLE.get(mode)
    elif torch.compiler.is_exporting():
        tool, reason = "torch.export", module._UNEXPORTABLE.get(mode)
    else:  # make_fx keeps one call's ops, and takes the export branches
        refused = module._UNTRACEABLE if module._UNRECORDABLE is None else module._UNRECORDABLE
        tool, reason = _MAKE_FX, refused.get(mode)
    if reason:
        raise RuntimeError(
            f"{tool} cannot record the {mode}-mode forward of {type(module).__name__} "
            f"faithfully: {reason}"
        )


def check_rank_and_size(y: Tensor, name: str, size: int) -> None:
    """ValueError unless ``y`` is ``(B, size)`` or ``(B, size, *spatial)`` (``name`` in the
    message)."""
    if y.dim() < 2:
        raise ValueError(
            f"{name} must have shape (B, {size}) or (B, {size}, *spatial), "
            f"got rank {y.dim()} shape {tuple(y.shape)}"
        )
    if y.shape[1] != size:
        raise ValueError(
            f"{name} has code dimension (axis 1) of size {y.shape[1]}, expected {size}"
        )


def check_input(module, y: Tensor) -> None:
    """:meth:`~.base.Bottleneck._check_input`: ValueError for an input ``y`` that ``module``
    cannot take (not a real floating-point tensor of rank >= 2 with ``in_dim`` channels on axis
    1, on the meta device, batched by ``torch.func.vmap``, or holding NaN, Inf or magnitudes
    beyond :meth:`~.base.Bottleneck.input_limit`); RuntimeError under ``torch.fx``'s symbolic
    trace."""
    if isinstance(y, torch.fx.Proxy):
        # torch.fx.symbolic_trace runs the forward on a Proxy, which has no values to check
        # and on which the Python branches below cannot be recorded
        raise RuntimeError(
            f"torch.fx.symbolic_trace cannot trace into {type(module).__name__}: its forward "
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
    first = next((p for p in module._parameters.values() if p is not None), None)
    if first is not None and first.is_meta:
        raise ValueError(
            f"{type(module).__name__} is on the meta device: it has shapes but no values "
            "(load its weights or build it on a real device first)"
        )
    if torch._C._functorch.is_batchedtensor(y):
        # the value checks below read the input back ("Cannot access data pointer of Tensor
        # that doesn't have storage" under vmap)
        raise ValueError(
            "input is batched by torch.func.vmap, which bottlenecks do not support: pass "
            "the whole batch as (B, D, *spatial) instead"
        )
    if in_transform() and module._batched_state():
        # an ensemble's stacked states (torch.func.stack_module_state): torch failed inside
        # the forward, on random draws, in-place writes or the custom Functions, or not
        raise ValueError(
            f"{type(module).__name__}'s parameters or buffers are batched by torch.func.vmap "
            "(an ensemble of stacked module states), which bottlenecks do not support: "
            "call each member on its own"
        )
    if module.input_layout and y.dim() >= 2 and y.shape[1] != module.in_dim:
        raise ValueError(
            f"input has {y.shape[1]} channels on axis 1, expected {module.in_dim} "
            f"({module.input_layout})"
        )
    module._check_rank_and_size(y, "input", module.in_dim)
    if y.numel() == 0:
        return
    if recording_graph():
        module._assert_values(y)
    else:
        module._check_values(y)


def assert_values(module, y: Tensor) -> None:
    """:meth:`~.base.Bottleneck._assert_values`: within ``torch.export``,
    :func:`check_values`' checks as assertions of the exported program (a RuntimeError naming
    them when it runs on such an input). Export cannot read values back to Python: the eager
    check failed there (strict: on its ``torch.compiler.disable``; non-strict: "Could not guard
    on data-dependent expression"). (``torch.jit.trace`` drops such assertions from its graph: a
    traced module keeps no check of later inputs.)"""
    values = y.detach()
    limit = module.input_limit(y.dtype)
    torch._assert_async(values.isfinite().all(), "input holds NaN or Inf")
    torch._assert_async(
        (values.abs() <= limit).all(),
        f"input magnitudes beyond this bottleneck's limit {limit:.3g} in "
        f"{module._target_dtype(y.dtype)} (squared distances or coordinates would overflow)",
    )


def batched_state(module) -> bool:
    """Whether a parameter or buffer of ``module`` is batched by ``torch.func.vmap``."""
    batched = torch._C._functorch.is_batchedtensor
    return any(batched(t) for t in itertools.chain(module.parameters(), module.buffers()))


def check_values(module, y: Tensor) -> None:
    """:meth:`~.base.Bottleneck._check_values`: the input's values finite and within
    :meth:`~.base.Bottleneck.input_limit` (read back to Python).

    Runs eagerly, also within a caller's ``torch.compile`` (the method is this function under
    ``torch.compiler.disable``): Dynamo failed on the strides of an input whose channel count
    it had made symbolic (a second bottleneck of another width compiled in the same process:
    "Cannot construct ConstantVariable ... SymInt"), and the values are read back to Python, a
    graph break either way."""
    values = y.detach()
    if _fake(values):
        # a FakeTensorMode (memory estimators) has shapes but no values to read back: torch
        # failed here with "DataDependentOutputException: aten._local_scalar_dense.default"
        raise ValueError(
            f"{type(module).__name__} got a fake tensor (torch._subclasses.FakeTensorMode): it "
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
    limit = module.input_limit(y.dtype)
    if max(-low, high) > limit:
        raise ValueError(
            f"input magnitudes reach {max(-low, high):.3g}, beyond this "
            f"bottleneck's limit {limit:.3g} in {module._target_dtype(y.dtype)} "
            "(squared distances or coordinates would overflow)"
        )


def check_indices_input(module, indices: Tensor) -> tuple[int, ...]:
    """The shape of ``y_hat`` that ``module.dequantize(indices)`` returns; ValueError for
    indices that are not an integer tensor shaped as ``quantize`` returns them."""
    if not isinstance(indices, Tensor):
        raise ValueError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    if module.index_kind == "vector":
        module._check_rank_and_size(indices, "indices", module.symbols_per_row)
        shape = (indices.shape[0], module.dim, *indices.shape[2:])
    else:
        if indices.dim() < 1:
            raise ValueError("indices must have shape (B,) or (B, *spatial), got a scalar")
        shape = (indices.shape[0], module.dim, *indices.shape[1:])
    return shape


def check_prior_input(module, z: Tensor) -> None:
    """:meth:`~.base.Bottleneck._check_prior_input`: input checks for ``log_prior``: real
    floating-point points ``(..., dim)``, finite (a wrong width failed inside the prior's maths,
    a complex ``z`` gave a complex density, a NaN a NaN density)."""
    if not isinstance(z, Tensor):
        raise ValueError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got {z.dtype}")
    if z.dim() < 1 or z.shape[-1] != module.dim:
        raise ValueError(f"z must end in the code dimension {module.dim}, got {tuple(z.shape)}")
    check_finite("z", z)


def check_density_input(module, y: Tensor, num_samples: int, generator=None) -> None:
    """:meth:`~.base.Bottleneck._check_density_input`: input checks for ``posterior_sample``:
    ``(B, in_dim)`` only, ``num_samples >= 1``, a generator as ``forward`` takes it on the
    training path."""
    module._check_input(y)
    if y.dim() != 2:
        raise ValueError(f"posterior_sample takes (B, {module.in_dim}), got {tuple(y.shape)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if num_samples * y.shape[0] * module.dim > MAX_POSTERIOR_NUMBERS:
        raise ValueError(
            f"num_samples={num_samples} draws {num_samples * y.shape[0] * module.dim:,} numbers "
            f"for {y.shape[0]} rows of {module.dim}, more than {MAX_POSTERIOR_NUMBERS:,} at once"
        )
    check_generator(generator, cpu=False)
