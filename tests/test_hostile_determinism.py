"""Hostile input: encoder/decoder determinism (README, "Real bitstreams" and "Hostile input").

A file written in one setting must decode bit for bit in another, and the same input must give
the same bytes: here across thread counts (one subprocess per setting), batch compositions
(a prefix of the rows gets the batch's dither, so its rows must decode to the batch's rows),
module dtypes and a fresh module loaded from the weights.

Each test names what happened before: a Leech file written with 4 threads failed to decode
with 1 ("the decoder did not end where the encoder began"), and 1 to 3 rows of Λ24 or Λ16
coded alone decoded to another y_hat than the same rows in a larger batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.coding import CodingError
from qlatent.lattices import tile
from qlatent.rng import counter_uniform

# the good lattices and every codable family, small: (name, builder arguments, update first)
CASES = {
    "rect": ("lattice", {"dim": 8, "init_spacing": 0.5}, False),
    "e8": ("lattice", {"dim": 16, "lattice": "e8", "init_spacing": 0.7}, False),
    "bw16": ("lattice", {"dim": 16, "lattice": "bw16", "init_spacing": 0.7}, False),
    "leech": ("lattice", {"dim": 24, "lattice": "leech", "init_spacing": 0.7}, False),
    "leech+bw16": (
        "lattice",
        {"dim": 40, "lattice": ["leech", "bw16"], "init_spacing": 0.7},
        False,
    ),
    "d4": ("lattice", {"dim": 8, "lattice": "d4", "init_spacing": 0.7}, False),
    "a2": ("lattice", {"dim": 6, "lattice": "a2", "init_spacing": 0.7}, False),
    "e8-gaussian": ("lattice", {"dim": 8, "lattice": "e8", "prior": "gaussian"}, False),
    "leech-gaussian": ("lattice", {"dim": 24, "lattice": "leech", "prior": "gaussian"}, False),
    "vq-uniform": ("vq", {"dim": 8, "num_codes": 32}, False),
    "vq": ("vq", {"dim": 8, "num_codes": 32}, True),
    "vq_ema": ("vq_ema", {"dim": 8, "num_codes": 32}, True),
    "soft_em_vq": ("soft_em_vq", {"dim": 8, "num_codes": 32}, True),
    "learnable_lattice": ("learnable_lattice", {"dim": 8}, True),
    "scalar_st": ("scalar_st", {"dim": 8}, True),
    "vector_st": ("vector_st", {"dim": 8}, True),
}
#: one of each code model for the subprocesses (each case is built and coded in both)
THREAD_CASES = [c for c in CASES if c not in ("leech+bw16", "a2", "leech-gaussian")]


def _make(case: str, seed: int = 0):
    name, kwargs, update = CASES[case]
    torch.manual_seed(seed)
    bn = build(name, **kwargs).eval()
    if update:
        bn.update(2 * torch.randn(400, bn.dim, generator=torch.Generator().manual_seed(5)))
    return bn


def _rows(dim: int, n: int = 64) -> torch.Tensor:
    y = 2 * torch.randn(n, dim, generator=torch.Generator().manual_seed(1))
    y[::3] = torch.round(y[::3] * 2) / 2  # rows on a half-step grid: ties
    return y


# ------------------------------------------------------------------------- threads
# Writes (mode "w") or reads (mode "r") one file per case in a folder, with a given number of
# threads: the writer saves the weights, the input and its hard path's y_hat; the reader loads
# the weights into a fresh module, decodes the file and codes the input again.
THREADS_SCRIPT = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
sys.path.insert(0, sys.argv[4])
from test_hostile_determinism import THREAD_CASES, _make, _rows
from qlatent.rng import SeedKeys
mode, folder = sys.argv[2], sys.argv[3]
report = {}
for case in THREAD_CASES:
    if mode == "w":
        bn = _make(case)
        y = _rows(bn.dim)
        data = bn.compress(y, seed=9)
        hard = bn.dequantize(bn.quantize(y, generator=SeedKeys(9)), generator=SeedKeys(9))
        torch.save({"weights": bn.state_dict(), "y": y, "hard": hard}, f"{folder}/{case}.pt")
        open(f"{folder}/{case}.qlc", "wb").write(data)
        report[case] = "written"
        continue
    saved = torch.load(f"{folder}/{case}.pt")
    bn = _make(case, seed=1)
    bn.load_state_dict(saved["weights"])
    data = open(f"{folder}/{case}.qlc", "rb").read()
    try:
        exact = torch.equal(bn.decompress(data), saved["hard"])
        report[case] = "exact" if exact else "another y_hat"
    except Exception as err:
        report[case] = f"{type(err).__name__}: {err}"
    if bn.compress(saved["y"], seed=9) != data:
        report[case] += ", other bytes"
print(json.dumps(report))
"""


