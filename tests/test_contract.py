"""The bottleneck contract (DESIGN.md section 1), checked for every registered bottleneck.

Every name in ``BOTTLENECKS`` is built from ``CONFIGS``; a registered name without an entry makes
the suite fail, so a new method cannot skip it. Checked, for (B, D) and (B, D, H, W) input in
training and eval mode: output shapes and types, detached stats, indices (shape from
``index_kind``, integer dtype), rate ≥ 0 and finite, gradients reaching the input on the training
path, ``forward(y).y_hat == dequantize(quantize(y))`` exactly under the same seed (TypeError for
non-discrete methods), ValueError for bad input, and the registry's error for unknown names.
"""

from __future__ import annotations

import pytest
import torch

from qlatent.bottlenecks import BOTTLENECKS, Bottleneck, BottleneckOutput, build

#: constructor arguments for every registered bottleneck (small, fast); add new methods here.
CONFIGS: dict[str, dict] = {
    "gaussian": dict(dim=6),
    "gaussian_dither": dict(dim=6),
    "gaussian_lattice": dict(dim=6),
    "identity": dict(dim=6),
    "info_dropout": dict(dim=6),
    "lattice": dict(dim=6),
    "learnable_lattice": dict(dim=6, num_codes=64, init_range=0.7),
    "scalar_st": dict(dim=6, levels=4),
    "vector_st": dict(dim=6, group=2, codes=4),
    "soft_em_vq": dict(dim=6, num_codes=5, num_samples=3),
    "soft_vq": dict(dim=6, num_codes=5),
    "vq": dict(dim=6, num_codes=5),
    "vq_ema": dict(dim=6, num_codes=5),
}

#: further cases of a registered name (id -> (name, arguments)): every good lattice family
#: behind ``lattice`` passes the same suite (small Monte-Carlo sample counts keep it quick), and
#: so do the options that add a term to a training path
_MC = dict(samples=8, prior_samples=4, eval_samples=16, eval_prior_samples=4)
VARIANTS: dict[str, tuple[str, dict]] = {
    "lattice[a2]": ("lattice", dict(dim=6, lattice="a2", **_MC)),
    "lattice[d3*]": ("lattice", dict(dim=6, lattice="d3*", **_MC)),
    "lattice[d4]": ("lattice", dict(dim=8, lattice="d4", **_MC)),
    "lattice[e8]": ("lattice", dict(dim=8, lattice="e8", **_MC)),
    "lattice[e8,gaussian]": ("lattice", dict(dim=8, lattice="e8", prior="gaussian", **_MC)),
    "lattice[e8,box]": ("lattice", dict(dim=8, lattice="e8", proposal="box", **_MC)),
    "lattice[e8+z,scale per block]": (
        "lattice",
        dict(dim=10, lattice=["e8", "z", "z"], scale_per="block", **_MC),
    ),
    "lattice[bw16]": ("lattice", dict(dim=16, lattice="bw16", **_MC)),
    "lattice[leech]": ("lattice", dict(dim=24, lattice="leech", **_MC)),
    "lattice[e8,density=gaussian]": ("lattice", dict(dim=8, lattice="e8", density="gaussian")),
    # the straight-through quantizers with DESIGN.md's VQ-style codebook + commitment terms
    "scalar_st[commitment]": ("scalar_st", dict(dim=6, levels=4, commitment=0.25)),
    "vector_st[commitment]": ("vector_st", dict(dim=6, group=2, codes=4, commitment=0.0)),
}
NAMES = BOTTLENECKS.names() + list(VARIANTS)
SPATIAL = [(), (4, 5)]  # (B, D) and (B, D, H, W)
SPATIAL_IDS = ["BD", "BDHW"]
BATCH = 3


