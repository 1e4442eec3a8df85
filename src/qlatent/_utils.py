"""Small helpers shared across the package."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import functools
import glob
import math
import os
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

import torch
import torch.autograd.forward_ad
from torch import Tensor
from torch.fx.experimental.proxy_tensor import get_proxy_mode  # (imported by torch itself)
from tqdm.auto import tqdm as _tqdm

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

#: the largest weight or temperature taken: a float32 loss scaled by more overflows (a weight of
#: 1e300 turned the first step's loss infinite and the weights into NaN)
MAX_WEIGHT = 1e30


def check_nonnegative(value: float, name: str) -> float:
    """``value`` as a float, if it is a number (not a bool) in [0, :data:`MAX_WEIGHT`]; else
    ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if not value <= MAX_WEIGHT:
        raise ValueError(f"{name} must be at most {MAX_WEIGHT:g}, got {value!r}")
    return float(value)


def check_count(value: int, name: str, *, low: Literal[0, 1] = 1) -> int:
    """``value`` if it is an integer (not a bool) of at least ``low``; else ValueError naming
    ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive" if low else "a non-negative"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")
    return value


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf."""
    if x.numel() == 0:
        return
    # one reduction pass without a full-size temporary (20x cheaper than isfinite(x).all());
    # min/max propagate NaN, and an Inf is its own min or max
    low, high = torch.aminmax(x)
    if not (torch.isfinite(low) & torch.isfinite(high)):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or Inf)")


def check_generator(generator, *, cpu: bool = True) -> None:
    """Common randomness must come from a CPU generator so every machine regenerates it
    (a ``torch.Generator`` or a :class:`qlatent.rng.SeedKeys`); ``cpu=False`` (training noise)
    takes a generator on any device."""
    from .rng import SeedKeys

    if generator is None or isinstance(generator, SeedKeys):
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or a qlatent.rng.SeedKeys, got "
            f"{type(generator).__name__}"
        )
    if cpu and generator.device.type != "cpu":
        raise ValueError(
            f"dither must be drawn from a CPU torch.Generator, got one on {generator.device}"
        )


def check_torch_generator(generator, what: str) -> None:
    """Refuse a :class:`qlatent.rng.SeedKeys` where ``what`` is drawn by torch's samplers,
    which take a ``torch.Generator`` only."""
    from .rng import SeedKeys

    if isinstance(generator, SeedKeys):
        raise ValueError(
            f"generator must be a torch.Generator for {what}, got a qlatent.rng.SeedKeys "
            "(keys for the dithered lattices' counter-based dither)"
        )


def to_rows(y: Tensor) -> Tensor:
    """``(B, D, *spatial)`` -> ``(N, D)`` contiguous rows; ``y`` itself when it already is.

    Always in row order: torch keeps an input's memory layout through elementwise operations,
    and a per-row sum over a column-major ``(N, D)`` (a ``(D, N)`` tensor's ``.t()``) or an
    expanded one adds in another order than over contiguous rows, so the same values gave rates,
    densities and ``ideal_bits`` that differed in their last bits."""
    if y.dim() != 2:
        rows = y.shape[0] * math.prod(y.shape[2:])  # explicit: -1 is ambiguous for an empty y
        y = y.movedim(1, -1).reshape(rows, y.shape[1])
    return y.contiguous()


