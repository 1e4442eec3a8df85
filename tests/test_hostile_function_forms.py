"""The custom autograd Functions in their ``setup_context`` form under the ways a caller can
run a backward: here a ``torch.func.vjp`` whose pullback is called after the transform has
returned, with the compiled training path of a rectangular lattice (``compile=True``)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, vjp

from qlatent.bottlenecks import build


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.slow
def test_a_vjp_pullback_of_the_compiled_training_path_is_the_eager_gradient():
    """The pullback passes the tensors the forward saved as ``torch.func`` wrappers of a level
    that has ended; the compiled backward kernel, given them, failed with "Cannot access data
    pointer of Tensor that doesn't have storage". The pullback's gradients with row-varying
    cotangents are those of autograd through the eager training path (same dither)."""
    torch.manual_seed(0)
    compiled = build("lattice", dim=6, compile=True).double()
    eager = build("lattice", dim=6).double()
    eager.load_state_dict(compiled.state_dict())
    y = 2.0 * torch.randn(16, 6, generator=_gen(1), dtype=torch.float64)
    cotangents = (
        torch.rand(16, 6, generator=_gen(2), dtype=torch.float64),
        torch.rand(16, generator=_gen(3), dtype=torch.float64),
    )
    params = {name: p.detach() for name, p in compiled.named_parameters()}

    def forward(params, y):
        out = functional_call(compiled, params, (y,), {"generator": _gen()})
        return out.y_hat, out.rate

    _, pullback = vjp(forward, params, y)
    grad_params, grad_y = pullback(cotangents)
    leaf = y.clone().requires_grad_()
    out = eager(leaf, generator=_gen())
    expected = torch.autograd.grad((out.y_hat, out.rate), [leaf, *eager.parameters()], cotangents)
    got = [grad_y, *(grad_params[name] for name, _ in eager.named_parameters())]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
