"""Wall-time measurement shared by the benchmarks: interleaved blocks of calls."""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .._utils import check_count

#: the most numbers of a benchmark's input, ``rows × dim`` (256 MiB of float32; the scaling
#: sweep's largest shape): 2^24 rows of 2^16 each, each within its own bound, asked for 4 TiB,
#: and 2^24 × 8 to the coding benchmark held 5 GB for minutes before its first timing
MAX_VALUES = 1 << 26


@contextlib.contextmanager
def tree_at(repository: Path, commit: str) -> Iterator[tuple[Path, str]]:
    """``(folder, full commit)``: a temporary git worktree of ``repository`` at ``commit``, for
    timing an earlier tree's library beside the working one (its ``src`` first on a fresh
    interpreter's path); removed afterwards, also on error. CalledProcessError where git
    cannot make it (an unknown commit)."""
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "old"
        git = ["git", "-C", str(repository)]
        add = [*git, "worktree", "add", "--detach", "-q", str(worktree), commit]
        subprocess.run(add, check=True)
        try:
            head = ["git", "-C", str(worktree), "rev-parse", "HEAD"]
            full = subprocess.run(head, check=True, capture_output=True, text=True).stdout
            yield worktree, full.strip()
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(worktree)], check=False)


def keeps_torch_threads(function: Callable) -> Callable:
    """``function``, a benchmark that sets torch's intra-op thread count to the count it times
    at, with the caller's count put back when it returns or fails: a benchmark called from a
    notebook or a test left every later computation of the process on its count. (``qlatent
    bench`` sets the count itself before the call, so that the provenance written after it
    records the count the benchmark ran at.)"""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        previous = torch.get_num_threads()
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


def check_sizes(**sizes: int) -> None:
    """ValueError unless every value is a positive integer (rows, widths, threads, repeats:
    0 rows would time nothing and report 0 rows/s), and ``rows × dim`` where both are given is
    at most :data:`MAX_VALUES`."""
    for name, value in sizes.items():
        check_count(value, name)
    if "rows" in sizes and "dim" in sizes and sizes["rows"] * sizes["dim"] > MAX_VALUES:
        raise ValueError(
            f"rows × dim must be at most 2^26 ({MAX_VALUES:,} values), got "
            f"{sizes['rows']:,} × {sizes['dim']:,}"
        )


def time_cases(
    cases: dict[str, Callable[[], Any]],
    *,
    repeats: int | Mapping[str, int],
    block: int = 10,
    warmup: int = 3,
    sync: Callable[[], Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Wall time per call of each case: median, best and worst over ``repeats`` calls.

    Calls run in blocks of up to ``block`` consecutive calls per case (as in a training loop),
    and the blocks of all cases are interleaved, so a slow spell of a shared machine hits every
    case alike instead of whichever happened to be running. ``repeats`` is one count for all
    cases or one per case; a case with fewer calls spreads them evenly over the same rounds.
    Each block is preceded by ``min(warmup, calls in the block)`` untimed calls. ``sync`` is
    called after every call, inside its timing: on an accelerator, which runs asynchronously,
    pass :func:`device_sync` so that a call's time includes its kernels, not only their launch.
    """
    sync = sync or _nothing
    counts = {name: repeats if isinstance(repeats, int) else repeats[name] for name in cases}
    if any(n < 1 for n in counts.values()):
        raise ValueError(f"repeats must be at least 1 per case, got {counts}")
    rounds = max(1, -(-max(counts.values(), default=1) // block))
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, fn in cases.items():
            calls = (r + 1) * counts[name] // rounds - r * counts[name] // rounds
            for _ in range(min(warmup, calls)):  # settle caches and allocator after the last case
                fn()
                sync()
            for _ in range(calls):
                start = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            "repeats": len(t),
        }
        for name, t in times.items()
    }


def _nothing() -> None:
    pass


#: the kernel's count of runnable threads right now (the fourth field of /proc/loadavg)
_LOADAVG = "/proc/loadavg"


def competing_runnable(samples: int = 20, interval_s: float = 0.025) -> float | None:
    """Threads other than this one ready to run on this machine, now: the median over
    ``samples`` reads, ``interval_s`` apart, of the runnable count in ``/proc/loadavg`` minus
    the reader itself; None where that file is not there (not Linux).

    The load average says what ran over the last minute, so right after another benchmark it
    still reads busy on an idle machine; this says what competes at the start of the timing."""
    counts = []
    for i in range(samples):
        try:
            running = Path(_LOADAVG).read_text().split()[3].split("/")[0]
            counts.append(max(0, int(running) - 1))
        except (OSError, IndexError, ValueError):
            return None
        if i + 1 < samples:
            time.sleep(interval_s)
    return float(statistics.median(counts))


def device_sync(device: torch.device) -> Callable[[], Any] | None:
    """What :func:`time_cases` calls after each call on ``device``: ``torch.cuda.synchronize``
    on a CUDA device (its kernels run asynchronously), nothing on the CPU."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None


def resolve_bench_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ValueError where it is not a CPU or an available CUDA
    device."""
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; benchmarks run on cpu or cuda[:N]") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"benchmarks run on 'cpu' or 'cuda[:N]', got {str(resolved)!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(resolved)!r} asked for, but CUDA is not available here")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"device {str(resolved)!r} asked for, but this machine has "
            f"{torch.cuda.device_count()} CUDA device(s): cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}"
        )
    return resolved


#: environment variables that change how large CPU buffers are allocated: glibc's thresholds for
#: returning freed blocks to the system, and PyTorch's switch for transparent huge pages on buffers
#: of 2 MB and more (read once, at the first allocation, so set before the process starts)
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "THP_MEM_ALLOC_ENABLE")
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def allocator_settings() -> dict[str, Any]:
    """The allocator's settings a timing depends on: the :data:`ALLOCATOR_VARIABLES` set in this
    process's environment, and the kernel's transparent-huge-page mode (the bracketed word of
    ``/sys/kernel/mm/transparent_hugepage/enabled``; None where it cannot be read)."""
    try:
        text = Path(_THP_MODE).read_text()
        mode = text[text.index("[") + 1 : text.index("]")]
    except (OSError, ValueError):
        mode = None
    variables = {name: os.environ[name] for name in ALLOCATOR_VARIABLES if name in os.environ}
    return {"environment": variables, "transparent_hugepage": mode}
