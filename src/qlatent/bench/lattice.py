"""``qlatent bench lattice``: throughput of the lattice bottleneck's paths, against a floor."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

from ..bottlenecks import build
from .timing import (
    allocator_settings,
    check_sizes,
    competing_runnable,
    device_sync,
    keeps_torch_threads,
    resolve_bench_device,
    time_cases,
)

#: the case every other is read against: the training path's work fused into one kernel by
#: ``torch.compile`` (counter-based dither, y_hat, Laplace cell rate), without autograd or module
FLOOR = "floor: fused training kernel alone, no autograd"
#: the least a separate backward pass can cost: read the upstream gradient and one saved
#: ``rows × dim`` tensor, write the input's gradient, in one fused loop
BACKWARD_FLOOR = "floor of a backward pass: read two rows x dim tensors, write one (fused)"


def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` called under ``torch.no_grad()``."""

    def run():
        with torch.no_grad():
            return fn()

    return run


def _backward_traffic(grad: torch.Tensor, saved: torch.Tensor, grad_rate: torch.Tensor):
    return grad + grad_rate.unsqueeze(-1) * saved


#: the peer measured beside the lattice paths when it is installed (``make bench`` puts it, without
#: its dependencies, into the bench-only environment ``.venv-bench``)
COMPRESSAI = "compressai"
#: the CompressAI cases of :func:`_compressai_cases`
CAI_TRAIN_EAGER = "CompressAI EntropyBottleneck, training, forward + backward, eager"
CAI_TRAIN_COMPILED = "CompressAI EntropyBottleneck, training, forward + backward, torch.compile"
CAI_EB_EVAL = "CompressAI EntropyBottleneck, eval (round to medians, likelihood)"
CAI_GC_EVAL = "CompressAI GaussianConditional, eval (round, likelihood)"
#: (our case, CompressAI's case) pairs reported as ``speedup_vs_compressai``: its time over ours
COMPRESSAI_PAIRS = {
    "train_eager": ("train path, eager, forward + backward", CAI_TRAIN_EAGER),
    "train_compiled": ("train path, torch.compile, forward + backward", CAI_TRAIN_COMPILED),
    "hard_path_eager_vs_gaussian_conditional": ("hard path (eval), eager", CAI_GC_EVAL),
    "hard_path_compiled_vs_gaussian_conditional": ("hard path (eval), torch.compile", CAI_GC_EVAL),
}


def compressai_entropy_models() -> tuple[type, type, str] | str:
    """``(EntropyBottleneck, GaussianConditional, version)`` from an installed CompressAI, or a
    one-line reason why they cannot be loaded.

    CompressAI's ``__init__`` imports its datasets and model zoo and with them torchvision and
    torch_geometric, whose PyPI builds expect a CUDA torch: beside the CPU torch pinned here,
    torchvision's operators fail to register and the import raises. The entropy models need
    none of that (torch, ``compressai.ops`` and the ``_CXX`` extension), so the package is
    entered without running its ``__init__``: a module object with the package's path and the
    two functions ``compressai.entropy_models`` reads from it (which entropy coders exist and the
    default: "ans", its own, built into the wheel). For the benchmark only: the ``compressai``
    entry this leaves in ``sys.modules`` is not the real package.
    """
    import importlib
    import importlib.metadata
    import importlib.util
    import sys
    import types

    if COMPRESSAI in sys.modules:
        spec = None
    else:
        try:
            spec = importlib.util.find_spec(COMPRESSAI)
        except (ImportError, ValueError) as error:
            return f"compressai cannot be located: {error}"
        if spec is None or not spec.submodule_search_locations:
            return (
                "compressai is not installed (pip install --no-deps compressai==1.2.8 beside this "
                "torch; in a checkout, make bench installs it into .venv-bench)"
            )
        package = types.ModuleType(COMPRESSAI)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.get_entropy_coder = lambda: "ans"  # type: ignore[attr-defined]
        package.available_entropy_coders = lambda: ["ans"]  # type: ignore[attr-defined]
        sys.modules[COMPRESSAI] = package
    try:
        models = importlib.import_module("compressai.entropy_models")
        version = importlib.metadata.version(COMPRESSAI)
    except Exception as error:  # a broken or mismatched install: report it, bench the rest
        if spec is not None:
            for name in [n for n in sys.modules if n == COMPRESSAI or n.startswith("compressai.")]:
                del sys.modules[name]
        detail = " ".join(str(error).split())  # one line
        return f"compressai.entropy_models did not import: {type(error).__name__}: {detail}"[:300]
    return models.EntropyBottleneck, models.GaussianConditional, version


