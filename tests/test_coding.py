"""Real bitstreams: round trips that reproduce the hard path exactly, coded size against the exact
rate, a pinned bitstream that decodes identically on 1 and 2 threads, and every kind of bad file
rejected with a clear error."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.coding import (
    CodingError,
    Header,
    compress,
    decompress,
    ideal_bits,
    model_digest,
    pack,
    unpack,
)
from qlatent.coding.models import SignCode as _SignCode
from qlatent.rng import SeedKeys


def _lattice(seed: int = 0, dim: int = 12):
    torch.manual_seed(seed)
    bn = build("lattice", dim=dim, init_spacing=0.5, init_scale=2.0)
    with torch.no_grad():  # unequal spacings and scales per coordinate
        bn.log_spacing.add_(0.3 * torch.randn(dim))
        bn.log_scale.add_(0.3 * torch.randn(dim))
    return bn.eval()


@pytest.mark.parametrize("spatial", [(), (3, 2)])
def test_lattice_round_trip_is_the_hard_path(spatial):
    bn = _lattice()
    y = 3.0 * torch.randn(40, 12, *spatial, generator=torch.Generator().manual_seed(1))
    data = bn.compress(y, seed=123)
    expected = bn(y, generator=SeedKeys(123))
    assert torch.equal(bn.decompress(data), expected.y_hat)
    # another seed: another dither, another file, still exact
    other = bn.compress(y, seed=124)
    assert other != data
    assert torch.equal(bn.decompress(other), bn(y, generator=SeedKeys(124)).y_hat)


def test_coded_size_matches_the_exact_rate():
    bn = _lattice(dim=40)
    y = 4.0 * torch.randn(2000, 40, generator=torch.Generator().manual_seed(2))
    data = compress(bn, y, seed=5)
    header, payload = unpack(data)
    exact_bits = bn(y, generator=SeedKeys(5)).rate.sum().item() / math.log(2)
    payload_bits = 8 * len(payload)
    assert len(data) == len(payload) + header.size
    # ANS keeps up to 64 bits of state beyond the information content; 0.1% is the goal
    assert exact_bits <= payload_bits + 1 <= 1.001 * exact_bits + 64


def test_sign_probabilities_are_the_dithered_laplace_cells():
    # P(k < 0 | u), P(k = 0 | u), P(k > 0 | u) against the Laplace CDF written out with math.exp,
    # for ratios Δ/b on both sides of the one-exp limit (where ¼e^(−Δ/b) would underflow)
    spacing = np.array([0.5, 1.0, 2.0, 1.0, 1.0])
    scale = np.array([2.0, 0.01, 7.0, 1.0 / 600, 1.0 / 900])
    code = _SignCode(spacing, scale)
    assert set(code.two_exp) == {3, 4}
    r = np.linspace(0, 1, 97, endpoint=False)[:, None].astype(np.float32)
    u = ((r - np.float32(0.5)) * spacing.astype(np.float32)).astype(np.float32)
    got = code.probabilities(u).reshape(*u.shape, 3)
    for (i, d), _ in np.ndenumerate(u):
        delta, b, ui = spacing[d], scale[d], float(u[i, d])
        below = 0.5 * math.exp(-(ui + delta / 2) / b)
        above = 0.5 * math.exp(-(delta / 2 - ui) / b)
        expected = (below, 1.0 - below - above, above)
        assert got[i, d] == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_a_prior_far_narrower_than_the_cell_round_trips_at_its_rate():
    # Δ/b = 2000, inputs drawn from the prior: almost every coordinate is 0 at almost no cost;
    # the ±1 symbols (the input near a cell edge, probability up to ½) take the two-exp path,
    # and the support is ±1 (a one-entry magnitude table, which constriction refuses, is padded)
    b = 5e-4
    bn = build("lattice", dim=6, init_spacing=1.0, init_scale=b).eval()
    v = torch.rand(20000, 6, generator=torch.Generator().manual_seed(3)) - 0.5
    y = -b * torch.sign(v) * torch.log1p(-2 * v.abs())  # Laplace(0, b)
    data = bn.compress(y, seed=9)
    out = bn(y, generator=SeedKeys(9))
    assert torch.equal(bn.decompress(data), out.y_hat)
    assert (out.indices != 0).sum() >= 20
    header, payload = unpack(data)
    assert (header.symbol_min, header.symbol_max) == (-1, 1)
    exact_bits = out.rate.double().sum().item() / math.log(2)
    assert exact_bits - 1 <= 8 * len(payload) <= 1.001 * exact_bits + 64


def test_symbols_the_coder_cannot_hold_are_refused_with_a_reason():
    bn = _lattice(dim=3)
    with pytest.raises(ValueError, match="too large to code"):  # before any int32 cast
        bn.compress(torch.full((4, 3), 1e12), seed=0)
    wide = build("lattice", dim=3, init_spacing=1e-3, init_scale=10.0).eval()  # b/Δ = 10^4
    with pytest.raises(ValueError, match="beyond the coder's"):
        wide.compress(torch.zeros(4, 3), seed=0)


def test_codebook_indices_round_trip():
    torch.manual_seed(0)
    for name in ("vq", "vq_ema", "soft_em_vq"):
        bn = build(name, dim=5, num_codes=37).eval()
        z = torch.randn(6, 5, 4, 4, generator=torch.Generator().manual_seed(3))
        data = bn.compress(z, seed=0)
        assert torch.equal(bn.decompress(data), bn(z).y_hat), name
        header, payload = unpack(data)
        assert header.shape == (6, 5, 4, 4)
        bits = 6 * 16 * math.log2(37)  # the hard path's fixed rate, log K per position
        assert bits <= 8 * len(payload) <= 1.01 * bits + 64


def test_methods_without_a_code_model_say_so():
    for name in ("identity", "gaussian"):
        bn = build(name, dim=4).eval()
        with pytest.raises(TypeError, match="no entropy model"):
            bn.compress(torch.randn(2, bn.in_dim), seed=0)
    with pytest.raises(TypeError, match=r"no code model yet: call bottleneck.update"):
        build("learnable_lattice", dim=4).eval().compress(torch.randn(2, 4), seed=0)


@pytest.mark.parametrize("name", ["vq", "vq_ema", "soft_em_vq", "learnable_lattice"])
def test_counted_code_model_round_trip_and_size(name):
    torch.manual_seed(0)
    kwargs = {"init_range": 0.3} if name == "learnable_lattice" else {}
    bn = build(name, dim=5, num_codes=37, **kwargs).eval()
    g = torch.Generator().manual_seed(3)
    train = torch.randn(200, 5, 4, 4, generator=g)
    summary = bn.update(train.split(64))  # batches: the range grows as they come
    assert summary["symbols"] == train.numel() // (1 if name == "learnable_lattice" else 5)
    z = 1.3 * torch.randn(6, 5, 4, 4, generator=g)  # wider than training: escapes for the lattice
    data = bn.compress(z, seed=0)
    assert unpack(data)[0].code_model == 3
    assert torch.equal(bn.decompress(data), bn(z).y_hat)
    bits = ideal_bits(bn, z, seed=0)
    payload = 8 * len(unpack(data)[1])
    assert bits <= payload + 1 <= 1.001 * bits + 64
    if name != "learnable_lattice":  # a skewed usage codes below the uniform log2 K
        assert bits < 6 * 16 * math.log2(37)


def test_update_counts_match_bincount_and_batches_match_one_tensor():
    torch.manual_seed(1)
    bn = build("learnable_lattice", dim=3, init_range=0.4).eval()
    y = torch.randn(500, 3, generator=torch.Generator().manual_seed(8))
    bn.update(y)
    counts, low = bn.code_counts.clone(), bn.code_low.clone()
    k = torch.round(y / bn.basis.detach()).long()
    for f in range(3):
        expected = torch.bincount(k[:, f] - k[:, f].min())
        assert low[f] == k[:, f].min()
        assert torch.equal(counts[f, : expected.numel()], expected)
        assert (counts[f, expected.numel() :] == -1).all()  # padding beyond this feature's range
    bn.update(iter(y.split(7)))  # the same symbols in many batches, replacing the counts
    assert torch.equal(bn.code_counts, counts) and torch.equal(bn.code_low, low)
    probs = bn.code_probabilities()
    assert all(abs(p.sum().item() - 1) < 1e-12 for p in probs)
    assert probs[0][-1] == 0.5 / (500 + 0.5 * probs[0].numel())  # the escape's half count


def test_code_model_is_saved_pinned_by_the_digest_and_optional_in_old_checkpoints():
    torch.manual_seed(2)
    bn = build("vq", dim=4, num_codes=9).eval()
    before = model_digest(bn)
    old_state = {k: v.clone() for k, v in bn.state_dict().items() if not k.startswith("code_")}
    y = torch.randn(100, 4, generator=torch.Generator().manual_seed(9))
    bn.update(y)
    assert model_digest(bn) != before
    data = bn.compress(y, seed=0)
    fresh = build("vq", dim=4, num_codes=9).eval()
    fresh.load_state_dict(bn.state_dict())  # the counts take their saved shape
    assert torch.equal(fresh.code_counts, bn.code_counts)
    assert torch.equal(fresh.decompress(data), bn.decompress(data))
    old = build("vq", dim=4, num_codes=9).eval()
    old.load_state_dict(old_state)  # a checkpoint from before code models: loads, none yet
    assert not old.code_model_ready
    assert unpack(old.compress(y, seed=0))[0].code_model == 2  # uniform indices
    with pytest.raises(CodingError, match="different model"):
        old.decompress(data)
    with pytest.raises(ValueError, match="non-empty"):
        bn.update([])


def test_bad_files_are_rejected_with_clear_errors():
    bn = _lattice()
    y = torch.randn(10, 12, generator=torch.Generator().manual_seed(4))
    data = bn.compress(y, seed=9)
    cases = {
        "bad magic": b"PK\x03\x04" + data[4:],
        "truncated": data[:-7],
        "trailing bytes": data + b"\x00",
        "checksum": data[:-10] + bytes([data[-10] ^ 0x01]) + data[-9:],  # a payload bit
        "version": data[:4] + (99).to_bytes(2, "little") + data[6:],
    }
    for what, bad in cases.items():
        with pytest.raises(CodingError, match=what.split()[0]):
            bn.decompress(bad)
    with pytest.raises(CodingError, match="truncated"):
        bn.decompress(data[:20])
    # the same architecture with other weights: a different model
    other = _lattice(seed=1)
    with pytest.raises(CodingError, match="different model"):
        other.decompress(data)
    # a file for another kind of bottleneck
    vq = build("vq", dim=12, num_codes=8).eval()
    with pytest.raises(CodingError, match="different model"):
        vq.decompress(data)
    with pytest.raises(ValueError, match="seed"):
        bn.compress(y, seed=-1)


def test_container_round_trip_and_digest():
    header = Header(1, b"\x07" * 32, 2**40 + 3, -5, 17, (3, 4, 5))
    header2, payload = unpack(pack(header, b"abcd"))
    assert header2 == header and payload == b"abcd"
    a, b = _lattice(), _lattice()
    assert model_digest(a) == model_digest(b)
    with torch.no_grad():
        b.log_scale[0] += 1e-7
    assert model_digest(a) != model_digest(b)


GOLDEN_SCRIPT = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from qlatent.bottlenecks import build
from qlatent.rng import SeedKeys
torch.manual_seed(0)
bn = build("lattice", dim=8, init_spacing=0.25, init_scale=1.5).eval()
x = torch.arange(8 * 16, dtype=torch.float32).reshape(16, 8).sin() * 3
data = bn.compress(x, seed=2024)
y_hat = bn.decompress(data)
print(hashlib.md5(data).hexdigest(), hashlib.md5(y_hat.numpy().tobytes()).hexdigest())
ll = build("learnable_lattice", dim=8, init_range=0.5).eval()
ll.update(x[:10])
data = ll.compress(x, seed=0)
print(hashlib.md5(data).hexdigest(), hashlib.md5(ll.decompress(data).numpy().tobytes()).hexdigest())
# several blocks of rows, and rows longer than a block (whose exp torch may split over threads)
for rows, dim in ((2000, 40), (2, 33000)):
    bn = build("lattice", dim=dim, init_spacing=0.5, init_scale=2.0).eval()
    x = torch.arange(rows * dim, dtype=torch.float32).reshape(rows, dim).mul(0.37).sin() * 4
    data = bn.compress(x, seed=7)
    y_hat = bn.decompress(data)
    assert torch.equal(y_hat, bn(x, generator=SeedKeys(7)).y_hat)
    print(hashlib.md5(data).hexdigest())
"""

