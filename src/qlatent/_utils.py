"""Small helpers shared across the package: the checks of numbers, counts, tensors and
generators, rows of a ``(B, D, *spatial)`` tensor, and the modules' refusal of backward hooks.

The other shared helpers live by concern beside it, and every one of them is imported from
here: files and folders written safely in :mod:`qlatent._files`, terminal text and argument
types in :mod:`qlatent._terminal`, torch's transforms, tracing, compilation and autocast in
:mod:`qlatent._tracing`, the custom autograd Functions' machinery in :mod:`qlatent._autograd`,
and the ``repr`` read for a file's model digest in :mod:`qlatent._digest`."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ._autograd import (  # noqa: F401
    anchor,
    apply_function,
    first_order,
    forward_tangent,
    save_for_first_order,
    save_for_jvp,
    saved_for_first_order,
    with_plain_twin,
)
from ._digest import DIGEST_FORM, repr_for_digest, shown_compile, shown_setting  # noqa: F401
from ._files import (  # noqa: F401
    check_folder,
    check_parent,
    expanded,
    file_in_the_way,
    made_folders,
    remove_stale_temps,
    replacing,
    taken_back,
    write_atomic,
)
from ._terminal import path_name, positive_int, terminal_text, tqdm  # noqa: F401
from ._tracing import (  # noqa: F401
    COMPILED_DTYPES,
    autocast_off,
    compiled_or_plain,
    forward_ad_level_active,
    forward_mode_possible,
    in_transform,
    plain_cache,
    plain_tensors,
    proxy_tracing,
    recording_graph,
    transform_wrapper,
)

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
