"""``qlatent bench lattice | quantizers | coding | lattices``: the throughput benchmarks, each
printing its table and writing its JSON (with provenance) to ``--output``."""

from __future__ import annotations

import argparse
import sys

from .._utils import expanded, terminal_text
from ._args import _check_folders, _refuse_overwrite


def _bench_output(output: str | None) -> str | None:
    """A benchmark's ``--output`` (None for none), refused now if it cannot be written (a
    folder, a device, a path under a file) rather than after minutes of timing."""
    import os

    if not output:
        return None
    path = str(expanded(output))
    _refuse_overwrite([path], [])
    _check_folders(os.path.dirname(path) or ".")
    return path


def _run_at(threads: int) -> None:
    """torch's thread count set to the benchmark's ``--threads`` for the rest of the command:
    the benchmark puts back the count it found, and the provenance written after it records
    the count it ran at."""
    import torch

    torch.set_num_threads(threads)


def _cmd_bench_lattice(args: argparse.Namespace) -> int:
    import json

    from ..bench import bench_lattice
    from ..results import provenance, write_json

    if args.lattice and not args.scaling:
        raise ValueError("--lattice is a setting of --scaling")
    if args.scaling and (args.rows is not None or args.dim is not None or args.no_compile):
        raise ValueError(
            "--rows, --dim and --no-compile are not settings of --scaling (its shapes are "
            "fixed, its paths eager)"
        )
    if args.scaling:
        from ..bench.lattice import bench_lattice_scaling

        output = args.output or ""
        if output == "results/bench-lattice.json":
            name = f"-{args.lattice}" if args.lattice else ""
            output = f"results/bench-lattice-scaling{name}.json"
        output = _bench_output(output)
        _run_at(args.threads)
        result = bench_lattice_scaling(
            threads=args.threads,
            repeats=args.repeats or 5,
            device=args.device,
            lattice=args.lattice,
        )
        for row in result["scaling"]:
            print(
                f"{row['case']:32s} {row['rows']:>8d} × {row['dim']:<5d} "
                f"{row['rows_per_s'] / 1e6:7.3f} M rows/s "
                f"{row['values_per_s'] / 1e6:8.1f} M values/s"
            )
        for case, spread in result["spread"].items():
            print(
                f"{case}: fastest / slowest values/s {spread['over_rows']:.2f} over rows, "
                f"{spread['over_dims']:.2f} over widths"
            )
        if output:
            written = write_json({**provenance(args.command_line), **result}, output)
            print(terminal_text(f"wrote {written}"))
        return 0
    output = _bench_output(args.output)
    _run_at(args.threads)
    result = bench_lattice(
        rows=16384 if args.rows is None else args.rows,
        dim=64 if args.dim is None else args.dim,
        threads=args.threads,
        repeats=args.repeats or 50,
        compile=not args.no_compile,
        device=args.device,
    )
    payload = {**provenance(args.command_line), **result}
    print(f"{'case':48s} {'median':>8s} {'best':>8s}  (M rows/s)  ratio to the floor")
    for name, case in result["cases"].items():
        ratio = f"{case['ratio_to_floor']:8.2f}" if "ratio_to_floor" in case else ""
        print(
            f"{name:48s} {case['rows_per_s'] / 1e6:8.2f} {case['rows_per_s_best'] / 1e6:8.2f}"
            f"  {ratio}"
        )
    peer = result["peers"]["compressai"]
    if peer["status"] == "measured":
        print(f"CompressAI {peer['version']}, its time over ours:", end="")
        print("".join(f"  {k} {v:.2f}x" for k, v in result["speedup_vs_compressai"].items()))
    else:
        print(terminal_text(f"CompressAI skipped: {peer['reason']}"))
    if output:
        print(f"wrote {write_json(payload, output)}")
    else:
        print(json.dumps(payload, indent=2))
    return 0


def _cmd_bench_quantizers(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..bench import bench_quantizers, format_quantizers
    from ..results import provenance, write_json

    names = None if args.names is None else [n.strip() for n in args.names.split(",") if n.strip()]
    given = {
        "--rows": args.rows,
        "--repeats": args.repeats,
        "--min-repeats": args.min_repeats,
        "--budget": args.budget,
    }
    named = [option for option, value in given.items() if value is not None]
    if args.quick and named:
        raise ValueError(
            f"--quick sets the rows, repeats and budget itself: drop {', '.join(named)}"
        )

    def chosen(value, default):
        return default if value is None else value

    sizes = dict(
        rows=chosen(args.rows, 16384),
        repeats=chosen(args.repeats, 50),
        min_repeats=chosen(args.min_repeats, 5),
    )
    if args.quick:
        sizes = dict(rows=256, repeats=2, min_repeats=2)
    output = _bench_output(args.output)
    torch.set_num_threads(args.threads)  # so that provenance records the threads we ran with
    result = bench_quantizers(
        names=names,
        dim=args.dim,
        threads=args.threads,
        budget_s=0.0 if args.quick else chosen(args.budget, 2.0),
        device=args.device,
        compile=not args.no_compile,
        **sizes,
    )
    payload = {**provenance(args.command_line), **result}
    print(terminal_text(format_quantizers(result), lines=True))  # with the failed cases' errors
    if output:
        print(f"wrote {write_json(payload, output)}")
    else:
        print(json.dumps(payload, indent=2))
    if result["errors"]:
        print(f"qlatent: {len(result['errors'])} case(s) failed, see above", file=sys.stderr)
        return 1
    return 0


def _cmd_bench_coding(args: argparse.Namespace) -> int:
    from ..bench.coding import bench_coding, format_coding
    from ..results import provenance, write_json

    output = _bench_output(args.output)
    _run_at(args.threads)
    result = bench_coding(rows=args.rows, dim=args.dim, threads=args.threads, repeats=args.repeats)
    payload = {**provenance(args.command_line), **result}
    print(format_coding(result))
    if output:
        print(f"wrote {write_json(payload, output)}")
    return 0


def _cmd_bench_lattices(args: argparse.Namespace) -> int:
    from ..bench.geometry import bench_lattices, format_lattices
    from ..results import provenance, write_json

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    output = _bench_output(args.output)
    _run_at(args.threads)
    result = bench_lattices(
        names=names,
        rows=args.rows,
        threads=args.threads,
        repeats=args.repeats,
        target_rse=args.target_rse,
        steps=not args.no_steps,
        compile=not args.no_compile,
        device=args.device,
    )
    payload = {**provenance(args.command_line), **result}
    print(format_lattices(result))
    if output:
        print(f"wrote {write_json(payload, output)}")
    return 0
