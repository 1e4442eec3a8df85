"""The same values in another memory layout give the same outputs, bit for bit.

For every registered bottleneck (one of each, built by the contract suite's ``make``) the same
numbers are given as a contiguous tensor and as a transposed ``(D, B).t()`` view, a slice with a
storage offset and strides, an expanded (zero-stride) view, and for ``(B, D, H, W)`` input a
channels-last, a permuted and a sliced tensor. Compared bitwise, in training and eval mode with
a fixed generator: ``y_hat``, rate, aux loss, indices, stats, the module's state after the call,
gradients, the hard path, ``ideal_bits``, the files and what they decode to, and the density view.

torch keeps an input's memory layout through elementwise operations, so a per-row sum over
column-major rows added in another order: the rectangular lattice's rate and ``ideal_bits``
(the file itself was the same), the Gaussian methods' rate, ``log q`` and ``log_prior``,
information dropout's and soft VQ's outputs, the good lattices' Gaussian-prior rate and their
parameters' gradients differed in their last bits. Rows are now always contiguous
(:func:`qlatent._utils.to_rows`, and the density views' own inputs).
"""

from __future__ import annotations

import copy

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.coding import compress, decompress, ideal_bits
from qlatent.rng import SeedKeys
from test_contract import NAMES, make

B, H, W = 33, 4, 5
SLOW = {"lattice[leech]"}  # its files: seconds per case


