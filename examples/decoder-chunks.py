"""An eager lattice decoder's rows/s and page faults per call at several chunk sizes, in fresh
processes under the process's own allocator settings.

The eager decoders split a large input into chunks of rows
(``qlatent.lattices._utils.in_chunks``) so that their temporaries stay bounded. Under glibc's
defaults a chunk's temporaries of several MB are mapped from the system and, depending on what
the process freed before, faulted in again on every call, so the same code runs at one speed in
one process and at half of it in the next.
Minor page faults per call are counted exactly (``getrusage``) and do not depend on the
machine's drift. Each of ``--processes`` fresh processes decodes the same ``--rows`` × 64 float32
input, viewed as rows of the lattice's dimension, in chunks of each ``--chunks`` size (rows of
that dimension) in turn, ``--rounds`` times interleaved, the median of ``--calls`` calls after two
untimed ones, two threads; every chunk size must give the whole input's points.

    python examples/decoder-chunks.py --lattice e8 --chunks 16384,32768,65536,262144 \
        [--processes 4] [--estimate-g e8,bw16] [--out results/e8-decoder-chunks.json]

``--estimate-g`` first runs ``qlatent bench lattices``' Monte-Carlo estimate of G for those
lattices in each process, and ``--beside`` decodes the same input with another lattice's eager
decoder (``tile(NAME, 64)``, untimed) after every timed call, as that benchmark interleaves its
cases: so that the decoder meets the heap that benchmark leaves behind.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qlatent.bench.timing import allocator_settings
from qlatent.lattices import LITERATURE_NSM, tile
from qlatent.results import provenance, write_json

#: each eager decoder's module, its closest-point rule on a chunk of rows, and its dimension
DECODERS = {
    "e8": ("qlatent.lattices.e8", "_closest_e8", 8),
    "d4": ("qlatent.lattices._utils", "round_to_dn", 4),
    "bw16": ("qlatent.lattices.bw16", "_closest_bw16", 16),
}


def one_process(
    lattice: str,
    rows: int,
    chunks: list[int],
    rounds: int,
    calls: int,
    estimate_g: Sequence[str] = (),
    target_rse: float = 5e-4,
    beside: str | None = None,
) -> dict:
    import importlib

    import torch

    from qlatent.bench.geometry import estimate_nsm

    torch.set_num_threads(2)
    for name in estimate_g:  # as `qlatent bench lattices` does before its timings
        estimate_nsm(name, target_rse=target_rse, seed=0)
    module_name, rule_name, dim = DECODERS[lattice]
    rule = getattr(importlib.import_module(module_name), rule_name)
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(0)).view(-1, dim)

    def decode(chunk: int) -> torch.Tensor:
        out = torch.empty_like(x)
        for start in range(0, x.shape[0], chunk):
            out[start : start + chunk] = rule(x[start : start + chunk])
        return out

    reference = decode(x.shape[0])
    other_input = x.view(rows, 64).clone()
    other_lattice = tile(beside, 64) if beside else None
    other = (lambda: other_lattice.closest_point(other_input)) if beside else (lambda: None)
    result: dict[str, list] = {str(c): [] for c in chunks}
    for _ in range(rounds):
        for chunk in chunks:
            if not torch.equal(decode(chunk), reference):
                raise SystemExit(f"chunk {chunk}: other points than the whole input's")
            decode(chunk)
            faults, times = 0, []
            for _ in range(calls):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                decode(chunk)
                times.append(time.perf_counter() - start)
                faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
                other()  # untimed, its faults not counted
            faults /= calls
            result[str(chunk)].append(
                {"rows_per_s": rows / statistics.median(times), "faults_per_call": faults}
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lattice", choices=sorted(DECODERS), default="e8")
    parser.add_argument("--chunks", default="16384,32768,65536,262144")
    parser.add_argument("--rows", type=int, default=16384, help="input rows of 64 coordinates")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument(
        "--estimate-g", default="", help="lattices whose G is estimated first in each process"
    )
    parser.add_argument("--beside", default=None, help="a lattice decoded after every timed call")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.out and args.out.is_dir():  # refused now, not after the work
        parser.error(f"--out {args.out} is a folder; it takes the path of a JSON file")
    chunks = [int(c) for c in args.chunks.split(",")]
    if min(chunks) < 1 or args.rows < 1 or args.processes < 1 or args.calls < 1:
        parser.error("--chunks, --rows, --processes and --calls must be positive")
    estimate_g = [n for n in args.estimate_g.split(",") if n]
    unknown = sorted(set(estimate_g) - set(LITERATURE_NSM))
    if unknown:
        parser.error(f"--estimate-g: unknown lattices {unknown}; known: {sorted(LITERATURE_NSM)}")
    if args.beside is not None:
        try:
            tile(args.beside, 64)
        except ValueError as err:
            parser.error(f"--beside: {err}")
    if args.worker:
        out = one_process(
            args.lattice, args.rows, chunks, args.rounds, args.calls, estimate_g, beside=args.beside
        )
        print(json.dumps(out))
        return
    command = " ".join(["python", "examples/decoder-chunks.py", *sys.argv[1:]])
    started = provenance(command)
    worker = [sys.executable, __file__, "--worker", *sys.argv[1:]]
    runs = []
    for i in range(args.processes):
        out = subprocess.run(worker, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out))
        summary = ", ".join(
            f"{c}: {statistics.median(r['rows_per_s'] for r in runs[-1][str(c)]) / 1e3:.0f} k "
            f"({statistics.median(r['faults_per_call'] for r in runs[-1][str(c)]):.0f} faults)"
            for c in chunks
        )
        print(f"process {i + 1}: {summary}")
    payload = {
        **started,
        "lattice": args.lattice,
        "input": {"rows": args.rows, "dim": 64, "dtype": "float32", "threads": 2},
        "allocator": allocator_settings(),
        "chunks": chunks,
        "estimate_g_first": estimate_g,
        "beside": args.beside,
        "processes": runs,
    }
    if args.out:
        print(f"wrote {write_json(payload, args.out)}")


if __name__ == "__main__":
    main()
