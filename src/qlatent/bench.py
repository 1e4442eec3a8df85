"""Throughput benchmarks (``qlatent bench``). Numbers go to ``results/``, never into tests."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .bottlenecks import build


def time_call(fn: Callable[[], Any], *, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median and spread of wall time per call, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
    }


def bench_lattice(
    *, rows: int = 16384, dim: int = 64, threads: int = 2, repeats: int = 50, compile: bool = True
) -> dict[str, Any]:
    """Forward throughput of the ``lattice`` bottleneck on ``rows × dim`` float32 inputs.

    Cases: the training path (dither, ``y_hat`` and rate together; with and without autograd
    recording), the same path fused by ``torch.compile``, the hard path (quantize, reconstruct,
    exact rate), and drawing the dither alone with ``torch.rand`` for scale.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    y = torch.randn(rows, dim)
    y_grad = y.clone().requires_grad_(True)
    eager = build("lattice", dim=dim)
    with torch.no_grad():  # spacings and scales away from their initial values
        eager.log_spacing.uniform_(-1.0, 0.5)
        eager.log_scale.uniform_(-0.5, 0.5)

    def rows_per_s(t: dict[str, float]) -> dict[str, float]:
        return {**t, "rows_per_s": rows / t["median_s"]}

    cases: dict[str, dict[str, float]] = {}
    cases["torch.rand (dither draw alone)"] = rows_per_s(
        time_call(lambda: torch.rand(rows, dim), repeats=repeats)
    )
    eager.train()
    with torch.no_grad():
        cases["train path, eager, no grad"] = rows_per_s(
            time_call(lambda: eager(y), repeats=repeats)
        )
    cases["train path, eager, autograd"] = rows_per_s(
        time_call(lambda: eager(y_grad), repeats=repeats)
    )
    if compile:
        fused = build("lattice", dim=dim, compile=True)
        fused.load_state_dict(eager.state_dict())
        fused.train()
        started = time.perf_counter()
        with torch.no_grad():
            fused(y)
        compile_s = time.perf_counter() - started
        with torch.no_grad():
            cases["train path, torch.compile, no grad"] = rows_per_s(
                time_call(lambda: fused(y), repeats=repeats)
            )
        cases["train path, torch.compile, no grad"]["compile_s"] = compile_s
        fused(y_grad)  # compile the autograd graph too
        cases["train path, torch.compile, autograd"] = rows_per_s(
            time_call(lambda: fused(y_grad), repeats=repeats)
        )
    eager.eval()
    gen = torch.Generator()
    with torch.no_grad():
        cases["hard path (eval), eager"] = rows_per_s(
            time_call(lambda: eager(y, generator=gen.manual_seed(0)), repeats=repeats)
        )
    return {
        "input": {"rows": rows, "dim": dim, "dtype": "float32", "threads": threads},
        "cases": cases,
    }
