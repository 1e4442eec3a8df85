"""Entropy-coding throughput: ``compress`` / ``decompress`` of lattice and codeword symbols.

The lattice case codes ``rows × dim`` coordinates of a rectangular-lattice bottleneck with
spacing 0.5 and Laplace scale 2 (about 3 bits per symbol) from inputs y ~ 3·N(0, 1); the VQ case
codes ``rows`` codeword indices of a K = 512 codebook. Each timing is one whole call, as a user
makes it: dither, coordinates, ANS coding and the container for ``compress``; parsing,
checksum, decoding and reconstruction for ``decompress``. The coded size is compared with the
exact hard-path rate of the same symbols.

CompressAI's ``EntropyBottleneck`` cannot be installed beside this torch; its figures on this
machine (about 13 M symbols/s encode, 7 M decode, 0.026% overhead) are quoted, not re-run.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..bottlenecks import build
from ..coding import unpack
from ..rng import SeedKeys
from .timing import time_cases

COMPRESSAI_QUOTED = {
    "encode_symbols_per_s": 13e6,
    "decode_symbols_per_s": 7e6,
    "overhead_percent": 0.026,
    "note": "CompressAI EntropyBottleneck on this machine, quoted (not installable beside "
    "this torch)",
}


def bench_coding(
    *, rows: int = 25_000, dim: int = 40, threads: int = 1, repeats: int = 5
) -> dict[str, Any]:
    """Median symbols per second of ``compress`` and ``decompress``, and the size overhead."""
    if rows < 1 or dim < 1 or repeats < 1:
        raise ValueError("rows, dim and repeats must be positive")
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    lattice = build("lattice", dim=dim, init_spacing=0.5, init_scale=2.0).eval()
    y_lattice = 3.0 * torch.randn(rows, dim, generator=g)
    torch.manual_seed(0)
    vq = build("vq", dim=dim, num_codes=512).eval()
    y_vq = torch.randn(rows, dim, generator=g)

    cases: dict[str, Any] = {}
    for name, neck, y, symbols in (
        ("lattice", lattice, y_lattice, rows * dim),
        ("vq", vq, y_vq, rows),
    ):
        data = neck.compress(y, seed=1)
        hard = neck(y, generator=SeedKeys(1))
        exact_bits = hard.rate.double().sum().item() / math.log(2)
        header, payload = unpack(data)
        timing = time_cases(
            {
                "encode": lambda neck=neck, y=y: neck.compress(y, seed=1),
                "decode": lambda neck=neck, data=data: neck.decompress(data),
            },
            repeats=repeats,
            block=repeats,
            warmup=1,
        )
        cases[name] = {
            "symbols": symbols,
            "exact_bits": exact_bits,
            "file_bytes": len(data),
            "header_bytes": header.size,
            "payload_overhead_percent": 100.0 * (8 * len(payload) - exact_bits) / exact_bits,
            "bits_per_symbol": exact_bits / symbols,
            "round_trip_exact": bool(torch.equal(neck.decompress(data), hard.y_hat)),
            "encode_symbols_per_s": symbols / timing["encode"]["median_s"],
            "decode_symbols_per_s": symbols / timing["decode"]["median_s"],
            "timing": timing,
        }
    return {
        "rows": rows,
        "dim": dim,
        "threads": threads,
        "repeats": repeats,
        "cases": cases,
        "compressai_quoted": COMPRESSAI_QUOTED,
        "goal": "encode and decode at least CompressAI's 13 / 7 M symbols/s",
    }


def format_coding(result: dict[str, Any]) -> str:
    lines = [f"{'case':10s} {'encode':>10s} {'decode':>10s} {'overhead':>10s}  (M symbols/s)"]
    for name, c in result["cases"].items():
        lines.append(
            f"{name:10s} {c['encode_symbols_per_s'] / 1e6:10.2f} "
            f"{c['decode_symbols_per_s'] / 1e6:10.2f} {c['payload_overhead_percent']:9.4f}%"
        )
    q = result["compressai_quoted"]
    lines.append(
        f"{'CompressAI':10s} {q['encode_symbols_per_s'] / 1e6:10.2f} "
        f"{q['decode_symbols_per_s'] / 1e6:10.2f} {q['overhead_percent']:9.4f}%  (quoted)"
    )
    return "\n".join(lines)
