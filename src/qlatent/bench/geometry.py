"""``qlatent bench lattices``: normalized second moments and closest-point throughput.

Per lattice: G(Λ) = E‖U‖² / (n·V^{2/n}) for U uniform over the Voronoi cell, estimated by Monte
Carlo (dither draws on the fundamental parallelepiped reduced modulo the lattice) in batches until
the relative standard error is below ``target_rse``, next to the literature value (Conway &
Sloane, SPLAG Table 2.3; Λ16 from Pook-Kolb, Agrell & Allen 2023); and the closest-point
throughput on a ``rows × dim`` float32 input (``dim`` a multiple of the block; 48 for Leech),
next to plain rounding of the same input in the same run.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .._utils import tqdm
from ..lattices import LITERATURE_NSM, lattice_by_name, tile
from .timing import (
    MAX_VALUES,
    allocator_settings,
    check_sizes,
    device_sync,
    keeps_torch_threads,
    resolve_bench_device,
    time_cases,
)

#: the closest-point cases of the Leech, E8 and Λ16 decoders fused by ``torch.compile``
COMPILED_LEECH = "leech, torch.compile"
COMPILED_E8 = "e8, torch.compile"
COMPILED_BW16 = "bw16, torch.compile"
#: the Leech row's training step with its decoders fused by ``torch.compile``
COMPILED_STEP = "leech_lattice, torch.compile Leech and Λ16 decoders"
#: closest-point throughput input width per lattice (a multiple of its dimension)
WIDTH = {"z": 64, "a2": 64, "d3*": 63, "d4": 64, "e8": 64, "bw16": 64, "leech": 48}


def estimate_nsm(
    name: str,
    *,
    target_rse: float = 5e-4,
    batch: int = 1 << 16,
    max_samples: int = 1 << 24,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Monte-Carlo G(Λ) with its standard error; stops when the relative s.e. < ``target_rse``.
    The dither is drawn on the CPU and reduced to the cell (closest point) on ``device``."""
    lat = lattice_by_name(name)
    gen = torch.Generator().manual_seed(seed)
    norm = lat.dim * math.exp(2 * lat.log_volume.item() / lat.dim)
    total = total_sq = 0.0
    n = 0
    started = time.perf_counter()
    while n < max_samples:
        u = lat.sample_dither(batch, generator=gen, dtype=torch.float64, device=device)
        g = u.square().sum(-1) / norm
        total += g.sum().item()
        total_sq += g.square().sum().item()
        n += batch
        mean = total / n
        se = math.sqrt(max(total_sq / n - mean**2, 0.0) / n)
        if se / mean < target_rse:
            break
    literature = LITERATURE_NSM[name]
    return {
        "lattice": lat.name,
        "dim": lat.dim,
        "nsm": mean,
        "se": se,
        "relative_se": se / mean,
        "samples": n,
        "literature": literature,
        "relative_difference": mean / literature - 1,
        "within_0.5%": abs(mean / literature - 1) < 5e-3,
        "kl_to_gaussian_nats_per_dim": 0.5 * math.log(2 * math.pi * math.e * mean),
        "wall_s": time.perf_counter() - started,
    }


@keeps_torch_threads
def bench_lattices(
    *,
    names: list[str] | None = None,
    rows: int = 16384,
    threads: int = 2,
    repeats: int = 10,
    target_rse: float = 5e-4,
    seed: int = 0,
    steps: bool = True,
    compile: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """G(Λ) and closest-point throughput for every lattice in ``names`` (default: all), with
    ``compile`` also the Leech, E8 and Λ16 decoders fused by ``torch.compile`` where they are among
    ``names`` (their compile times recorded apart), and with ``steps``
    :func:`bench_training_step` (on the CPU). Dither reduction and closest points run on
    ``device`` (on CUDA each timed call ends with a synchronize)."""
    device = resolve_bench_device(device)
    names = _checked_lattices(
        names, rows=rows, threads=threads, repeats=repeats, target_rse=target_rse, compile=compile
    )
    torch.set_num_threads(threads)
    geometry = {
        n: estimate_nsm(n, target_rse=target_rse, seed=seed, device=device)
        for n in tqdm(names, desc="G")
    }
    cases, widths, compile_s = _closest_point_cases(
        names, rows=rows, seed=seed, compile=compile, device=device
    )
    timings = time_cases(cases, repeats=repeats, block=2, warmup=1, sync=device_sync(device))
    throughput = {}
    for name, timing in timings.items():
        throughput[name] = {
            "input": [rows, widths.get(name, 64)],
            "rows_per_s": rows / timing["median_s"],
            "rows_per_s_best": rows / timing["min_s"],
            **timing,
        }
    out = {
        "input": {
            "rows": rows,
            "dtype": "float32",
            "threads": threads,
            "repeats": repeats,
            "device": str(device),
        },
        "allocator": allocator_settings(),
        "geometry": geometry,
        "closest_point": throughput,
        "leech_compile_s": compile_s.get("leech"),
        "e8_compile_s": compile_s.get("e8"),
        "bw16_compile_s": compile_s.get("bw16"),
    }
    if steps:
        out["training_step_ms"] = bench_training_step(seed=seed, compile=compile)
    return out


def _checked_lattices(
    names: list[str] | None,
    *,
    rows: int,
    threads: int,
    repeats: int,
    target_rse: float,
    compile: bool,
) -> list[str]:
    """The lattices to measure (default: all with a literature G); ValueError for an unknown or
    repeated name, a size or repeat count out of range, a ``target_rse`` outside (0, 1), or more
    rows than the inputs of these lattices (and, with ``compile``, of their fused decoders) may
    hold at once."""
    check_sizes(rows=rows, threads=threads, repeats=repeats)
    if not 0 < target_rse < 1:  # 0 or NaN: never reached, the estimate runs to its cap
        raise ValueError(f"target_rse must be a number in (0, 1), got {target_rse!r}")
    names = list(names or LITERATURE_NSM)
    unknown = sorted(set(names) - set(LITERATURE_NSM))
    if unknown:
        raise ValueError(f"unknown lattices {unknown}; known: {list(LITERATURE_NSM)}")
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"lattice(s) named more than once: {twice}")
    fused = [n for n in ("leech", "e8", "bw16") if compile and n in names]
    width = sum(WIDTH[n] for n in [*names, *fused])  # every timed input is held at once
    if rows * width > MAX_VALUES:
        raise ValueError(
            f"rows must be at most {MAX_VALUES // width:,} for these lattices (their inputs "
            f"hold rows × {width} numbers, at most 2^26), got {rows:,}"
        )
    return names


