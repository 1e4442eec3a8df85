"""How a module's ``repr`` reads for a file's model digest: within :func:`repr_for_digest` a
bottleneck shows ``compile`` off and its settings that change no code at their defaults. Used by
the bottlenecks' ``repr`` and by :func:`qlatent.coding.codec.model_digest` (through
:mod:`qlatent._utils`)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

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
