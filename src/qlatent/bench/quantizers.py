"""``qlatent bench quantizers``: every registered bottleneck next to vector-quantize-pytorch."""

from __future__ import annotations

import copy
import importlib.metadata
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..bottlenecks import BOTTLENECKS, build
from ._quantizers_report import (
    FLOOR_NAME,
    MIN_FLOOR_NAME,
    MODES,
    PEER_CODEBOOK_SIZES,
    _load_average,
    _report,
)
from ._quantizers_report import INPUT_NOTE as INPUT_NOTE
from ._quantizers_report import MODE_NOTES as MODE_NOTES
from ._quantizers_report import SPEEDUP_TARGET as SPEEDUP_TARGET
from ._quantizers_report import TIMING_NOTE as TIMING_NOTE
from ._quantizers_report import _ratio as _ratio
from ._quantizers_report import _speedups as _speedups
from ._quantizers_report import _times as _times
from ._quantizers_report import format_quantizers as format_quantizers
from .timing import (
    check_sizes,
    competing_runnable,
    device_sync,
    resolve_bench_device,
    time_cases,
)

#: Constructor arguments beyond ``dim``, one dict per benchmark row; a registered name that is
#: not listed here is built with ``dim`` alone.
QUANTIZER_KWARGS: dict[str, list[dict[str, Any]]] = {
    "vq": [{"num_codes": k} for k in PEER_CODEBOOK_SIZES],
    "vq_ema": [{"num_codes": 512}],
    "soft_vq": [{"num_codes": 512}],
    "soft_em_vq": [{"num_codes": 512}],
}
#: rows added with ``compile=True`` (skipped by ``bench_quantizers(compile=False)``): ``vq`` with
#: its ``torch.compile``-fused nearest-codeword search, labelled ``vq[K=k, compile]``
COMPILED_KWARGS: dict[str, list[dict[str, Any]]] = {
    "vq": [{"num_codes": k, "compile": True} for k in PEER_CODEBOOK_SIZES],
}
#: FSQ levels from the FSQ paper's table of recommended settings (|C| = 1000 and 4375 ≈ 2^12).
FSQ_LEVELS = ([8, 5, 5, 5], [7, 5, 5, 5, 5])
PEER_PACKAGE = "vector_quantize_pytorch"


@dataclass
class _Case:
    """One benchmark row before timing: what is measured, and the call to time."""

    name: str
    source: str  # "qlatent", PEER_PACKAGE or "reference"
    mode: str | None
    K: int | None
    in_dim: int
    kwargs: dict[str, Any]
    call: Callable[[], Any]
    params: int = 0
    buffers: int = 0

    @property
    def key(self) -> str:
        return self.name if self.mode is None else f"{self.name} {self.mode}"


def _timed_call(
    module: nn.Module, x: Tensor, mode: str, generator: torch.Generator | None = None
) -> Callable[[], Any]:
    """The call to time for ``module`` in ``mode`` (see ``MODE_NOTES``).

    Each mode gets its own copy of the module (training calls move EMA codebooks) and, for
    training, a copy of ``x`` that requires grad.
    """
    module = copy.deepcopy(module).train(mode == "train")
    x = x.clone().requires_grad_(True) if mode == "train" else x
    kw = {} if generator is None else {"generator": generator}

    def run():
        if generator is not None:
            generator.manual_seed(0)  # every call draws the same dither
        with torch.inference_mode(mode == "eval"):
            return module(x, **kw)

    return run


def _sizes(module: nn.Module) -> dict[str, int]:
    return {
        "params": sum(p.numel() for p in module.parameters()),
        "buffers": sum(b.numel() for b in module.buffers()),
    }


def _error(errors: list[dict[str, Any]], name: str, stage: str, err: Exception, **extra) -> None:
    errors.append({"name": name, "stage": stage, "error": f"{type(err).__name__}: {err}", **extra})