def from_rows(rows: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`to_rows`: ``(N, D)`` -> ``shape`` = ``(B, D, *spatial)``."""
    if len(shape) == 2:
        return rows
    batch, dim, *spatial = shape
    return rows.reshape(batch, *spatial, dim).movedim(-1, 1)


def file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing part of ``folder`` (itself or a parent) where that part is not a
    folder: the file that stops ``folder`` from being made. ``None`` where nothing does."""
    for part in (folder, *folder.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def check_folder(folder: str | os.PathLike[str], name: str) -> None:
    """ValueError naming ``name`` unless ``folder`` exists as a folder or can be made (no
    regular file on its path): checked before the work that writes into it, not after."""
    blocked = file_in_the_way(expanded(folder))
    if blocked is not None:
        raise ValueError(f"{name} cannot be a folder: {blocked} is a file")


def check_parent(path: str | os.PathLike[str], what: str = "") -> None:
    """ValueError naming ``path`` (after ``what``, e.g. "the checkpoint") where a file stands
    where its folder or one above would be: ``mkdir`` answered that with "[Errno 20] Not a
    directory" or "[Errno 17] File exists", naming neither what was written nor why."""
    blocked = file_in_the_way(Path(path).parent)
    if blocked is not None:
        target = f"{what} {os.fspath(path)}" if what else os.fspath(path)
        raise ValueError(f"cannot write {target}: {blocked} is a file, not a folder")


#: what a terminal acts on rather than shows, or shows other than as written: the controls
#: (category Cc: C0, DEL and C1, ``\x9b`` is CSI as ``\x1b[`` is), the format characters (Cf:
#: bidirectional overrides and isolates, zero-width characters, which reorder or hide the text
#: around them, "Trojan Source") and the line and paragraph separators (Zl, Zp)
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp"})
#: the characters :func:`terminal_text` looks at: all but printable ASCII (whose category it reads)
_NOT_PRINTABLE_ASCII = re.compile("[^\x20-\x7e]")
_NAMED_CONTROL = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _shown(match: re.Match[str]) -> str:
    """A character as :func:`terminal_text` shows it: itself unless it is hidden (above)."""
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDC9F:
        # a surrogate that carries the byte 0x80-0x9f of a file name undecodable in the locale
        # (the standard streams write it back as that byte: a C1 control)
        return f"\\x{code - 0xDC00:02x}"
    category = unicodedata.category(char)
    if category == "Cc":
        return _NAMED_CONTROL.get(char) or f"\\x{code:02x}"
    if category in _HIDDEN:
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return char


def terminal_text(text: object, *, lines: bool = False) -> str:
    """``str(text)`` as it may be written to a terminal: every control character in it as a
    visible escape (``\\x1b``, ``\\x9b``, ``\\n``), and every format or separator character
    (``\\u202e``, ``\\u200b``, ``\\u2028``), so that a file name, a config value, a
    checkpoint's or a ``.qlc`` header's string cannot recolour, clear or retitle the terminal,
    move its cursor, reorder or hide text, or forge a line of output. Other text (``Λ``, ``é``,
    ``漢``) is left as it is. ``lines=True``: a block of lines the program joined itself, whose
    newlines stay (a line's own control characters are still escaped). For display only: a
    path is opened, and a file written, with the text as it is."""
    text = str(text)
    if lines:
        return "\n".join(_NOT_PRINTABLE_ASCII.sub(_shown, line) for line in text.split("\n"))
    return _NOT_PRINTABLE_ASCII.sub(_shown, text)


def path_name(text: str) -> str:
    """argparse type: a path, not empty (``--data-dir ""``, an unset shell variable, was read as
    no option at all, or as the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return text


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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


class NoModuleBackwardHooks:
    """For a module whose ``forward`` returns a dataclass of tensors (a bottleneck's
    ``BottleneckOutput``, a model's ``AutoencoderOutput``, the loss's ``LossOutput``): torch
    runs a module backward hook only on a module returning a tensor or a tuple of them, and
    skipped such a module's with a warning (full hooks, pre-hooks) or failed inside the
    forward with "'AutoencoderOutput' object is not subscriptable" (the legacy hook).
    Registering one is a TypeError instead; forward hooks and tensor hooks work. A class names
    its output in ``_returns`` and what to hook instead in ``_hook_instead``."""

    _returns: ClassVar[str]
    _hook_instead: ClassVar[str]

    def _no_backward_hooks(self) -> TypeError:
        return TypeError(
            f"{type(self).__name__} returns {self._returns}, on which module backward hooks "
            f"never fire: hook {self._hook_instead}"
        )

    def register_full_backward_hook(self, hook, prepend: bool = False):
        raise self._no_backward_hooks()

    def register_full_backward_pre_hook(self, hook, prepend: bool = False):
        raise self._no_backward_hooks()

    def register_backward_hook(self, hook):
        raise self._no_backward_hooks()


def first_order(backward: Callable) -> Callable:
    """A custom ``torch.autograd.Function``'s ``backward`` that computes first derivatives only
    (in place of ``once_differentiable``), refusing a second derivative through it.

    A backward that records a graph (``create_graph=True``, or a ``torch.func`` transform,
    which always records one) gets the first derivatives it asked for, tied by
    :class:`_FirstOrderOnly` to the incoming gradients and every tensor the Function saved,
    its :func:`anchor` among them: differentiating them again is a RuntimeError naming the
    Function. ``once_differentiable`` flags a second derivative only through the incoming
    gradients, and only where the next differentiation happens to reach that flag: the terms
    through the tensors saved in the forward were left out without a word (a lattice
    bottleneck's rate then had a second derivative of 1 where finite differences gave 0.97
    and 0.03)."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            if getattr(ctx, "had_tangents", False) and forward_ad_level_active():
                # a backward inside the dual level whose tangents went through the forward:
                # torch would form the gradients' tangents (second derivatives), which this
                # one cannot (they came out None or 0)
                raise RuntimeError(_second_order_refusal(_function_name(ctx)))
            with torch.no_grad():
                return _run(backward, ctx, grads)
        saved = _SavedOnce(ctx)  # the saved tensors unpacked once (checkpoint refuses twice)
        with torch.no_grad():
            result = _run(backward, saved, grads)
        outputs = result if isinstance(result, tuple) else (result,)
        computed = [i for i, t in enumerate(outputs) if isinstance(t, Tensor)]
        tied = _FirstOrderOnly.apply(
            _function_name(ctx),
            len(computed),
            *(outputs[i] for i in computed),
            *(t for t in (*grads, *saved.unpacked) if isinstance(t, Tensor)),
        )
        outputs = list(outputs)
        for i, t in zip(computed, tied, strict=True):
            outputs[i] = t
        return tuple(outputs) if isinstance(result, tuple) else outputs[0]

    return wrapper


def _batched(tensor: Tensor) -> bool:
    """Whether ``tensor`` is batched by ``torch.func.vmap`` or by the older vmap of
    ``torch.autograd.grad(..., is_grads_batched=True)``."""
    functorch = torch._C._functorch
    return functorch.is_batchedtensor(tensor) or functorch.is_legacy_batchedtensor(tensor)


def transform_wrapper(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.func`` wrapper (``grad``, ``vjp``), also of a transform
    that has returned: a ``vjp``'s pullback passes the tensors saved in the forward as such
    wrappers, which a ``torch.compile``d kernel cannot read ("Cannot access data pointer of
    Tensor that doesn't have storage")."""
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def _function_name(ctx) -> str:
    """The custom Function's name from its backward's ``ctx`` (a node ``<Name>Backward``, or
    ``<Name>GeneratedBackward`` under a ``torch.func`` transform)."""
    ctx = ctx._ctx if isinstance(ctx, _SavedOnce) else ctx
    return type(ctx).__name__.removesuffix("Backward").removesuffix("Generated")


def _run(backward: Callable, ctx, grads: tuple):
    """``backward(ctx, *grads)``, or None for every input where no gradient reached the
    outputs (they are not materialized); where it fails on batched gradients (``torch.func``'s
    ``jacrev``, a vmap of a ``vjp``, or ``is_grads_batched=True``), a RuntimeError saying so:
    the backward passes write into their buffers in place, which vmap cannot batch."""
    if all(g is None for g in grads):
        return (None,) * len(ctx.needs_input_grad)
    try:
        return backward(ctx, *grads)
    except RuntimeError as error:
        if not any(g is not None and _batched(g) for g in grads):
            raise
        raise RuntimeError(
            f"the backward of {_function_name(ctx)} does not run under vmap (torch.func.jacrev, "
            "a vmap of a vjp and is_grads_batched=True batch backward passes): take the "
            "Jacobian with torch.autograd.functional.jacobian, or one vjp per row"
        ) from error


class _SavedOnce:
    """A backward's ``ctx`` whose ``saved_tensors`` are unpacked once and kept (``unpacked``):
    :func:`first_order` ties its result to them after the backward has read them."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx
        self.unpacked: tuple = ()

    @property
    def saved_tensors(self) -> tuple:
        if not self.unpacked:
            self.unpacked = self._ctx.saved_tensors
        return self.unpacked

    def __getattr__(self, name: str):
        return getattr(self._ctx, name)


class _FirstOrderOnly(torch.autograd.Function):
    """``(name, count, *values, *inputs)`` -> copies of the ``count`` values, recorded as
    functions of ``inputs`` whose derivative is a RuntimeError naming the Function ``name``:
    a first-order backward's result, which must not be differentiated again."""

    generate_vmap_rule = True  # (``torch.func.jacrev`` runs backward passes under vmap)

    @staticmethod
    def forward(name: str, count: int, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.clone() for t in tensors[:count])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.name = inputs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_second_order_refusal(ctx.name))

    @staticmethod
    def jvp(ctx, *tangents):  # forward over reverse: ``jacfwd(jacrev(...))``, ``hessian``
        raise RuntimeError(_second_order_refusal(ctx.name))


def _second_order_refusal(name: str) -> str:
    return (
        f"{name} has first derivatives only: a second-order gradient (a backward of a "
        "gradient taken with create_graph=True, nested torch.func transforms, or "
        "torch.func.hessian) through a qlatent bottleneck is not supported; for a "
        "Jacobian-vector product use torch.func.jvp (torch.autograd.functional.jvp "
        "differentiates a gradient to form one)"
    )


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


def save_for_jvp(ctx, *tensors: Tensor | None) -> None:
    """In a custom Function's ``setup_context``: saves ``tensors`` for its ``jvp`` (read back
    as ``ctx.saved_tensors`` there) where forward-mode AD may run, and nowhere else: they
    would keep tensors the backward does not need alive with the graph. Not while
    ``torch.compile`` traces (which takes no forward mode)."""
    if torch.compiler.is_compiling():
        return
    if not getattr(ctx, "plain", False) or forward_ad_level_active():
        ctx.save_for_forward(*tensors)


def forward_tangent(*terms: tuple[Tensor, Tensor | None]) -> Tensor:
    """Σ factor·tangent over the ``(factor, tangent)`` pairs whose tangent is not None, for a
    ``jvp`` (forward mode passes None for an input without a tangent); zeros shaped like the
    first factor where none has one. The factors have the output's shape or broadcast to it."""
    total = None
    for factor, tangent in terms:
        if tangent is not None:
            total = factor * tangent if total is None else total + factor * tangent
    return torch.zeros_like(terms[0][0]) if total is None else total


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


def with_plain_twin(function: type) -> type:
    """Class decorator for a custom ``torch.autograd.Function`` written in the ``setup_context``
    form (``forward`` without ``ctx``): adds ``function.plain``, the same Function in the form
    that takes ``ctx`` in its forward, which :func:`apply_function` calls outside ``torch.func``
    transforms and ``torch.compile``. Only the ``setup_context`` form runs under the transforms,
    but its ``apply`` binds the arguments through ``inspect.signature`` on every call, and its
    forward must return what the backward needs as outputs, each one more output for autograd
    to process (``examples/function-form-ab.py`` times both against the older form).

    For a Function with a :func:`first_order` backward, ``function.outputs`` is the number of
    its real outputs: the twin returns those and the :func:`anchor` (the last output), and
    keeps the factors in between as saved tensors only; the backward takes the gradients of
    the extra outputs as ``*_`` (None) in both forms. A ``jvp`` (forward mode) is
    given to the twin too, with the extra outputs' tangents left out, and a Function with a
    ``jvp`` and no vmap rule gets one that refuses batched inputs by name (without any,
    torch refused ``jacfwd`` too, which batches the tangents only). Such a Function is
    returned without the two, for ``torch.compile``, which refuses a ``jvp``, with the whole
    one as ``.transformed``, which the ``torch.func`` transforms take."""
    real = getattr(function, "outputs", None)

    def forward(ctx, *args):
        output = function.forward(*args)
        ctx.plain = True  # (the factors are no outputs here: nothing to mark)
        if real is not None and forward_ad_level_active():  # (read by :func:`_first_order_jvp`)
            ctx.graph_inputs = [a for a, n in zip(args, ctx.needs_input_grad, strict=True) if n]
        function.setup_context(ctx, args, output)
        return output if real is None else (*output[:real], output[-1])

    members = {
        "forward": staticmethod(forward),
        "backward": staticmethod(function.backward),
        "__module__": function.__module__,
        "__qualname__": function.__qualname__,  # (errors name the Function, not its twin)
        "__doc__": function.__doc__,
    }
    if "jvp" in vars(function):
        own = function.jvp

        def marked(ctx, *tangents):
            ctx.had_tangents = True  # (read by :func:`first_order`)
            if real is None:  # (a backward of differentiable operations: so is its jvp)
                return own(ctx, *tangents)
            return _first_order_jvp(ctx, function.__name__, own(ctx, *tangents))

        function.jvp = staticmethod(marked)

        def jvp(ctx, *tangents):
            tangents = marked(ctx, *tangents)
            return tangents if real is None else (*tangents[:real], tangents[-1])

        members["jvp"] = staticmethod(jvp)
        if not function.generate_vmap_rule and "vmap" not in vars(function):
            function.vmap = staticmethod(functools.partial(_no_vmap, function.__name__))
    plain = type(function.__name__, (torch.autograd.Function,), members)
    if "jvp" not in vars(function):
        function.plain = plain
        return function
    # the class the name is bound to: the same Function without the jvp and vmap rules, which
    # ``torch.compile`` takes (Dynamo refuses a Function with a jvp: "Unsupported custom jvp",
    # and reads no other class through an attribute of the one it traces)
    kept = {
        name: value
        for name, value in vars(function).items()
        if name in ("__module__", "__qualname__", "__doc__")
        or not (name.startswith("_") or name in ("jvp", "vmap"))
    }
    traced = type(function.__name__, (torch.autograd.Function,), kept)
    traced.plain, traced.transformed = plain, function
    return traced


def _first_order_jvp(ctx, name: str, tangents: tuple) -> tuple:
    """The ``jvp`` result ``tangents`` of a Function with a :func:`first_order` backward, refused
    where it would be differentiated again: its factors are constants to it, so a reverse pass
    over the tangents (``grad`` or ``vjp`` of a ``jvp``, ``jacrev(jacfwd(...))``, a backward of
    a dual number's tangent) or an outer ``jvp`` gave second derivatives of 0 or with terms
    missing, without a word. Under ``torch.func``: a RuntimeError where a ``grad`` or ``jvp``
    transform is outside this one. Under ``torch.autograd.forward_ad``, where an input of the
    Function requires grad: the tangents tied to those inputs by :class:`_FirstOrderOnly`,
    whose backward is that RuntimeError."""
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return tangents
    if in_transform():
        interpreters = torch._functorch.pyfunctorch.retrieve_all_functorch_interpreters()
        outer = {i.key() for i in interpreters[:-1]}  # (the last: this jvp's own level)
        transforms = torch._C._functorch.TransformType
        if outer & {transforms.Grad, transforms.Jvp}:
            raise RuntimeError(_second_order_refusal(name))
        return tangents
    graph = [
        torch.autograd.forward_ad.unpack_dual(t).primal for t in getattr(ctx, "graph_inputs", ())
    ]
    ctx.graph_inputs = ()  # (not kept alive with the graph)
    computed = [i for i, t in enumerate(tangents) if isinstance(t, Tensor)]
    if not graph or not computed:
        return tangents
    tied = _FirstOrderOnly.apply(name, len(computed), *(tangents[i] for i in computed), *graph)
    tangents = list(tangents)
    for i, t in zip(computed, tied, strict=True):
        tangents[i] = t
    return tuple(tangents)


def _no_vmap(name: str, info, in_dims, *args):
    """The ``vmap`` rule of a Function that has none: torch calls it only where an input is
    batched (a ``vmap`` over a bottleneck's input), and passes the Function by where none is
    (``jacfwd``, which batches the tangents only)."""
    raise RuntimeError(
        f"{name} does not run under vmap over its inputs (torch.func.vmap of a bottleneck's "
        "forward): call it on the whole batch, or once per example"
    )


def apply_function(function: type, *args):
    """``function.apply(*args)`` for a Function decorated by :func:`with_plain_twin`, through
    its plain twin unless a ``torch.func`` transform or ``torch.compile`` is tracing."""
    if torch.compiler.is_compiling():
        return function.apply(*args)
    if in_transform():
        return getattr(function, "transformed", function).apply(*args)
    return function.plain.apply(*args)


def anchor(like: Tensor) -> Tensor:
    """The last output of a custom ``torch.autograd.Function`` whose backward is
    :func:`first_order`: a 0-d zero that no one reads, recorded (like every output) as a
    function of all the Function's inputs. Saved by :func:`save_for_first_order`, it is what
    ties a recorded backward's result to the inputs, so that a second derivative through the
    saved factors (which depend on the inputs but are not differentiable outputs) meets the
    refusal instead of being left out."""
    return like.new_zeros(())


def save_for_first_order(ctx, anchor: Tensor, saved, factors=(), forward=None) -> None:
    """In the ``setup_context`` of a Function with a :func:`first_order` backward: saves
    ``saved`` and the Function's :func:`anchor` output (read back without it by
    :func:`saved_for_first_order`), marks the extra outputs ``factors`` (what the backward
    needs beyond the inputs and the real outputs) not differentiable, and forms no zero
    gradients for outputs no loss reached (the backward gets None and handles it).

    The Functions return such tensors as outputs, and save them here, because that is the form
    ``torch.func`` transforms (``grad``, ``vjp``, ``jacrev``) accept: one that saved them from
    a ``forward(ctx, ...)`` was refused. ``forward``: what the Function's ``jvp`` reads
    (:func:`save_for_jvp`)."""
    factors = [t for t in factors if t is not None]
    if factors and not getattr(ctx, "plain", False):
        ctx.mark_non_differentiable(*factors)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*saved, anchor)
    if forward is not None:
        save_for_jvp(ctx, *forward)


def saved_for_first_order(ctx) -> tuple:
    """The tensors :func:`save_for_first_order` saved, without the anchor."""
    return ctx.saved_tensors[:-1]


#: the dtypes whose ``torch.compile``d kernels give the eager operations' bits. In float16 and
#: bfloat16 Inductor computes each fused step in float32 and rounds only what it stores, where
#: eager rounds every step: the compiled lattice decoders and hard path found other points and
#: coordinates there, so a row's code followed the batch size (the compiled kernels take only
#: batches above a threshold) and ``compile=True`` (the lattice's eval forward no longer matched
#: its file). Other dtypes take the eager code under ``compile=True``.
COMPILED_DTYPES = (torch.float32, torch.float64)


#: how much of a module's ``repr`` a file's model digest leaves out while it reads it
#: (:func:`repr_for_digest`): 0 nothing (a plain ``repr``), 1 ``compile``, 2 also every setting
#: that changes no code
_FOR_DIGEST = contextvars.ContextVar("qlatent_repr_for_digest", default=0)
#: the form of the digest written now; the lower ones are those earlier versions wrote
DIGEST_FORM = 2


@contextlib.contextmanager
def repr_for_digest(form: int = DIGEST_FORM) -> Iterator[None]:
    """Within it a bottleneck's ``repr`` shows ``compile`` off (:func:`shown_compile`) and every
    other setting that changes no code at its constructor default (:func:`shown_setting`), as
    :func:`qlatent.coding.codec.model_digest` reads it: the fused kernels give the eager codes
    bit for bit, yet a file written with ``compile=True`` named another model than the same
    weights without it, which refused to decode it (and so did one written with another
    training weight or Monte-Carlo count). ``form``: the digest's form (:data:`DIGEST_FORM`;
    1 shows only ``compile`` off, 0 nothing, as files written before did)."""
    token = _FOR_DIGEST.set(form)
    try:
        yield
    finally:
        _FOR_DIGEST.reset(token)


def shown_compile(compile: bool) -> bool:
    """A bottleneck's ``compile`` as its ``repr`` shows it: off within :func:`repr_for_digest`."""
    return compile and _FOR_DIGEST.get() < 1


def shown_setting(module: object, name: str) -> Any:
    """A module's setting ``name`` as its ``repr`` shows it: the value it holds, or within
    :func:`repr_for_digest` the constructor default, where its class names ``name`` in
    ``_FREE_OF_CODE`` (setting -> default: the settings that change neither the coded bytes nor
    the decoded ``y_hat``, such as a training loss's weight or a Monte-Carlo rate's sample
    count). A module holding the default shows the same either way, so its digest is the one
    it had before these settings were left out."""
    free = getattr(type(module), "_FREE_OF_CODE", {})
    if name in free and _FOR_DIGEST.get() >= 2:
        return free[name]
    return getattr(module, name)


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


def _locked(fd: int, *, wait: bool) -> bool:
    """Take ``flock(fd)`` (True), or False where another process holds it; True too where the
    file system has no such locks (there, as before they were used, nothing is held)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files of ``path`` (``.<name>.*.tmp``) left by writers that were
    killed mid-write. A writer holds a lock on its file until it is renamed (:func:`replacing`),
    which the kernel lets go of when the writer dies: a file still locked is another writer's
    in progress and stays (removing it made that writer's rename fail)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if fcntl is None:
            with contextlib.suppress(OSError):  # Windows: a file open in a writer is not removed
                stale.unlink()
            continue
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:  # removed meanwhile
            continue
        try:
            if _locked(fd, wait=False):
                stale.unlink(missing_ok=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, *, mode: int = 0o666, sweep: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents into: a temporary file of this writer's
    own beside it, renamed over ``path`` when the block ends, removed if it raises. Two writers
    of one path at once each rename a complete file into place, the last one's staying: with one
    shared temporary name, one renamed the file the other was still writing (a truncated
    ``path``) and the other's rename failed. ``mode`` as in :func:`os.open` (before the umask).
    ``sweep``: remove the temporary files of killed writers first (:func:`remove_stale_temps`),
    which lists the folder: not for many files written into one folder."""
    if sweep:
        remove_stale_temps(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode
            )
        except FileExistsError:
            continue
        if fcntl is None or _locked(fd, wait=True) and _names(tmp, fd):
            break
        os.close(fd)  # taken for stale between its creation and the lock: another name
    renamed = False
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            yield f
        if fcntl is None:  # Windows renames no open file (and nothing is locked there)
            os.close(fd)
            fd = -1
        os.replace(tmp, path)  # still locked: not a stale file to a writer starting now
        renamed = True
    finally:
        if fd >= 0:
            os.close(fd)
        if not renamed:
            tmp.unlink(missing_ok=True)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` is still the file open as ``fd``."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


def made_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """Make ``folder`` as ``folder.mkdir(parents=True, exist_ok=True)`` does; returns the
    folders this call made, deepest first (:func:`taken_back`). Those it made, not those that
    looked missing before: through a ``..`` after a missing folder (``new/../keep``) every name
    below it looked missing, the user's existing ``keep`` too, and a folder another process
    makes meanwhile is that process's. Absolute paths: a working folder changed before they
    are taken back (a notebook's ``%cd``) sent the removal to the same names there. Where
    ``folder`` itself cannot be made (a name too long), those made above it are taken back."""
    folder = Path(folder).absolute()
    try:
        os.mkdir(folder)
    except FileNotFoundError:
        if folder.parent == folder:
            raise
        above = made_folders(folder.parent)
        with taken_back(above):
            try:
                os.mkdir(folder)
            except OSError:
                if not folder.is_dir():
                    raise
                return above
        return [folder, *above]
    except OSError:
        if not folder.is_dir():
            raise
        return []
    return [folder]


@contextlib.contextmanager
def taken_back(made: list[Path]) -> Iterator[None]:
    """Remove the folders ``made`` (:func:`made_folders`, deepest first) if the block raises
    and leaves them empty: a run or an export that failed before writing anything leaves no
    empty folders. One that holds a file (another writer's) stays, and those above it."""
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place (a
    ValueError where ``path`` is a folder, a device or a pipe, which the rename would replace,
    or lies under a regular file); concurrent writers of one path each write a whole file
    (:func:`replacing`)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"refusing to write {path}: it is not a regular file")
    check_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing(path) as f:
            f.write(data)
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        # a full disk or a file-size limit meets the write or the flush of the temporary
        # file, whose OSError names no file: "[Errno 28] No space left on device" alone
        raise OSError(err.errno, err.strerror, os.fspath(path)) from None
    return path


def expanded(path: str | os.PathLike[str]) -> Path:
    """``Path(path).expanduser()``, with a ValueError naming the path where ``~user`` names
    no user (``expanduser`` raises a RuntimeError that says neither which path nor why)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise ValueError(f"{os.fspath(path)}: no home folder for the user it names") from None


class tqdm(_tqdm):
    """The progress bar of every loop here: ``tqdm.auto.tqdm`` without tqdm's monitor thread.
    tqdm starts that thread with the first bar made in a process, a disabled one too, and
    nothing ends it: ``fit`` with ``progress = false`` (or a folder read, an IWAE evaluation)
    left a thread running after it returned. The monitor only forces a redraw of a bar whose
    updates have slowed down after a fast start; the bars here advance at an even pace."""

    monitor_interval = 0
