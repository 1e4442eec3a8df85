"""Typed configs: nested dataclasses, dotted command-line overrides, and round trips to JSON.

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Opt:
...     lr: float = 1e-3
>>> @dataclass
... class Cfg:
...     opt: Opt = field(default_factory=Opt)
>>> apply_overrides(Cfg(), ["opt.lr=5e-4"]).opt.lr
0.0005
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

C = TypeVar("C")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) dataclass.

    ``dataclasses.asdict``: nested dataclasses become nested dicts, values are deep-copied.
    Raises TypeError if ``cfg`` is not a dataclass instance.
    """
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a (nested) dataclass from :func:`to_dict`'s output; unknown keys are an error.

    A field whose type hint is a dataclass is rebuilt from its dict recursively; other values
    are passed as they are (not converted to the hinted type), and a missing key takes the
    field's default. Raises ValueError naming the unknown keys, or a section that is not a
    dict (its letters were read as keys, a number failed inside); the dataclass's own
    ``__init__`` raises for a missing required field (TypeError) or a value it refuses.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a {cls.__name__} section must be a dict, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        kwargs[name] = from_dict(hint, value) if dataclasses.is_dataclass(hint) else value
    return cls(**kwargs)


def apply_overrides(cfg: C, overrides: list[str]) -> C:
    """Return a copy of ``cfg`` with ``key.sub=value`` overrides applied.

    Values are parsed by the field's type (``int``, ``float``, ``bool``, ``str``, ``Literal``,
    optional ``None``); a key below a dict field sets that entry (``args.num_codes=512``), its
    value read as JSON or else as a string. An unknown key or an unparsable value raises
    ``ValueError``.
    """
    cfg = dataclasses.replace(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        cfg = _set(cfg, key.strip().split("."), raw.strip(), key)
    return cfg


def apply_mapping(cfg: C, mapping: dict[str, Any]) -> C:
    """Apply a nested mapping (e.g. a parsed TOML file) as overrides; same checks as above.

    A nested table goes into the config section of that name; any other value, dicts included,
    sets the field. A text field takes a string only (a list, a number or a date would become
    its Python text: ``out_dir = ["a"]`` wrote the run into a folder named ``["a"]``).

    Returns a copy of ``cfg``. Raises ValueError for an unknown key, a value that does not parse
    as its field's type, or a non-string value for a text field.
    """
    overrides: list[str] = []

    def walk(section: Any, table: dict[str, Any], prefix: str) -> None:
        for key, value in table.items():
            target = getattr(section, key, None) if dataclasses.is_dataclass(section) else None
            if isinstance(value, dict) and dataclasses.is_dataclass(target):
                walk(target, value, f"{prefix}{key}.")
            else:
                if value is not None and not isinstance(value, str) and _is_text(section, key):
                    raise ValueError(f"{prefix}{key} expects a string, got {value!r}")
                raw = json.dumps(value) if isinstance(value, dict | list) else str(value)
                overrides.append(f"{prefix}{key}={raw}")

    walk(cfg, mapping, "")
    return apply_overrides(cfg, overrides)


def _is_text(section: Any, name: str) -> bool:
    """Whether field ``name`` of the dataclass ``section`` holds a string (or None)."""
    if not dataclasses.is_dataclass(section) or name not in {
        f.name for f in dataclasses.fields(section)
    }:
        return False
    hint = typing.get_type_hints(type(section))[name]
    return hint is str or set(get_args(hint)) == {str, type(None)}


def _set(obj: Any, path: list[str], raw: str, full_key: str) -> Any:
    if not dataclasses.is_dataclass(obj):
        raise ValueError(f"override {full_key!r}: {path[0]!r} is not a config section")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields:
        # a free-form table of a section (a bottleneck's constructor arguments) takes any key
        parts = full_key.strip().split(".")
        section = ".".join(parts[: len(parts) - len(path)])
        tables = [f for f in sorted(fields) if isinstance(getattr(obj, f), dict)] if section else []
        hint = "".join(
            f" (an entry of {section}.{t}? set {'.'.join([section, t, *path])!r})" for t in tables
        )
        raise ValueError(
            f"unknown config key {full_key!r}; {type(obj).__name__} has: {sorted(fields)}{hint}"
        )
    if len(path) > 1:
        current = getattr(obj, name)
        if isinstance(current, dict):  # a free-form table: set one (nested) entry
            value = _set_entry(current, path[1:], raw, full_key)
        elif dataclasses.is_dataclass(current):
            value = _set(current, path[1:], raw, full_key)
        else:
            parts = full_key.strip().split(".")
            here = ".".join(parts[: len(parts) - len(path) + 1])
            raise ValueError(
                f"override {full_key!r}: {here!r} is a value ({type(current).__name__}), "
                f"not a section; set it as {here}=..."
            )
    else:
        value = _parse(typing.get_type_hints(type(obj))[name], raw, full_key)
    return dataclasses.replace(obj, **{name: value})


def _set_entry(table: dict[str, Any], path: list[str], raw: str, full_key: str) -> dict:
    """A copy of ``table`` with the entry at ``path`` set to ``raw`` read as JSON (a number,
    ``true``, a list ...) or, if it is no JSON, as a string."""
    table = dict(table)
    if len(path) > 1:
        inner = table.get(path[0], {})
        if not isinstance(inner, dict):
            raise ValueError(f"override {full_key!r}: {path[0]!r} is not a table")
        table[path[0]] = _set_entry(inner, path[1:], raw, full_key)
    else:
        try:
            table[path[0]] = json.loads(raw)
        except json.JSONDecodeError:
            table[path[0]] = raw
        except RecursionError:
            raise ValueError(f"override {full_key!r}: its value is nested too deeply") from None
    return table


def _parse(hint: Any, raw: str, key: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if type(None) in options and raw.lower() in ("none", "null"):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _parse(option, raw, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        for choice in get_args(hint):
            if str(choice) == raw:
                return choice
        raise ValueError(f"{key} must be one of {list(get_args(hint))}, got {raw!r}")
    if hint is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{key} expects a boolean, got {raw!r}")
    if hint in (int, float, str):
        try:
            return hint(raw)
        except ValueError:
            raise ValueError(f"{key} expects {hint.__name__}, got {raw!r}") from None
    if origin in (list, tuple, dict) or hint in (list, tuple, dict):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"{key} expects JSON, got {raw!r}") from None
        except RecursionError:
            raise ValueError(f"{key} expects JSON, got a value nested too deeply") from None
    raise ValueError(f"{key}: cannot parse values of type {hint}")
