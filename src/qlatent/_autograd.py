"""The custom ``torch.autograd.Function`` machinery of the bottlenecks and priors: first-order
backwards that refuse a second derivative by name (:func:`first_order`), the saved tensors and
anchor they are tied to, forward-mode tangents, and the plain twin of a Function written in the
``setup_context`` form (:func:`with_plain_twin`, called through :func:`apply_function`). Used by
the lattice and codebook bottlenecks and the priors (through :mod:`qlatent._utils`)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.autograd.forward_ad
from torch import Tensor

from ._tracing import forward_ad_level_active, in_transform


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
