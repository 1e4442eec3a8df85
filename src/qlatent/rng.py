"""Counter-based uniform random numbers that ``torch.compile`` can fuse into a kernel.

``u = hash(hash(counter) XOR key)`` with the ``lowbias32`` integer hash (C. Wellons' "hash
prospector", 2018; a bijection of 32-bit words with low avalanche bias), applied to the element
index as counter and a 32-bit key per call: drawn from a ``torch.Generator``, or derived from an
integer seed alone by :class:`SeedKeys` (what entropy-coded files use). The top 24 bits
give a float on the dyadic grid ``k·2^-24``, ``k ∈ [0, 2^24)`` — the same grid as ``torch.rand``.

Why: drawing 1M floats with ``torch.rand`` costs about 4 ms on one CPU thread (the Mersenne
Twister is sequential), more than the whole rest of the lattice bottleneck's training path. As
int32 arithmetic the hash vectorizes and fuses with its consumer: fused into the training kernel
it costs well under a millisecond. Integer arithmetic is exact, so the numbers are the same on
every device and thread count.

Arithmetic is on int32 tensors: multiplication wraps modulo 2^32 (two's complement), and right
shifts are masked so that they act as logical shifts on the unsigned bit pattern.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ._utils import (
    forward_ad_level_active,
    in_transform,
    plain_tensors,
    proxy_tracing,
    recording_graph,
)

_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B - (1 << 32)  # as the int32 with the same bits


def lowbias32(v: Tensor) -> Tensor:
    """The ``lowbias32`` hash of each int32 element (its uint32 bit pattern); ``v`` is left as
    it was. After the first step the work is in place on two buffers: on the CPU this halves
    the time of the hash, which dominates drawing a dither.

    ``v``: an int32 tensor of any shape (0-d included); returns a new int32 tensor of the same
    shape and device. The dtype is not checked: other integer dtypes do not wrap at 32 bits
    and give other numbers."""
    t = (v >> 16) & 0xFFFF
    v = v ^ t  # a new tensor: the caller's is not touched
    v.mul_(_MUL1)
    torch.bitwise_right_shift(v, 15, out=t).bitwise_and_(0x1FFFF)
    v.bitwise_xor_(t)
    v.mul_(_MUL2)
    torch.bitwise_right_shift(v, 16, out=t).bitwise_and_(0xFFFF)
    return v.bitwise_xor_(t)


def _as_int32(word: int) -> int:
    """The int32 with the bit pattern of the unsigned 32-bit ``word``."""
    return word - (1 << 32) if word >= 1 << 31 else word


class SeedKeys:
    """Keys for the counter-based generator derived from an integer seed alone.

    Call ``j`` (counted from 0) gets ``key_j = h(h(h(lo) ^ hi) ^ j)``, with ``h`` = ``lowbias32``
    and ``lo``/``hi`` the low and high 32 bits of ``seed``: integer arithmetic only, so the keys
    (and everything drawn from them) are the same on every machine, device and thread count and
    do not depend on torch's random number generators. Pass an instance wherever a bottleneck
    takes ``generator=``: the dithered lattice draws its dither from it, and
    ``decompress(compress(y, seed=s))`` equals ``forward(y, generator=SeedKeys(s)).y_hat`` in
    eval mode. The object counts its calls, so reuse it for a stream of independent draws and
    make a new one to repeat them.

    Raises ValueError unless ``seed`` is an integer in [0, 2^64) (a boolean is not).
    """

    device = torch.device("cpu")  # the keys are common randomness made on the CPU

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2^64), got {seed!r}")
        self.seed = seed
        self.calls = 0
        words = torch.tensor(
            [_as_int32(seed & 0xFFFFFFFF), _as_int32(seed >> 32)], dtype=torch.int32
        )
        self._base = lowbias32(lowbias32(words[0]) ^ words[1])

    def next_key(self) -> Tensor:
        """The next 0-d int32 key (on the CPU)."""
        index = torch.tensor(_as_int32(self.calls & 0xFFFFFFFF), dtype=torch.int32)
        self.calls += 1
        return lowbias32(self._base ^ index)

    def __repr__(self) -> str:
        return f"SeedKeys(seed={self.seed}, calls={self.calls})"


def draw_key(generator: torch.Generator | SeedKeys | None = None, device=None) -> Tensor:
    """A 0-d int32 key: the next of a :class:`SeedKeys`, or drawn from a ``torch.Generator``
    (torch's default generator when None).

    The key is made on the generator's device (the CPU for a :class:`SeedKeys` or None) and
    moved to ``device`` if given. Raises ValueError for a ``generator`` of any other type.

    Recorded as a graph (:func:`~qlatent._utils.recording_graph`), the draw from a
    ``torch.Generator`` (torch's default one included) is an op of the graph: each call of the
    graph draws its own key, as each eager call does (``make_fx`` keeps the generator object
    given while tracing and draws from it, whatever generator a later call names). Within
    ``torch.func.linearize`` (``make_fx`` of a forward-mode call) the key is drawn once, while
    tracing, and kept as a constant: its ``jvp_fn`` ran the recorded draw again (torch does
    not fold a random op), so its tangents were those of another dither than the traced
    call's. (``linearize`` calls the function once more for its primal output: the two share
    a dither only where the function makes its generator from a fixed seed.) A
    :class:`SeedKeys` counts its calls in Python, which no graph records: RuntimeError there
    outside ``linearize`` (a graph reused the traced call's key on every call)."""
    if _linearizing():
        with plain_tensors():  # (outside the trace and the transform: a constant of it)
            return draw_key(generator, device)
    if isinstance(generator, SeedKeys) and recording_graph():
        raise RuntimeError(
            "a qlatent.rng.SeedKeys counts its calls in Python, which a recorded graph "
            "(torch.export, make_fx) cannot: the graph would reuse this call's key on every "
            "call. Record it with generator=None (torch's default generator, whose draw is an "
            "op of the graph) or a torch.Generator, and use SeedKeys eagerly"
        )
    if isinstance(generator, SeedKeys):
        key = generator.next_key()
        return key if device is None else key.to(device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            "generator must be a torch.Generator, a qlatent.rng.SeedKeys or None, got "
            f"{type(generator).__name__}"
        )
    source = generator.device if generator is not None else "cpu"
    key = torch.randint(-(2**31), 2**31, (), generator=generator, dtype=torch.int32, device=source)
    return key if device is None else key.to(device)


def counter_uniform(
    key: Tensor, shape: tuple[int, ...], dtype=torch.float32, offset: int = 0
) -> Tensor:
    """Uniform numbers in ``[0, 1)`` on the grid ``k·2^-24``, element ``i`` from counter
    ``offset + i``.

    Args:
        key: 0-d int32 tensor (see :func:`draw_key`); its device is the output's device.
        shape: output shape; offset + numel below 2^31.
        dtype: a floating-point dtype; float16 and bfloat16 hold the grid's numbers rounded to
            their precision (which may round one up to 1).
        offset: the first counter: a block of rows of a larger draw gets the same numbers as
            the whole draw's rows (row ``j`` of a ``(n, m)`` draw starts at counter ``j·m``).

    On the CPU (outside ``torch.compile``) the hash runs in NumPy on blocks of 2^16 counters
    that stay in cache, about three times faster than torch's whole-array passes; the numbers
    are the same bits either way (integer arithmetic, then an exact scaling).

    Returns a tensor of ``shape`` and ``dtype`` on ``key``'s device. Raises ValueError for a key
    that is not a 0-d int32 tensor, a shape that is not a tuple of non-negative integers, a
    dtype that is not floating-point, an offset that is not an integer, or counters
    ``offset + numel`` that reach 2^31. Within ``torch.export`` or ``make_fx`` the count is an
    assertion of the recorded graph (a RuntimeError when it runs past it).
    """
    if _linearizing():
        # the numbers drawn outside the trace, their copy recorded in place: linearize folds
        # the graph's constants once, and the hash's in-place ops, left in the graph, ran
        # again on their folded inputs at each jvp_fn call (another dither each time); the
        # copy, left in the graph too, keeps what follows from being folded likewise
        with plain_tensors():
            r = counter_uniform(key, shape, dtype, offset)
        return torch.empty_like(r).copy_(r)
    exporting = recording_graph()  # torch.export or make_fx: every step an op of the graph
    if not torch.compiler.is_compiling():  # (which traces these lines as Python of its own)
        _check_arguments(key, shape, dtype, offset)
    numel = math.prod(shape)
    if offset < 0 or (not exporting and offset + numel >= 2**31):
        raise ValueError(
            f"counter_uniform draws at most 2^31 numbers per key, asked for counters "
            f"{offset} to {offset + numel}"
        )
    if exporting:
        # the count as an assertion of the program, which refuses a larger input when it runs:
        # as a guard on a dynamic size it bounded the ``torch.export.Dim`` (an unbounded one
        # failed inside torch, "Expected op to be '==', got <")
        torch._assert_async(
            torch.full((), offset + numel, dtype=torch.int64) < 2**31,
            "counter_uniform draws at most 2^31 numbers per key (a dithered bottleneck's "
            "dither or Monte-Carlo draws for this input): give it fewer rows",
        )
    # (not while recording: the NumPy hash reads the key back, and its numbers would be a
    # constant of the graph, the same dither on every call)
    in_numpy = not (torch.compiler.is_compiling() or exporting)
    if key.device.type == "cpu" and dtype in _NUMPY_DTYPES and in_numpy:
        out = np.empty(numel, dtype=_NUMPY_DTYPES[dtype])
        _counter_uniform_blocks(int(key) & 0xFFFFFFFF, out, offset)
        return torch.from_numpy(out).view(shape)
    return _counter_uniform_torch(key, shape, dtype, offset)


def _linearizing() -> bool:
    """Whether ``make_fx`` traces a forward-mode call: ``torch.func.linearize``, which traces
    under a dual level of ``torch.autograd.forward_ad`` and in no ``torch.func`` transform.
    ``make_fx`` of a transform (``torch.func.grad``, ``vjp``, ``jvp``) records the draws as
    ops, as without one: taken for ``linearize``, its graph kept the traced call's key and
    dither as constants, one dither on every call of it. (A transform applied inside the
    function that ``linearize`` is given is taken for the former.)"""
    return proxy_tracing() and forward_ad_level_active() and not in_transform()


def _check_arguments(key, shape, dtype, offset) -> None:
    """ValueError naming the first argument of :func:`counter_uniform` that is not of its kind:
    a key of another dtype was hashed as the integer part of its value, negative sizes whose
    product is positive failed in a reshape, an integer dtype inside torch. Reads no tensor's
    values, so ``make_fx`` and ``torch.export`` check too (where a key of another dtype or
    shape, or a float offset, drew other numbers silently): there a size or the offset may be
    a ``torch.SymInt``, whose sign is the graph's to check, not a guard made here."""
    if not isinstance(key, Tensor) or key.dim() != 0 or key.dtype != torch.int32:
        what = f"{key.dtype} of shape {tuple(key.shape)}" if isinstance(key, Tensor) else repr(key)
        raise ValueError(f"key must be a 0-d int32 tensor (see draw_key), got {what}")
    if not isinstance(shape, tuple | list | torch.Size) or not all(
        isinstance(n, torch.SymInt) or (_is_int(n) and n >= 0) for n in shape
    ):
        raise ValueError(f"shape must be a tuple of non-negative integers, got {shape!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if not (_is_int(offset) or isinstance(offset, torch.SymInt)):
        raise ValueError(f"offset must be an integer, got {offset!r}")


def _is_int(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _counter_uniform_torch(key: Tensor, shape: tuple[int, ...], dtype, offset: int = 0) -> Tensor:
    """:func:`counter_uniform` as whole-tensor torch operations (any device; compilable)."""
    numel = math.prod(shape)
    counter = torch.arange(offset, offset + numel, dtype=torch.int32, device=key.device)
    counter = counter.view(shape)
    bits = lowbias32(lowbias32(counter).bitwise_xor_(key))
    k = bits.bitwise_right_shift_(8).bitwise_and_(0xFFFFFF)
    if dtype == torch.float16:  # the integers below 2^24 overflow float16 (largest 65504)
        return k.to(torch.float32).mul_(2.0**-24).to(dtype)
    return k.to(dtype).mul_(2.0**-24)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
#: counters hashed per NumPy block: two uint32 buffers of 256 KiB
_BLOCK = 1 << 16
_MUL1_U = np.uint32(_MUL1)
_MUL2_U = np.uint32(_MUL2 & 0xFFFFFFFF)


def _lowbias32_numpy(v: np.ndarray, t: np.ndarray) -> None:
    """``lowbias32`` of the uint32 array ``v`` in place (``t``: scratch of the same shape)."""
    np.right_shift(v, 16, out=t)
    v ^= t
    v *= _MUL1_U
    np.right_shift(v, 15, out=t)
    v ^= t
    v *= _MUL2_U
    np.right_shift(v, 16, out=t)
    v ^= t


def _counter_uniform_blocks(key: int, out: np.ndarray, offset: int = 0) -> None:
    """Fill the float32/float64 vector ``out`` with :func:`counter_uniform`'s numbers for the
    unsigned 32-bit ``key`` and counters from ``offset``, block by block."""
    key_u = np.uint32(key)
    base = np.arange(min(out.size, _BLOCK), dtype=np.uint32)
    v, t = np.empty_like(base), np.empty_like(base)
    grid = out.dtype.type(2.0**-24)
    for start in range(0, out.size, _BLOCK):
        n = min(_BLOCK, out.size - start)
        vb, tb = v[:n], t[:n]
        np.add(base[:n], np.uint32(offset + start), out=vb)
        _lowbias32_numpy(vb, tb)
        vb ^= key_u
        _lowbias32_numpy(vb, tb)
        vb >>= 8  # the top 24 bits: an integer below 2^24, exact in either float type
        np.multiply(vb, grid, out=out[start : start + n], casting="unsafe")
