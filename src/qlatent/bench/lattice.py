"""``qlatent bench lattice``: throughput of the lattice bottleneck's paths, against a floor."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from ..bottlenecks import build
from .timing import time_cases

#: the case every other is read against: the training path's work fused into one kernel by
#: ``torch.compile`` (counter-based dither, y_hat, Laplace cell rate), without autograd or module
FLOOR = "floor: fused training kernel alone, no autograd"
#: the least a separate backward pass can cost: read the upstream gradient and one saved
#: ``rows × dim`` tensor, write the input's gradient, in one fused loop
BACKWARD_FLOOR = "floor of a backward pass: read two rows x dim tensors, write one (fused)"


def _backward_traffic(grad: torch.Tensor, saved: torch.Tensor, grad_rate: torch.Tensor):
    return grad + grad_rate.unsqueeze(-1) * saved


def bench_lattice(
    *, rows: int = 16384, dim: int = 64, threads: int = 2, repeats: int = 50, compile: bool = True
) -> dict[str, Any]:
    """Throughput of the ``lattice`` bottleneck on ``rows × dim`` float32 inputs.

    Cases: the training path (dither, ``y_hat`` and rate together) forward without and with
    autograd recording and forward + backward, each eager and fused by ``torch.compile``; the
    hard path (quantize, reconstruct, exact rate), eager and fused; drawing ``rows × dim``
    numbers with ``torch.rand`` alone; and, with ``compile``, the :data:`FLOOR` case, the fused
    kernel of the training path called directly, and :data:`BACKWARD_FLOOR`, the memory traffic
    any backward run as its own pass must add (the upstream gradient and one saved tensor read,
    the input's gradient written), so that forward + backward reads against the sum of the two.
    Every case gets ``ratio_to_floor`` (its median over the floor's) when the floor was
    measured; the machine's load averages before and after are recorded, since a busy machine
    makes every ratio meaningless.
    """
    from ..bottlenecks.lattice import _compiled_kernel
    from ..priors import cell_constants
    from ..rng import draw_key

    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    torch.manual_seed(0)
    y = torch.randn(rows, dim)
    y_grad = y.clone().requires_grad_(True)
    eager = build("lattice", dim=dim)
    with torch.no_grad():  # spacings and scales away from their initial values
        eager.log_spacing.uniform_(-1.0, 0.5)
        eager.log_scale.uniform_(-0.5, 0.5)
    hard = build("lattice", dim=dim).eval()
    hard.load_state_dict(eager.state_dict())
    gen = torch.Generator()

    def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run():
            with torch.no_grad():
                return fn()

        return run

    def forward_backward(module) -> Callable[[], Any]:
        def run():
            module.zero_grad(set_to_none=True)
            y_grad.grad = None
            out = module(y_grad)
            (out.rate.sum() + out.y_hat.sum()).backward()

        return run

    cases: dict[str, Callable[[], Any]] = {
        "torch.rand (rows x dim numbers alone)": lambda: torch.rand(rows, dim),
        "train path, eager, no grad": no_grad(lambda: eager(y)),
        "train path, eager, autograd": lambda: eager(y_grad),
        "train path, eager, forward + backward": forward_backward(eager),
    }
    compile_s = None
    if compile:
        fused = build("lattice", dim=dim, compile=True)
        fused.load_state_dict(eager.state_dict())
        kernel = _compiled_kernel()
        with torch.no_grad():
            spacing, scale = eager.spacing, eager.scale
            constants = cell_constants(spacing, scale)
        key = draw_key(torch.Generator().manual_seed(0))
        started = time.perf_counter()
        no_grad(lambda: fused(y))()
        fused(y_grad)  # the autograd graph is compiled separately
        forward_backward(fused)()
        no_grad(lambda: kernel(y, key, spacing, *constants))()
        compile_s = time.perf_counter() - started
        cases[FLOOR] = no_grad(lambda: kernel(y, key, spacing, *constants))
        traffic = torch.compile(_backward_traffic)
        grad, saved, grad_rate = torch.randn_like(y), torch.randn_like(y), torch.randn(rows)
        started = time.perf_counter()
        traffic(grad, saved, grad_rate)
        compile_s += time.perf_counter() - started
        cases[BACKWARD_FLOOR] = lambda: traffic(grad, saved, grad_rate)
        cases["train path, torch.compile, no grad"] = no_grad(lambda: fused(y))
        cases["train path, torch.compile, autograd"] = lambda: fused(y_grad)
        cases["train path, torch.compile, forward + backward"] = forward_backward(fused)
        hard_fused = build("lattice", dim=dim, compile=True).eval()
        hard_fused.load_state_dict(eager.state_dict())
        started = time.perf_counter()
        no_grad(lambda: hard_fused(y, generator=gen.manual_seed(0)))()
        compile_s += time.perf_counter() - started
        cases["hard path (eval), torch.compile"] = no_grad(
            lambda: hard_fused(y, generator=gen.manual_seed(0))
        )
    cases["hard path (eval), eager"] = no_grad(lambda: hard(y, generator=gen.manual_seed(0)))

    results = time_cases(cases, repeats=repeats)
    for timing in results.values():
        timing["rows_per_s"] = rows / timing["median_s"]
        timing["rows_per_s_best"] = rows / timing["min_s"]
        if FLOOR in results:
            timing["ratio_to_floor"] = timing["median_s"] / results[FLOOR]["median_s"]
    return {
        "input": {"rows": rows, "dim": dim, "dtype": "float32", "threads": threads},
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "compile_s": compile_s,
        "cases": results,
    }


#: (rows, dim) of the scaling sweep: rows from 16k to 1M at dim 64, then dim up to 1024
SCALING_SHAPES = ((16384, 64), (65536, 64), (262144, 64), (1048576, 64), (16384, 256),
                  (16384, 1024))  # fmt: skip


def bench_lattice_scaling(
    *, shapes=SCALING_SHAPES, threads: int = 2, repeats: int = 5
) -> dict[str, Any]:
    """How the eager paths scale with the input: per ``(rows, dim)``, the training path's
    forward and backward (autograd) and the hard path, in rows/s and values/s (median of
    ``repeats``). Linear cost means values/s stays flat."""
    torch.set_num_threads(threads)
    out = []
    for rows, dim in shapes:
        torch.manual_seed(0)
        neck = build("lattice", dim=dim)
        y = torch.randn(rows, dim)
        y_grad = y.clone().requires_grad_(True)
        hard = build("lattice", dim=dim).eval()
        hard.load_state_dict(neck.state_dict())

        def train_step(neck=neck, y_grad=y_grad):
            result = neck(y_grad)
            (result.rate.sum() + result.y_hat.sum()).backward()

        def hard_path(hard=hard, y=y):
            with torch.no_grad():
                hard(y, generator=torch.Generator().manual_seed(0))

        timings = time_cases(
            {"train path, forward + backward": train_step, "hard path": hard_path},
            repeats=repeats,
            block=1,
            warmup=1,
        )
        for case, timing in timings.items():
            out.append(
                {
                    "case": case,
                    "rows": rows,
                    "dim": dim,
                    "median_s": timing["median_s"],
                    "rows_per_s": rows / timing["median_s"],
                    "values_per_s": rows * dim / timing["median_s"],
                }
            )
    return {"threads": threads, "repeats": repeats, "dtype": "float32", "scaling": out}


# --------------------------------------------------------------------- bench quantizers
#: Codebook sizes at which ``vq`` is measured next to ``VectorQuantize`` (same K, same run).