def _bottleneck_cases(
    names: Sequence[str],
    *,
    rows: int,
    dim: int,
    seed: int,
    errors: list[dict[str, Any]],
    device: torch.device,
    compile: bool = False,
) -> list[_Case]:
    """Both modes of each name, once per entry of ``QUANTIZER_KWARGS`` (``dim`` alone if none),
    and with ``compile`` once per entry of ``COMPILED_KWARGS``."""
    cases = []
    for name in names:
        extras = QUANTIZER_KWARGS.get(name, [{}])
        if compile:
            extras = extras + COMPILED_KWARGS.get(name, [])
        for extra in extras:
            kwargs = {"dim": dim, **extra}
            k = extra.get("num_codes")
            tags = ([] if k is None else [f"K={k}"]) + (["compile"] if extra.get("compile") else [])
            label = f"{name}[{', '.join(tags)}]" if tags else name
            try:
                module = build(name, **kwargs).to(device)
            except Exception as err:  # report it and measure the others
                _error(errors, label, "build", err, kwargs=kwargs)
                continue
            y = torch.randn(rows, module.in_dim, generator=torch.Generator().manual_seed(seed))
            y = y.to(device)
            for mode in MODES:
                call = _timed_call(module, y, mode, generator=torch.Generator())
                cases.append(
                    _Case(label, "qlatent", mode, k, module.in_dim, kwargs, call, **_sizes(module))
                )
    return cases


def _peer_cases(y: Tensor, *, errors: list[dict[str, Any]]) -> tuple[list[_Case], dict[str, Any]]:
    """``VectorQuantize`` at each K and ``FSQ`` from vector-quantize-pytorch, on the same rows."""
    try:
        import vector_quantize_pytorch as vqp
    except Exception as err:  # not installed, or broken against this torch: say so, go on
        reason = f"{PEER_PACKAGE} is not importable: {type(err).__name__}: {err}"
        return [], {"status": "skipped", "reason": reason}
    rows, dim = y.shape
    x = y.reshape(1, rows, dim)  # (batch, seq, dim): the layout both classes expect
    specs = [
        (f"VectorQuantize[K={k}]", k, vqp.VectorQuantize, {"dim": dim, "codebook_size": k})
        for k in PEER_CODEBOOK_SIZES
    ] + [
        (
            f"FSQ[levels={'x'.join(map(str, lv))}]",
            math.prod(lv),
            vqp.FSQ,
            {"levels": lv, "dim": dim},
        )
        for lv in FSQ_LEVELS
    ]
    cases, resolved = [], None
    for label, k, cls, kwargs in specs:
        try:
            module = cls(**kwargs).to(y.device)
        except Exception as err:  # report it and measure the others
            _error(errors, label, "build", err, kwargs=kwargs)
            continue
        if cls is vqp.VectorQuantize and resolved is None:
            resolved = _vector_quantize_defaults(module)
        for mode in MODES:
            call = _timed_call(module, x, mode)
            record = {"class": cls.__name__, **kwargs}
            cases.append(_Case(label, PEER_PACKAGE, mode, k, dim, record, call, **_sizes(module)))
    try:
        version = importlib.metadata.version("vector-quantize-pytorch")
    except importlib.metadata.PackageNotFoundError:
        version = None
    info = {
        "status": "ok",
        "version": version,
        "input_shape": [1, rows, dim],
        "vector_quantize_defaults": resolved,
        "notes": "library defaults except the arguments in each row's kwargs; FSQ projects "
        "dim -> len(levels) -> dim with its own Linear layers",
    }
    return cases, info


def _vector_quantize_defaults(module: nn.Module) -> dict[str, Any]:
    """The defaults that decide what a ``VectorQuantize`` forward computes (as resolved)."""
    codebook = getattr(module, "_codebook", None)
    return {
        "ema_update": getattr(module, "ema_update", None),
        "decay": getattr(codebook, "decay", None),
        "rotation_trick": getattr(module, "rotation_trick", None),
        "commitment_weight": getattr(module, "commitment_weight", None),
        "use_cosine_sim": getattr(module, "use_cosine_sim", None),
        "threshold_ema_dead_code": getattr(codebook, "threshold_ema_dead_code", None),
    }


