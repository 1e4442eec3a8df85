"""A bottleneck's constructor values and their record beside its weights.

:class:`Setting` (checked on every assignment) and :class:`Fixed` (assigned once, read-only
after ``__init__``) keep constructor values as attributes; :func:`check_flag` is the check of a
switch. The :class:`Fixed` values that give the weights their meaning travel in a state dict's
metadata (:func:`identity`) and are compared with the module's own when weights are loaded
(:func:`identity_problem`, :func:`check_loaded`). Used by :class:`~.base.Bottleneck` and by the
methods' classes, and re-exported by :mod:`.base`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._utils import check_finite


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


def identity(module) -> dict[str, Any]:
    """:meth:`~.base.Bottleneck._identity`: every :class:`Fixed` value of ``module`` but those of
    ``_FREE_OF_WEIGHTS``, as plain values (kept through ``torch.save`` and
    ``torch.load(weights_only=True)``), by attribute name."""
    record = {}
    for cls in type(module).__mro__:
        for name, attr in vars(cls).items():
            if (
                isinstance(attr, Fixed)
                and name not in record
                and name not in module._FREE_OF_WEIGHTS
                and name in module.__dict__
            ):
                record[name] = _plain(module.__dict__[name])
    return record


def identity_problem(module, local_metadata, prefix: str) -> str | None:
    """:meth:`~.base.Bottleneck._identity_problem`: why weights saved with ``local_metadata``
    do not fit ``module`` (a structural value that differs, or a record that is not one), or
    ``None``."""
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
        for cls in reversed(type(module).__mro__)
        for name, attr in vars(cls).items()
        if isinstance(attr, Fixed)
    }
    for name, mine in module._identity().items():
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


def check_loaded(module, state_dict, prefix: str) -> None:
    """ValueError for a floating-point tensor of ``module`` in ``state_dict`` (under
    ``prefix``) that holds a NaN or an infinity, or for a logarithm among its
    ``LOG_PARAMETERS`` whose exponential is 0 or infinite (:func:`check_exponential`)."""
    # weights loaded directly (not through qlatent.train.load_weights, which checks them
    # first) are refused with a NaN or an infinity too: every output became NaN without a word
    for key, value in state_dict.items():
        if key.startswith(prefix) and isinstance(value, Tensor) and value.is_floating_point():
            check_finite(key, value)
    for name in module.LOG_PARAMETERS:
        value, own = state_dict.get(prefix + name), getattr(module, name, None)
        if isinstance(value, Tensor) and isinstance(own, Tensor) and value.is_floating_point():
            module._check_exponential(prefix + name, value.detach().to(own.dtype))


def check_exponential(key: str, value: Tensor) -> None:
    """ValueError naming ``key`` where an exponential of the logarithms ``value`` is not a
    positive finite number in ``value``'s dtype."""
    exp = value.exp()
    bad = int((~(exp.isfinite() & (exp > 0))).sum())
    if bad:
        raise ValueError(
            f"{key} holds {bad} logarithm(s) whose exponential is 0 or infinite in "
            f"{value.dtype} (values in [{value.min().item():.4g}, {value.max().item():.4g}])"
        )
