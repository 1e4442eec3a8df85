"""Independent training runs in parallel processes, one thread each.

Small models train faster as two single-thread processes than as one two-thread process (their
matrix products are too small to split well), so the sweeps hand their independent runs to
:func:`run_jobs`. Each process is started fresh (``spawn``), so the runs share no state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from .._utils import check_count


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_jobs(
    function: Callable[..., Any], arguments: Sequence[dict[str, Any]], *, jobs: int = 1
) -> list[Any]:
    """``[function(**a) for a in arguments]``, in ``jobs`` single-thread processes when
    ``jobs`` > 1 (``function`` and the arguments must pickle); results in the given order.
    The first exception (in the given order) is raised once the runs in flight have ended;
    runs not yet started are not started."""
    check_count(jobs, "jobs")
    if jobs == 1 or len(arguments) <= 1:
        return [function(**a) for a in arguments]
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(arguments)),
        mp_context=get_context("spawn"),
        initializer=_one_thread,
    ) as pool:
        futures = [pool.submit(function, **a) for a in arguments]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for future in futures:  # runs not yet started are dropped
                future.cancel()
            raise