def _budgeted_repeats(
    cases: list[_Case],
    *,
    repeats: int,
    min_repeats: int,
    budget_s: float,
    errors: list,
    sync: Callable[[], Any] | None = None,
) -> dict[str, int]:
    """Timed calls per case: enough to fill ``budget_s``, within ``[min_repeats, repeats]``.

    Each case is called once (lazy initialisation, caches), then timed once to size its share; a
    case whose call fails is reported in ``errors`` and left out.
    """
    counts = {}
    for case in cases:
        try:
            case.call()
            if sync is not None:
                sync()
            start = time.perf_counter()
            case.call()
            if sync is not None:
                sync()
            once = max(time.perf_counter() - start, 1e-9)
        except Exception as err:  # report it and measure the others
            _error(errors, case.name, f"forward ({case.mode})", err, kwargs=case.kwargs)
            continue
        counts[case.key] = min(repeats, max(min_repeats, math.ceil(budget_s / once)))
    return counts


def _floor_cases(y: Tensor, dim: int) -> list[_Case]:
    """The nearest-codeword search with nothing around it, at each of ``PEER_CODEBOOK_SIZES``:
    one ``addmm`` of ‖e‖² − 2·y·eᵀ over the whole input and its ``argmin`` (or, second row,
    ``min(1).indices``), on a codebook initialised as ``vq``'s, as the floor of ``vq``'s eval
    path."""
    cases = []
    for k in PEER_CODEBOOK_SIZES:
        codebook = build("vq", dim=dim, num_codes=k).codebook.detach().to(y.device)
        norms = codebook.square().sum(1)

        def call(codebook=codebook, norms=norms):
            return torch.addmm(norms, y, codebook.t(), alpha=-2.0).argmin(1)

        def call_min(codebook=codebook, norms=norms):
            return torch.addmm(norms, y, codebook.t(), alpha=-2.0).min(1).indices

        cases.append(_Case(FLOOR_NAME.format(k), "reference", None, k, dim, {}, call))
        cases.append(_Case(MIN_FLOOR_NAME.format(k), "reference", None, k, dim, {}, call_min))
    return cases


def bench_quantizers(
    *,
    names: Sequence[str] | None = None,
    rows: int = 16384,
    dim: int = 64,
    threads: int = 2,
    repeats: int = 50,
    min_repeats: int = 5,
    budget_s: float = 2.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    compile: bool = True,
) -> dict[str, Any]:
    """Forward throughput (rows/s) of every registered bottleneck next to vector-quantize-pytorch.

    Each of ``names`` (default: all registered) is built from ``QUANTIZER_KWARGS`` and timed in
    training and eval mode (``MODE_NOTES``) on ``randn(rows, in_dim)``; ``VectorQuantize`` at
    ``PEER_CODEBOOK_SIZES`` and ``FSQ`` at ``FSQ_LEVELS`` run on the same ``rows × dim`` input in
    the same interleaved loop, next to ``torch.rand`` alone as a machine-speed reference. Each
    case gets ``ceil(budget_s / one call)`` timed calls, clamped to ``[min_repeats, repeats]``,
    so slow cases (``VectorQuantize`` at K = 4096: seconds per call) do not dominate the run.
    A name or peer that fails to build or run is listed under ``errors``; the rest still run.
    Everything runs on ``device`` (the same input numbers on every device; on CUDA each timed
    call ends with a synchronize). ``compile``: also time the rows of ``COMPILED_KWARGS``
    (compiled in their untimed first call; seconds), on the CPU only (``vq``'s compiled search
    is a CPU path).
    """
    device = resolve_bench_device(device)
    names = _checked_arguments(
        names,
        rows=rows,
        dim=dim,
        threads=threads,
        repeats=repeats,
        min_repeats=min_repeats,
        budget_s=budget_s,
    )
    load_before = _load_average()
    competing = competing_runnable()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)  # codebook initialisations
        errors: list[dict[str, Any]] = []
        cases, peers = _all_cases(
            names, rows=rows, dim=dim, seed=seed, errors=errors, device=device, compile=compile
        )
        sync = device_sync(device)
        counts = _budgeted_repeats(
            cases,
            repeats=repeats,
            min_repeats=min_repeats,
            budget_s=budget_s,
            errors=errors,
            sync=sync,
        )
        cases = [c for c in cases if c.key in counts]
        timings = time_cases({c.key: c.call for c in cases}, repeats=counts, sync=sync)
    finally:
        torch.set_num_threads(previous_threads)

    results = [_row(c, timings[c.key], rows) for c in cases]
    return _report(
        rows=rows,
        dim=dim,
        threads=threads,
        device=device,
        seed=seed,
        compiled_rows=compile and device.type == "cpu",
        repeats=repeats,
        min_repeats=min_repeats,
        budget_s=budget_s,
        load_before=load_before,
        competing=competing,
        peers=peers,
        results=results,
        errors=errors,
    )


