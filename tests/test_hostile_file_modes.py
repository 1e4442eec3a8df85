"""One input, one model, one seed: one file, however the computation is run.

``compile=True`` in float16 and bfloat16, the input's memory layout and dtype, torch's global
modes (``inference_mode``, deterministic algorithms) and copies of the module must not change
the bytes a bottleneck writes, nor the ``y_hat`` a file decodes to.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.lattices import lattice_by_name
from qlatent.rng import SeedKeys

HALF = [torch.bfloat16, torch.float16]
_MC = dict(samples=8, prior_samples=4, eval_samples=16, eval_prior_samples=4)


def _normal(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------ compile=True in half precision
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_a_compiled_lattice_in_half_precision_decodes_its_files_forward(dtype):
    """The rectangular lattice's fused hard path computed its float16 / bfloat16 steps in
    float32 (Inductor rounds only what it stores), so with ``compile=True`` the eval forward
    gave other indices and ``y_hat`` than the file, which the code model writes from the eager
    steps: ``decompress(compress(y))`` was not ``forward(y, SeedKeys(seed)).y_hat``."""
    torch.manual_seed(0)
    compiled = build("lattice", dim=40, compile=True).eval().to(dtype)
    eager = build("lattice", dim=40).eval().to(dtype)
    eager.load_state_dict(compiled.state_dict())
    y = _normal(500, 40).to(dtype)
    with torch.no_grad():
        out = compiled(y, generator=SeedKeys(7))
    assert torch.equal(out.indices, eager.quantize(y, generator=SeedKeys(7)))
    assert torch.equal(compiled.decompress(compiled.compress(y, seed=7)), out.y_hat)


@pytest.mark.parametrize(
    ("name", "rows", "dtype"),
    [
        ("e8", 1024, torch.bfloat16),
        ("e8", 1024, torch.float16),
        ("bw16", 1024, torch.bfloat16),
        ("bw16", 1024, torch.float16),
        ("leech", 256, torch.bfloat16),
    ],
    ids=lambda v: str(v).removeprefix("torch."),
)
def test_compiled_decoders_in_half_precision_find_the_eager_points(name, rows, dtype):
    """The fused E8, Λ16 and Λ24 decoders ran float16 / bfloat16 in float32 and found other
    points than the eager ones for about 1 row in 40 to 1000: a row's code then followed the
    batch it came in (the fused decoders take only batches above a threshold) and whether
    ``compile`` was set. Half-precision rows decode eagerly under ``compile=True`` now."""
    n = {"e8": 8, "bw16": 16, "leech": 24}[name]
    x = _normal(rows, n).to(dtype)
    fused, eager = lattice_by_name(name, compile=True), lattice_by_name(name)
    assert torch.equal(fused.closest_point(x), eager.closest_point(x))
    assert torch.equal(fused.dither_point(x), eager.dither_point(x))


@pytest.mark.parametrize(("lattice", "dim"), [("e8", 8), ("bw16", 16)])
def test_a_compiled_good_lattice_in_bfloat16_writes_the_eager_code(lattice, dim):
    """A good-lattice bottleneck with ``compile=True`` in bfloat16 codes each row as the eager
    module does (the same symbols, so the same payload), and its files decode to that hard
    path; rows coded alone get their codes in a batch."""
    torch.manual_seed(1)
    compiled = build("lattice", dim=dim, lattice=lattice, compile=True, **_MC).eval()
    eager = build("lattice", dim=dim, lattice=lattice, **_MC).eval()
    eager.load_state_dict(compiled.state_dict())
    compiled, eager = compiled.bfloat16(), eager.bfloat16()
    y = _normal(600, dim, seed=4, scale=2.0).bfloat16()
    k = compiled.quantize(y, generator=SeedKeys(5))
    assert torch.equal(k, eager.quantize(y, generator=SeedKeys(5)))
    assert torch.equal(compiled.quantize(y[:63], generator=SeedKeys(5)), k[:63])
    hard = eager(y, generator=SeedKeys(5)).y_hat
    assert torch.equal(compiled.decompress(compiled.compress(y, seed=5)), hard)


# ------------------------------------------------------------------ modes that change nothing
def _coded(name: str):
    torch.manual_seed(2)
    if name == "lattice":
        return build("lattice", dim=6).eval()
    if name == "lattice[e8+z]":
        return build("lattice", dim=10, lattice=["e8", "z", "z"], **_MC).eval()
    if name == "lattice[a2,gaussian]":
        return build("lattice", dim=6, lattice="a2", prior="gaussian", **_MC).eval()
    module = {
        "vq": lambda: build("vq", dim=6, num_codes=5),
        "learnable_lattice": lambda: build("learnable_lattice", dim=6, num_codes=64),
    }[name]().eval()
    module.update(_normal(200, module.in_dim, seed=3, scale=2.0))
    return module


CODED = ["lattice", "lattice[e8+z]", "lattice[a2,gaussian]", "vq", "learnable_lattice"]


@pytest.mark.parametrize("name", CODED)
def test_the_inputs_layout_and_dtype_leave_the_file_alone(name):
    """A channels-last, permuted, transposed, expanded or float64 copy of the same numbers
    writes the same bytes as the contiguous float32 input."""
    module = _coded(name)
    y4 = _normal(3, module.in_dim, 4, 5, seed=5, scale=2.0)
    data = module.compress(y4, seed=9)
    assert module.compress(y4.contiguous(memory_format=torch.channels_last), seed=9) == data
    assert module.compress(y4.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), seed=9) == data
    assert module.compress(y4.double(), seed=9) == data
    rows = y4[:, :, 0, 0]
    flat = module.compress(rows, seed=9)
    assert module.compress(rows.t().contiguous().t(), seed=9) == flat
    wide = rows[:1].expand(3, -1)
    assert module.compress(wide, seed=9) == module.compress(wide.contiguous(), seed=9)


@pytest.mark.parametrize("name", CODED)
def test_torchs_global_modes_leave_the_file_alone(name):
    """``inference_mode`` and deterministic algorithms write and read the same bytes."""
    module = _coded(name)
    y = _normal(40, module.in_dim, seed=6, scale=2.0)
    data = module.compress(y, seed=4)
    y_hat = module.decompress(data)
    with torch.inference_mode():
        assert module.compress(y, seed=4) == data
        assert torch.equal(module.decompress(data), y_hat)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert module.compress(y, seed=4) == data
        assert torch.equal(module.decompress(data), y_hat)
    finally:
        torch.use_deterministic_algorithms(was)


@pytest.mark.parametrize("name", CODED)
def test_copies_of_the_module_write_and_read_the_same_file(name):
    """A deep copy, weights through ``torch.save`` / ``torch.load(weights_only=True)``, and a
    round trip through float64 write the same bytes and decode the original's file."""
    module = _coded(name)
    y = _normal(30, module.in_dim, seed=7, scale=2.0)
    data = module.compress(y, seed=1)
    y_hat = module.decompress(data)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    loaded = _coded(name)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    copies = [copy.deepcopy(module), loaded, copy.deepcopy(module).double().float()]
    for other in copies:
        assert other.compress(y, seed=1) == data
        assert torch.equal(other.decompress(data), y_hat)
