"""Bottlenecks used through ordinary PyTorch module mechanics: inference mode, dtype casts,
state dicts, re-initialisation, functional transforms."""

from __future__ import annotations

import pytest
import torch

from qlatent.bottlenecks import build


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("lattice", ["a2", "d4", "e8"])
def test_a_forward_under_inference_mode_leaves_the_lattice_usable(lattice):
    """A lattice's inverse basis first formed under ``torch.inference_mode`` was cached as an
    inference tensor: every later hard-path call outside it failed ("Inference tensors cannot
    be saved for backward")."""
    module = build("lattice", dim=8, lattice=lattice, samples=4, prior_samples=2).eval()
    y = torch.randn(3, 8, generator=_gen(0))
    with torch.inference_mode():
        expected = module(y, generator=_gen()).y_hat
    assert torch.equal(module(y, generator=_gen()).y_hat, expected)
    k = module.quantize(y.requires_grad_(True), generator=_gen())
    assert torch.equal(module.dequantize(k, generator=_gen()), expected)


_MC = dict(samples=4, prior_samples=2, eval_samples=8, eval_prior_samples=2)
_AUTOCAST_CASES = {
    "e8": ("lattice", dict(dim=16, lattice="e8", **_MC)),
    "e8+z": ("lattice", dict(dim=10, lattice=["e8", "z", "z"], scale_per="block", **_MC)),
    "gaussian_dither": ("gaussian_dither", dict(dim=6)),
    "soft_vq": ("soft_vq", dict(dim=6, num_codes=5)),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", list(_AUTOCAST_CASES))
def test_a_callers_autocast_does_not_change_the_bottleneck(case, training):
    """Under ``torch.autocast`` the bottleneck computes in its parameters' dtype: a good
    lattice's dither and closest points ran in bfloat16 (other indices, y_hat off by 0.5, the
    rate by 4%) and linear maps returned a bfloat16 y_hat."""
    name, kwargs = _AUTOCAST_CASES[case]
    module = build(name, **kwargs).train(training)
    y = 2.0 * torch.randn(32, module.in_dim, generator=_gen(0))
    expected = module(y, generator=_gen())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(y, generator=_gen())
    assert out.y_hat.dtype == expected.y_hat.dtype == torch.float32
    assert torch.equal(out.y_hat, expected.y_hat)
    assert torch.equal(out.rate, expected.rate)
    if not training and module.discrete:
        assert torch.equal(out.indices, expected.indices)


def test_a_file_decompressed_under_autocast_is_the_file():
    """A valid good-lattice file decompressed inside ``torch.autocast`` failed as "corrupt
    payload" (the decoder's closest points ran in bfloat16), and one compressed there held other
    symbols."""
    module = build("lattice", dim=16, lattice="e8", **_MC).eval()
    y = 2.0 * torch.randn(32, 16, generator=_gen(0))
    data = module.compress(y, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module.compress(y, seed=3) == data
        y_hat = module.decompress(data)
    assert torch.equal(y_hat, module.decompress(data))


@pytest.mark.parametrize("name", ["lattice", "vq", "gaussian"])
def test_vmap_is_refused_naming_it(name):
    """Under ``torch.func.vmap`` the input check failed with "Cannot access data pointer of
    Tensor that doesn't have storage"."""
    module = build(name, dim=4, **({"num_codes": 5} if name == "vq" else {}))
    y = torch.randn(3, 1, module.in_dim)
    with pytest.raises(ValueError, match="torch.func.vmap"):
        torch.func.vmap(lambda row: module(row).y_hat)(y)


def test_a_good_lattices_density_view_ignores_a_callers_autocast():
    """``posterior_sample`` and ``log_prior`` of a good lattice under ``torch.autocast`` drew
    other samples (off by 1e-2) and log-densities (off by 0.2 nats), biasing an IWAE bound."""
    module = build("lattice", dim=16, lattice="e8", **_MC).eval()
    y = 2.0 * torch.randn(4, 16, generator=_gen(0))
    results = []
    for enabled in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            z, log_q = module.posterior_sample(y, 3, generator=_gen())
            torch.manual_seed(0)  # the prior's Monte Carlo draws
            results.append((z, log_q, module.log_prior(z)))
    for plain, autocast in zip(*results, strict=True):
        assert torch.equal(plain, autocast)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("lattice", dict(dim=6)),
        ("vq", dict(dim=6, num_codes=8)),
        ("lattice", dict(dim=8, lattice="e8", samples=4, prior_samples=2)),
    ],
    ids=["rect", "vq", "e8"],
)
def test_a_second_order_gradient_through_a_custom_backward_is_refused(name, kwargs):
    """``once_differentiable`` flagged a second derivative only through the incoming
    gradients: the rectangular lattice's Hessian terms were left out without a word. A
    backward with ``create_graph=True`` gives the first derivatives (those of a plain
    backward, bit for bit); differentiating them again is the error."""
    results = []
    for create_graph in (False, True):
        torch.manual_seed(0)
        module = build(name, **kwargs)
        encoder = torch.nn.Linear(4, kwargs["dim"])
        x = torch.randn(3, 4, requires_grad=True)
        out = module(encoder(x), generator=_gen()) if name == "lattice" else module(encoder(x))
        loss = out.y_hat.square().sum() + out.rate.sum()
        (first,) = torch.autograd.grad(loss, x, create_graph=create_graph)
        results.append(first)
    plain, recorded = results
    assert torch.isfinite(plain).all() and torch.equal(plain, recorded.detach())
    assert recorded.requires_grad
    with pytest.raises(RuntimeError, match="has first derivatives only: a second-order "):
        torch.autograd.grad(recorded.square().sum(), x)


