"""The good lattices' Gaussian density approximation (``density="gaussian"``, DESIGN.md §3.1).

Checked: the closed form Σ_i log N(v_i; 0, σ²_X̂,i + σ²_Λ,i) against a direct computation from
the literature G (Laplace and Gaussian priors, a scale per coordinate and per block, a sum with
Z blocks), capped at 1/V per block; the units of σ²_Λ,i = σ_i²·M_i and the isotropy of the cells'
second-moment tensors (A2, D4, E8, Λ16, Λ24) against the cell points themselves; the Gaussian
limit (a Gaussian prior much wider than the cell: the exact Z closed form and the E8
Monte-Carlo estimate agree with it) and the Laplace prior's stated bias, −½·log(π/e) per
coordinate; gradients (``gradcheck`` in float64) to y, the block scales and the prior scales on
the training path, to v in the hard path's density and to z in ``log_prior``; no Monte-Carlo
point drawn on either path or in ``log_prior``; the setting's checks, its change after
construction and its repr; files and digests the same under either setting; the setting through
``build``, a state dict and a checkpoint's config (one without it gets the default).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from qlatent.bottlenecks import build
from qlatent.bottlenecks.good_lattice import DitheredGoodLattice, log_density_bias
from qlatent.coding import compress, decompress
from qlatent.coding.codec import model_digest
from qlatent.image_coding import gated_vae_from_checkpoint
from qlatent.lattices import LITERATURE_NSM
from qlatent.models import gated_vae
from qlatent.rng import SeedKeys
from qlatent.train import CheckpointError

F64 = torch.float64
NSM = {"z": 1 / 12, "e8": 929 / 12960, "leech": 0.0657710, "bw16": 0.0682976}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def neck(lattice, dim: int, **kwargs) -> DitheredGoodLattice:
    """A float64 bottleneck with its scales moved off their start (seeded): the cell sizes by
    factors within e^±0.4, the prior scales within e^±0.5."""
    module = build("lattice", dim=dim, lattice=lattice, **kwargs).double()
    with torch.no_grad():
        for p, (half, seed) in zip(module.parameters(), ((0.4, 0), (0.5, 1)), strict=True):
            p.add_(torch.empty_like(p).uniform_(-half, half, generator=gen(seed)))
    return module


def direct(
    module: DitheredGoodLattice, v: torch.Tensor, names: list[str], coords=slice(None)
) -> torch.Tensor:
    """Σ_i log N(v_i; 0, σ²_X̂,i + s_i²·G_i) over ``coords``, coordinate by coordinate, s_i the
    scale of the unit-volume block at coordinate i (its cell's size, V_b^{1/n_b}); ``v`` and
    ``names`` those coordinates'."""
    scale = module.scale.detach()[coords]
    spacing = module.spacing.detach()
    if module.spacing_per == "block":
        spacing = spacing.repeat_interleave(torch.tensor([b.dim for b in module.geometry.blocks]))
    spacing = spacing[coords]
    g = torch.tensor([NSM[n] for n in names], dtype=F64)
    prior = (2.0 if module.prior_name == "laplace" else 1.0) * scale.square()
    sd = (prior + spacing.square() * g).sqrt()
    return torch.distributions.Normal(0.0, sd).log_prob(v).sum(-1)


@pytest.mark.parametrize(
    ("lattice", "names", "kwargs"),
    [
        ("e8", ["e8"] * 16, dict(prior="laplace")),
        ("e8", ["e8"] * 16, dict(prior="gaussian", spacing_per="coordinate")),
        (["leech", "bw16"], ["leech"] * 24 + ["bw16"] * 16, dict(scale_per="block")),
        # the Z blocks estimated (not their closed form) take G(Z) = 1/12 too
        (["e8", "z", "z"], ["e8"] * 8 + ["z"] * 2, dict(exact_rectangular=False)),
    ],
    ids=["e8-laplace", "e8-gaussian-per-coordinate", "leech-bw16-scale-per-block", "e8-z"],
)
def test_the_closed_form_is_the_gaussian_of_the_two_variances(lattice, names, kwargs):
    module = neck(lattice, len(names), init_scale=2.0, **kwargs)
    v = 3.0 * torch.randn(6, len(names), generator=gen(2), dtype=F64)
    got = module.log_density(v, 2, 0, density="gaussian", cap=False)
    # to the rounding of the float32 unit-volume factors (Λ16's and Λ24's are not exact)
    torch.testing.assert_close(got, direct(module, v, names), rtol=1e-8, atol=1e-12)
    # well inside the prior no block reaches the cap (its sum and difference round alone)
    capped = module.log_density(v, 2, 0, density="gaussian")
    torch.testing.assert_close(capped, got, rtol=1e-14, atol=1e-12)


def test_rectangular_blocks_keep_their_exact_closed_form():
    module = neck(["e8", "z", "z"], 10, init_scale=2.0)
    v = torch.randn(5, 10, generator=gen(3), dtype=F64)
    e8_part = direct(module, v[:, :8], ["e8"] * 8, slice(0, 8))
    b, width = module.scale.detach()[8:], module.spacing.detach()[1:]
    cdf = torch.distributions.Laplace(0.0, b).cdf
    z_part = (torch.log(cdf(v[:, 8:] + width / 2) - cdf(v[:, 8:] - width / 2)) - width.log()).sum(1)
    got = module.log_density(v, 2, 0, density="gaussian")
    torch.testing.assert_close(got, e8_part + z_part, rtol=1e-10, atol=1e-10)


def test_a_gaussian_narrower_than_the_cell_is_capped_at_one_over_the_volume():
    module = neck(["e8", "e8"], 16, init_scale=0.01)
    v = 0.001 * torch.randn(4, 16, generator=gen(4), dtype=F64)
    log_vol = module._block_log_volume().detach()
    capped = module.log_density(v, 2, 0, density="gaussian")
    free = module.log_density(v, 2, 0, density="gaussian", cap=False)
    assert bool((free > -log_vol.sum()).all())  # the plain Gaussian exceeds 1/V there
    torch.testing.assert_close(capped, (-log_vol.sum()).expand(4))
    module.density = "gaussian"
    for training in (True, False):
        rate = module.train(training)(v, generator=gen(5)).rate
        assert bool((rate >= -1e-9).all())


@pytest.mark.parametrize(
    ("lattice", "dim", "rows"),
    [("a2", 2, 20000), ("d4", 4, 20000), ("e8", 8, 20000), ("bw16", 16, 6000), ("leech", 24, 6000)],
)
def test_the_cells_second_moment_is_isotropic_and_in_the_units_of_the_scales(lattice, dim, rows):
    """Points uniform on the scaled cell diag(σ)·Λ: E[u_i u_j] = σ_i²·M_i·δ_ij within five
    standard errors, entry by entry (M_i the table the approximation reads), and their mean
    second moment per dimension in base units is G·V^{2/n} (the literature G) within 2%."""
    module = build("lattice", dim=dim, lattice=lattice, spacing_per="coordinate").double()
    with torch.no_grad():
        module.log_spacing.uniform_(-0.5, 0.5, generator=gen(6))
    sigma = module._coordinate_scale().detach()
    u = module._unit_dither(rows, gen(7), F64)  # base units
    moment = module._cell_moments(F64, "cpu")
    products = u.unsqueeze(2) * u.unsqueeze(1)  # (rows, n, n)
    mean, se = products.mean(0), products.std(0) / math.sqrt(rows)
    expected = torch.diag(moment)
    assert bool(((mean - expected).abs() < 5 * se).all()), (mean - expected).abs().max()
    block = module.geometry.blocks[0]
    literature = LITERATURE_NSM[block.name.lower()] * math.exp(2 * float(block.log_volume) / dim)
    assert float(mean.diagonal().mean()) == pytest.approx(literature, rel=0.02)
    # the training path's error y − y_hat, uniform on the scaled cell: σ_i²·M_i
    module.density = "gaussian"  # (its rate without Monte Carlo)
    zeros = torch.zeros(rows, dim, dtype=F64)
    error = module.train()(zeros, generator=gen(8)).y_hat.detach().square()
    gap = error.mean(0) - sigma.square() * moment
    assert bool((gap.abs() < 5 * error.std(0) / math.sqrt(rows)).all()), gap


def test_a_block_without_a_literature_value_takes_its_estimated_second_moment():
    module = build("lattice", dim=5, lattice="d5", density="gaussian").double()
    block = module.geometry.blocks[0]
    moment = module._cell_moments(F64, "cpu")
    u = module._unit_dither(20000, gen(8), F64)
    assert float(moment[0]) == pytest.approx(float(u.square().mean()), rel=0.02)
    assert torch.equal(moment, moment[0].expand(5))
    assert float(moment[0]) == pytest.approx(float(block.second_moment()), rel=1e-12)


def test_the_gaussian_limit_of_the_exact_rectangular_closed_form():
    """Z blocks under a Gaussian prior ten cells wide: the approximation (Z estimated,
    ``exact_rectangular=False``) is the exact closed form to 1e-5 nats per row (the uniform's
    fourth cumulant, (Δ/b)⁴/2880 times a Hermite polynomial); at one cell wide they part by far
    more."""
    for b, close in ((10.0, True), (1.0, False)):
        approx = build("lattice", dim=6, lattice="z", prior="gaussian", init_scale=b,
                       exact_rectangular=False, density="gaussian").double()  # fmt: skip
        exact = build("lattice", dim=6, lattice="z", prior="gaussian", init_scale=b).double()
        v = b * torch.randn(200, 6, generator=gen(9), dtype=F64)
        with torch.no_grad():
            gap = (approx.log_density(v, 2, 0) - exact.log_density(v, 2, 0)).abs().max()
        assert (float(gap) < 1e-5) == close, float(gap)


def test_the_monte_carlo_estimate_agrees_under_a_wide_gaussian_prior():
    module = neck("e8", 16, prior="gaussian", init_scale=5.0)
    v = 5.0 * torch.randn(20, 16, generator=gen(10), dtype=F64)
    with torch.no_grad():
        approx = module.log_density(v, 2, 0, density="gaussian")
        mc = module.log_density(v, 4096, 0, gen(11))
    # nats per 16-dimensional row: the Monte-Carlo error, about 2e-3 per row at most
    assert float((approx - mc).mean().abs()) < 1e-3 and float((approx - mc).abs().max()) < 1e-2


def test_under_a_wide_laplace_prior_the_bias_is_the_priors_own():
    """The docstring's statement: with v drawn from the model and the prior ten cells wide, the
    mean of log f̃ − log f is −KL(Laplace ‖ Gaussian) = −½·log(π/e) ≈ −0.072 per coordinate
    (here on Z blocks, whose exact density is closed-form, so no Monte-Carlo error)."""
    torch.manual_seed(0)
    b = 10.0
    approx = build("lattice", dim=8, lattice="z", init_scale=b, exact_rectangular=False,
                   density="gaussian").double()  # fmt: skip
    exact = build("lattice", dim=8, lattice="z", init_scale=b).double()
    x = torch.distributions.Laplace(0.0, b).sample((20000, 8)).to(F64)
    v = x - (torch.rand(20000, 8, generator=gen(12), dtype=F64) - 0.5)
    with torch.no_grad():
        diff = (approx.log_density(v, 2, 0) - exact.log_density(v, 2, 0)) / 8
    assert float(diff.mean()) == pytest.approx(-0.5 * math.log(math.pi / math.e), abs=0.006)
    # log_density_bias of a Gaussian-density bottleneck: the approximation against Monte Carlo
    laplace = neck("e8", 8, init_scale=b, density="gaussian")
    y = torch.distributions.Laplace(0.0, laplace.scale.detach()).sample((200,))
    v = laplace.train()(y, generator=gen(13)).y_hat.detach()
    bias = log_density_bias(laplace, v, (2, 0), (2048, 0), repeats=1)
    assert -0.11 < bias["bias_nats"] / 8 < -0.035


def _rate(module, y, log_spacing, log_scale):
    params = {"log_spacing": log_spacing, "log_scale": log_scale}
    return functional_call(module, params, (y,), {"generator": gen(14)}).rate


def test_gradients_reach_y_the_block_scales_and_the_prior_scales():
    module = neck(["e8", "z", "z"], 10, init_scale=1.5, density="gaussian").train()
    y = torch.randn(3, 10, generator=gen(15), dtype=F64, requires_grad=True)
    log_spacing = module.log_spacing.detach().clone().requires_grad_()
    log_scale = module.log_scale.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda *a: _rate(module, *a), (y, log_spacing, log_scale), eps=1e-6, atol=1e-6
    )
    # the hard path's rate and log_prior (IWAE): to v and z, and to both scales
    v = torch.randn(3, 10, generator=gen(16), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: module.log_density(v=t, samples=2), (v,))
    z = torch.randn(2, 3, 10, generator=gen(17), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(module.log_prior, (z,))
    module.eval()(y.detach(), generator=gen(18)).rate.sum().backward()
    module.log_prior(z.detach()).sum().backward()
    assert all(bool((p.grad != 0).all()) for p in (module.log_spacing, module.log_scale))


def _no_points(*args, **kwargs):
    raise AssertionError("a Monte-Carlo point was drawn")


@pytest.mark.parametrize("prior", ["laplace", "gaussian"])
def test_no_monte_carlo_point_is_drawn_and_every_rate_is_the_closed_form(prior, monkeypatch):
    module = neck(["leech", "bw16"], 40, prior=prior, density="gaussian")
    for name in ("_mc_points", "_prior_points", "_proposal_points"):
        monkeypatch.setattr(module, name, _no_points)
    y = torch.randn(4, 40, generator=gen(19), dtype=F64)
    log_v = module.log_volume().detach()
    for training in (True, False):
        out = module.train(training)(y, generator=gen(20))
        closed = module.log_density(out.y_hat.detach(), 2, 0)
        torch.testing.assert_close(out.rate.detach(), -log_v - closed)
    z = torch.randn(2, 4, 40, generator=gen(21), dtype=F64)
    closed = module.log_density(z.reshape(8, 40), 2, 0).view(2, 4)
    torch.testing.assert_close(module.log_prior(z).detach(), closed)
    # the module's setting, not the counts, decides: another count gives the same rate
    module.eval_samples = 2
    torch.testing.assert_close(module.eval()(y, generator=gen(20)).rate.detach(), out.rate.detach())


def test_the_setting_is_checked_changed_after_construction_and_shown():
    module = build("lattice", dim=8, lattice="e8")
    assert module.density == "monte_carlo" and "density" not in repr(module)
    message = r"density must be 'monte_carlo' or 'gaussian', got "
    for bad in ("Gaussian", "mc", 1, None):
        with pytest.raises(ValueError, match=message):
            module.density = bad
        with pytest.raises(ValueError, match=message):
            build("lattice", dim=8, lattice="e8", density=bad)
        if bad is not None:  # (None: the module's own setting)
            with pytest.raises(ValueError, match=message):
                module.log_density(torch.zeros(1, 8), 2, density=bad)
    assert module.density == "monte_carlo"
    y = torch.randn(5, 8, generator=gen(22))
    before = module.eval()(y, generator=gen(23)).rate
    module.density = "gaussian"
    assert "density='gaussian'" in repr(module)
    after = module(y, generator=gen(23))
    assert not torch.equal(after.rate, before)
    torch.testing.assert_close(
        after.rate, -module.log_volume() - module.log_density(after.y_hat, 2, density="gaussian")
    )
    module.density = "monte_carlo"
    assert torch.equal(module(y, generator=gen(23)).rate, before)


@pytest.mark.parametrize("prior", ["laplace", "gaussian"])
def test_files_and_digests_are_the_same_under_either_setting(prior):
    torch.manual_seed(0)
    a = build("lattice", dim=16, lattice="e8", prior=prior, init_spacing=0.6).eval()
    with torch.no_grad():
        a.log_scale.uniform_(-0.5, 0.5, generator=gen(24))
    b = build("lattice", dim=16, lattice="e8", prior=prior, init_spacing=0.6, density="gaussian")
    b.load_state_dict(a.state_dict())
    b.eval()
    y = 1.5 * torch.randn(32, 16, generator=gen(25))
    data = compress(a, y, seed=3)
    assert compress(b, y, seed=3) == data
    assert model_digest(b) == model_digest(a)
    y_hat = decompress(a, data)
    assert torch.equal(decompress(b, data), y_hat)
    assert torch.equal(b(y, generator=SeedKeys(3)).y_hat, y_hat)
    a.density = "gaussian"  # changed after construction: the same file still
    assert torch.equal(decompress(a, data), y_hat) and compress(a, y, seed=3) == data


def _checkpoint(**args) -> dict:
    model = gated_vae("lattice", latent_dim=8, hidden=16, data_dim=20, lattice="e8")
    return {
        "model": model.state_dict(),
        "run_config": {
            "model": {"bottleneck": "lattice", "bottleneck_args": {"lattice": "e8", **args}}
        },
    }


def test_the_setting_through_build_a_state_dict_and_a_checkpoints_config():
    module = build("lattice", dim=40, lattice="e8", density="gaussian")
    assert isinstance(module, DitheredGoodLattice) and module.density == "gaussian"
    # a state dict holds weights, not this setting: it loads into either
    plain = build("lattice", dim=40, lattice="e8")
    plain.load_state_dict(module.state_dict())
    module.load_state_dict(plain.state_dict())
    assert (plain.density, module.density) == ("monte_carlo", "gaussian")
    # a checkpoint's config: the setting as saved, the default where it was never saved
    model = gated_vae_from_checkpoint(_checkpoint(density="gaussian"), "row.pt")
    assert model.bottleneck.density == "gaussian"
    assert gated_vae_from_checkpoint(_checkpoint(), "row.pt").bottleneck.density == "monte_carlo"
    with pytest.raises(CheckpointError, match=r"unexpected bottleneck argument density=True"):
        gated_vae_from_checkpoint(_checkpoint(density=True), "row.pt")
    with pytest.raises(CheckpointError, match=r"density must be 'monte_carlo' or 'gaussian'"):
        gated_vae_from_checkpoint(_checkpoint(density="exact"), "row.pt")
