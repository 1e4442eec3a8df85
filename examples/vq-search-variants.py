"""Ways to find the nearest codeword on the CPU, timed side by side, and where a compiled ``vq``
eval call spends its time.

``vq``'s eager search (``nearest_codeword``: ``addmm`` and the weighted search per chunk) and its
``compile=True`` search (the same ``addmm``, then ``_first_nearest`` compiled: the minimum and
the first code attaining it along each row) next to the variants tried for the compiled pass
and not kept, on the same ``--rows`` × 64 float32 input and a codebook initialised as ``vq``'s,
at each ``--codes`` K, two threads:

- ``compiled columns``: ``mm`` of e·yᵀ (codes down the columns), then ‖e‖² − 2·e·y, its
  minimum over the codes and the first code attaining it in one compiled pass;
- ``compiled argmin``: ``argmin`` over the codes of that column layout, compiled;
- the pieces, in chunks of the rows ``vq`` uses: ``mm`` and ``addmm`` alone, the compiled row
  and column passes alone on one chunk, and ATen's ``amin`` over the same buffers.

Every variant must give the eager search's indices. Cases run ``--rounds`` times interleaved,
the median of ``--calls`` calls after two untimed ones. Then ``torch.profiler`` records 20 eval
calls of ``build("vq", compile=True)`` at K = 128 (self CPU time per call, the top operators).

    python examples/vq-search-variants.py [--rows 16384] [--codes 128,512,4096] \
        [--out results/vq-search-variants.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from qlatent.bottlenecks import _codebook as cb
from qlatent.bottlenecks import build
from qlatent.results import provenance, write_json


def _columns_pass(products: torch.Tensor, norms: torch.Tensor, codes: torch.Tensor):
    distances = norms - 2.0 * products
    least = distances.amin(0, keepdim=True)
    return torch.where(distances == least, codes, codes.shape[0]).amin(0)


def _argmin_pass(products: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    return (norms - 2.0 * products).argmin(0)


def _chunked(z: torch.Tensor, rows: int, step) -> torch.Tensor:
    out = torch.empty(z.shape[0], dtype=torch.int64)
    for start in range(0, z.shape[0], rows):
        out[start : start + rows] = step(z[start : start + rows])
    return out


def cases_for(z: torch.Tensor, codebook: torch.Tensor) -> dict:
    num_codes = codebook.shape[0]
    rows = min(z.shape[0], max(cb._MIN_CHUNK_ROWS, cb._CHUNK_ELEMENTS // num_codes))
    norms = codebook.square().sum(1)
    column_norms, codes = norms.unsqueeze(1), torch.arange(num_codes).unsqueeze(1)
    row_codes = torch.arange(num_codes).unsqueeze(0)
    rows_pass = cb._compiled_first_nearest()
    columns_pass = torch.compile(_columns_pass, dynamic=True)
    argmin_pass = torch.compile(_argmin_pass, dynamic=True)
    products = torch.mm(codebook, z[:rows].t())
    distances = torch.addmm(norms, z[:rows], codebook.t(), alpha=-2.0)
    return {
        "eager search (vq)": lambda: cb.nearest_codeword(z, codebook),
        "compiled rows (vq, compile=True)": lambda: cb.nearest_codeword(z, codebook, compile=True),
        "compiled columns": lambda: _chunked(
            z, rows, lambda c: columns_pass(torch.mm(codebook, c.t()), column_norms, codes)
        ),
        "compiled argmin": lambda: _chunked(
            z, rows, lambda c: argmin_pass(torch.mm(codebook, c.t()), column_norms)
        ),
        "mm alone, per chunk": lambda: _chunked(
            z, rows, lambda c: torch.mm(codebook, c.t())[0].long()
        ),
        "addmm alone, per chunk": lambda: _chunked(
            z, rows, lambda c: torch.addmm(norms, c, codebook.t(), alpha=-2.0)[:, 0].long()
        ),
        "compiled row pass alone, one chunk": lambda: rows_pass(distances, row_codes),
        "compiled column pass alone, one chunk": lambda: columns_pass(
            products, column_norms, codes
        ),
        "ATen amin(1) of one chunk's distances": lambda: distances.amin(1),
        "ATen amin(0) of one chunk's products": lambda: products.amin(0),
    }


def time_round(cases: dict, calls: int) -> dict:
    out = {}
    for name, call in cases.items():
        for _ in range(2):
            call()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


def profile_eval(z: torch.Tensor, calls: int = 20) -> dict:
    module = build("vq", dim=z.shape[1], num_codes=128, compile=True).eval()
    with torch.inference_mode():
        for _ in range(5):
            module(z)
        with torch.profiler.profile() as prof:
            for _ in range(calls):
                module(z)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return {
        "calls": calls,
        "self_cpu_ms_per_call": total / calls / 1e3,
        "top": [
            {
                "name": e.key,
                "self_cpu_ms_per_call": e.self_cpu_time_total / calls / 1e3,
                "count_per_call": e.count / calls,
            }
            for e in events[:12]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--codes", default="128,512,4096")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    try:
        codes = [int(k) for k in args.codes.split(",")]
    except ValueError:
        parser.error(f"--codes takes comma-separated integers, got {args.codes!r}")
    if args.rows < 64 or args.rounds < 1 or args.calls < 1 or any(k < 2 for k in codes):
        parser.error("need --rows >= 64, --rounds and --calls >= 1, every K >= 2")
    torch.set_num_threads(2)
    command = " ".join(["python examples/vq-search-variants.py", *(argv or sys.argv[1:])])
    payload = {**provenance(command), "rows": args.rows, "dim": 64, "threads": 2, "by_K": {}}
    z = torch.randn(args.rows, 64, generator=torch.Generator().manual_seed(0))
    for k in codes:
        torch.manual_seed(k)
        codebook = build("vq", dim=64, num_codes=k).codebook.detach()
        cases = cases_for(z, codebook)
        expected = cb.nearest_codeword(z, codebook)
        for name in ("compiled rows (vq, compile=True)", "compiled columns", "compiled argmin"):
            if not torch.equal(cases[name](), expected):
                raise SystemExit(f"{name} at K={k}: not the eager search's indices")
        rounds = [time_round(cases, args.calls) for _ in range(args.rounds)]
        payload["by_K"][f"K={k}"] = {
            name: {"median_ms_per_round": [r[name] * 1e3 for r in rounds]} for name in cases
        }
        for name in cases:
            ms = ", ".join(f"{r[name] * 1e3:.3f}" for r in rounds)
            print(f"K={k:5d} {name:40s} {ms} ms")
    profile = payload["profile_compiled_vq_eval_K128"] = profile_eval(z)
    print(f"compiled vq eval, K=128: {profile['self_cpu_ms_per_call']:.2f} ms self CPU per call")
    for e in profile["top"]:
        print(f"  {e['name'][:50]:50s} {e['self_cpu_ms_per_call']:.3f} ms x{e['count_per_call']:g}")
    if args.out:
        print(f"wrote {write_json(payload, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