def _closest_point_cases(
    names: list[str], *, rows: int, seed: int, compile: bool, device: torch.device
) -> tuple[dict[str, Any], dict[str, int], dict[str, float]]:
    """The closest-point calls to time, each on its own ``rows × WIDTH`` input drawn from one
    generator seeded with ``seed``: every lattice of ``names``, with ``compile`` the fused Leech,
    E8 and Λ16 decoders among them (compiled here and checked against the eager ones), and plain
    rounding. ``(cases, input width per case, compile seconds per lattice)``."""
    gen = torch.Generator().manual_seed(seed)
    cases, widths, lattices = {}, {}, {}
    for name in names:
        lat = lattices[name] = tile(name, WIDTH[name])
        x = (2.0 * torch.randn(rows, WIDTH[name], generator=gen)).to(device)
        cases[name] = lambda lat=lat, x=x: lat.closest_point(x)
        widths[name] = WIDTH[name]
    compile_s = {}
    for name, case in (("leech", COMPILED_LEECH), ("e8", COMPILED_E8), ("bw16", COMPILED_BW16)):
        if not compile or name not in names:
            continue
        fused = tile(name, WIDTH[name], compile=True)
        x = (2.0 * torch.randn(rows, WIDTH[name], generator=gen)).to(device)
        started = time.perf_counter()
        fused.closest_point(x[:1024])  # one whole Leech chunk: compiles (short ones are eager)
        compile_s[name] = time.perf_counter() - started
        if not torch.equal(fused.closest_point(x), lattices[name].closest_point(x)):
            raise RuntimeError(f"the compiled {name} decoder disagrees with the eager one")
        cases[case] = lambda lat=fused, x=x: lat.closest_point(x)
        widths[case] = WIDTH[name]
    x64 = (2.0 * torch.randn(rows, 64, generator=gen)).to(device)
    cases["round (Z, torch.round)"] = lambda: torch.round(x64)
    return cases, widths, compile_s


#: Table-1 bottleneck settings whose training step is timed (``configs/lattice-mnist``)
STEP_CASES = {
    "rect_lattice": {},
    "rect_lattice, fused Adam": dict(optimizer="adam_fused"),
    "e8_lattice": dict(lattice="e8", samples=128, prior_samples=32),
    "leech_lattice": dict(lattice=["leech", "bw16"], samples=128, prior_samples=8),
    "leech_lattice, no prior draws": dict(lattice=["leech", "bw16"], samples=128, prior_samples=0),
}
#: Table-1 rows whose step is timed with the bottleneck arguments of their config file
#: (their Monte-Carlo counts, proposal draws per row, the debiased rate)
CONFIGURED_STEPS = (
    "e8_debias_lattice",
    "e8z_lattice",
    "leech_tilted_lattice",
    "e8_gl_lattice",
    "e8z_gl_lattice",
    "e8z8_gl_lattice",
    "leech_gl_lattice",
    "leechz_gl_lattice",
    "leeche8_gl_lattice",
)
#: the same rows with one bottleneck argument changed: the Z blocks of a sum estimated by Monte
#: Carlo like the others, or given their closed form (``exact_rectangular``)
VARIANT_STEPS = {
    "e8z_lattice, Z blocks exact": ("e8z_lattice", {"exact_rectangular": True}),
    "leechz_gl_lattice, Z blocks estimated": ("leechz_gl_lattice", {"exact_rectangular": False}),
}


