"""The library with its tensors on the device named by ``QLATENT_TEST_DEVICE`` (``cpu`` by
default; ``QLATENT_TEST_DEVICE=cuda python -m pytest tests/test_device.py`` on a machine with a
GPU and a CUDA build of torch).

Parameters and inputs live on the device; generators stay on the CPU, since dither is common
randomness drawn from the generator handed in (DESIGN.md §1). Checked there: every bottleneck's
contract (shapes, outputs on the device, finite non-negative rate, gradients reaching the input,
``dequantize(quantize(y))`` equal to the eval forward) and, against the same module on the CPU,
equal symbols and nearly equal outputs where both draw the same randomness; every lattice
family's closest point as near as the sphere decoder's, in float32 and float64, and its dither
inside the cell; entropy-coded files (the lattices' and, after ``update()``, the counted code
models') byte for byte the CPU's, decoded back on the device; the IWAE estimate equal to the
CPU's; a short training run that resumes exactly. On the default CPU the comparisons with the CPU
are trivially equal and the rest of each check still applies.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.coding import ideal_bits
from qlatent.eval import iwae_nll
from qlatent.lattices import lattice_by_name, tile
from qlatent.rng import SeedKeys
from run_helpers import without_time
from test_contract import NAMES, make, make_input
from test_good_lattices import FAMILIES, _adversarial, _assert_as_near_as_reference

DEVICE = torch.device(os.environ.get("QLATENT_TEST_DEVICE", "cpu"))
CPU = torch.device("cpu")
F64 = torch.float64

if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.exit(f"QLATENT_TEST_DEVICE={DEVICE} but CUDA is not available here", returncode=4)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def on_device(tensor: torch.Tensor | None) -> None:
    if tensor is not None:
        assert tensor.device.type == DEVICE.type, tensor.device


def twins(name: str, training: bool):
    """The same module (same parameters and buffers) on the CPU and on the device."""
    cpu = make(name).train(training)
    return cpu, copy.deepcopy(cpu).to(DEVICE)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_contract_holds_on_the_device(name, training):
    cpu_module, module = twins(name, training)
    y_cpu = make_input(module, (4, 5), seed=2)
    y = y_cpu.to(DEVICE).requires_grad_(training)
    out = module(y, generator=gen(3))
    for value in (out.y_hat, out.rate, out.aux_loss, out.indices, *out.stats.values()):
        on_device(value)
    assert out.y_hat.shape == y.shape[:1] + (module.dim,) + y.shape[2:]
    assert torch.isfinite(out.rate).all() and (out.rate >= 0).all()
    if training:
        (out.y_hat.pow(2).sum() + out.rate.sum() + out.aux_loss).backward()
        on_device(y.grad)
        assert torch.isfinite(y.grad).all() and (y.grad != 0).any()
    elif module.discrete:
        indices = module.quantize(y, generator=gen(3))
        on_device(indices)
        assert torch.equal(module.dequantize(indices, generator=gen(3)), out.y_hat)
    # every method's randomness comes from the CPU generator (drawn there, or a key drawn there
    # and hashed on the device): the CPU twin sees the same numbers
    ref = cpu_module(y_cpu, generator=gen(3))
    if out.indices is not None:
        assert torch.equal(out.indices.cpu(), ref.indices)
    torch.testing.assert_close(out.y_hat.detach().cpu(), ref.y_hat.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.rate.detach().cpu(), ref.rate.detach(), rtol=1e-3, atol=1e-3)
    for key, value in ref.stats.items():
        torch.testing.assert_close(out.stats[key].cpu(), value, rtol=1e-3, atol=1e-3, msg=key)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,volume,count", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_closest_point_on_the_device_is_exact(name, volume, count, dtype):
    lat = lattice_by_name(name)
    scale = lat.volume.item() ** (1 / lat.dim)
    x = (3 * scale * torch.randn(count, lat.dim, generator=gen(2), dtype=F64)).to(dtype)
    adv = _adversarial(lat, max(count // 4, 3), seed=3, dtype=dtype)
    for points in (x, adv):
        got = lat.closest_point(points.to(DEVICE))
        on_device(got)
        assert got.dtype == dtype
        _assert_as_near_as_reference(lat, points, got.cpu())


@pytest.mark.parametrize("name", ["e8", "bw16", "leech"])
def test_many_rows_decode_on_the_device_as_on_the_cpu(name):
    """Enough rows that the CPU decodes them in several chunks (the device in fewer, larger
    ones): the same lattice points."""
    lat = lattice_by_name(name)
    x = 3 * torch.randn(5000, lat.dim, generator=gen(8), dtype=F64)
    assert torch.equal(lat.closest_point(x.to(DEVICE)).cpu(), lat.closest_point(x))


@pytest.mark.parametrize("name", ["z", "a2", "d4", "e8", "bw16", "leech"])
def test_dither_on_the_device_lies_in_the_cell(name):
    lat = tile(name, 48)
    u = lat.sample_dither(500, generator=gen(4), device=DEVICE, dtype=F64)
    on_device(u)
    assert torch.equal(lat.closest_point(u), torch.zeros_like(u))
    ref = lat.sample_dither(500, generator=gen(4), dtype=F64)
    torch.testing.assert_close(u.cpu(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dim=12),
        dict(dim=16, lattice="e8", samples=8, prior_samples=4),
        dict(dim=16, lattice="e8", prior="gaussian", samples=8, prior_samples=4),
        dict(dim=40, lattice=["leech"] + ["z"] * 16, samples=8, prior_samples=4),
    ],
    ids=["rect", "e8", "e8-gauss", "leech+z"],
)
def test_files_from_the_device_are_the_cpu_files(kwargs):
    torch.manual_seed(0)
    cpu_module = build("lattice", **kwargs).eval()
    module = copy.deepcopy(cpu_module).to(DEVICE)
    y = 2.0 * torch.randn(30, cpu_module.in_dim, 3, generator=gen(5))
    data = module.compress(y.to(DEVICE), seed=11)
    assert data == cpu_module.compress(y, seed=11)
    assert ideal_bits(module, y.to(DEVICE), seed=11) == ideal_bits(cpu_module, y, seed=11)
    decoded = module.decompress(data)
    on_device(decoded)  # decoded by a CPU copy, returned on the module's device
    assert torch.equal(decoded, module(y.to(DEVICE), generator=SeedKeys(11)).y_hat)


@pytest.mark.parametrize("name", ["vq", "learnable_lattice"])
def test_counted_files_from_the_device_are_the_cpu_files(name):
    """``update()`` counts a device module's symbols; its files are the CPU twin's."""
    torch.manual_seed(0)
    kwargs = {"init_range": 0.3} if name == "learnable_lattice" else {}
    cpu_module = build(name, dim=5, num_codes=37, **kwargs).eval()
    module = copy.deepcopy(cpu_module).to(DEVICE)
    train = torch.randn(200, 5, 4, 4, generator=gen(9))
    assert module.update(train.to(DEVICE).split(64)) == cpu_module.update(train.split(64))
    on_device(module.code_counts)
    z = 1.3 * torch.randn(6, 5, 4, 4, generator=gen(10))
    data = module.compress(z.to(DEVICE), seed=0)
    assert data == cpu_module.compress(z, seed=0)
    assert torch.equal(module.decompress(data), module(z.to(DEVICE)).y_hat)


def test_iwae_on_the_device_equals_the_cpu():
    from qlatent.models import lattice_vae

    torch.manual_seed(0)
    cpu_model = lattice_vae(latent_dim=4, hidden=16, data_dim=32)
    model = copy.deepcopy(cpu_model).to(DEVICE)
    x = (torch.rand(40, 32, generator=gen(6)) < 0.3).float()
    got = iwae_nll(model, x.to(DEVICE), num_samples=20, generator=gen(7), progress=False)
    ref = iwae_nll(cpu_model, x, num_samples=20, generator=gen(7), progress=False)
    assert got.device == CPU and got.dtype == F64  # the documented output
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_training_on_the_device_resumes_exactly(tmp_path):
    from qlatent.data import synthetic_binary
    from qlatent.models import lattice_vae
    from qlatent.train import TrainConfig, fit, load

    data = synthetic_binary(n=200, dim=32, seed=1)

    def run(out, epochs):
        torch.manual_seed(0)
        model = lattice_vae(latent_dim=4, hidden=16, data_dim=32)
        cfg = TrainConfig(epochs=epochs, batch_size=40, progress=False, device=str(DEVICE))
        return fit(model, data, cfg, out_dir=out)

    straight = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    resumed = run(tmp_path / "b", 2)
    assert all(torch.isfinite(torch.tensor(h["val_objective"])) for h in straight.history)
    a, b = load(tmp_path / "a" / "last.pt"), load(tmp_path / "b" / "last.pt")
    for key, tensor in a["model"].items():
        assert tensor.device == CPU, key  # checkpoints hold CPU tensors, loadable anywhere
        assert torch.equal(tensor, b["model"][key]), key
    assert without_time(straight.history) == without_time(resumed.history)


def test_provenance_names_the_commit_a_copied_tree_came_from(monkeypatch):
    """A tree copied to another machine (where a GPU is) records the commit named in
    ``QLATENT_COMMIT``, not whatever git folder came along; a malformed value is ignored."""
    from qlatent.results import git_commit

    commit = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("QLATENT_COMMIT", commit)
    assert git_commit() == {"commit": commit, "dirty": None, "commit_from": "QLATENT_COMMIT"}
    monkeypatch.setenv("QLATENT_COMMIT", "HEAD; rm -rf /")
    assert git_commit().get("commit_from") is None
