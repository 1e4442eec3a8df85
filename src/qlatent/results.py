"""Provenance for every number we publish: commit, machine, wall time, config (DESIGN.md §5)."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ._utils import write_atomic

RESULTS_DIR = Path("results")


def git_commit() -> dict[str, Any]:
    """The commit of the checkout this package runs from and whether its work tree differs
    from it, outside ``results/`` (where a run writes its own figures before it writes its
    JSON); or, where the environment variable ``QLATENT_COMMIT`` names a 40-digit commit, that
    commit (``dirty`` unknown). Asked of the package's own folder, not the working folder: run
    from inside another repository, a result recorded that repository's commit. A package
    installed outside a checkout of qlatent (where git does not track this file, as in a
    virtual environment inside another repository) has no commit: None."""
    package = Path(__file__).resolve().parent

    def run(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(package), *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()

    # a copy of the tree sent elsewhere (e.g. to a GPU machine) may carry a stale git folder or
    # none: the caller names the commit it was copied from
    commit = os.environ.get("QLATENT_COMMIT", "").strip()
    if re.fullmatch(r"[0-9a-f]{40}", commit):
        return {"commit": commit, "dirty": None, "commit_from": "QLATENT_COMMIT"}
    try:
        run("ls-files", "--error-unmatch", "--", Path(__file__).name)  # tracked: our checkout
        return {
            "commit": run("rev-parse", "HEAD"),
            "dirty": bool(
                run(
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                    "--",
                    ":/",
                    ":(top,exclude)results",
                )
            ),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), None where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """The machine a result was measured on, as JSON-ready values: platform, processor and CPU
    model (None where /proc/cpuinfo cannot be read), core count, torch's thread count, the CUDA
    device's name (None without CUDA), and the Python and torch versions."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


#: when this module was first imported: about when a command that writes results started
_STARTED = time.perf_counter()


def provenance(command: str) -> dict[str, Any]:
    """What a results file records of how it was made: the command, the commit, the machine,
    the date, and ``process_wall_s``, the seconds the writing process had run (from the first
    import of this module), so that every file carries a wall time even where its own
    measurement records none."""
    return {
        "command": command,
        **git_commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "process_wall_s": round(time.perf_counter() - _STARTED, 3),
    }


#: how a table shows a number that is not there: None (what :func:`write_json` writes for NaN
#: and the infinities), NaN or an infinity
MISSING = "–"


def finite(value: Any) -> bool:
    """Whether ``value`` is something a table can show: not None, NaN nor an infinity.

    Only floats are tested for NaN and infinity; any other value but None (an int, a string)
    counts as showable. Never raises."""
    return math.isfinite(value) if isinstance(value, float) else value is not None


def number(value: Any) -> float:
    """``value``, a number read back from a results file, as a float: NaN for None (what
    :func:`write_json` writes for NaN and the infinities), so that arithmetic on it goes on as
    on the payload in memory; TypeError for anything else that is no number."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is no number")
    return float(value)


def cell(value: Any, spec: str = "") -> str:
    """``value`` formatted by ``spec`` (as :func:`format` takes it), or :data:`MISSING` where it
    is no finite number (:func:`finite`), so that a table reads the same from a payload in
    memory and from its JSON file. A value that rounds to zero reads without a sign (a
    difference of −2·10⁻⁷ read "-0.000%" in a table of gaps)."""
    if not finite(value):
        return MISSING
    text = format(value, spec)
    if text.startswith("-") and not any(digit in text for digit in "123456789"):
        return format(0.0, spec)  # −0 to the shown digits
    return text


def _strict(value: Any) -> Any:
    """``value`` with None for every float that is NaN or infinite: strict JSON has neither, and
    Python's ``NaN`` and ``Infinity`` are refused by other readers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _strict(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def to_json(value: Any, **options: Any) -> str:
    """``value`` as strict JSON text (``json.dumps`` with ``options``), NaN and the infinities
    as null; ValueError for a NaN or an infinity as a key, which null cannot stand for."""
    return json.dumps(_strict(value), allow_nan=False, **options)


def write_json(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` as indented strict JSON atomically
    (:func:`~qlatent._utils.write_atomic`), NaN and the infinities as null (the tables show them
    as :data:`MISSING`); a payload nested too deeply for the encoder, or with a key that is a
    float NaN or infinity, is a ValueError, and nothing is written."""
    try:
        text = to_json(payload, indent=2)
    except RecursionError:
        raise ValueError(f"payload for {path} nests too deeply to be written as JSON") from None
    except ValueError as err:  # a NaN or an infinity as a key, which null cannot stand for
        raise ValueError(f"payload for {path} cannot be written as JSON ({err})") from None
    return write_atomic(path, (text + "\n").encode())


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` (a markdown table) to ``path`` as UTF-8, atomically like
    :func:`write_json` beside it: ``Path.write_text`` wrote in the locale's encoding (the
    tables' "−" and "±" failed in an ASCII or Latin-1 locale, after the whole run), left a
    half-written table where it was stopped, and wrote through a symbolic link into the file
    it names."""
    return write_atomic(path, text.encode("utf-8"))


#: the largest file :func:`read_json` reads: results and records are kilobytes, and a file of
#: gigabytes under such a name would be read into memory whole
MAX_JSON_BYTES = 1 << 26


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``, a file this project wrote and reads back (a results file, a run's
    record or summary); None where it is missing, no regular file (a pipe would block),
    larger than :data:`MAX_JSON_BYTES`, unreadable, no JSON or nested too deeply for the
    parser: such a file is written anew."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