def _values(*shape: int, seed: int = 3) -> torch.Tensor:
    return 2 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _layouts(y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The values of ``y`` in other memory layouts (each one's values equal ``y``'s)."""
    d = y.shape[1]
    if y.dim() == 2:
        big = torch.zeros(2 * y.shape[0] + 1, d + 7)
        big[1::2, 3 : 3 + d] = y
        return {"transposed": y.t().contiguous().t(), "sliced": big[1::2, 3 : 3 + d]}
    big = torch.zeros(2 * y.shape[0] + 1, d + 5, H + 2, W + 3)
    big[1::2, 2 : 2 + d, 1 : 1 + H, 2 : 2 + W] = y
    return {
        "channels_last": y.contiguous(memory_format=torch.channels_last),
        "permuted": y.permute(3, 2, 0, 1).contiguous().permute(2, 3, 1, 0),
        "sliced": big[1::2, 2 : 2 + d, 1 : 1 + H, 2 : 2 + W],
    }


def _expanded(y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero-stride views over ``y``'s first example (and first position, or first channel)."""
    views = {"expanded": y[:1].expand(y.shape)}
    if y.dim() == 2:
        views["expanded_channel"] = y[:, :1].expand(y.shape)
    else:
        views["expanded_position"] = y[:, :, :1, :1].expand(y.shape)
    for view in views.values():
        assert 0 in view.stride()
    return views


def _cases(y: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(layout, contiguous values, the same values in that layout)``."""
    cases = [(name, y, view) for name, view in _layouts(y).items()]
    cases += [(name, view.contiguous(), view) for name, view in _expanded(y).items()]
    for _, reference, view in cases:
        assert reference.is_contiguous() and torch.equal(reference, view)
    return cases


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            assert value.shape == other.shape, f"{what}: {key}"
            assert torch.equal(value.nan_to_num(), other.nan_to_num()), f"{what}: {key}"
        else:
            assert value == other, f"{what}: {key}"


def _forward(module, y: torch.Tensor, training: bool) -> dict:
    """Everything a forward returns or changes, on a fresh copy of ``module``."""
    module = copy.deepcopy(module).train(training)
    with torch.no_grad():
        out = module(y, generator=torch.Generator().manual_seed(5))
    got = {"y_hat": out.y_hat, "rate": out.rate, "aux_loss": out.aux_loss}
    if out.indices is not None:
        got["indices"] = out.indices
    got.update({f"stats.{k}": v for k, v in out.stats.items()})
    got.update({f"state.{k}": v for k, v in module.state_dict().items()})  # EMA codebooks
    return got


@pytest.mark.parametrize("spatial", [(), (H, W)], ids=["BD", "BDHW"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_is_the_same_in_every_layout(name, training, spatial):
    torch.manual_seed(1)
    module = make(name)
    y = _values(B, module.in_dim, *spatial)
    for layout, reference, view in _cases(y):
        expected = _forward(module, reference, training)
        _assert_same(expected, _forward(module, view, training), f"{name} {layout}")


def _gradients(module, y: torch.Tensor) -> dict:
    """Training-mode gradients of y_hat² + rate + aux with respect to ``y`` (a view of a leaf,
    in its own layout) and every parameter."""
    module = copy.deepcopy(module).train()
    out = module(y, generator=torch.Generator().manual_seed(5))
    loss = out.y_hat.pow(2).sum() + out.rate.sum() + out.aux_loss
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [y] + [p for _, p in params], allow_unused=True)
    got = {"input": grads[0]}
    got.update({n: g for (n, _), g in zip(params, grads[1:], strict=True) if g is not None})
    return got


def _leaf_views(y: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(contiguous values, the same values as a view)``, each a view of its own leaf."""
    d = y.shape[1]
    big = torch.zeros(2 * y.shape[0] + 1, d + 7)
    big[1::2, 3 : 3 + d] = y
    first = y[:1].clone().requires_grad_()
    return {
        "transposed": (y.clone().requires_grad_(), y.t().contiguous().requires_grad_().t()),
        "sliced": (y.clone().requires_grad_(), big.requires_grad_()[1::2, 3 : 3 + d]),
        "expanded": (
            first.detach().expand(y.shape).clone().requires_grad_(),
            first.expand(y.shape),
        ),
    }


@pytest.mark.parametrize("name", NAMES)
def test_training_gradients_are_the_same_in_every_layout(name):
    """The good lattices' spacing and scale gradients, and soft VQ's and information dropout's
    input gradients, differed for transposed rows."""
    torch.manual_seed(1)
    module = make(name)
    for layout, (reference, view) in _leaf_views(_values(B, module.in_dim)).items():
        assert torch.equal(reference, view) and view.stride() != reference.stride()
        expected = _gradients(module, reference)
        _assert_same(expected, _gradients(module, view), f"{name} {layout}")


# ------------------------------------------------------------------ the hard path and files
def _coded(name: str):
    """``make(name)`` in eval mode, counted by ``update`` where it has one (else None when it
    has no code model)."""
    torch.manual_seed(1)
    module = make(name).eval()
    if not module.discrete:
        return None
    if hasattr(module, "update"):
        module.update(_values(200, module.in_dim, seed=8))
    try:
        module.code_model()
    except TypeError:
        return None
    return module


CODED = [n for n in NAMES if _coded(n) is not None]


def _hard(module, y: torch.Tensor) -> dict:
    k = module.quantize(y, generator=SeedKeys(4))
    data = compress(module, y, seed=9)
    y_hat = decompress(module, data)
    assert torch.equal(y_hat, module(y, generator=SeedKeys(9)).y_hat)
    counted = copy.deepcopy(module)
    if hasattr(counted, "update"):
        counted.update(y)
    return {
        "indices": k,
        "dequantized": module.dequantize(k, generator=SeedKeys(4)),
        "ideal_bits": ideal_bits(module, y, seed=9),
        "file": data,
        "decoded": y_hat,
        "counts": getattr(counted, "code_counts", torch.zeros(0)),
    }


@pytest.mark.parametrize("spatial", [(), (H, W)], ids=["BD", "BDHW"])
@pytest.mark.parametrize(
    "name", [n if n not in SLOW else pytest.param(n, marks=pytest.mark.slow) for n in CODED]
)
def test_hard_path_ideal_bits_and_files_are_the_same_in_every_layout(name, spatial):
    module = _coded(name)
    y = _values(B, module.in_dim, *spatial, seed=6)
    with torch.no_grad():
        for layout, reference, view in _cases(y):
            _assert_same(_hard(module, reference), _hard(module, view), f"{name} {layout}")


def test_dequantize_takes_indices_in_any_layout():
    module = build("lattice", dim=8).eval()
    k = module.quantize(_values(B, 8, H, W), generator=SeedKeys(4))
    y_hat = module.dequantize(k, generator=SeedKeys(4))
    for view in (
        k.contiguous(memory_format=torch.channels_last),
        k.transpose(0, 3).contiguous().transpose(0, 3),
    ):
        assert torch.equal(module.dequantize(view, generator=SeedKeys(4)), y_hat)


def test_rectangular_ideal_bits_sum_in_row_order():
    """The known case: 33 rows of 40 stored transposed gave ``ideal_bits`` 4376.8645207 bits
    against 4376.8645317 for the same rows stored contiguously (float32 per-row rates summed
    over a column-major layout), while the two files were the same bytes."""
    torch.manual_seed(1)
    module = build("lattice", dim=40).eval()
    y = _values(33, 40, seed=3)
    transposed = y.t().contiguous().t()
    assert not transposed.is_contiguous()
    bits = ideal_bits(module, y, seed=9)
    assert ideal_bits(module, transposed, seed=9) == bits
    assert compress(module, transposed, seed=9) == compress(module, y, seed=9)
    with torch.no_grad():
        rate = module(y, generator=SeedKeys(9)).rate
        assert torch.equal(module(transposed, generator=SeedKeys(9)).rate, rate)


# ------------------------------------------------------------------------- density view
def _has_density(name: str) -> bool:
    module = make(name)
    try:
        module.log_prior(torch.zeros(1, 1, module.dim))
    except TypeError:
        return False
    return True


DENSITY = [n for n in NAMES if _has_density(n)]


def _density(module, y: torch.Tensor, samples: int) -> dict:
    z, log_q = module.posterior_sample(y, samples, generator=torch.Generator().manual_seed(6))
    torch.manual_seed(11)  # the good lattices' Monte-Carlo log_prior draws from it
    return {"z": z, "log_q": log_q, "log_prior": module.log_prior(z)}


@pytest.mark.parametrize("name", DENSITY)
def test_density_view_is_the_same_in_every_layout(name):
    """``posterior_sample``'s log q and ``log_prior`` of its points, and ``log_prior`` of the
    same points stored column-major (S = 1 too: a good lattice's reshape kept it a view)."""
    torch.manual_seed(1)
    module = make(name).eval()
    y = _values(B, module.in_dim, seed=7)
    with torch.no_grad():
        for samples in (1, 3):
            expected = _density(module, y, samples)
            for layout, reference, view in _cases(y):
                got = _density(module, view, samples)
                _assert_same(_density(module, reference, samples), got, f"{name} {layout}")
            z = expected["z"]
            for view in (
                z.transpose(1, 2).contiguous().transpose(1, 2),
                z.transpose(0, 1).contiguous().transpose(0, 1),
            ):
                torch.manual_seed(11)
                assert torch.equal(module.log_prior(view), expected["log_prior"]), name
            wide = z[:, :1].expand(z.shape)
            torch.manual_seed(11)
            expected_wide = module.log_prior(wide.contiguous())
            torch.manual_seed(11)
            assert torch.equal(module.log_prior(wide), expected_wide), name
