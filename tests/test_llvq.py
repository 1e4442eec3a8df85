"""The learnable lattice (LL-VQ-VAE), its experiment ``qlatent reproduce llvq-fashion --quick``,
and what it added: the conv autoencoder, per-epoch learning-rate decay, code-usage counts, image
folders for the CelebA / FFHQ configs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qlatent.bottlenecks import _codebook, _codebook_counts, build
from qlatent.bottlenecks.learnable_lattice import init_bound
from qlatent.cli import main
from qlatent.data.folder import load_image_folder
from qlatent.data.sources import DataError
from qlatent.eval import code_usage, distinct_rows
from qlatent.experiments.llvq_fashion import (
    PAPER,
    RELEASED_COUNTS,
    ROWS,
    build_model,
    load_data,
    model_config,
)
from qlatent.losses import RateDistortionLoss, evaluate_objective
from qlatent.nn.conv import conv_decoder, conv_encoder
from qlatent.train import TrainConfig, fit, load
from qlatent.train.loop import epoch_lr


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ the bottleneck
def test_init_bound_gives_the_target_codebook_size():
    bound = init_bound(512, 64)
    assert bound == pytest.approx(9.7673, abs=1e-4)
    assert (1 / bound + 1) ** 64 == pytest.approx(512)
    torch.manual_seed(0)
    ll = build("learnable_lattice", dim=64, num_codes=512)
    assert sum(p.numel() for p in ll.parameters()) == 64  # D numbers, against K·D for VQ
    assert ll.basis.abs().max() <= bound and ll.basis.abs().max() > 0.8 * bound


def test_quantization_is_rounding_to_the_diagonal_lattice():
    ll = build("learnable_lattice", dim=3, init_range=1.0)
    with torch.no_grad():
        ll.basis.copy_(torch.tensor([0.5, -2.0, 1.0]))
    y = torch.tensor([[0.6, 2.9, -1.4], [-0.3, -5.2, 0.49]])
    expected_n = torch.tensor([[1, -1, -1], [-1, 3, 0]])  # round(y / b), halves to even
    ll.eval()
    out = ll(y)
    torch.testing.assert_close(out.indices, expected_n)
    torch.testing.assert_close(out.y_hat, expected_n * torch.tensor([0.5, -2.0, 1.0]))
    torch.testing.assert_close(ll.dequantize(ll.quantize(y)), out.y_hat)
    assert out.stats["codes_used"].item() == 2
    assert out.stats["spacing"].item() == pytest.approx((0.5 + 2.0 + 1.0) / 3)
    assert torch.equal(out.rate, torch.zeros(2))


@pytest.mark.parametrize("shape", [(0, 4), (1, 4), (500, 3), (2000, 64)])
def test_row_counts_equal_a_full_sort_of_the_rows(shape):
    rows = torch.randint(-2, 3, shape, generator=gen(shape[0]))
    rows[shape[0] // 2 :] = rows[: shape[0] - shape[0] // 2]  # every row at least twice
    expected = torch.unique(rows, dim=0, return_counts=True)[1] if shape[0] else rows.new_zeros(0)
    counts = _codebook.row_counts(rows)
    assert counts.dtype == torch.int64 and int(counts.sum()) == shape[0]
    assert torch.equal(counts.sort().values, expected.sort().values)


def test_row_counts_do_not_depend_on_the_hash(monkeypatch):
    # every row hashes to 0: the neighbours in hash order differ, so the full sort decides
    monkeypatch.setattr(
        _codebook_counts,
        "_row_hash_weights",
        lambda dim, device: torch.zeros(dim, dtype=torch.int64),
    )
    rows = torch.tensor([[1, 0], [0, 1], [1, 0], [2, 2], [1, 0]])
    assert sorted(_codebook.row_counts(rows).tolist()) == [1, 1, 3]
    # equal hashes of equal rows are no collision: one count, without the full sort
    monkeypatch.setattr(torch, "unique", None)
    assert _codebook.row_counts(torch.ones(6, 3, dtype=torch.int64)).tolist() == [6]


def test_losses_and_gradients():
    ll = build("learnable_lattice", dim=2, commitment=0.25, size_weight=1.0, init_range=1.0)
    with torch.no_grad():
        ll.basis.copy_(torch.tensor([0.5, 1.0]))
    y = torch.tensor([[0.7, 1.2]], requires_grad=True)
    out = ll(y)
    q = torch.tensor([[0.5, 1.0]])
    mse = (q - y.detach()).square().mean()
    assert out.aux_loss.item() == pytest.approx((1 + 0.25) * mse.item() - 1.5, rel=1e-6)
    (out.y_hat.sum() + out.aux_loss).backward()
    # straight-through (1) plus the commitment term 0.25·2(y − q)/2
    torch.testing.assert_close(y.grad, 1 + 0.25 * (y.detach() - q))
    # b: embedding term 2(q − y)·n/2 per coordinate (n = 1, 1), size term −sign(b)
    torch.testing.assert_close(ll.basis.grad, (q - y.detach())[0] - 1.0)


@pytest.mark.parametrize("size_weight, grows", [(1.0, True), (-1.0, False)])
def test_size_loss_sign_sets_sparse_or_dense(size_weight, grows):
    torch.manual_seed(1)
    ll = build("learnable_lattice", dim=8, size_weight=size_weight, init_range=1.0)
    before = ll.spacing.clone()
    opt = torch.optim.SGD(ll.parameters(), lr=0.05)
    y = torch.zeros(4, 8)  # q = 0 = y: only the size term acts
    for _ in range(3):
        opt.zero_grad()
        ll(y).aux_loss.backward()
        opt.step()
    assert bool((ll.spacing > before).all()) is grows


def test_bad_arguments_and_tiny_spacing():
    for kwargs in (dict(init_range=0.0), dict(size_weight=math.inf), dict(num_codes=1)):
        with pytest.raises(ValueError):
            build("learnable_lattice", dim=3, **kwargs)
    ll = build("learnable_lattice", dim=2, init_range=1.0).eval()
    with torch.no_grad():
        ll.basis.copy_(torch.tensor([0.0, -1e-30]))
    assert torch.isfinite(ll(torch.ones(1, 2)).y_hat).all()


# ------------------------------------------------------------------ network and training
@pytest.mark.parametrize("hidden, side", [([64], 14), ([16, 32], 7)])
def test_conv_autoencoder_shapes(hidden, side):
    enc, dec = conv_encoder(1, hidden, 64), conv_decoder(64, hidden, 1)
    z = enc(torch.rand(2, 1, 28, 28) - 0.5)
    assert z.shape == (2, 64, side, side)
    assert dec(z).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError):
        conv_encoder(1, [], 64)


def test_lr_decay_zero_freezes_weights_after_the_first_epoch_but_not_the_ema(tmp_path):
    cfg = model_config("vq_ema", "reference", quick=True)
    assert cfg.train.lr_decay == 0.0
    assert [epoch_lr(cfg.train, e) for e in (1, 2, 3)] == [cfg.train.lr, 0.0, 0.0]
    x = torch.rand(64, 1, 28, 28, generator=gen(2)) - 0.5
    torch.manual_seed(0)
    model = build_model(cfg.model, channels=1, pixels=784)
    one = TrainConfig(epochs=1, batch_size=16, lr=1e-3, lr_decay=0.0, progress=False)
    fit(model, {"train": x, "val": x[:8]}, one, out_dir=tmp_path / "a", loss_fn=_mse_loss())
    after_one = {k: v.clone() for k, v in model.state_dict().items()}
    two = TrainConfig(epochs=3, batch_size=16, lr=1e-3, lr_decay=0.0, progress=False)
    data = {"train": x, "val": x[:8]}
    result = fit(model, data, two, out_dir=tmp_path / "a", loss_fn=_mse_loss())
    assert [h["lr"] for h in result.history] == [1e-3, 0.0, 0.0]
    for key, value in model.state_dict().items():
        if key.startswith("bottleneck.ema"):
            assert not torch.equal(value, after_one[key]), key  # the M-step went on
        else:
            assert torch.equal(value, after_one[key]), key


def test_evaluating_leaves_an_ema_codebook_alone():
    cfg = model_config("vq_ema", "constant", quick=True)
    torch.manual_seed(0)
    model = build_model(cfg.model, channels=1, pixels=784)
    before = model.bottleneck.codebook.clone()
    evaluate_objective(model, _mse_loss(), torch.rand(8, 1, 28, 28) - 0.5)  # training path
    assert torch.equal(model.bottleneck.codebook, before)


def _mse_loss() -> RateDistortionLoss:
    return RateDistortionLoss(lmbda=0.0)


# ------------------------------------------------------------------ code usage
def test_hashed_distinct_rows_match_exact_unique():
    rows = torch.randint(-3, 4, (5000, 6), generator=gen(3))
    assert distinct_rows(rows).shape[0] == distinct_rows(rows, exact=True).shape[0]
    big = torch.randint(-(2**40), 2**40, (3000, 64), generator=gen(4))
    big[1000:2000] = big[:1000]  # 1000 repeated rows
    assert distinct_rows(big).shape[0] == 2000


def test_code_usage_counts_every_position():
    torch.manual_seed(0)
    cfg = model_config("ll_vq", "constant", quick=True)
    model = build_model(cfg.model, channels=1, pixels=784)
    x = torch.rand(10, 1, 28, 28, generator=gen(5)) - 0.5
    usage = code_usage(model, [x[:6], x[6:]], batch_size=4, progress=False)
    assert usage.total_vectors == 10 * 14 * 14
    symbols = model.bottleneck.quantize(model.encoder(x))  # (10, D, 14, 14)
    exact = torch.unique(symbols.movedim(1, -1).reshape(-1, symbols.shape[1]), dim=0)
    assert usage.unique_codes == exact.shape[0]
    vq = build_model(model_config("vq", "constant", quick=True).model, channels=1, pixels=784)
    codes = vq.bottleneck.quantize(vq.encoder(x))
    assert code_usage(vq, [x], progress=False).unique_codes == codes.unique().numel()


# ------------------------------------------------------------------ the reproduction
def test_quick_pipeline_writes_the_table(tmp_path, capsys):
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert main(["reproduce", "llvq-fashion", "--quick", *dirs]) == 0
    payload = json.loads((tmp_path / "results" / "llvq-fashion-quick.json").read_text())
    assert set(payload["rows"]) == {"reference", "constant"}
    dim = model_config("vq", "reference", quick=True).model.latent_dim
    for schedule, rows in payload["rows"].items():
        assert set(rows) == set(ROWS)
        for row in rows.values():
            assert row["train_steps"] == 2 * math.ceil(128 / 32)
            assert row["total_vectors"] == 144 * 14 * 14  # train + validation positions
            assert row["total_vectors_test"] == 16 * 14 * 14
            assert row["test_mse"] > 0 and row["wall_s"] > 0
        for name in ("vq", "vq_ema", "ll_vq"):  # the test set as a file, decoded exactly
            coding = rows[name]["coding"]
            assert coding["coded"] and coding["round_trip_exact"], name
            # the ANS coder's 32-bit check word and final state are all it adds
            assert coding["ideal_bits"] <= coding["payload_bits"] + 1
            assert coding["payload_bits"] <= 1.001 * coding["ideal_bits"] + 128
        # the vq's counted indices: at most the fixed rate log2 K per position, plus the header
        vq_coding = rows["vq"]["coding"]
        header_bits = 8 * 100 / 16  # at most 100 header bytes over 16 test images
        assert (
            vq_coding["coded_bits_per_image"]
            <= vq_coding["fixed_rate_bits_per_image"] + header_bits
        )
        assert rows["vq"]["unique_codes_trainval"] <= 512
        # the lattice's count, recomputed exactly from the saved weights
        cfg = model_config("ll_vq", schedule, quick=True)
        data = load_data(cfg.data)
        model = build_model(cfg.model, channels=1, pixels=784)
        ckpt = tmp_path / "runs" / "llvq-fashion-quick" / schedule / "ll_vq" / "last.pt"
        model.load_state_dict(load(ckpt)["model"])
        model.eval()
        symbols = model.bottleneck.quantize(model.encoder(torch.cat([data["train"], data["val"]])))
        exact = torch.unique(symbols.movedim(1, -1).reshape(-1, dim), dim=0).shape[0]
        assert rows["ll_vq"]["unique_codes_trainval"] == exact
        assert rows["ll_vq"]["quantizer_params"] == dim
        assert rows["vq"]["quantizer_params"] == 512 * dim
        assert rows["vq_ema"]["quantizer_params"] == 512 * dim  # its codebook is a buffer
        assert rows["vq_ema"]["quantizer_trainable_params"] == 0
        assert (tmp_path / "results" / f"llvq-fashion-quick-{schedule}.png").stat().st_size > 0
    assert payload["paper"] == PAPER
    assert payload["reference_code_released_counts"] == RELEASED_COUNTS
    table = (tmp_path / "results" / "llvq-fashion-quick.md").read_text()
    assert "LL-VQ-VAE (sparse" in table and "1,781" in table
    # a second run resumes every finished row: the same numbers, nothing retrained
    capsys.readouterr()
    assert main(["reproduce", "llvq-fashion", "--quick", *dirs]) == 0
    again = json.loads((tmp_path / "results" / "llvq-fashion-quick.json").read_text())
    assert again["rows"] == payload["rows"]


def test_cli_codes_the_tables_conv_models(tmp_path, capsys):
    """qlatent update / compress / decompress on an LL-VQ checkpoint: rebuilt from the config
    saved in it, the test images coded with counted coordinates and decoded to the hard path."""
    dirs = ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert main(["reproduce", "llvq-fashion", "--quick", "--models", "ll_vq",
                 "--schedules", "constant", *dirs]) == 0  # fmt: skip
    ckpt = tmp_path / "runs" / "llvq-fashion-quick" / "constant" / "ll_vq" / "last.pt"
    codes, counted = tmp_path / "codes.qlc", tmp_path / "counted.pt"
    # images of another shape than the encoder takes: a clear error
    assert main(["update", "--checkpoint", str(ckpt), "--data", "synthetic-train",
                 "-o", str(counted)]) == 2  # fmt: skip
    assert "do not fit this model's encoder" in capsys.readouterr().err and not counted.exists()
    # a learnable lattice has no code model before update()
    assert main(["compress", "--checkpoint", str(ckpt), "--data", "synthetic-images-test",
                 "-o", str(codes)]) == 2  # fmt: skip
    assert "update" in capsys.readouterr().err and not codes.exists()
    assert main(["update", "--checkpoint", str(ckpt), "--data", "synthetic-images-train",
                 "-o", str(counted)]) == 0  # fmt: skip
    assert main(["compress", "--checkpoint", str(counted), "--data", "synthetic-images-test",
                 "-o", str(codes)]) == 0  # fmt: skip
    recon, png = tmp_path / "recon.pt", tmp_path / "recon.png"
    assert main(["decompress", str(codes), "--checkpoint", str(counted), "-o", str(recon),
                 "--png", str(png)]) == 0  # fmt: skip
    assert "bits per image" in capsys.readouterr().out and png.stat().st_size > 0
    cfg = model_config("ll_vq", "constant", quick=True)
    model = build_model(cfg.model, channels=1, pixels=784)
    model.load_state_dict(load(counted)["model"])
    model.eval()
    test = load_data(cfg.data)["test"]
    decoded = torch.load(recon, weights_only=True)
    assert decoded.shape == test.shape
    with torch.no_grad():
        expected = model.reconstruct(test)
    torch.testing.assert_close(decoded, expected, rtol=0, atol=1e-6)
    # the training checkpoint (no counts) is a different model: refused
    assert main(["decompress", str(codes), "--checkpoint", str(ckpt), "-o", str(recon)]) == 2
    assert "different model" in capsys.readouterr().err


def test_schedules_option_is_only_for_llvq(capsys):
    assert main(["reproduce", "softvq-mnist", "--quick", "--schedules", "constant"]) == 2
    assert "--schedules" in capsys.readouterr().err


# ------------------------------------------------------------------ image folders
def _write_images(folder, count, rng):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = (40, 30) if i % 2 else (24, 36)  # not square: centre-cropped
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{i:03d}.{'png' if i % 3 else 'jpg'}")


def test_image_folder_loader(tmp_path):
    _write_images(tmp_path / "imgs" / "sub", 5, np.random.default_rng(0))
    x = load_image_folder(tmp_path / "imgs", size=16, channels=3, progress=False)
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -0.5 and x.max() <= 0.5
    assert load_image_folder(tmp_path / "imgs", size=8, channels=1, progress=False).shape == (
        5,
        1,
        8,
        8,
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "empty", size=8)
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing", size=8)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        load_image_folder(tmp_path / "imgs", size=8, progress=False)


@pytest.mark.parametrize("dataset", ["celeba", "ffhq"])
def test_folder_configs_run_on_a_tiny_folder(tmp_path, dataset):
    _write_images(tmp_path / "imgs", 12, np.random.default_rng(1))
    cfg = model_config("ll_vq", "constant", dataset=dataset)
    assert cfg.data.name == "folder" and cfg.data.channels == 3
    small = [
        f"data.folder={tmp_path / 'imgs'}",
        "data.image_size=16",
        "data.val_size=2",
        "data.test_size=2",
        "model.latent_dim=4",
        "train.epochs=1",
        "train.batch_size=4",
        "train.progress=false",
        "eval.figure_images=2",
    ]
    args = ["reproduce", f"llvq-{dataset}", "--models", "ll_vq", "--schedules", "constant"]
    args += [x for item in small for x in ("--set", item)]
    args += ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]
    assert main(args) == 0
    payload = json.loads((tmp_path / "results" / f"llvq-{dataset}.json").read_text())
    row = payload["rows"]["constant"]["ll_vq"]
    side = 16 // 2 ** len(cfg.model.hidden)
    assert row["total_vectors"] == 10 * side * side and row["quantizer_params"] == 4
    assert payload["paper"] == {}


def test_folder_data_needs_a_folder(capsys):
    assert main(["reproduce", "llvq-celeba", "--models", "vq"]) == 2
    assert "data.folder" in capsys.readouterr().err


def test_frozen_epochs_of_a_model_without_buffers_are_skipped(tmp_path):
    cfg = model_config("ll_vq", "reference", quick=True)
    x = torch.rand(32, 1, 28, 28, generator=gen(6)) - 0.5
    torch.manual_seed(0)
    model = build_model(cfg.model, channels=1, pixels=784)
    # its only buffers are the code model's, which a training-mode forward never changes
    assert {n for n, _ in model.named_buffers()} == {
        "bottleneck.code_low",
        "bottleneck.code_counts",
    }
    train = TrainConfig(epochs=3, batch_size=16, lr=1e-3, lr_decay=0.0, progress=False)
    result = fit(model, {"train": x, "val": x[:8]}, train, out_dir=tmp_path, loss_fn=_mse_loss())
    assert "train_skipped" not in result.history[0]
    assert [h.get("train_skipped") for h in result.history[1:]] == [True, True]
    assert [h["step"] for h in result.history] == [2, 4, 6]  # skipped steps still count
    # nothing moved after the first epoch: validation is the same each time
    assert result.history[1]["val_objective"] == result.history[2]["val_objective"]
