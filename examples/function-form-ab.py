"""What the ``torch.func``-ready form of the custom autograd Functions costs outside a transform.

torch runs a custom ``autograd.Function`` under its transforms only in the ``setup_context``
form, whose ``apply`` binds the arguments through ``inspect.signature`` on every call. The
library's Functions are written in that form and run through a twin of the older form outside
transforms (``qlatent._utils.with_plain_twin``). This script times, in separate one-thread
processes alternated ``--rounds`` times, the training steps (forward + backward) that call them
most and the Laplace cell rate alone (one Function call forward and back), in three trees:
``--old`` (default ``5028b6d``, the Functions in the older form alone), the working tree, and
the working tree made to call every Function through its ``setup_context`` form (what the
twins save). Each process takes the median of ``--calls`` steps after three untimed ones. Run
it on an otherwise idle machine.

    python examples/function-form-ab.py [--old 5028b6d] [--rounds 3] [--calls 30]
        [--out results/function-form-ab.json]
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

#: the modules that call the Functions through ``apply_function`` (the setup_context variant
#: replaces it there by the plain ``Function.apply``)
CALLERS = (
    "qlatent.bottlenecks.lattice",
    "qlatent.bottlenecks._lattice_density",
    "qlatent.bottlenecks._codebook_loss",
    "qlatent.priors.laplace",
    "qlatent.priors.gaussian",
)

#: run in a fresh interpreter with the tree to time first on sys.path
TIMER = """
import importlib, json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import qlatent
assert qlatent.__file__.startswith(sys.argv[1]), qlatent.__file__
from qlatent.bottlenecks import build
calls, variant = int(sys.argv[2]), sys.argv[3]
if variant == "setup_context":
    for name in sys.argv[4].split(","):
        importlib.import_module(name).apply_function = lambda function, *a: function.apply(*a)
torch.set_num_threads(1)
torch.manual_seed(0)
cases = {
    "e8^5, 100 x 40": (dict(dim=40, lattice="e8"), 100),
    "leech + bw16, 100 x 40": (dict(dim=40, lattice=["leech", "bw16"]), 100),
    "rectangular, 100 x 40": (dict(dim=40), 100),
    "rectangular, 16384 x 64": (dict(dim=64), 16384),
}
out = {}
for case, (kwargs, rows) in cases.items():
    neck = build("lattice", **kwargs).train()
    y = (3 * torch.randn(rows, kwargs["dim"])).requires_grad_(True)
    def step():
        neck.zero_grad(set_to_none=True)
        y.grad = None
        o = neck(y, generator=torch.Generator().manual_seed(1))
        (o.rate.sum() + o.y_hat.square().sum()).backward()
    for _ in range(3):
        step()
    times = []
    for _ in range(calls):
        t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    out[case] = statistics.median(times)
from qlatent.priors.laplace import cell_constants, cell_log_prob_from_constants
eta = (3 * torch.randn(100, 40)).requires_grad_(True)
spacing, scale = torch.ones(40, requires_grad=True), torch.ones(40, requires_grad=True)
def step():
    eta.grad = spacing.grad = scale.grad = None
    cell_log_prob_from_constants(eta, *cell_constants(spacing, scale)).sum().backward()
for _ in range(3):
    step()
times = []
for _ in range(calls):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
out["Laplace cell rate alone (one Function), 100 x 40"] = statistics.median(times)
print(json.dumps(out))
"""


def _time(src: Path, calls: int, variant: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", TIMER, str(src), str(calls), variant, ",".join(CALLERS)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="5028b6d", help="the commit to time against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("results/function-form-ab.json"))
    args = parser.parse_args()
    if min(args.rounds, args.calls) < 1:
        parser.error("--rounds and --calls must be positive")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    command = (
        f"python examples/function-form-ab.py --old {args.old} --rounds {args.rounds} "
        f"--calls {args.calls} --out {args.out}"
    )
    started = provenance(command)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    with tree_at(ROOT, args.old) as (worktree, old):
        rounds = []
        for i in range(args.rounds):
            row = {
                "old": _time(worktree / "src", args.calls, "plain"),
                "new": _time(ROOT / "src", args.calls, "plain"),
                "new_setup_context": _time(ROOT / "src", args.calls, "setup_context"),
            }
            rounds.append(row)
            print(f"round {i + 1}: " + json.dumps(row))
    summary = {}
    for case in rounds[0]["old"]:
        old_s = statistics.median(r["old"][case] for r in rounds)
        new_s = statistics.median(r["new"][case] for r in rounds)
        setup_s = statistics.median(r["new_setup_context"][case] for r in rounds)
        summary[case] = {
            "old_ms": 1e3 * old_s,
            "new_ms": 1e3 * new_s,
            "new_setup_context_ms": 1e3 * setup_s,
            "new_over_old": new_s / old_s,
            "setup_context_over_old": setup_s / old_s,
        }
    payload = {
        **started,
        "old_commit": old,
        "threads": 1,
        "calls_per_process": args.calls,
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "rounds": rounds,
        "median_over_rounds": summary,
        "wall_s": time.perf_counter() - t0,
    }
    print(json.dumps(summary, indent=1))
    print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
