"""Where a compiled training step of the ``lattice`` bottleneck spends its time: ``torch.profiler``
over the step that ``qlatent bench lattice`` times as "train path, torch.compile, forward +
backward" (16384 x 64 float32 by default, loss ``rate.sum() + y_hat.sum()``).

    python examples/lattice-step-profile.py [--rows 16384] [--dim 64] [--threads 1] [--steps 20]
        [--out results/lattice-step-profile/NAME.json]

Writes the operators with the most self time (milliseconds per step) and the step's wall time
(median over ``--steps`` steps timed without the profiler), with the allocator settings of the
process (run it once with glibc's default settings and once with ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` or ``THP_MEM_ALLOC_ENABLE`` set to see what page faults cost).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from qlatent.bench.timing import allocator_settings
from qlatent.bottlenecks import build
from qlatent.results import provenance, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if min(args.rows, args.dim, args.threads, args.steps, args.top) < 1:
        parser.error("--rows, --dim, --threads, --steps and --top must be positive")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    y = torch.randn(args.rows, args.dim).requires_grad_(True)
    neck = build("lattice", dim=args.dim, compile=True)
    with torch.no_grad():  # spacings and scales away from their initial values, as in the bench
        neck.log_spacing.uniform_(-1.0, 0.5)
        neck.log_scale.uniform_(-0.5, 0.5)

    def step() -> None:
        neck.zero_grad(set_to_none=True)
        y.grad = None
        out = neck(y)
        (out.rate.sum() + out.y_hat.sum()).backward()

    for _ in range(5):  # compile and settle
        step()
    walls = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        walls.append(time.perf_counter() - started)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    top = [
        {
            "name": e.key[:80],
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / args.steps,
            "calls_per_step": e.count / args.steps,
        }
        for e in events[: args.top]
    ]
    wall_ms = 1e3 * statistics.median(walls)
    print(f"step: {wall_ms:.3f} ms (median of {args.steps}, no profiler)")
    print(f"profiled self time: {total_us / 1e3 / args.steps:.3f} ms per step")
    for row in top:
        print(f"{row['self_ms_per_step']:8.3f} ms  {row['calls_per_step']:5.1f}x  {row['name']}")
    if args.out:
        payload = {
            **provenance(" ".join(["python", *sys.argv])),
            "input": {"rows": args.rows, "dim": args.dim, "threads": args.threads},
            "allocator": allocator_settings(),
            "step_ms_median": wall_ms,
            "profiled_self_ms_per_step": total_us / 1e3 / args.steps,
            "top": top,
        }
        print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