def _checked_arguments(
    names: Sequence[str] | None,
    *,
    rows: int,
    dim: int,
    threads: int,
    repeats: int,
    min_repeats: int,
    budget_s: float,
) -> list[str]:
    """The bottleneck names to measure (default: all registered); ValueError for an unknown or
    repeated name or a size, repeat count or budget out of range."""
    known = BOTTLENECKS.names()
    names = known if names is None else list(names)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown bottleneck(s) {unknown}; known names: {', '.join(known)}")
    if len(set(names)) < len(names):  # each case would be listed twice with one timing
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"bottleneck(s) named more than once: {twice}")
    check_sizes(rows=rows, dim=dim, threads=threads)
    if not 1 <= min_repeats <= repeats:
        raise ValueError(f"need 1 <= min_repeats <= repeats, got {min_repeats} and {repeats}")
    if not budget_s >= 0:
        raise ValueError(f"budget_s must be >= 0, got {budget_s}")
    return names


def _all_cases(
    names: Sequence[str],
    *,
    rows: int,
    dim: int,
    seed: int,
    errors: list[dict[str, Any]],
    device: torch.device,
    compile: bool,
) -> tuple[list[_Case], dict[str, Any]]:
    """Every row to time, in order: ``torch.rand`` alone, the bottlenecks of ``names``, the bare
    searches when ``vq`` is among them, and the peers; with the peers' status."""
    y = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)).to(device)
    reference = _Case(
        "torch.rand (rows x dim numbers alone)",
        source="reference",
        mode=None,
        K=None,
        in_dim=dim,
        kwargs={},
        call=lambda: torch.rand(rows, dim, device=device),
    )
    own = _bottleneck_cases(
        names,
        rows=rows,
        dim=dim,
        seed=seed,
        errors=errors,
        device=device,
        compile=compile and device.type == "cpu",
    )
    cases = [reference, *own]
    if "vq" in names:
        cases += _floor_cases(y, dim)
    peer_cases, peers = _peer_cases(y, errors=errors)
    cases += peer_cases
    return cases, peers


def _row(case: _Case, timing: dict[str, float], rows: int) -> dict[str, Any]:
    return {
        "name": case.name,
        "source": case.source,
        "mode": case.mode,
        "K": case.K,
        "in_dim": case.in_dim,
        "kwargs": case.kwargs,
        "params": case.params,
        "buffers": case.buffers,
        "rows_per_s": rows / timing["median_s"],
        "rows_per_s_best": rows / timing["min_s"],
        **timing,
    }
