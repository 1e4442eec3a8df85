"""Gradients of the training paths against independently computed derivatives.

Checked: each registered bottleneck's gradients in y and in every parameter, on flat and spatial
inputs, are the derivatives of what its forward computes given the randomness (``gradcheck`` in
float64 with the dither, noise and samples fixed by re-seeded generators), or, for the
straight-through and stop-gradient methods, the documented estimator's (closed forms of the
VQ-VAE, VQ-EMA, straight-through quantizer and LL-VQ gradients; central differences of the
Soft VQ-VAE loss with the stop-gradient arguments held at their values). The rectangular
lattice's blocked eager backward is checked with many blocks, with a rate weighted alike or
differently per row, and with only one of its outputs in the loss. A good lattice's Monte-Carlo
log-density with proposal draws (prior, box, tilted) has the gradient of the estimate whose draws
move with the cell as its docstring states: written out here from the same draws, differentiated
by autograd and by central differences. The Gaussian cell probability's gradient stays finite
and exact for cells narrower than the dtype's rounding (it was NaN there); float32 gradients of
a good lattice follow float64's.
"""

from __future__ import annotations

import copy
import math

import mpmath
import pytest
import torch
from torch.func import functional_call

from qlatent.bottlenecks import build
from qlatent.bottlenecks import lattice as lattice_module
from qlatent.priors import gaussian_cell_log_prob
from qlatent.rng import SeedKeys, draw_key