def test_a_leech_bottleneck_pickles_without_the_shared_golay_tables():
    """``torch.save`` of a whole model and ``copy.deepcopy`` carried 34 MB of Golay tables per
    Leech lattice; the copy decodes with the process's own tables, the same points."""
    import copy
    import pickle

    module = build("lattice", dim=40, lattice=["leech", "bw16"], samples=4, prior_samples=2)
    assert len(pickle.dumps(module)) < 200_000
    clone = copy.deepcopy(module)
    leech, leech_copy = module.geometry.blocks[0], clone.geometry.blocks[0]
    assert leech_copy._sextet is leech._sextet and leech_copy._code is leech._code
    y = torch.randn(6, 40, generator=_gen(0)) * 3
    module.eval(), clone.eval()
    assert torch.equal(clone(y, generator=_gen()).y_hat, module(y, generator=_gen()).y_hat)


@pytest.mark.slow
@pytest.mark.parametrize("scale_per", ["coordinate", "block"])
def test_a_model_holding_a_one_block_good_lattice_trains_under_torch_compile(scale_per):
    """The backward of indexing the one block's spacing (a scatter into a one-element tensor)
    failed in torch's CPU code generator ("InductorError: AssertionError")."""
    torch.manual_seed(0)
    module = build("lattice", dim=8, lattice="e8", scale_per=scale_per, samples=4, prior_samples=2)
    encoder = torch.nn.Linear(4, 8)
    x = torch.randn(5, 4)

    def loss(x):
        out = module(encoder(x), generator=_gen())
        return out.y_hat.square().sum() + out.rate.sum()

    grads = []
    for step in (loss, torch.compile(loss)):
        encoder.zero_grad()
        module.zero_grad()
        step(x).backward()
        grads.append([encoder.weight.grad.clone(), module.log_spacing.grad.clone()])
    for eager, compiled in zip(*grads, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "register",
    ["register_full_backward_hook", "register_full_backward_pre_hook", "register_backward_hook"],
)
def test_a_module_backward_hook_is_refused_where_it_is_registered(register):
    """A module backward hook never fires on a module returning a BottleneckOutput: torch only
    warned (full hooks) or failed inside the forward with "'BottleneckOutput' object is not
    subscriptable" (the legacy hook). Registering one is now the error; forward hooks and tensor
    hooks work as before."""
    bottleneck = build("lattice", dim=4)
    with pytest.raises(TypeError, match="out.y_hat.register_hook"):
        getattr(bottleneck, register)(lambda *args: None)
    seen = []
    bottleneck.register_forward_hook(lambda module, args, out: seen.append(type(out).__name__))
    out = bottleneck(torch.randn(3, 4, requires_grad=True))
    out.y_hat.register_hook(lambda grad: seen.append(tuple(grad.shape)))
    out.y_hat.sum().backward()
    assert seen == ["BottleneckOutput", (3, 4)]


@pytest.mark.parametrize("name", ["lattice", "vq"])
def test_image_coding_under_autocast_codes_the_models_own_latent(name):
    """``compress_images`` under a caller's CPU autocast ran the encoder in bfloat16, so the
    file coded another latent than the same call outside it (and ``update_code_model`` counted
    other codes); the image-coding functions now compute in the model's dtype throughout."""
    from qlatent.image_coding import compress_images, decompress_images, update_code_model
    from qlatent.models import gated_vae

    torch.manual_seed(0)
    kwargs = {"num_codes": 16} if name == "vq" else {}
    model = gated_vae(name, latent_dim=4, hidden=32, data_dim=64, **kwargs)
    x = torch.rand(64, 64, generator=_gen(0))
    counts = update_code_model(model, x) if name == "vq" else None
    plain = compress_images(model, x, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if counts is not None:
            assert update_code_model(model, x) == counts
        assert compress_images(model, x, seed=3) == plain
        decoded = decompress_images(model, plain)
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, decompress_images(model, plain))
