"""The eager lattice training path against an earlier commit's, timed alternately on one machine.

The machine's speed drifts by up to 3× between days, so a figure of another day cannot tell
whether a path became 2× faster. This script puts the library of ``--old`` (default ``660f8bc``,
the tree before the closed-form backward of the Laplace cell rate, where the eager forward +
backward was first measured) into a temporary git worktree and times both trees' eager
``lattice`` bottleneck on the same input — forward + backward (rate and y_hat summed) and the
forward without grad, 16384 × 64 float32 rows, two threads — in separate processes, alternating
old, new, old, new … ``--rounds`` times, each process taking the median of ``--calls`` calls
after three untimed ones. Run it on an otherwise idle machine.

    python examples/lattice-eager-ab.py [--old 660f8bc] [--rounds 3]
        [--out results/bench-lattice-eager-ab.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from qlatent.bench.timing import tree_at
from qlatent.results import provenance, write_json

ROOT = Path(__file__).resolve().parents[1]

#: run in a fresh interpreter with the tree to time first on sys.path
TIMER = """
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import qlatent
assert qlatent.__file__.startswith(sys.argv[1]), qlatent.__file__
from qlatent.bottlenecks import build
rows, dim, calls = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
torch.manual_seed(0)
y = torch.randn(rows, dim).requires_grad_(True)
neck = build("lattice", dim=dim)
with torch.no_grad():  # spacings and scales away from their initial values
    neck.log_spacing.uniform_(-1.0, 0.5)
    neck.log_scale.uniform_(-0.5, 0.5)
def step():
    neck.zero_grad(set_to_none=True)
    y.grad = None
    out = neck(y)
    (out.rate.sum() + out.y_hat.sum()).backward()
def forward():
    with torch.no_grad():
        neck(y)
for _ in range(3):
    step()
    forward()
steps, forwards = [], []
for _ in range(calls):
    t = time.perf_counter(); step(); steps.append(time.perf_counter() - t)
    t = time.perf_counter(); forward(); forwards.append(time.perf_counter() - t)
print(json.dumps({"forward_backward_s": statistics.median(steps),
                  "forward_no_grad_s": statistics.median(forwards)}))
"""


def _time(src: Path, rows: int, dim: int, calls: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", TIMER, str(src), str(rows), str(dim), str(calls)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="660f8bc", help="the commit to time against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("results/bench-lattice-eager-ab.json"))
    args = parser.parse_args()
    if min(args.rounds, args.calls, args.rows, args.dim) < 1:
        parser.error("--rounds, --calls, --rows and --dim must be positive")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    command = (
        f"python examples/lattice-eager-ab.py --old {args.old} --rounds {args.rounds} "
        f"--calls {args.calls} --rows {args.rows} --dim {args.dim} --out {args.out}"
    )
    started = provenance(command)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tree_at(ROOT, args.old) as (worktree, old):
        rounds = []
        for i in range(args.rounds):
            before = _time(worktree / "src", args.rows, args.dim, args.calls)
            after = _time(ROOT / "src", args.rows, args.dim, args.calls)
            ratio = before["forward_backward_s"] / after["forward_backward_s"]
            rounds.append({"old": before, "new": after, "forward_backward_speedup": ratio})
            print(
                f"round {i + 1}: forward + backward {1e3 * before['forward_backward_s']:.2f}"
                f" -> {1e3 * after['forward_backward_s']:.2f} ms ({ratio:.2f}x); no grad "
                f"{1e3 * before['forward_no_grad_s']:.2f} -> "
                f"{1e3 * after['forward_no_grad_s']:.2f} ms"
            )
    speedups = [r["forward_backward_speedup"] for r in rounds]
    payload = {
        **started,
        "old_commit": old,
        "input": {"rows": args.rows, "dim": args.dim, "dtype": "float32", "threads": 2},
        "calls_per_process": args.calls,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "rounds": rounds,
        "forward_backward_speedup": {
            "median": statistics.median(speedups),
            "min": min(speedups),
            "max": max(speedups),
        },
        "wall_s": time.perf_counter() - t0,
    }
    print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
