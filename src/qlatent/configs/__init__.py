"""Config files, one small TOML file per paper-table cell, stating only its differences."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any


def load(experiment: str, name: str) -> dict[str, Any]:
    """The parsed ``configs/<experiment>/<name>.toml``; a missing file lists what exists."""
    folder = resources.files(__package__) / experiment
    path = folder / f"{name}.toml"
    if not path.is_file():
        known = (
            sorted(
                p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
            )
            if folder.is_dir()
            else []
        )
        raise ValueError(f"no config {experiment}/{name}; known: {known}")
    return tomllib.loads(path.read_text())
