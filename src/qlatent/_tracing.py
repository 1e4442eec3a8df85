"""What torch is doing around a call, and code that takes it into account: ``torch.func``
transforms, forward-mode AD, graphs recorded by ``make_fx`` or ``torch.export``,
``torch.compile`` and autocast. Used by the lattices, the priors, the bottlenecks and the
networks (through :mod:`qlatent._utils`), and by the custom autograd Functions' machinery
(:mod:`qlatent._autograd`)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
import torch.autograd.forward_ad
from torch import Tensor
from torch.fx.experimental.proxy_tensor import get_proxy_mode  # (imported by torch itself)

#: the device types ``torch.autocast`` can run on (``torch.is_autocast_enabled("meta")`` raises)
_AUTOCAST_TYPES = tuple(
    kind for kind in ("cpu", "cuda", "mps", "xpu", "hpu") if torch.amp.is_autocast_available(kind)
)


def autocast_off(function: Callable) -> Callable:
    """``function`` with ``torch.autocast`` off: a bottleneck computes in its parameters' dtype.
    Under a caller's autocast its matrix products ran in bfloat16 or float16, so a good
    lattice's dither and closest points, hence its indices, rate and files, were not those its
    decoder regenerates (decompressing a valid file there failed as "corrupt payload")."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        on = [kind for kind in _AUTOCAST_TYPES if torch.is_autocast_enabled(kind)]
        if not on:
            return function(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for kind in on:
                stack.enter_context(torch.autocast(kind, enabled=False))
            return function(*args, **kwargs)

    return wrapper


def transform_wrapper(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.func`` wrapper (``grad``, ``vjp``), also of a transform
    that has returned: a ``vjp``'s pullback passes the tensors saved in the forward as such
    wrappers, which a ``torch.compile``d kernel cannot read ("Cannot access data pointer of
    Tensor that doesn't have storage")."""
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def in_transform() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vjp``, ``jacrev``, ``vmap``) is running
    (False while ``torch.compile`` traces: Dynamo reads the transforms its own way)."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def forward_ad_level_active() -> bool:
    """Whether a dual level of ``torch.autograd.forward_ad`` is open."""
    return torch.autograd.forward_ad._current_level >= 0


def forward_mode_possible() -> bool:
    """Whether forward-mode AD may run: a ``torch.func`` transform (``jvp``, ``jacfwd``; also
    ``grad``, which cannot be told apart cheaply) or a dual level of
    ``torch.autograd.forward_ad``."""
    return forward_ad_level_active() or in_transform()


def proxy_tracing() -> bool:
    """Whether ``torch.fx.experimental.proxy_tensor.make_fx`` is tracing (also inside
    ``torch.func.linearize``, which traces with it, and non-strict ``torch.export``).

    Such a trace cannot read a traced tensor's values back to Python ("It appears that you're
    trying to get value out of a tracing tensor", or in symbolic mode "Could not guard on
    data-dependent expression"), and a read it lets through (``tolist``) becomes a constant
    of the graph, so a check made that way is not in it. ``get_proxy_mode`` is in that
    module's ``__all__``; torch has no other public way to ask. False while ``torch.compile``
    traces (whose graph is made from Dynamo's, not by running this code under the mode)."""
    return not torch.compiler.is_compiling() and get_proxy_mode() is not None


def recording_graph() -> bool:
    """Whether this code runs to be recorded as a graph of tensor ops that replays it later:
    ``torch.export`` (:func:`torch.compiler.is_exporting`) or ``make_fx`` / ``torch.func.
    linearize`` (:func:`proxy_tracing`). Both keep every Python decision and every value read
    back at what they were while tracing, so the branches taken under it replace value
    read-backs, loops over the rows and NumPy with tensor ops giving the same numbers. Not
    ``torch.jit.trace``, which refuses what it cannot replay by name instead."""
    return torch.compiler.is_exporting() or proxy_tracing()


def plain_tensors() -> contextlib.AbstractContextManager:
    """A context in which the tensors made are plain ones, also inside a ``torch.func``
    transform, whose tensors are wrappers that die with it: for the tables and records a
    lattice or bottleneck keeps for later calls (a table first built inside ``grad`` was kept
    as a dead wrapper, and a module holding one could not be pickled: "Cannot access storage
    of TensorWrapper"). Only for what is made from constants, not from a transform's inputs.

    Under non-strict ``torch.export`` likewise real tensors, not the export's fake ones: a table
    first built while exporting was kept as a fake tensor, and every later eager call of the
    module failed ("Could not guard on data-dependent expression"). So too under ``make_fx``
    (:func:`proxy_tracing`; real tables are constants of its graph): a symbolic trace kept
    them as fake tensors, with the same failure; within ``torch.func.linearize`` both at once.
    """
    recording = proxy_tracing() or (
        torch.compiler.is_exporting() and not torch.compiler.is_dynamo_compiling()
    )
    if not recording:
        return torch._C._DisableFuncTorch() if in_transform() else contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.utils._python_dispatch._disable_current_modes())
    if in_transform():
        stack.enter_context(torch._C._DisableFuncTorch())
    return stack


def plain_cache(function: Callable) -> Callable:
    """``functools.cache`` for a builder of constant tables, which it runs in
    :func:`plain_tensors`."""
    cached = functools.cache(function)

    @functools.wraps(function)
    def wrapper(*args):
        with plain_tensors():
            return cached(*args)

    wrapper.cache_clear = cached.cache_clear
    wrapper.cache_info = cached.cache_info
    return wrapper


#: the dtypes whose ``torch.compile``d kernels give the eager operations' bits. In float16 and
#: bfloat16 Inductor computes each fused step in float32 and rounds only what it stores, where
#: eager rounds every step: the compiled lattice decoders and hard path found other points and
#: coordinates there, so a row's code followed the batch size (the compiled kernels take only
#: batches above a threshold) and ``compile=True`` (the lattice's eval forward no longer matched
#: its file). Other dtypes take the eager code under ``compile=True``.
COMPILED_DTYPES = (torch.float32, torch.float64)


def compiled_or_plain(compiled: Callable[[], Callable], plain: Callable) -> Callable:
    """``compiled()`` (a cached getter of a ``torch.compile``d function), or ``plain``, the same
    function uncompiled, inside a caller's own ``torch.compile``: Dynamo traces it into the
    caller's graph, where the getter would make it warn about the cache and trace its body."""
    if torch.compiler.is_compiling():
        return plain
    _import_inductor()
    return compiled()


@functools.cache
def _import_inductor() -> None:
    """Import ``torch._inductor`` as the first ``torch.compile`` call does, with torch's own
    DeprecationWarning of that import filtered: inductor imports ``torch.utils.mkldnn``, whose
    classes use the deprecated ``torch.jit.script_method``. Under a caller's ``-W error`` (or
    ``filterwarnings = ["error"]``) the first call of a method with ``compile=True`` raised it."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"`torch\.jit\.script_method` is deprecated", DeprecationWarning
        )
        import torch._inductor.compile_fx  # noqa: F401
