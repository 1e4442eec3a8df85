"""State owned by the caller that a public call must leave as it found it: the train/eval mode
of every module of a model passed in, and matplotlib's backend (the reverse of
test_hostile_torch_state.py, where a file must not depend on the caller's state)."""

from __future__ import annotations

import importlib

import matplotlib
import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.coding import CodingError, ideal_bits
from qlatent.image_coding import compress_images, decompress_images, update_code_model
from qlatent.models import gated_vae

X = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))


def _modes(model: torch.nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def _training_model(name: str) -> torch.nn.Module:
    """A gated VAE in training with its encoder frozen in eval mode (as a fine-tuning run keeps
    it): a mode of its own that neither "all train" nor "all eval" puts back."""
    torch.manual_seed(0)
    kwargs = {} if name == "lattice" else {"num_codes": 8}
    model = gated_vae(name, latent_dim=4, hidden=8, data_dim=16, **kwargs)
    if name != "lattice":
        update_code_model(model, X)
    model.train()
    model.encoder.eval()
    return model


@pytest.mark.parametrize("name", ["lattice", "vq", "vq_ema"])
def test_coding_images_puts_back_every_module_mode(name):
    """compress_images, decompress_images and update_code_model called model.eval() and left
    it so: a model coded between training epochs went on training on its hard path."""
    model = _training_model(name)
    before = _modes(model)
    data = compress_images(model, X, seed=1)
    assert _modes(model) == before
    reconstructions = decompress_images(model, data)
    assert _modes(model) == before
    assert reconstructions.shape == X.shape
    if name != "lattice":
        update_code_model(model, X)
        assert _modes(model) == before


def test_coding_images_puts_back_every_module_mode_on_error():
    """Also when the call fails: images the encoder does not take, a file that is not one."""
    model = _training_model("vq")
    before = _modes(model)
    with pytest.raises(ValueError, match="do not fit"):
        compress_images(model, torch.rand(3, 5), seed=1)
    assert _modes(model) == before
    with pytest.raises(ValueError, match="do not fit"):
        update_code_model(model, torch.rand(3, 5))
    assert _modes(model) == before
    with pytest.raises(CodingError):
        decompress_images(model, b"not a qlc file")
    assert _modes(model) == before


def test_bottleneck_update_and_ideal_bits_keep_a_submodules_own_mode():
    """CountedCodeModel.update and coding.ideal_bits put the bottleneck back with
    ``train(was_training)``, which sets every submodule to the top's mode: an EMA codebook kept
    in eval mode inside a bottleneck in training came back in training mode."""
    torch.manual_seed(0)
    bn = build("vq_ema", dim=4, num_codes=8)
    y = torch.randn(20, 4, generator=torch.Generator().manual_seed(1))
    bn.train()
    bn.ema.eval()
    bn.update(y)
    assert bn.training and not bn.ema.training
    assert ideal_bits(bn, y, seed=0) > 0
    assert bn.training and not bn.ema.training


def test_importing_the_plots_keeps_the_callers_matplotlib_backend():
    """qlatent.eval.plots ran matplotlib.use("Agg") on import (and so did ``import
    qlatent.eval``): a notebook's inline backend, or a desktop's GUI one, was switched to Agg
    for the rest of the session, and plt.show() showed nothing."""
    import qlatent.eval.plots as plots

    before = matplotlib.get_backend()
    fallback = matplotlib.rcParams["backend_fallback"]
    try:
        matplotlib.use("svg")
        matplotlib.rcParams["backend_fallback"] = True
        importlib.reload(plots)  # the module's import-time code, run again
        assert matplotlib.get_backend().lower() == "svg"
        assert matplotlib.rcParams["backend_fallback"] is True
    finally:
        matplotlib.use(before)
        matplotlib.rcParams["backend_fallback"] = fallback


@pytest.fixture
def one_thread():
    """torch at one intra-op thread inside the test; the count before is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bench_calls():
    from qlatent.bench.coding import bench_coding
    from qlatent.bench.geometry import bench_lattices
    from qlatent.bench.lattice import bench_lattice, bench_lattice_scaling

    return {
        "bench_lattice": lambda: bench_lattice(
            rows=8, dim=8, threads=2, repeats=1, compile=False, peers=False
        ),
        "bench_lattice_scaling": lambda: bench_lattice_scaling(
            shapes=((8, 8),), threads=2, repeats=1
        ),
        "bench_lattices": lambda: bench_lattices(
            names=["z"], rows=16, threads=2, repeats=1, target_rse=0.5, steps=False, compile=False
        ),
        "bench_coding": lambda: bench_coding(rows=16, dim=8, threads=2, repeats=1),
    }


@pytest.mark.parametrize("name", ["bench_lattice", "bench_lattice_scaling", "bench_lattices"])
def test_a_benchmark_puts_back_the_callers_thread_count(one_thread, name):
    """The benchmarks set torch's thread count to their ``threads`` and left it there: a
    benchmark run from a notebook or a test left the rest of the process on its count
    (bench_quantizers alone put the caller's count back)."""
    _bench_calls()[name]()
    assert torch.get_num_threads() == 1


def test_the_coding_benchmark_puts_back_the_callers_thread_count(one_thread, monkeypatch):
    """As above for bench_coding, CompressAI left out (it would fit its models for seconds)."""
    from qlatent.bench import lattice

    monkeypatch.setattr(lattice, "compressai_entropy_models", lambda: "not installed")
    _bench_calls()["bench_coding"]()
    assert torch.get_num_threads() == 1
