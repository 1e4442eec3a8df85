"""What ``qlatent bench quantizers`` compares and how it sums the comparison up: the codebook
sizes and modes of the rows set side by side (:data:`PEER_CODEBOOK_SIZES`, :data:`MODES`), the
bare-search reference rows (:data:`FLOOR_NAME`, :data:`MIN_FLOOR_NAME`), the speed-ups of ``vq``
over ``VectorQuantize`` against :data:`SPEEDUP_TARGET` (:func:`_speedups`), the JSON result with
its notes on the modes, input and timing rule (:func:`_report`) and the readable table
(:func:`format_quantizers`). :mod:`~qlatent.bench.quantizers` re-exports every name.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .timing import allocator_settings

PEER_CODEBOOK_SIZES = (128, 512, 4096)
SPEEDUP_TARGET = 1.5
MODES = ("train", "eval")

#: the reference row of the nearest-codeword search alone at codebook size K
FLOOR_NAME = "addmm + argmin[K={}]"
#: the same search with its index from ``torch.min`` along the rows (the same first minimum as
#: ``argmin``, faster on the CPU), which is what ``vq`` runs
MIN_FLOOR_NAME = "addmm + min(1).indices[K={}]"
MODE_NOTES = {
    "train": "module.train(); forward with autograd recording on an input that requires grad, "
    "no backward (EMA codebooks update in place, as in training)",
    "eval": "module.eval(); forward under torch.inference_mode()",
}
INPUT_NOTE = (
    "y = torch.randn(rows, in_dim) from a generator seeded with seed, per row's in_dim (= dim "
    "unless the bottleneck also reads posterior parameters, e.g. gaussian 2*dim, soft_vq dim + K); "
    "peers get the rows x dim tensor as (1, rows, dim)"
)
TIMING_NOTE = (
    "each case is called once untimed and timed once; it then gets ceil(budget_s / that time) "
    "timed calls, clamped to [min_repeats, repeats], run in interleaved rounds of up to 10 "
    "consecutive calls per case after min(3, calls) untimed ones (time_cases); "
    "rows_per_s = rows / median, rows_per_s_best = rows / min"
)


def _speedups(results: list[dict[str, Any]]) -> dict[str, Any]:
    rate = {(r["name"], r["mode"]): r["rows_per_s"] for r in results}
    out: dict[str, Any] = {
        "definition": "rows/s of our vq / rows/s of VectorQuantize at the same K and mode, "
        "medians from the same run",
        "target": SPEEDUP_TARGET,
    }
    for k in PEER_CODEBOOK_SIZES:
        pair = {
            m: (rate.get((f"vq[K={k}]", m)), rate.get((f"VectorQuantize[K={k}]", m))) for m in MODES
        }
        out[f"K={k}"] = {m: None if None in p else p[0] / p[1] for m, p in pair.items()}
    ratios = [out[f"K={k}"][m] for k in PEER_CODEBOOK_SIZES for m in MODES]
    out["target_met"] = None if None in ratios else min(ratios) >= SPEEDUP_TARGET
    # vq's eval path against its floor, the bare search (1 = as fast as the search alone)
    floor = {
        k: (rate.get((f"vq[K={k}]", "eval")), rate.get((FLOOR_NAME.format(k), None)))
        for k in PEER_CODEBOOK_SIZES
    }
    out["vq_eval_over_floor"] = {
        f"K={k}": None if None in pair else pair[0] / pair[1] for k, pair in floor.items()
    }
    fastest = {
        k: (rate.get((f"vq[K={k}]", "eval")), rate.get((MIN_FLOOR_NAME.format(k), None)))
        for k in PEER_CODEBOOK_SIZES
    }
    out["vq_eval_over_min_floor"] = {
        f"K={k}": None if None in pair else pair[0] / pair[1] for k, pair in fastest.items()
    }
    # vq with its compiled search (compile=True), where it ran: against the same peer rows,
    # against its floor, and against vq's eager search
    compiled = {
        k: {
            m: (
                rate.get((f"vq[K={k}, compile]", m)),
                rate.get((f"VectorQuantize[K={k}]", m)),
                rate.get((f"vq[K={k}]", m)),
            )
            for m in MODES
        }
        for k in PEER_CODEBOOK_SIZES
    }
    if any(t[0] is not None for modes in compiled.values() for t in modes.values()):
        out["compiled_vq"] = {
            "definition": "rows/s of vq with compile=True (its nearest-codeword search fused by "
            "torch.compile) / rows/s of VectorQuantize (eager) at the same K and mode; "
            "over_eager_vq: / rows/s of vq without compile; eval_over_floor: eval rows/s / "
            "the bare addmm + argmin row",
            **{
                f"K={k}": {m: _ratio(t[0], t[1]) for m, t in modes.items()}
                for k, modes in compiled.items()
            },
            "over_eager_vq": {
                f"K={k}": {m: _ratio(t[0], t[2]) for m, t in modes.items()}
                for k, modes in compiled.items()
            },
            "eval_over_floor": {
                f"K={k}": _ratio(
                    rate.get((f"vq[K={k}, compile]", "eval")),
                    rate.get((FLOOR_NAME.format(k), None)),
                )
                for k in PEER_CODEBOOK_SIZES
            },
        }
    return out


def _report(
    *,
    rows: int,
    dim: int,
    threads: int,
    device: torch.device,
    seed: int,
    compiled_rows: bool,
    repeats: int,
    min_repeats: int,
    budget_s: float,
    load_before: list[float] | None,
    competing: float | None,
    peers: dict[str, Any],
    results: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> dict[str, Any]:
    """The result of :func:`~qlatent.bench.quantizers.bench_quantizers`: its input and timing
    rule, the machine's load before and (read here) after, the rows and the speed-ups."""
    return {
        "input": {
            "rows": rows,
            "dim": dim,
            "dtype": "float32",
            "threads": threads,
            "device": str(device),
            "seed": seed,
            "compiled_rows": compiled_rows,
            "construction": INPUT_NOTE,
        },
        "modes": MODE_NOTES,
        "timing": {
            "repeats": repeats,
            "min_repeats": min_repeats,
            "budget_s": budget_s,
            "rule": TIMING_NOTE,
            # other processes competing for the cores distort multi-threaded timings badly
            "load_average_1_5_15min": {"before": load_before, "after": _load_average()},
            # threads of other processes ready to run when the timing started (median of reads)
            "competing_runnable_before": competing,
        },
        # glibc's thresholds and PyTorch's huge-page switch, set before the process started
        "allocator": allocator_settings(),
        "peers": peers,
        "results": results,
        "speedup_vs_vector_quantize": _speedups(results),
        "errors": errors,
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not on every platform
        return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_quantizers(result: dict[str, Any]) -> str:
    """A readable table of :func:`bench_quantizers` output (k rows/s, median and best)."""
    width = max([len(r["name"]) for r in result["results"]] + [4])
    lines = [
        f"{'case':{width}s} {'mode':5s} {'K':>5s} {'in':>4s} {'params':>8s} {'calls':>5s} "
        f"{'median':>9s} {'best':>9s}  (k rows/s)"
    ]
    for r in result["results"]:
        k = "" if r["K"] is None else str(r["K"])
        lines.append(
            f"{r['name']:{width}s} {r['mode'] or '':5s} {k:>5s} {r['in_dim']:4d} {r['params']:8d} "
            f"{r['repeats']:5d} {r['rows_per_s'] / 1e3:9.1f} {r['rows_per_s_best'] / 1e3:9.1f}"
        )
    peers = result["peers"]
    if peers["status"] != "ok":
        lines.append(f"peers skipped: {peers['reason']}")
    speedup = result["speedup_vs_vector_quantize"]
    lines.append(f"vq / VectorQuantize rows/s (target >= {speedup['target']}):")
    for k in PEER_CODEBOOK_SIZES:
        ratios = speedup[f"K={k}"]
        cells = ", ".join(f"{m} {'n/a' if v is None else f'{v:.2f}x'}" for m, v in ratios.items())
        lines.append(f"  K={k}: {cells}")
    floor = speedup.get("vq_eval_over_floor", {})
    if any(v is not None for v in floor.values()):
        cells = ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}x'}" for k, v in floor.items())
        lines.append(f"vq eval / bare addmm + argmin rows/s: {cells}")
    fastest = speedup.get("vq_eval_over_min_floor", {})
    if any(v is not None for v in fastest.values()):
        cells = ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}x'}" for k, v in fastest.items())
        lines.append(f"vq eval / bare addmm + min(1).indices rows/s: {cells}")
    compiled = speedup.get("compiled_vq")
    if compiled:
        lines.append("vq with compile=True / VectorQuantize rows/s (and / eager vq):")
        for k in PEER_CODEBOOK_SIZES:
            cells = ", ".join(
                f"{m} {_times(v)} ({_times(compiled['over_eager_vq'][f'K={k}'][m])})"
                for m, v in compiled[f"K={k}"].items()
            )
            lines.append(f"  K={k}: {cells}")
    load = result["timing"]["load_average_1_5_15min"]["before"]
    competing = result["timing"].get("competing_runnable_before")
    cores = os.cpu_count() or 1
    # the load average lags a minute behind (a benchmark just before reads as load); the count of
    # runnable threads at the start says what competes now, where the platform gives it
    busy = competing if competing is not None else (None if load is None else load[0])
    if busy is not None and busy + result["input"]["threads"] > cores + 0.5:
        # each parallel op then waits for a time slice: e.g. FSQ at 2 threads reads 60x slower
        what = (
            f"{competing:g} other runnable threads"
            if competing is not None
            else f"load average {load[0]}"
        )
        lines.append(
            f"warning: {what} before the run on {cores} cores: other processes compete for "
            "the cores, so these timings measure the scheduler; rerun when idle"
        )
    for err in result["errors"]:
        lines.append(f"FAILED {err['name']} ({err['stage']}): {err['error']}")
    return "\n".join(lines)