F64 = torch.float64


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``(B, D, *spatial)`` -> ``(N, D)`` as the bottlenecks see their input."""
    return t if t.dim() == 2 else t.movedim(1, -1).reshape(-1, t.shape[1])


def _generator(kind: str):
    return SeedKeys(1) if kind == "seed" else torch.Generator().manual_seed(1)


# ------------------------------------------------------------ smooth given the randomness
@pytest.mark.parametrize(
    ("name", "kwargs", "channels", "gen"),
    [
        ("lattice", {"dim": 3, "init_spacing": 0.3, "init_scale": 2.0}, 3, "seed"),
        ("lattice", {"dim": 3, "init_spacing": 1e-3, "init_scale": 1e-2}, 3, "seed"),
        ("gaussian", {"dim": 3}, 6, "torch"),
        ("gaussian_lattice", {"dim": 3}, 3, "torch"),
        ("gaussian_dither", {"dim": 3}, 3, "torch"),
        ("info_dropout", {"dim": 3}, 6, "torch"),
        (
            "lattice",
            {"dim": 10, "lattice": ["e8", "z", "z"], "samples": 8, "prior_samples": 0},
            10,
            "seed",
        ),
        (
            "lattice",
            {
                "dim": 6,
                "lattice": "a2",
                "prior": "gaussian",
                "samples": 8,
                "prior_samples": 0,
                "spacing_per": "coordinate",
                "scale_per": "block",
                "debias": True,
            },
            6,
            "seed",
        ),
    ],
)
@pytest.mark.parametrize("spatial", [(), (2,)])
def test_training_path_gradcheck_in_input_and_parameters(name, kwargs, channels, gen, spatial):
    """y_hat, the rate (weighted differently per example) and aux against central differences
    in float64, in y and every trained parameter, the randomness fixed by re-seeding."""
    torch.manual_seed(0)
    module = build(name, **kwargs).double().train()
    params = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}
    y0 = torch.randn(3, channels, *spatial, dtype=F64)
    out = module(y0, generator=_generator(gen))
    weight_y, weight_rate = torch.randn_like(out.y_hat), torch.randn_like(out.rate)

    def loss(y, *values):
        out = functional_call(
            module, dict(zip(params, values, strict=True)), (y,), {"generator": _generator(gen)}
        )
        return (out.y_hat * weight_y).sum() + (out.rate * weight_rate).sum() + 0.7 * out.aux_loss

    inputs = (y0.requires_grad_(), *(v.requires_grad_() for v in params.values()))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use", ["same_weight", "row_weights", "rate_only", "y_hat_only"])
def test_blocked_lattice_backward_over_many_blocks(monkeypatch, use):
    """The eager training path's hand-written backward, with blocks of 2 rows: 10 blocks, past
    the input size where only two factors and the prior's sums over rows are kept, on a spatial
    input; a rate weighted alike for every row (the kept sums), per row (q and d_h formed again
    from y_hat), or absent, and y_hat absent."""
    monkeypatch.setattr(lattice_module, "_BLOCK_ELEMENTS", 6)  # 2 rows of dim 3 per block
    module = build("lattice", dim=3, init_spacing=0.7, init_scale=1.3).double().train()
    params = {k: p.detach().clone() for k, p in module.named_parameters()}
    gen = torch.Generator().manual_seed(5)
    y0 = 2 * torch.randn(5, 3, 2, 2, generator=gen, dtype=F64)
    weight_y = torch.randn(5, 3, 2, 2, generator=gen, dtype=F64)
    weight_rate = torch.randn(5, generator=gen, dtype=F64)

    def loss(y, *values):
        out = functional_call(
            module, dict(zip(params, values, strict=True)), (y,), {"generator": SeedKeys(3)}
        )
        value = (out.y_hat * weight_y).sum()
        if use == "same_weight":
            return value + 1.3 * out.rate.sum()
        if use == "row_weights":
            return value + (out.rate * weight_rate).sum()
        return (out.rate * weight_rate).sum() if use == "rate_only" else value

    inputs = (y0.requires_grad_(), *(v.requires_grad_() for v in params.values()))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# -------------------------------------------------------------------- straight-through
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("spatial", [(), (2, 3)])
def test_straight_through_gradients_are_the_documented_ones(dtype, spatial):
    """y_hat passes its gradient to y unchanged; the aux terms send 2(e − z)/n to the chosen
    codewords (codebook loss) and 2β(z − e)/n to z (commitment), VQ-EMA only the latter; a
    straight-through quantizer's chosen code vectors get y_hat's gradient and its logits
    −Σ w_r (onehot − softmax); LL-VQ's basis gets 2(q − z)·n/N from the embedding term and −γ
    sign(b) from the size loss."""
    tol = 1e-12 if dtype == F64 else 2e-6
    torch.manual_seed(0)

    def run(name, channels, **kwargs):
        module = build(name, **kwargs).to(dtype).train()
        state = copy.deepcopy(module.state_dict())
        y = torch.randn(4, channels, *spatial, dtype=dtype, requires_grad=True)
        out = module(y)
        weight_y, weight_rate = torch.randn_like(out.y_hat), torch.randn_like(out.rate)
        (
            (out.y_hat * weight_y).sum() + (out.rate * weight_rate).sum() + 0.7 * out.aux_loss
        ).backward()
        return module, state, _rows(y.detach()), _rows(y.grad), _rows(weight_y), weight_rate

    def close(a, b):
        assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())

    beta = 0.25
    for name, key in (("vq", "codebook"), ("vq_ema", "ema.codebook")):
        module, state, z, grad, weight_y, _ = run(name, 3, dim=3, num_codes=5, commitment=beta)
        codebook = state[key]
        k = (z[:, None] - codebook[None]).square().sum(-1).argmin(1)
        q, n = codebook[k], z.numel()
        close(grad, weight_y + 0.7 * 2 * beta * (z - q) / n)
        if name == "vq":
            expected = torch.zeros_like(codebook).index_add_(0, k, 0.7 * 2 * (q - z) / n)
            close(module.codebook.grad, expected)

    for name, kwargs in (("vector_st", {"group": 2, "codes": 4}), ("scalar_st", {"levels": 3})):
        module, state, z, grad, weight_y, weight_rate = run(name, 4, dim=4, **kwargs)
        codes, logits = state["codes"], state["logits"]
        groups, count, size = codes.shape
        k = (z.view(-1, groups, 1, size) - codes).square().sum(-1).argmin(-1)  # (N, G)
        close(grad, weight_y)
        expected = torch.zeros_like(codes)
        expected.view(-1, size).index_add_(
            0, (k + count * torch.arange(groups)).reshape(-1), weight_y.reshape(-1, size)
        )
        close(module.codes.grad, expected)
        row_weight = weight_rate.repeat_interleave(z.shape[0] // 4)[:, None, None]
        onehot = torch.nn.functional.one_hot(k, count).to(dtype)
        close(module.logits.grad, -(row_weight * (onehot - logits.softmax(-1))).sum(0))

    module, state, z, grad, weight_y, _ = run(
        "learnable_lattice", 3, dim=3, num_codes=8, commitment=beta, size_weight=1.0
    )
    basis = state["basis"]
    n_coords = torch.round(z / basis)
    q = basis * n_coords
    close(grad, weight_y + 0.7 * 2 * beta * (z - q) / z.numel())
    close(module.basis.grad, 0.7 * (2 * (q - z) * n_coords / z.numel()).sum(0) - 0.7 * basis.sign())


@pytest.mark.parametrize("variant", ["paper", "reference"])
@pytest.mark.parametrize("spatial", [(), (2,)])
def test_soft_vq_aux_gradient_is_the_stop_gradient_derivative(variant, spatial):
    """Loss (27): ‖sg(z') − ẑ_q‖² + β‖z' − sg(ẑ_q)‖². Its gradient in the input (z_e and the
    log-scales) and the codebook equals central differences of F(θ) = mse(ẑ_q(θ), z'(θ0)) +
    β·mse(z'(θ), ẑ_q(θ0)), with ẑ_q(θ) the forward value of y_hat and z' = z_e + σ_ε·ε on the
    same noise; and y_hat's gradient reaches z_e alone, unchanged."""
    torch.manual_seed(0)
    module = build("soft_vq", dim=3, num_codes=4, variant=variant).double().train()
    beta, std = module.commitment, module.noise_std
    y0 = torch.randn(3, 7, *spatial, dtype=F64)
    codebook0 = module.codebook.detach().clone()
    noise = torch.randn(
        _rows(y0)[:, :3].shape, generator=torch.Generator().manual_seed(2), dtype=F64
    )

    def z_q(y, codebook):
        with torch.no_grad():
            out = functional_call(
                module,
                {"codebook": codebook},
                (y,),
                {"generator": torch.Generator().manual_seed(2)},
            )
        return _rows(out.y_hat)

    noisy0, z_q0 = _rows(y0)[:, :3] + std * noise, z_q(y0, codebook0)

    def stopped(y, codebook):
        noisy = _rows(y)[:, :3] + std * noise
        return (z_q(y, codebook) - noisy0).square().mean() + beta * (noisy - z_q0).square().mean()

    y = y0.clone().requires_grad_(True)
    out = module(y, generator=torch.Generator().manual_seed(2))
    assert out.aux_loss.item() == pytest.approx((1 + beta) * (z_q0 - noisy0).square().mean().item())
    out.aux_loss.backward()
    step = 1e-6
    for value, got, other in ((y0, y.grad, codebook0), (codebook0, module.codebook.grad, y0)):
        numeric = torch.zeros_like(value)
        for j in range(value.numel()):
            up, down = value.clone(), value.clone()
            up.view(-1)[j] += step
            down.view(-1)[j] -= step
            args = ((up, other), (down, other)) if value is y0 else ((other, up), (other, down))
            numeric.view(-1)[j] = (stopped(*args[0]) - stopped(*args[1])) / (2 * step)
        torch.testing.assert_close(got, numeric, rtol=1e-6, atol=1e-8)

    module.zero_grad()
    y = y0.clone().requires_grad_(True)
    weight = torch.randn(3, 3, *spatial, dtype=F64)
    (module(y, generator=torch.Generator().manual_seed(2)).y_hat * weight).sum().backward()
    expected = torch.zeros_like(y0)
    expected[:, :3] = weight
    assert torch.equal(y.grad, expected) and module.codebook.grad is None


@pytest.mark.parametrize(("vib_weight", "temperature"), [(0.0, 1.0), (0.3, 1.0), (0.3, 0.05)])
def test_soft_em_aux_gradcheck_and_straight_through(vib_weight, temperature):
    """Soft EM's commitment and VIB terms against central differences in y (the samples and
    the EMA state fixed), and y_hat's gradient is y's unchanged."""
    torch.manual_seed(0)
    module = (
        build(
            "soft_em_vq",
            dim=3,
            num_codes=5,
            num_samples=4,
            vib_weight=vib_weight,
            temperature=temperature,
        )
        .double()
        .train()
    )
    state = copy.deepcopy(module.state_dict())
    y0 = 0.5 * torch.randn(6, 3, dtype=F64)

    def aux(y):
        module.load_state_dict(state)
        return module(y, generator=torch.Generator().manual_seed(2)).aux_loss

    assert torch.autograd.gradcheck(aux, (y0.clone().requires_grad_(True),))
    module.load_state_dict(state)
    y = y0.clone().requires_grad_(True)
    weight = torch.randn(6, 3, dtype=F64)
    (module(y, generator=torch.Generator().manual_seed(2)).y_hat * weight).sum().backward()
    assert torch.equal(y.grad, weight)


# ------------------------------------------------------- good lattices, proposal draws
def _block_log_p(t, b, prior):
    if prior == "laplace":
        return (-t.abs() / b - torch.log(2 * b)).sum(-1)
    return (-0.5 * (t / b).square() - torch.log(b) - 0.5 * math.log(2 * math.pi)).sum(-1)


def _moving_draws_estimate(module, v0, samples, draws, seed):
    """P̂(v, log s, log b) of one block as :meth:`log_density` describes it, written out from
    the draws it makes at the current values (w, x0 and the proposal's log q0 there): cell
    points v + σw and proposal points v + D(x0 − v0), D = diag(σ/σ0), the balance heuristic
    S_u/V + S_q·q0/|D| with V = V0·|D|, the indicator at (x0 − v0)/σ0."""
    gen = SeedKeys(seed)
    prior = module.prior_name
    with torch.no_grad():
        w = module._mc_points(samples, gen, F64, "cpu")
        sigma0, b0 = module._coordinate_scale(), module.scale
        base_cell = v0.unsqueeze(1) + sigma0 * w  # (N, S_u, m)
        if module.proposal == "prior":
            x0 = module._prior_points(draws, gen, F64, "cpu").expand(v0.shape[0], -1, -1)
            log_q_cell, log_q_draw = _block_log_p(base_cell, b0, prior), _block_log_p(x0, b0, prior)
        else:
            key = draw_key(gen)
            x0, log_q0 = module._proposal_points(
                v0, draws, None, key, sigma0, b0, module._mc_cells(F64)
            )
            log_p_cell = _block_log_p(base_cell, b0, prior).unsqueeze(1)
            log_q_cell = log_q0(base_cell.transpose(1, 2), log_p_cell).squeeze(1)
            log_p_draw = _block_log_p(x0, b0, prior).unsqueeze(1)
            log_q_draw = log_q0(x0.transpose(1, 2), log_p_draw).squeeze(1)
        offsets = ((x0 - v0.unsqueeze(1)) / sigma0).reshape(-1, module.dim)
        inside = (module.geometry.closest_point(offsets) == 0).all(-1).view(x0.shape[:2])
        log_v0 = module.log_volume()

    def estimate(v, log_spacing, log_scale):
        spacing = log_spacing.exp()
        if module.spacing_per == "block":
            spacing = spacing[module._block_of]
        sigma = spacing * module._unit.double()
        b = log_scale.exp()
        b = b if module.scale_per == "coordinate" else b[module._block_of]
        log_d = torch.log(sigma / sigma0).sum()
        log_uniform = math.log(samples) - (log_v0 + log_d)
        p_cell = _block_log_p(v.unsqueeze(1) + sigma * w, b, prior)
        x = v.unsqueeze(1) + (sigma / sigma0) * (x0 - v0.unsqueeze(1))
        p_draw = _block_log_p(x, b, prior)

        def terms(log_p, log_q):
            return log_p - torch.logaddexp(log_uniform + 0 * log_p, math.log(draws) + log_q - log_d)

        in_cell = terms(p_cell, log_q_cell).exp().sum(1)
        drawn = torch.where(inside, terms(p_draw, log_q_draw).exp(), 0.0).sum(1)
        return torch.log(in_cell + drawn) - (log_v0 + log_d)

    return estimate


@pytest.mark.parametrize(
    ("lattice", "prior", "proposal"),
    [
        ("a2", "laplace", "prior"),
        ("a2", "laplace", "box"),
        ("a2", "gaussian", "tilted"),
        ("d4", "laplace", "tilted"),
        ("d4", "gaussian", "prior"),
        ("e8", "laplace", "box"),
    ],
)
@pytest.mark.parametrize(
    ("spacing_per", "scale_per"), [("block", "coordinate"), ("coordinate", "block")]
)
def test_proposal_gradient_is_that_of_the_estimate_whose_draws_move_with_the_cell(
    lattice, prior, proposal, spacing_per, scale_per
):
    """log f̂ (uncapped) and its gradients in v, the spacings and the prior scales equal, to
    rounding, those of the moving-draw estimate written out above from the same draws (autograd
    of it), and those equal its central differences (to 1e-7)."""
    dim = {"a2": 2, "d4": 4, "e8": 8}[lattice]
    torch.manual_seed(3)
    module = build(
        "lattice",
        dim=dim,
        lattice=lattice,
        prior=prior,
        proposal=proposal,
        init_scale=0.7,
        init_spacing=1.3,
        spacing_per=spacing_per,
        scale_per=scale_per,
    ).double()
    with torch.no_grad():
        module.log_spacing.add_(0.2 * torch.randn_like(module.log_spacing))
        module.log_scale.add_(0.3 * torch.randn_like(module.log_scale))
    v0 = 0.8 * torch.randn(3, dim, dtype=F64)
    samples, draws, seed = 8, 64, 5
    v = v0.clone().requires_grad_(True)
    got = module.log_density(v, samples, draws, SeedKeys(seed), cap=False)
    got.sum().backward()

    estimate = _moving_draws_estimate(module, v0, samples, draws, seed)
    args = [
        t.detach().clone().requires_grad_(True) for t in (v0, module.log_spacing, module.log_scale)
    ]
    want = estimate(*args)
    want.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for mine, ref in zip((v, module.log_spacing, module.log_scale), args, strict=True):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-10, atol=1e-12)
    step = 1e-6
    for i, arg in enumerate(args):
        numeric = torch.zeros_like(arg)
        for j in range(arg.numel()):
            up, down = ([a.detach().clone() for a in args] for _ in range(2))
            up[i].view(-1)[j] += step
            down[i].view(-1)[j] -= step
            numeric.view(-1)[j] = (estimate(*up).sum() - estimate(*down).sum()) / (2 * step)
        torch.testing.assert_close(arg.grad, numeric, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"proposal": "box", "debias": True},
        {"proposal": "tilted", "prior": "gaussian"},
        {"proposal": "tilted", "init_scale": 0.02},
    ],
)
def test_good_lattice_float32_gradients_follow_float64(kwargs):
    """A training step of E8 ⊕ D4 ⊕ Z ⊕ Z ⊕ A2 on a spatial input: the float32 module's rate
    and gradients within 1e-4 (relative to each one's largest) of the float64 module's."""

    def step(dtype):
        torch.manual_seed(0)
        module = build("lattice", dim=16, lattice=["e8", "d4", "z", "z", "a2"], **kwargs)
        module = module.to(dtype).train()
        y = (1.5 * torch.randn(5, 16, 2, dtype=F64)).to(dtype).requires_grad_(True)
        out = module(y, generator=SeedKeys(4))
        weight = torch.linspace(-1, 1, 5, dtype=dtype)
        ((out.rate * weight).sum() + out.y_hat.square().sum()).backward()
        values = (out.rate.detach(), y.grad, module.log_spacing.grad, module.log_scale.grad)
        return [t.double() for t in values]

    for single, double in zip(step(torch.float32), step(F64), strict=True):
        assert (single - double).abs().max() <= 1e-4 * double.abs().max()