def bench_training_step(
    *, repeats: int = 20, seed: int = 0, compile: bool = False
) -> dict[str, Any]:
    """Where a Table-1 training step's time goes, one thread, batch 100 (median ms): a whole
    step (forward, backward, Adam; torch's fused Adam kernel in one case) of the gated VAE per
    bottleneck setting, and the Leech and
    Λ16 decodes a step of the Leech row performs (dither for 100 rows and 64 antithetic
    Monte-Carlo points; 8 prior draws × 100 rows for the membership tests). With ``compile``
    also the Leech row's step and its membership decodes with the Leech and Λ16 decoders fused by
    ``torch.compile`` (compiled in the warm-up calls)."""
    from ..experiments import lattice_mnist
    from ..lattices import BarnesWallLattice, LeechLattice
    from ..losses import RateDistortionLoss
    from ..models import gated_vae

    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(100, 784, generator=gen) < 0.3).float()
    cases = {}
    steps = dict(STEP_CASES)
    for name in CONFIGURED_STEPS:
        run = lattice_mnist.model_config(name, quick=False, overrides=[])
        steps[f"{name} (configs/lattice-mnist)"] = dict(run.model.bottleneck_args)
    for label, (name, change) in VARIANT_STEPS.items():
        run = lattice_mnist.model_config(name, quick=False, overrides=[])
        steps[label] = {**run.model.bottleneck_args, **change}
    if compile:
        steps[COMPILED_STEP] = {**STEP_CASES["leech_lattice"], "compile": True}
    for name, kwargs in steps.items():
        torch.manual_seed(seed)
        kwargs = dict(kwargs)
        fused = kwargs.pop("optimizer", "adam") == "adam_fused"
        model = gated_vae("lattice", **kwargs)
        opt = torch.optim.Adam(model.parameters(), lr=5e-4, fused=fused)
        loss_fn = RateDistortionLoss()

        def step(model=model, opt=opt, loss_fn=loss_fn):
            loss = loss_fn(x, model(x), model.likelihood).loss
            opt.zero_grad()
            loss.backward()
            opt.step()

        cases[f"step: {name}"] = step
    leech, bw16 = LeechLattice(), BarnesWallLattice()
    t_dither = 8 * torch.randn(164, 24, generator=gen)
    t_member = 8 * torch.randn(800, 24, generator=gen)
    t_bw16 = 4 * torch.randn(964, 16, generator=gen)
    cases["Leech decodes: 164 (dither, Monte-Carlo points)"] = lambda: leech.closest_point(t_dither)
    cases["Leech decodes: 800 (prior-draw membership)"] = lambda: leech.closest_point(t_member)
    if compile:
        fused = LeechLattice(compile=True)
        cases["Leech decodes: 800, torch.compile"] = lambda: fused.closest_point(t_member)
    cases["BW16 decodes: 964"] = lambda: bw16.closest_point(t_bw16)
    if compile:
        fused_bw16 = BarnesWallLattice(compile=True)
        cases["BW16 decodes: 964, torch.compile"] = lambda: fused_bw16.closest_point(t_bw16)
    # one thread for the timed calls (the compiled cases compile in their warm-up, so at that
    # count), then the caller's count again: the provenance written after a `bench lattices`
    # run reads torch_threads then, and must give the closest points' threads, not the steps'
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings = time_cases(cases, repeats=repeats, block=5, warmup=2)
    finally:
        torch.set_num_threads(previous_threads)
    return {name: 1e3 * t["median_s"] for name, t in timings.items()}


def format_lattices(result: dict[str, Any]) -> str:
    lines = [
        "| lattice | G (Monte Carlo) | ± s.e. | literature | difference | closest point (rows/s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, g in result["geometry"].items():
        t = result["closest_point"][name]
        lines.append(
            f"| {g['lattice']} | {g['nsm']:.6f} | {g['se']:.6f} ({100 * g['relative_se']:.3f}%) "
            f"| {g['literature']:.7f} | {100 * g['relative_difference']:+.3f}% "
            f"| {t['rows_per_s']:,.0f} ({t['input'][0]} × {t['input'][1]}) |"
        )
    for case, label, key in (
        (COMPILED_E8, "E8", "e8_compile_s"),
        (COMPILED_LEECH, "Leech", "leech_compile_s"),
        (COMPILED_BW16, "BW16", "bw16_compile_s"),
    ):
        if case in result["closest_point"]:
            t = result["closest_point"][case]
            lines.append(
                f"| {label}, torch.compile (compiled in {result[key]:.0f} s) | | | | "
                f"| {t['rows_per_s']:,.0f} ({t['input'][0]} × {t['input'][1]}) |"
            )
    r = result["closest_point"]["round (Z, torch.round)"]
    lines.append(f"| (plain rounding) | | | | | {r['rows_per_s']:,.0f} ({r['input'][0]} × 64) |")
    if "training_step_ms" in result:
        lines += ["", "| one thread, batch 100 | median ms |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in result["training_step_ms"].items()]
    return "\n".join(lines)