#: md5 of the pinned bitstream and of its decoded float32 tensor (a change to the format, the
#: dither or the code model changes them: bump the format version then)
GOLDEN_BITSTREAM_MD5 = "b8fe86b353c7f14fed897378f4b45b5c"
GOLDEN_DECODED_MD5 = "9980ede3adcf8e57fdfb733820f0c015"
#: the same for a learnable lattice's counted code model
GOLDEN_COUNTED_MD5 = ("d0aac2b488e6994ce0702a312b29a6b7", "e371427e3d9f2de1fe9bb903dc468ce8")
#: bitstreams of a multi-block input and of rows longer than a block
GOLDEN_BLOCKS_MD5 = ("1d46d46e9f425f73c1425a37488b9f04", "695292856f69cad071745f0a1bdb53b5")


def test_golden_bitstream_is_pinned_and_thread_independent():
    outputs = [
        subprocess.run(
            [sys.executable, "-c", GOLDEN_SCRIPT, str(threads)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for threads in (1, 2)
    ]
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == GOLDEN_BITSTREAM_MD5
    assert outputs[0][1] == GOLDEN_DECODED_MD5
    assert tuple(outputs[0][2:4]) == GOLDEN_COUNTED_MD5
    assert tuple(outputs[0][4:]) == GOLDEN_BLOCKS_MD5


def test_decompress_checks_shapes_against_the_bottleneck():
    bn = _lattice()
    data = bn.compress(torch.randn(3, 12), seed=0)
    header, payload = unpack(data)
    lo, hi = header.symbol_min, header.symbol_max
    forged = pack(Header(1, model_digest(bn), 0, lo, hi, (3,)), payload)
    with pytest.raises(CodingError, match="shape"):
        decompress(bn, forged)


def test_support_covers_the_prior_so_few_symbols_are_not_coded_below_their_rate():
    # 30 symbols near the mode: a support taken from the data alone ([-1, 1]) would truncate
    # the prior and code them in fewer bits than −log2 P(z | u)
    bn = _lattice(dim=3)
    y = 0.1 * torch.randn(10, 3, generator=torch.Generator().manual_seed(6))
    data = bn.compress(y, seed=1)
    header, payload = unpack(data)
    assert header.symbol_max - header.symbol_min > 20
    exact_bits = bn(y, generator=SeedKeys(1)).rate.sum().item() / math.log(2)
    assert 8 * len(payload) >= exact_bits - 1


def test_cli_compress_decompress_round_trip(tmp_path, capsys):
    from qlatent.cli import main
    from qlatent.experiments.coding_mnist import reproduce

    payload = reproduce(
        quick=True, models=["lattice"], runs_dir=tmp_path / "runs", results_dir=tmp_path / "res"
    )
    row = payload["rows"]["lattice"]
    assert row["round_trip_exact"] and row["images"] == 200
    assert row["hard_rate_over_seeds"]["seeds"] == 3 and row["hard_rate_over_seeds"]["sd"] > 0
    header_bits = 8 * row["header_bytes"] / row["images"]
    assert row["payload_bits_per_image"] >= row["hard_rate_bits_per_image"] - 1e-6
    assert row["coded_bits_per_image"] <= 1.001 * row["hard_rate_bits_per_image"] + header_bits + 1
    ckpt = tmp_path / "runs" / "coding-mnist-quick" / "lattice" / "last.pt"
    codes, recon = tmp_path / "codes.qlc", tmp_path / "recon.pt"
    assert main(["compress", "--checkpoint", str(ckpt), "--data", "synthetic-test",
                 "-o", str(codes)]) == 0  # fmt: skip
    assert main(["decompress", str(codes), "--checkpoint", str(ckpt), "-o", str(recon)]) == 0
    assert "bits per image" in capsys.readouterr().out
    assert torch.load(recon, weights_only=True).shape == (200, 784)
    # a corrupt file: exit code 2, a clear message, and no output written
    codes.write_bytes(codes.read_bytes()[:-3])
    bad = tmp_path / "bad.pt"
    assert main(["decompress", str(codes), "--checkpoint", str(ckpt), "-o", str(bad)]) == 2
    assert "truncated" in capsys.readouterr().err and not bad.exists()


def test_vq_coding_pipeline_update_and_cli(tmp_path, capsys):
    """coding-mnist's VQ row: counted indices code below log2 K and round-trip exactly; the CLI
    learns the code model (qlatent update) and codes with it."""
    from qlatent.cli import main
    from qlatent.experiments.coding_mnist import reproduce
    from qlatent.train import load

    payload = reproduce(
        quick=True, models=["vq"], runs_dir=tmp_path / "runs", results_dir=tmp_path / "res"
    )
    row = payload["rows"]["vq"]
    assert row["code_model"].startswith("counted") and row["round_trip_exact"]
    assert row["hard_rate_bits_per_image"] == pytest.approx(math.log2(512))
    assert row["ideal_bits_per_image"] < 0.9 * math.log2(512)  # quick training uses few codes
    payload_bits = row["payload_bits_per_image"] * row["images"]
    assert payload_bits <= 1.001 * row["ideal_bits_per_image"] * row["images"] + 64
    ckpt = tmp_path / "runs" / "coding-mnist-quick" / "vq" / "last.pt"
    counted, codes = tmp_path / "counted.pt", tmp_path / "codes.qlc"
    assert main(["update", "--checkpoint", str(ckpt), "--data", "synthetic-train",
                 "-o", str(counted)]) == 0  # fmt: skip
    assert load(counted)["model"]["bottleneck.code_counts"].shape == (1, 512)
    assert main(["compress", "--checkpoint", str(counted), "--data", "synthetic-test",
                 "-o", str(codes)]) == 0  # fmt: skip
    assert unpack(codes.read_bytes())[0].code_model == 3
    recon = tmp_path / "recon.pt"
    assert main(["decompress", str(codes), "--checkpoint", str(counted), "-o", str(recon)]) == 0
    assert torch.load(recon, weights_only=True).shape == (200, 784)
    # the training checkpoint has no counts: a different model, refused
    assert main(["decompress", str(codes), "--checkpoint", str(ckpt), "-o", str(recon)]) == 2
    assert "different model" in capsys.readouterr().err
    lattice = tmp_path / "lat.pt"
    torch.save({"model": {"decoder.2.weight": torch.zeros(3, 4)}}, lattice)
    assert main(["update", "--checkpoint", str(lattice), "-o", str(tmp_path / "x.pt")]) == 2


def test_update_refuses_a_range_too_wide_before_allocating_it():
    from qlatent.bottlenecks._code_model import MAX_WIDTH

    bn = build("learnable_lattice", dim=2, init_range=1e-3).eval()  # a very fine lattice
    y = torch.tensor([[-50.0, 0.0], [50.0, 0.0]])
    with pytest.raises(ValueError, match="span .* values, more than"):
        bn.update(y)
    assert not bn.code_model_ready
    ok = torch.tensor([[0.0, 0.0], [(MAX_WIDTH - 1) * 1e-3, 0.0]])
    bn.basis.data.fill_(1e-3)
    bn.update(ok)
    assert bn.code_counts.shape == (2, MAX_WIDTH)
