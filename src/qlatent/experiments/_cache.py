"""Read-backs of the paper tables' caches and records, checked before they are used.

A run folder holds caches this project wrote (``eval.pt``, IWAE chunks, coded sizes) and
``results/`` the records of finished runs; a file edited since, or written by something else,
may hold anything, and using it would fail far from the file, with a traceback. Each read-back
is checked for the kinds its use needs (:func:`problem`), and what is wrong is said in one line
that names the file:

- a ``.pt`` cache (read as data, digest checked: :func:`~qlatent.train.checkpoint.load`) that
  holds something else is refused (:func:`read_cache`, :func:`refused`), as a damaged one is:
  computing it again without a word would hide that the run folder was changed; deleting the
  file computes it again;
- a JSON record or summary that cannot be used is written anew, as one that cannot be read
  (:func:`~qlatent.results.read_json`), and the caller says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..train import CheckpointError, load

#: what a value of each kind :func:`problem` knows is
_KINDS: dict[str, Callable[[Any], bool]] = {
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "flag": lambda v: isinstance(v, bool),
    "table": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "tensor": lambda v: isinstance(v, torch.Tensor),
    "None": lambda v: v is None,
    "anything": lambda v: True,
}
_NAMES = {
    bool: "a flag",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    tuple: "a tuple",
    dict: "a table",
    type(None): "None",
}


def described(value: Any) -> str:
    """``value``'s kind in a few words, for an error: ``a string ('abc')``, ``a table``,
    ``a tensor of shape (3, 1) and dtype float64``."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"a tensor of shape {tuple(value.shape)} and dtype {dtype}"
    name = _NAMES.get(type(value), f"a {type(value).__name__}")
    return f"{name} ({value!r:.40})" if isinstance(value, str | int | float) else name


def problem(value: Any, fields: dict[str, str], name: str | None = None) -> str | None:
    """What keeps ``value`` from being a table whose ``fields`` have the kinds given, in words
    that name the field (under ``name``: ``metrics.kmeans_acc``); None when nothing does.

    A kind is ``number``, ``integer``, ``string``, ``flag`` (true or false), ``table``,
    ``list``, ``tensor``, ``None`` or ``anything``, or several joined by ``" or "``; ``missing``
    among them lets the field be absent."""
    if not isinstance(value, dict):
        return f"{name or 'the file'} holds {described(value)}, not a table"
    for key, kind in fields.items():
        kinds = kind.split(" or ")
        if key not in value:
            if "missing" in kinds:
                continue
            return f"{name or 'the file'} holds no {key}"
        if not any(_KINDS[k](value[key]) for k in kinds if k != "missing"):
            expected = " or ".join(_article(k) for k in kinds if k != "missing")
            where = f"{name}.{key}" if name else key
            return f"{where} is {described(value[key])}, not {expected}"
    return None


def first_problem(checks: Iterable[str | None]) -> str | None:
    """The first of ``checks`` that found something (each a :func:`problem` or None), or None;
    a generator of checks runs each only once those before it found nothing, so a field is
    read only after the table that holds it was checked."""
    return next((wrong for wrong in checks if wrong), None)


def _article(kind: str) -> str:
    return kind if kind in ("None", "anything") else f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def unplain(value: Any, name: str) -> str | None:
    """What keeps ``value`` from being plain data (what a results file holds: tables, lists,
    strings, numbers, flags, None), or None when nothing does."""
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError) as err:
        return f"{name} holds what a results file cannot ({err})"
    return None


def refused(path: Path, wrong: str) -> CheckpointError:
    """The error for the cache ``path`` that holds something else than its writer writes."""
    return CheckpointError(f"{path}: {wrong} (a cache: delete it to compute it again)")


def read_cache(
    path: Path, tags: dict[str, Any], name: str, fields: dict[str, str]
) -> dict[str, Any] | None:
    """The table ``name`` that the cache ``path`` holds when it was made for ``tags`` (the
    file's values under those keys equal them) and its ``fields`` have their kinds
    (:func:`problem`), plain data throughout. None where there is no cache or one made for
    other tags: stale, the caller computes the table again and writes the cache anew. A file
    that is no such cache is refused (:func:`refused`)."""
    if not path.exists():
        return None
    cached = load(path)  # plain data, digest checked: CheckpointError naming the file if not
    wrong = problem(cached, dict.fromkeys(tags, "anything") | {name: "table"})
    for key in tags:
        wrong = wrong or unplain(cached[key], key)  # compared below: no tensor inside
    if wrong:
        raise refused(path, wrong)
    if any(cached[key] != value for key, value in tags.items()):
        return None
    table = cached[name]
    wrong = problem(table, fields, name) or unplain(table, name)
    if wrong:
        raise refused(path, wrong)
    return table