def make(name: str) -> Bottleneck:
    if name in VARIANTS:
        registered, kwargs = VARIANTS[name]
        return build(registered, **kwargs)
    if name not in CONFIGS:
        pytest.fail(f"registered bottleneck {name!r} has no entry in CONFIGS of {__file__}")
    module = build(name, **CONFIGS[name])
    assert isinstance(module, Bottleneck)
    return module


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_input(module: Bottleneck, spatial: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return 2.0 * torch.randn(BATCH, module.in_dim, *spatial, generator=gen(seed))


def check_indices(module: Bottleneck, indices: torch.Tensor, y: torch.Tensor) -> None:
    assert not indices.is_floating_point() and not indices.is_complex()
    assert indices.dtype != torch.bool
    if module.index_kind == "vector":
        assert indices.shape == (y.shape[0], module.symbols_per_row, *y.shape[2:])
    else:
        assert module.index_kind == "scalar"
        assert indices.shape == (y.shape[0], *y.shape[2:])


def test_every_registered_bottleneck_has_a_config():
    missing = sorted(set(BOTTLENECKS.names()) - set(CONFIGS))
    assert not missing, f"add these to CONFIGS in {__file__}: {missing}"


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_and_types(name, training, spatial):
    module = make(name).train(training)
    y = make_input(module, spatial)
    out = module(y, generator=gen(1))
    assert isinstance(out, BottleneckOutput)
    assert out.y_hat.shape == (BATCH, module.dim, *spatial)
    assert out.y_hat.dtype == y.dtype
    assert out.rate.shape == (BATCH,)
    assert out.aux_loss.dim() == 0
    assert torch.isfinite(out.y_hat).all()
    assert torch.isfinite(out.aux_loss)
    for key, value in out.stats.items():
        assert isinstance(key, str)
        assert isinstance(value, torch.Tensor)
        assert not value.requires_grad and value.grad_fn is None, key
    if not module.discrete:
        assert out.indices is None
    elif not training:
        assert out.indices is not None
        check_indices(module, out.indices, y)
    elif out.indices is not None:  # straight-through methods may expose their symbols
        check_indices(module, out.indices, y)
    if name.startswith("lattice") and training:
        assert out.indices is None  # dithered training path has no symbols


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_rate_is_finite_and_nonnegative(name, training, spatial):
    module = make(name).train(training)
    y = 5.0 * make_input(module, spatial, seed=2)
    rate = module(y, generator=gen(3)).rate
    assert torch.isfinite(rate).all()
    assert (rate >= 0).all()


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_input_on_training_path(name, spatial):
    module = make(name).train()
    y = make_input(module, spatial, seed=4).requires_grad_()
    out = module(y, generator=gen(5))
    (out.y_hat.pow(2).sum() + out.rate.sum() + out.aux_loss).backward()
    assert y.grad is not None
    assert torch.isfinite(y.grad).all()
    assert (y.grad != 0).any()


@pytest.mark.parametrize("spatial", SPATIAL, ids=SPATIAL_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_equals_dequantize_of_quantize(name, spatial):
    module = make(name).eval()
    y = make_input(module, spatial, seed=6)
    if not module.discrete:
        with pytest.raises(TypeError):
            module.quantize(y, generator=gen(7))
        with pytest.raises(TypeError):
            module.dequantize(torch.zeros(y.shape, dtype=torch.int64), generator=gen(7))
        return
    y_hat = module(y, generator=gen(7)).y_hat
    indices = module.quantize(y, generator=gen(7))
    check_indices(module, indices, y)
    assert torch.equal(module.dequantize(indices, generator=gen(7)), y_hat)
    assert torch.equal(module(y, generator=gen(7)).indices, indices)


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_is_deterministic_given_seed(name):
    module = make(name).eval()
    y = make_input(module, (4, 5), seed=8)
    a, b = module(y, generator=gen(9)), module(y, generator=gen(9))
    assert torch.equal(a.y_hat, b.y_hat)
    assert torch.equal(a.rate, b.rate)


BAD_INPUTS = {
    "nan": lambda d: torch.tensor([[0.0] * (d - 1) + [float("nan")]] * 2),
    "inf": lambda d: torch.tensor([[0.0] * (d - 1) + [float("inf")]] * 2),
    "neg_inf": lambda d: torch.full((2, d, 2, 2), -float("inf")),
    "rank1": lambda d: torch.zeros(d),
    "rank0": lambda d: torch.zeros(()),
    "wrong_axis1": lambda d: torch.zeros(2, d + 1),
    "wrong_axis1_spatial": lambda d: torch.zeros(2, 2, 3, d),  # channels-last by mistake
    "integer": lambda d: torch.ones(2, d, dtype=torch.int64),
}


#: the compile test's cases beyond NAMES: paths that call ``torch.compile``d kernels of their own
_COMPILED = {
    "lattice[compile]": ("lattice", dict(dim=6, compile=True)),
    "vq[compile]": ("vq", dict(dim=6, num_codes=5, compile=True)),
}
#: quick cases of it (seconds each); the others trace for seconds to tens of seconds (the good
#: lattices' decoders) or compile kernels with inductor for the plain call (the lattice's)
_COMPILE_QUICK = ("vq[compile]", "learnable_lattice")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "name",
    [
        n if n in _COMPILE_QUICK else pytest.param(n, marks=pytest.mark.slow)
        for n in [*_COMPILED, *NAMES]
    ],
)
def test_traces_into_a_callers_torch_compile(name, training):
    """Inside a caller's ``torch.compile`` (Dynamo's ``eager`` backend: the trace without
    inductor's code generation) a bottleneck gives the plain call's y_hat, and its rate and
    gradient up to float rounding (with ``compile=True`` the plain call runs inductor's fused
    transcendentals, the traced one ATen's), under the same seed, on the training path (with its
    backward) and on the hard path under ``no_grad``; and Dynamo warns at none of the library's
    cached getters."""
    import copy
    import warnings

    if name in _COMPILED:
        registered, kwargs = _COMPILED[name]
        module = build(registered, **kwargs).train(training)
    else:
        module = make(name).train(training)
    traced = torch.compile(copy.deepcopy(module), backend="eager")  # EMA methods update state
    y = make_input(module, ())
    outputs = []
    for call in (traced, module):
        torch._dynamo.reset()
        x = y.clone().requires_grad_(training)
        with warnings.catch_warnings(record=True) as caught, torch.set_grad_enabled(training):
            warnings.simplefilter("always")
            torch.manual_seed(5)  # the seed of a call without a generator
            out = call(x)
        if training:
            (out.y_hat.square().sum() + out.rate.sum()).backward()
        outputs.append((out.y_hat, out.rate, x.grad))
        assert not [w for w in caught if "lru_cache" in str(w.message)]
    (y_hat, rate, grad), (ref_y_hat, ref_rate, ref_grad) = outputs
    assert torch.equal(y_hat, ref_y_hat)
    assert torch.allclose(rate, ref_rate, rtol=1e-5, atol=1e-5)
    if training:
        assert torch.allclose(grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_value_error(name, training, case):
    module = make(name).train(training)
    y = BAD_INPUTS[case](module.in_dim)
    with pytest.raises(ValueError):
        module(y, generator=gen(0))
    if module.discrete:
        with pytest.raises(ValueError):
            module.quantize(y, generator=gen(0))


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as info:
        build("no-such-name")
    message = str(info.value)
    assert "no-such-name" in message
    for name in BOTTLENECKS.names():
        assert name in message