def _compressai_cases(
    y: torch.Tensor, scale: torch.Tensor, compile: bool
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """CompressAI's entropy models on the same ``rows × dim`` numbers, in their own layout
    ``(1, dim, rows)`` (channels first, so their per-channel reshape is free): the
    EntropyBottleneck's training forward (uniform noise, its learned CDF's likelihood) with
    backward, eager and, with ``compile``, compiled; and, against the hard path, the eval
    forwards (rounding and the likelihood) of EntropyBottleneck and of GaussianConditional with
    the lattice's per-coordinate Laplace scale as its scale. ``(cases, peer status)``."""
    loaded = compressai_entropy_models()
    if isinstance(loaded, str):
        return {}, {"status": "skipped", "reason": loaded}
    entropy_bottleneck, gaussian_conditional, version = loaded
    rows, dim = y.shape
    x = y.T.contiguous().unsqueeze(0).requires_grad_(True)
    x_eval = x.detach()
    train = entropy_bottleneck(dim).to(y.device)
    evaluate = entropy_bottleneck(dim).to(y.device).eval()
    evaluate.load_state_dict(train.state_dict())
    conditional = gaussian_conditional(None).to(y.device).eval()
    scales = scale.detach().reshape(1, dim, 1).expand(1, dim, rows).contiguous()

    def forward_backward(module) -> Callable[[], Any]:
        def run():
            module.zero_grad(set_to_none=True)
            x.grad = None
            x_hat, likelihoods = module(x)
            (x_hat.sum() - torch.log(likelihoods).sum()).backward()

        return run

    cases: dict[str, Callable[[], Any]] = {
        CAI_TRAIN_EAGER: forward_backward(train),
        CAI_EB_EVAL: no_grad(lambda: evaluate(x_eval)),
        CAI_GC_EVAL: no_grad(lambda: conditional(x_eval, scales)),
    }
    status: dict[str, Any] = {"status": "measured", "version": version, "layout": [1, dim, rows]}
    if compile:
        compiled = torch.compile(train)
        started = time.perf_counter()
        try:
            forward_backward(compiled)()
        except Exception as error:  # torch.compile of a peer's module: report, do not fail
            detail = " ".join(str(error).split())  # one line
            status["compile_error"] = f"{type(error).__name__}: {detail}"[:300]
        else:
            cases[CAI_TRAIN_COMPILED] = forward_backward(compiled)
        status["compile_s"] = time.perf_counter() - started
    return cases, status


@keeps_torch_threads
def bench_lattice(
    *,
    rows: int = 16384,
    dim: int = 64,
    threads: int = 2,
    repeats: int = 50,
    compile: bool = True,
    peers: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Throughput of the ``lattice`` bottleneck on ``rows × dim`` float32 inputs on ``device``
    (the same numbers on every device; on CUDA each timed call ends with a synchronize).

    Cases: the training path (dither, ``y_hat`` and rate together) forward without and with
    autograd recording and forward + backward, each eager and fused by ``torch.compile``; the
    hard path (quantize, reconstruct, exact rate), eager and fused; drawing ``rows × dim``
    numbers with ``torch.rand`` alone; and, with ``compile``, the :data:`FLOOR` case, the fused
    kernel of the training path called directly, and :data:`BACKWARD_FLOOR`, the memory traffic
    any backward run as its own pass must add (the upstream gradient and one saved tensor read,
    the input's gradient written), so that forward + backward reads against the sum of the two.
    Every case gets ``ratio_to_floor`` (its median over the floor's) when the floor was
    measured; the machine's load averages before and after are recorded, since a busy machine
    makes every ratio meaningless. With ``peers`` and CompressAI installed, its
    EntropyBottleneck and GaussianConditional are timed in the same run on the same numbers
    (:func:`_compressai_cases`) and ``speedup_vs_compressai`` gives their time over ours for
    :data:`COMPRESSAI_PAIRS`; without it, ``peers`` records why they were skipped.
    """
    device = resolve_bench_device(device)
    check_sizes(rows=rows, dim=dim, threads=threads, repeats=repeats)
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    competing = competing_runnable()
    torch.manual_seed(0)
    y = torch.randn(rows, dim).to(device)
    y_grad = y.clone().requires_grad_(True)
    eager = build("lattice", dim=dim)
    with torch.no_grad():  # spacings and scales away from their initial values
        eager.log_spacing.uniform_(-1.0, 0.5)
        eager.log_scale.uniform_(-0.5, 0.5)
    eager.to(device)
    hard = build("lattice", dim=dim).to(device).eval()
    hard.load_state_dict(eager.state_dict())
    gen = torch.Generator()
    cases: dict[str, Callable[[], Any]] = {
        "torch.rand (rows x dim numbers alone)": lambda: torch.rand(rows, dim, device=device),
        "train path, eager, no grad": no_grad(lambda: eager(y)),
        "train path, eager, autograd": lambda: eager(y_grad),
        "train path, eager, forward + backward": _forward_backward(eager, y_grad),
    }
    compile_s = None
    if compile:
        compile_s = _add_compiled_cases(cases, eager, y, y_grad, gen, device)
    cases["hard path (eval), eager"] = no_grad(lambda: hard(y, generator=gen.manual_seed(0)))
    peer_cases, peer = _compressai_cases(y, eager.scale, compile) if peers else ({}, None)
    cases.update(peer_cases)

    results = time_cases(cases, repeats=repeats, sync=device_sync(device))
    _add_rates(results, rows)
    speedups = _speedups_vs_compressai(results)
    return {
        "input": {
            "rows": rows,
            "dim": dim,
            "dtype": "float32",
            "threads": threads,
            "device": str(device),
        },
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "competing_runnable_before": competing,
        "allocator": allocator_settings(),
        "compile_s": compile_s,
        "cases": results,
        "peers": {COMPRESSAI: peer or {"status": "skipped", "reason": "peers=False"}},
        "speedup_vs_compressai": speedups,
    }


def _forward_backward(module, y_grad: torch.Tensor) -> Callable[[], Any]:
    """One training step of ``module`` on ``y_grad``: forward, then backward of rate + y_hat."""

    def run():
        module.zero_grad(set_to_none=True)
        y_grad.grad = None
        out = module(y_grad)
        (out.rate.sum() + out.y_hat.sum()).backward()

    return run


def _add_compiled_cases(
    cases: dict[str, Callable[[], Any]],
    eager,
    y: torch.Tensor,
    y_grad: torch.Tensor,
    gen: torch.Generator,
    device: torch.device,
) -> float:
    """Add to ``cases`` the floors (:data:`FLOOR`, :data:`BACKWARD_FLOOR`) and the training and
    hard paths fused by ``torch.compile``, with ``eager``'s weights; each is compiled here, in an
    untimed first call. The seconds the compilations took."""
    from ..bottlenecks.lattice import _compiled_kernel
    from ..priors import cell_constants
    from ..rng import draw_key

    rows, dim = y.shape
    fused = build("lattice", dim=dim, compile=True).to(device)
    fused.load_state_dict(eager.state_dict())
    kernel = _compiled_kernel()
    with torch.no_grad():
        spacing, scale = eager.spacing, eager.scale
        constants = cell_constants(spacing, scale)
    key = draw_key(torch.Generator().manual_seed(0), device)
    started = time.perf_counter()
    no_grad(lambda: fused(y))()
    fused(y_grad)  # the autograd graph is compiled separately
    _forward_backward(fused, y_grad)()
    no_grad(lambda: kernel(y, key, spacing, *constants))()
    compile_s = time.perf_counter() - started
    cases[FLOOR] = no_grad(lambda: kernel(y, key, spacing, *constants))
    traffic = torch.compile(_backward_traffic)
    grad, saved = torch.randn_like(y), torch.randn_like(y)
    grad_rate = torch.randn(rows).to(device)
    started = time.perf_counter()
    traffic(grad, saved, grad_rate)
    compile_s += time.perf_counter() - started
    cases[BACKWARD_FLOOR] = lambda: traffic(grad, saved, grad_rate)
    cases["train path, torch.compile, no grad"] = no_grad(lambda: fused(y))
    cases["train path, torch.compile, autograd"] = lambda: fused(y_grad)
    cases["train path, torch.compile, forward + backward"] = _forward_backward(fused, y_grad)
    hard_fused = build("lattice", dim=dim, compile=True).to(device).eval()
    hard_fused.load_state_dict(eager.state_dict())
    started = time.perf_counter()
    no_grad(lambda: hard_fused(y, generator=gen.manual_seed(0)))()
    compile_s += time.perf_counter() - started
    cases["hard path (eval), torch.compile"] = no_grad(
        lambda: hard_fused(y, generator=gen.manual_seed(0))
    )
    return compile_s


def _add_rates(results: dict[str, dict[str, Any]], rows: int) -> None:
    """Add to each case's timing its rows/s (median and best) and, when the :data:`FLOOR` was
    measured, its ``ratio_to_floor``."""
    for timing in results.values():
        timing["rows_per_s"] = rows / timing["median_s"]
        timing["rows_per_s_best"] = rows / timing["min_s"]
        if FLOOR in results:
            timing["ratio_to_floor"] = timing["median_s"] / results[FLOOR]["median_s"]


def _speedups_vs_compressai(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """CompressAI's median over ours for each of :data:`COMPRESSAI_PAIRS` where both ran."""
    return {
        key: results[theirs]["median_s"] / results[ours]["median_s"]
        for key, (ours, theirs) in COMPRESSAI_PAIRS.items()
        if ours in results and theirs in results
    }


#: (rows, dim) of the scaling sweep: rows from 16k to 1M at dim 64, then dim up to 1024
SCALING_SHAPES = ((16384, 64), (65536, 64), (262144, 64), (1048576, 64), (16384, 256),
                  (16384, 1024))  # fmt: skip


#: the good lattices' sweep, in blocks of the lattice (their Monte-Carlo rate costs far more per
#: value than the rectangular closed form): (rows, blocks), rows 256 to 4096 at 8 blocks (E8^8:
#: dim 64), then 8 to 512 blocks at 256 rows
GOOD_SCALING_BLOCKS = ((256, 8), (1024, 8), (4096, 8), (256, 32), (256, 128), (256, 512))


def good_scaling_shapes(lattice: str) -> tuple[tuple[int, int], ...]:
    """:data:`GOOD_SCALING_BLOCKS` as ``(rows, dim)`` for direct sums of ``lattice``."""
    from ..lattices import lattice_by_name

    size = lattice_by_name(lattice).dim
    return tuple((rows, blocks * size) for rows, blocks in GOOD_SCALING_BLOCKS)


@keeps_torch_threads
def bench_lattice_scaling(
    *,
    shapes=None,
    threads: int = 2,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    lattice: str | None = None,
) -> dict[str, Any]:
    """How the eager paths scale with the input: per ``(rows, dim)``, the training path's
    forward and backward (autograd) and the hard path, in rows/s and values/s (median of
    ``repeats``) on ``device``. Linear cost means values/s stays flat: ``spread`` gives, per
    path, the fastest values/s over the slowest, across the rows at the first shape's width and
    across the widths at its rows. ``lattice``: a good lattice's name (``"e8"``: the bottleneck
    on E8^(dim/8), its Monte-Carlo rate), over :func:`good_scaling_shapes` unless ``shapes``
    are given; default the rectangular lattice over :data:`SCALING_SHAPES`.

    Every case of every shape runs once per round, the rounds one after another, so that a slow
    spell of a shared machine hits all sizes alike instead of whichever was being measured."""
    device = resolve_bench_device(device)
    check_sizes(threads=threads, repeats=repeats)
    torch.set_num_threads(threads)
    if shapes is None:
        shapes = SCALING_SHAPES if lattice is None else good_scaling_shapes(lattice)
    kwargs = {} if lattice is None else {"lattice": lattice}
    cases: dict[str, Callable[[], Any]] = {}
    sizes: dict[str, tuple[str, int, int]] = {}
    for rows, dim in shapes:
        torch.manual_seed(0)
        neck = build("lattice", dim=dim, **kwargs).to(device)
        y = torch.randn(rows, dim).to(device)
        y_grad = y.clone().requires_grad_(True)
        hard = build("lattice", dim=dim, **kwargs).to(device).eval()
        hard.load_state_dict(neck.state_dict())

        def train_step(neck=neck, y_grad=y_grad):
            neck.zero_grad(set_to_none=True)
            y_grad.grad = None
            result = neck(y_grad)
            (result.rate.sum() + result.y_hat.sum()).backward()

        def hard_path(hard=hard, y=y):
            with torch.no_grad():
                hard(y, generator=torch.Generator().manual_seed(0))

        for case, fn in (("train path, forward + backward", train_step), ("hard path", hard_path)):
            key = f"{case}, {rows} x {dim}"
            cases[key], sizes[key] = fn, (case, rows, dim)
    timings = time_cases(cases, repeats=repeats, block=1, warmup=1, sync=device_sync(device))
    out = []
    for key, timing in timings.items():
        case, rows, dim = sizes[key]
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
    return {
        "lattice": lattice or "z",
        "threads": threads,
        "repeats": repeats,
        "dtype": "float32",
        "device": str(device),
        "allocator": allocator_settings(),
        "interleaved": True,
        "scaling": out,
        "spread": _scaling_spread(out, shapes[0]),
    }


def _scaling_spread(rows_out: list[dict[str, Any]], first: tuple[int, int]) -> dict[str, Any]:
    """Per path: max/min values/s over the rows at ``first``'s width and over the widths at
    its rows (1 = perfectly linear cost)."""
    spread: dict[str, Any] = {}
    for case in dict.fromkeys(r["case"] for r in rows_out):
        mine = [r for r in rows_out if r["case"] == case]
        by_rows = [r["values_per_s"] for r in mine if r["dim"] == first[1]]
        by_dim = [r["values_per_s"] for r in mine if r["rows"] == first[0]]
        spread[case] = {
            "over_rows": max(by_rows) / min(by_rows) if by_rows else None,
            "over_dims": max(by_dim) / min(by_dim) if by_dim else None,
        }
    return spread
