"""The text experiment's quantizers (lattice paper, appendix A.2): ``scalar_st``, ``vector_st``
and ``gaussian_dither``.

Checked: ``scalar_st`` outputs the nearest learned level, its rate is −Σ log softmax(ℓ) of the
chosen levels (a real code length), the gradient passes straight through to the input and
reaches the chosen levels and the logits, and after ``update`` its codes go to a file and back
exactly; ``vector_st`` picks the nearest code vector of each 2-D group (by squared distance, not
per coordinate), its indices have one number per group and code to a file and back;
``gaussian_dither``'s rate is the KL of N(Ay, σ²) to N(0, I), its hard path is B·A·y, and its
training noise has the learned variance.
"""

from __future__ import annotations

import math

import torch

from qlatent.bottlenecks import build
from qlatent.coding.codec import compress, decompress


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_scalar_st_levels_rate_and_gradients():
    neck = build("scalar_st", dim=3, levels=4, init_range=1.5).train()
    with torch.no_grad():
        neck.logits.copy_(torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(3, 1))
    y = torch.tensor([[-1.4, 0.2, 2.0], [0.6, -0.6, -3.0]], requires_grad=True)
    out = neck(y)
    grid = torch.linspace(-1.5, 1.5, 4)  # -1.5, -0.5, 0.5, 1.5
    expected = torch.tensor([[-1.5, 0.5, 1.5], [0.5, -0.5, -1.5]])
    torch.testing.assert_close(out.y_hat.detach(), expected)
    log_pi = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0)
    k = torch.tensor([[0, 2, 3], [2, 1, 0]])
    torch.testing.assert_close(out.rate, -log_pi[k].sum(1))
    (out.y_hat.sum() + out.rate.sum()).backward()
    torch.testing.assert_close(y.grad, torch.ones_like(y))  # straight through
    assert neck.codes.grad[0, :, 0].tolist() == [1.0, 0.0, 1.0, 0.0]  # the chosen levels only
    assert neck.logits.grad.abs().sum() > 0
    assert torch.equal(grid, neck.codes.detach()[0, :, 0])


def test_scalar_st_files_round_trip_after_update():
    neck = build("scalar_st", dim=4, levels=8).eval()
    y = torch.randn(500, 4, generator=gen(0))
    neck.update(y)
    data = compress(neck, y, seed=3)
    y_hat = decompress(neck, data)
    torch.testing.assert_close(y_hat, neck(y).y_hat, rtol=0, atol=0)
    # at most log2(8) = 3 bits per value (fewer: the counts are skewed), plus the header
    assert 8 * len(data) < 500 * 4 * 3 + 1000


def test_vector_st_nearest_code_vector_per_group():
    neck = build("vector_st", dim=4, group=2, codes=3).train()
    with torch.no_grad():
        # group 0: three code vectors on a line; group 1: a triangle
        neck.codes.copy_(
            torch.tensor(
                [
                    [[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]],
                    [[0.0, 1.0], [-1.0, -1.0], [1.0, -1.0]],
                ]
            )
        )
        neck.logits.copy_(torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0]]))
    # (1.2, 1.5) is nearer (2, 0) than (0, 0) in 2-D, though not in its second coordinate
    y = torch.tensor([[1.2, 1.5, 0.2, 0.3], [3.5, -0.5, 0.6, -0.8]], requires_grad=True)
    out = neck(y)
    expected = torch.tensor([[2.0, 0.0, 0.0, 1.0], [4.0, 0.0, 1.0, -1.0]])
    torch.testing.assert_close(out.y_hat.detach(), expected)
    log_pi = torch.log_softmax(neck.logits.detach(), 1)
    k = torch.tensor([[1, 0], [2, 2]])
    torch.testing.assert_close(out.rate, -(log_pi[0, k[:, 0]] + log_pi[1, k[:, 1]]))
    (out.y_hat.sum() + out.rate.sum()).backward()
    torch.testing.assert_close(y.grad, torch.ones_like(y))  # straight through
    assert neck.codes.grad[0].sum(1).tolist() == [0.0, 2.0, 2.0]  # the chosen vectors only
    neck.eval()
    indices = neck.quantize(y.detach(), generator=gen(0))
    assert indices.tolist() == k.tolist()  # one number per group: (B, N / k)
    assert torch.equal(neck.dequantize(indices, generator=gen(0)), expected)


def test_vector_st_files_round_trip_after_update():
    neck = build("vector_st", dim=6, group=3, codes=8).eval()
    y = torch.randn(400, 6, generator=gen(4))
    neck.update(y)
    data = compress(neck, y, seed=1)
    torch.testing.assert_close(decompress(neck, data), neck(y).y_hat, rtol=0, atol=0)
    assert 8 * len(data) < 400 * 2 * 3 + 1000  # at most 3 bits per group of 3, plus the header


def test_gaussian_dither_rate_hard_path_and_noise():
    neck = build("gaussian_dither", dim=2, init_logvar=math.log(0.25))
    with torch.no_grad():
        neck.encode_map.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
        neck.decode_map.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, -1.0]]))
    y = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    mean = y @ neck.encode_map.weight.T
    kl = 0.5 * (mean.square() + 0.25 - 1 - math.log(0.25)).sum(1)
    neck.eval()
    out = neck(y, generator=gen(1))
    torch.testing.assert_close(out.rate, kl)
    torch.testing.assert_close(out.y_hat, mean @ neck.decode_map.weight.T)
    neck.train()
    many = y[:1].expand(20000, 2)
    z = neck(many, generator=gen(2)).y_hat @ torch.linalg.inv(neck.decode_map.weight.T).detach()
    std = (z - mean[:1]).std(0)
    torch.testing.assert_close(std, torch.full((2,), 0.5), rtol=0.03, atol=0)
    neck(many, generator=gen(3)).rate.mean().backward()
    assert neck.logvar.grad.abs().sum() > 0