# ------------------------------------------------------ Gaussian cells below the rounding
def _gaussian_cell_derivatives(eta: float, spacing: float, scale: float) -> list[float]:
    """∂ log P / ∂η, ∂Δ, ∂s of P = Φ((η + Δ/2)/s) − Φ((η − Δ/2)/s) in 80-digit arithmetic."""
    with mpmath.workdps(80):
        eta, spacing, scale = (mpmath.mpf(x) for x in (eta, spacing, scale))

        def log_p(e, d, s):
            return mpmath.log(mpmath.ncdf((e + d / 2) / s) - mpmath.ncdf((e - d / 2) / s))

        return [
            float(mpmath.diff(lambda e: log_p(e, spacing, scale), eta)),
            float(mpmath.diff(lambda d: log_p(eta, d, scale), spacing)),
            float(mpmath.diff(lambda s: log_p(eta, spacing, s), scale)),
        ]


@pytest.mark.parametrize(
    ("dtype", "eta", "spacing", "scale"),
    [
        (torch.float32, 0.2, 1e-9, 1.0),
        (torch.float32, 3.0, 1e-12, 2.0),
        (torch.float32, 0.5, 1e-7, 1.0),
        (torch.float32, 0.5, 1e-3, 1.0),
        (torch.float64, 0.2, 1e-17, 1.0),
        (torch.float64, 3.0, 1e-9, 2.0),
    ],
)
def test_gaussian_cell_gradient_below_the_rounding_is_finite_and_exact(dtype, eta, spacing, scale):
    """A cell far narrower than the prior (Δ/s below the dtype's ε, where the two-tail form
    rounds to log 0 and the centred form is taken) had a finite log P but NaN gradients in η, Δ
    and s (float32 at Δ/s = 1e-9: NaN, NaN, NaN against −0.2, 1e9, −0.96)."""
    args = [torch.tensor([x], dtype=dtype, requires_grad=True) for x in (eta, spacing, scale)]
    gaussian_cell_log_prob(*args).sum().backward()
    for arg, want in zip(args, _gaussian_cell_derivatives(eta, spacing, scale), strict=True):
        assert arg.grad.item() == pytest.approx(want, rel=1e-5)


def test_gaussian_z_block_of_a_narrow_float32_cell_trains():
    """A Z block of a good lattice under the Gaussian prior with a cell 10^-9 of the prior's
    scale (its exact closed-form rate): float32 gradients finite and within 1e-4 of float64's
    (they were NaN in the spacing, the scale and the input)."""

    def step(dtype):
        module = (
            build(
                "lattice",
                dim=10,
                lattice=["e8", "z", "z"],
                prior="gaussian",
                init_spacing=1e-4,
                init_scale=1e5,
                samples=8,
                prior_samples=0,
            )
            .to(dtype)
            .train()
        )
        y = torch.linspace(-2.0, 2.0, 20, dtype=F64).view(2, 10).to(dtype).requires_grad_(True)
        module(y, generator=SeedKeys(0)).rate.sum().backward()
        return [t.double() for t in (y.grad, module.log_spacing.grad, module.log_scale.grad)]

    for single, double in zip(step(torch.float32), step(F64), strict=True):
        assert torch.isfinite(single).all()
        assert (single - double).abs().max() <= 1e-4 * double.abs().max() + 1e-12