def _run(threads: int, mode: str, folder) -> dict[str, str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            THREADS_SCRIPT,
            str(threads),
            mode,
            str(folder),
            str(Path(__file__).parent),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def test_files_decode_and_recode_identically_on_another_thread_count(tmp_path):
    """Written with 4 threads and read with 1, every code model's file decodes to the
    writer's hard path and the reader codes the same bytes. Before, a Leech file written
    with 4 threads failed to decode with 1: the Leech dither's float32 basis product rounded
    by thread count."""
    _run(4, "w", tmp_path)
    assert _run(1, "r", tmp_path) == dict.fromkeys(THREAD_CASES, "exact")


# ---------------------------------------------------------------- batch composition
@pytest.mark.parametrize("case", ["e8", "bw16", "leech", "leech+bw16", "a2", "e8-gaussian"])
def test_a_prefix_of_the_rows_decodes_to_the_batch_rows(case):
    """Row i gets the dither of position i whatever follows it, so the first k rows coded on
    their own decode to the batch's first k rows. Before, Leech and Λ16 rows coded in calls of
    1 to 3 rows got another dither (torch's float32 matrix product takes another kernel for
    few rows) and decoded to another y_hat."""
    bn = _make(case)
    y = _rows(bn.dim, 40)
    batch = bn.decompress(bn.compress(y, seed=3))
    for k in (1, 2, 3, 5, 17):
        assert torch.equal(bn.decompress(bn.compress(y[:k], seed=3)), batch[:k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "name, dim",
    [("leech", 48), ("bw16", 16), ("e8", 16), ("d4", 4), ("d5*", 5), ("a2", 2), ("a8", 8)],
)
def test_the_dither_product_of_a_fixed_lattice_is_formed_in_float64(name, dim, dtype):
    """The draws (on the 2^-24 grid) times the integer or half-integer bases of Λ24, Λ16, E8,
    D_n and D_n* sum exactly in float64 (A_n's irrational basis: to float64 rounding); the
    product is that sum rounded once to the draws' dtype, the same for one row as in a batch
    (Λ24 ⊕ Λ24: the sum hands each block its columns). Before, float32 products rounded by
    kernel, and the kernel depended on the number of rows and threads."""
    lattice = tile(name, dim)
    r = counter_uniform(torch.tensor(7, dtype=torch.int32), (300, dim), dtype)
    got = lattice.points_from_unit(r)
    basis = torch.block_diag(*(b.generator_matrix.T.double() for b in lattice.blocks))
    assert got.dtype == dtype and torch.equal(got, (r.double() @ basis).to(dtype))
    one_by_one = torch.cat([lattice.points_from_unit(r[i : i + 1]) for i in range(20)])
    assert torch.equal(one_by_one, got[:20])


# ------------------------------------------------------------- dtypes and weights
@pytest.mark.parametrize("case", ["rect", "leech", "vq", "learnable_lattice"])
def test_a_file_names_its_model_dtype_and_a_fresh_module_decodes_it(case):
    """A float64 copy of the same weights refuses a float32 file (the model digest covers the
    weights' dtype) rather than decode it in another arithmetic; a fresh module loaded from
    the state dict decodes it bit for bit."""
    bn = _make(case)
    y = _rows(bn.dim, 20)
    data = bn.compress(y, seed=2)
    wide = _make(case, seed=1).double()
    wide.load_state_dict(bn.state_dict())
    with pytest.raises(CodingError, match="different model"):
        wide.decompress(data)
    fresh = _make(case, seed=1)
    fresh.load_state_dict(bn.state_dict())
    assert torch.equal(fresh.decompress(data), bn.decompress(data))
    assert fresh.compress(y, seed=2) == data
