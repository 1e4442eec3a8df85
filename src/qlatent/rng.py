"""Counter-based uniform random numbers that ``torch.compile`` can fuse into a kernel.

``u = hash(hash(counter) XOR key)`` with the ``lowbias32`` integer hash (C. Wellons' "hash
prospector", 2018; a bijection of 32-bit words with low avalanche bias), applied to the element
index as counter and a 32-bit key drawn once per call from a ``torch.Generator``. The top 24 bits
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

import torch
from torch import Tensor

_MUL1 = 0x7FEB352D
_MUL2 = 0x846CA68B - (1 << 32)  # as the int32 with the same bits


def lowbias32(v: Tensor) -> Tensor:
    """The ``lowbias32`` hash of each int32 element (its uint32 bit pattern)."""
    v = v ^ ((v >> 16) & 0xFFFF)
    v = v * _MUL1
    v = v ^ ((v >> 15) & 0x1FFFF)
    v = v * _MUL2
    return v ^ ((v >> 16) & 0xFFFF)


def draw_key(generator: torch.Generator | None = None, device=None) -> Tensor:
    """A 0-d int32 key from ``generator`` (torch's default generator when None)."""
    source = generator.device if generator is not None else "cpu"
    key = torch.randint(-(2**31), 2**31, (), generator=generator, dtype=torch.int32, device=source)
    return key if device is None else key.to(device)


def counter_uniform(key: Tensor, shape: tuple[int, ...], dtype=torch.float32) -> Tensor:
    """Uniform numbers in ``[0, 1)`` on the grid ``k·2^-24``, element ``i`` from counter ``i``.

    Args:
        key: 0-d int32 tensor (see :func:`draw_key`); its device is the output's device.
        shape: output shape; at most 2^31 elements.
    """
    numel = 1
    for size in shape:
        numel *= size
    if numel >= 2**31:
        raise ValueError(f"counter_uniform draws at most 2^31 numbers per key, asked for {numel}")
    counter = torch.arange(numel, dtype=torch.int32, device=key.device).view(shape)
    bits = lowbias32(lowbias32(counter) ^ key)
    return ((bits >> 8) & 0xFFFFFF).to(dtype) * (2.0**-24)
