"""Hostile files, damaged checkpoints, empty and extreme inputs, paths that would destroy data.

Each class of defect has a regression test, and the three surfaces a user hands us bytes or
numbers through are fuzzed with hypothesis: the ``.qlc`` container (forged headers with a valid
checksum, truncations, flips), every bottleneck's inputs (shapes, dtypes, magnitudes) and the
config parser. The default profile is bounded and derandomized; ``make fuzz`` runs many more
examples (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cli_helpers import one_line_error, run_cli
from qlatent.bottlenecks import BOTTLENECKS, build
from qlatent.coding import CodingError, compress, decompress
from qlatent.coding.codec import MAX_ELEMENTS, model_digest
from qlatent.coding.container import Header, pack, unpack
from qlatent.config import apply_overrides
from qlatent.experiments.lattice_vae import LatticeVAEConfig, ModelConfig
from qlatent.lattices.base import MAX_COORDINATE
from qlatent.train import CheckpointError, TrainConfig, fit, load, save_atomic

pytestmark = pytest.mark.fuzz


# --------------------------------------------------------------------------- coded files
def _coders():
    """One bottleneck per code model, with what it codes."""
    torch.manual_seed(0)
    lattice = build("lattice", dim=8).eval()
    vq = build("vq", dim=8, num_codes=16).eval()
    counted = build("vq", dim=8, num_codes=16).eval()
    counted.update([torch.randn(200, 8)])
    learnable = build("learnable_lattice", dim=8).eval()
    learnable.update([torch.randn(200, 8)])
    e8 = build("lattice", dim=8, lattice="e8", eval_samples=16, eval_prior_samples=4).eval()
    # Λ16 (dim 16), coded by its cosets: the glued code model
    bw16 = build("lattice", dim=16, lattice="bw16", eval_samples=16, eval_prior_samples=4).eval()
    # a Gaussian prior: every block in a triangular basis, constriction's QuantizedGaussian
    e8_gauss = build(
        "lattice", dim=8, lattice="e8", prior="gaussian", eval_samples=16, eval_prior_samples=4
    ).eval()
    return {
        "lattice": lattice, "vq": vq, "counted": counted, "learnable": learnable, "e8": e8,
        "bw16": bw16, "e8_gauss": e8_gauss,
    }  # fmt: skip


CODERS = _coders()


def _forge(bottleneck, data: bytes, **changes) -> bytes:
    """``data`` with header fields replaced and the checksum recomputed: what anyone can do,
    since the model digest is in every file."""
    header, payload = unpack(data)
    payload = changes.pop("payload", payload)
    return pack(dataclasses.replace(header, **changes), payload)


@pytest.mark.parametrize("name", sorted(CODERS))
def test_a_forged_huge_shape_is_refused_before_allocating(name):
    bottleneck = CODERS[name]
    d = bottleneck.dim
    data = compress(bottleneck, torch.randn(50, d), seed=3)
    for shape in [(4_000_000, d), (2**32 - 1, d), (2**32 - 1,) * 2 + (2**32 - 1,) * 6]:
        forged = _forge(bottleneck, data, shape=shape if shape[1] == d else (5, d, *shape[2:]))
        with pytest.raises(CodingError, match="max_elements|bits"):
            decompress(bottleneck, forged)
    # under the element cap but more rows than the payload's bits can hold
    with pytest.raises(CodingError, match="bits"):
        decompress(bottleneck, _forge(bottleneck, data, shape=(100_000, d)))
    # a smaller cap is honoured
    with pytest.raises(CodingError, match="max_elements"):
        decompress(bottleneck, data, max_elements=50 * d - 1)
    assert decompress(bottleneck, data, max_elements=50 * d).shape == (50, d)


def test_a_shape_whose_product_wraps_int64_is_refused():
    bottleneck = CODERS["lattice"]
    data = compress(bottleneck, torch.randn(4, 8), seed=0)
    wraps = (2**31, 8, 2**31, 2**31, 2**31)  # 2^127 values: wraps int64 in any int64 product
    with pytest.raises(CodingError, match="max_elements"):
        decompress(bottleneck, _forge(bottleneck, data, shape=wraps))


def test_a_trailing_spatial_axis_the_decoder_does_not_take_is_a_coding_error():
    from qlatent.image_coding import compress_images, decompress_images
    from qlatent.models import gated_vae

    torch.manual_seed(0)
    model = gated_vae("lattice", latent_dim=4, hidden=8, data_dim=16).eval()
    data = compress_images(model, torch.rand(6, 16), seed=1)
    forged = _forge(model.bottleneck, data, shape=(6, 4, 1))
    with pytest.raises(CodingError, match="decoder"):
        decompress_images(model, forged)


@pytest.mark.parametrize("name", sorted(CODERS))
def test_empty_inputs_code_to_a_file_that_decodes_to_empty(name):
    bottleneck = CODERS[name]
    d = bottleneck.dim
    for shape in [(0, d), (3, d, 0), (0, d, 2)]:
        data = compress(bottleneck, torch.randn(shape), seed=0)
        out = decompress(bottleneck, data)
        assert out.shape == shape and out.numel() == 0


@pytest.mark.parametrize("name", sorted(CODERS))
@given(
    rows=st.integers(1, 12),
    shape=st.lists(
        st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), min_size=1, max_size=8
    ),
    seed=st.integers(0, 2**64 - 1),
    lo=st.integers(-(2**31), 2**31 - 1),
    hi=st.integers(-(2**31), 2**31 - 1),
    payload=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_fuzz_forged_headers_are_refused_or_decode_to_the_announced_shape(
    name, rows, shape, seed, lo, hi, payload
):
    """Any header with a valid checksum and digest: a CodingError, or a tensor of exactly the
    announced shape whose size the file bounds."""
    bottleneck = CODERS[name]
    data = compress(bottleneck, torch.randn(rows, bottleneck.dim), seed=1)
    header, genuine = unpack(data)
    forged = pack(
        Header(header.code_model, header.digest, seed, lo, hi, tuple(shape)),
        genuine if payload is None else payload,
    )
    try:
        out = decompress(bottleneck, forged)
    except CodingError:
        return
    assert tuple(out.shape) == tuple(shape)
    assert out.numel() <= MAX_ELEMENTS and out.numel() <= 64 * len(forged)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(CODERS))
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_fuzz_truncated_and_flipped_files_are_refused(name, cut, flip, bit):
    bottleneck = CODERS[name]
    data = compress(bottleneck, torch.randn(20, bottleneck.dim), seed=2)
    with pytest.raises(CodingError):
        decompress(bottleneck, data[: cut % len(data)])
    damaged = bytearray(data)
    damaged[flip % len(data)] ^= 1 << bit
    with pytest.raises(CodingError):
        decompress(bottleneck, bytes(damaged))


@given(position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_fuzz_forged_payloads_decode_to_the_shape_or_fail_cleanly(position, value):
    """A payload edited with its checksum recomputed cannot be detected as forged (the
    container's docs say so): it must still decode to the announced shape or raise
    CodingError, never crash or hang."""
    bottleneck = CODERS["lattice"]
    data = compress(bottleneck, torch.randn(30, 8), seed=4)
    header, payload = unpack(data)
    edited = bytearray(payload)
    edited[position % len(payload)] = value
    try:
        out = decompress(bottleneck, pack(header, bytes(edited)))
    except CodingError:
        return
    assert out.shape == (30, 8) and torch.isfinite(out).all()


def test_header_shapes_beyond_uint32_are_refused_when_packing():
    with pytest.raises(ValueError, match="shape entry"):
        pack(Header(1, bytes(32), 0, 0, 0, (2**32, 8)), b"")


# --------------------------------------------------------------------------- checkpoints
def _tiny_fit(out, epochs=1, **train):
    from qlatent.data import synthetic_binary
    from qlatent.models import lattice_vae

    torch.manual_seed(0)
    model = lattice_vae(latent_dim=train.pop("latent_dim", 3), hidden=8, data_dim=16)
    cfg = TrainConfig(epochs=epochs, batch_size=50, progress=False, **train)
    data = synthetic_binary(n=200, dim=16, seed=0)
    return fit(model, data, cfg, out_dir=out, run_config={"data": "synthetic", "train": {}})


class _Payload:
    """An object whose unpickling would create a file: the marker of code execution."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_with_code_is_refused_before_the_code_runs(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"model": {}, "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load(path)
    assert not marker.exists()


def test_a_flipped_byte_in_the_weights_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    weights = torch.arange(64, dtype=torch.float32) + 0.5
    save_atomic({"model": {"w": weights}, "epoch": 3}, path)
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(weights.numpy().tobytes())
    assert at > 0
    raw[at + 21] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged"):
        load(path)


@pytest.mark.parametrize(
    "content", [b"", b"hello, I am text\n", b"PK\x03\x04" + bytes(40), b"\x80\x02}q\x00."]
)
def test_empty_text_and_truncated_checkpoints_give_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load(path)


def test_a_truncated_real_checkpoint_is_refused(tmp_path):
    _tiny_fit(tmp_path / "run")
    data = (tmp_path / "run" / "last.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load(cut)


def test_a_tensor_larger_than_its_stored_data_is_refused(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save({"model": {"w": torch.zeros(1).expand(10**6)}}, path)
    with pytest.raises(CheckpointError, match="cannot fill"):
        load(path)


def test_resume_refuses_another_config_or_architecture_but_allows_more_epochs(tmp_path):
    out = tmp_path / "run"
    _tiny_fit(out, epochs=1)
    with pytest.raises(CheckpointError, match="lr"):
        _tiny_fit(out, epochs=2, lr=1e-3)
    with pytest.raises(CheckpointError, match="batch_size|seed"):
        _tiny_fit(out, epochs=2, seed=7)
    with pytest.raises(CheckpointError, match="different model"):
        _tiny_fit(out, epochs=2, latent_dim=5)
    result = _tiny_fit(out, epochs=2)  # the epoch cap may change
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_resume_refuses_a_checkpoint_without_training_state(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    save_atomic({"model": {}}, out / "last.pt")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        _tiny_fit(out)


def test_a_temporary_file_left_by_a_killed_write_is_removed(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    _tiny_fit(out)
    assert not stale.exists() and (out / "last.pt").is_file()


def test_legacy_checkpoints_without_a_digest_still_load(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.ones(3)}}, path)
    assert torch.equal(load(path)["model"]["w"], torch.ones(3))


# --------------------------------------------------------------------------- the CLI


def test_no_command_writes_over_its_input(tmp_path, capsys, coding_checkpoint):
    ckpt = coding_checkpoint
    before = ckpt.read_bytes()
    common = ["--data", "synthetic-test", "--limit", 5]
    code, err = run_cli(["compress", "--checkpoint", ckpt, *common, "-o", ckpt], capsys)
    assert code == 2 and one_line_error(err) and "same file" in err
    code, err = run_cli(["update", "--checkpoint", ckpt, *common, "-o", ckpt], capsys)
    assert code == 2 and "same file" in err
    codes = tmp_path / "codes.qlc"
    assert run_cli(["compress", "--checkpoint", ckpt, *common, "-o", codes], capsys)[0] == 0
    coded = codes.read_bytes()
    for output in (codes, ckpt):
        code, err = run_cli(["decompress", codes, "--checkpoint", ckpt, "-o", output], capsys)
        assert code == 2 and one_line_error(err) and "same file" in err
    recon = tmp_path / "r.pt"
    code, err = run_cli(
        ["decompress", codes, "--checkpoint", ckpt, "-o", recon, "--png", recon], capsys
    )
    assert code == 2 and "same file" in err and not recon.exists()
    assert ckpt.read_bytes() == before and codes.read_bytes() == coded


def test_cli_decompress_honours_max_elements(tmp_path, capsys, coding_checkpoint):
    codes, out = tmp_path / "c.qlc", tmp_path / "r.pt"
    args = ["--data", "synthetic-test", "--limit", 5, "-o", codes]
    assert run_cli(["compress", "--checkpoint", coding_checkpoint, *args], capsys)[0] == 0
    decode = ["decompress", codes, "--checkpoint", coding_checkpoint, "-o", out]
    code, err = run_cli([*decode, "--max-elements", 19], capsys)  # 5 images × 4 values = 20
    assert code == 2 and one_line_error(err) and "max_elements" in err and not out.exists()
    assert run_cli([*decode, "--max-elements", 20], capsys)[0] == 0 and out.exists()


def test_missing_inputs_and_folders_named_as_files_say_which(tmp_path, capsys, coding_checkpoint):
    codes, out = tmp_path / "c.qlc", tmp_path / "r.pt"
    args = ["--data", "synthetic-test", "--limit", 2, "-o", codes]
    assert run_cli(["compress", "--checkpoint", coding_checkpoint, *args], capsys)[0] == 0
    cases = [
        (tmp_path / "none.qlc", coding_checkpoint, "does not exist"),
        (tmp_path, coding_checkpoint, f"{tmp_path} is not a file"),
        (codes, tmp_path / "none.pt", "does not exist"),
        (codes, tmp_path, f"checkpoint {tmp_path} is not a file"),
    ]
    for source, checkpoint, message in cases:
        code, err = run_cli(["decompress", source, "--checkpoint", checkpoint, "-o", out], capsys)
        assert code == 2 and one_line_error(err) and message in err, err
    assert not out.exists()


def test_bad_output_paths_give_one_line_and_exit_code_2(tmp_path, capsys, coding_checkpoint):
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    for output in (tmp_path, regular / "x.qlc", tmp_path / ("a" * 300 + ".qlc")):
        code, err = run_cli(
            ["compress", "--checkpoint", coding_checkpoint, "--data", "synthetic-test",
             "--limit", 3, "-o", output],
            capsys,
        )  # fmt: skip
        assert code == 2 and one_line_error(err), err
    assert regular.read_text() == "x"


def test_limit_zero_is_refused_by_the_parser(coding_checkpoint, tmp_path):
    from qlatent.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "--checkpoint", str(coding_checkpoint), "--limit", "0",
              "-o", str(tmp_path / "x.qlc")])  # fmt: skip
    assert exit_info.value.code == 2 and not (tmp_path / "x.qlc").exists()


def test_a_file_of_zero_images_decodes_without_dividing_by_zero(
    tmp_path, capsys, coding_checkpoint
):
    from qlatent.cli import main
    from qlatent.image_coding import compress_images, load_gated_vae, write_atomic

    model = load_gated_vae(coding_checkpoint)
    empty = write_atomic(
        tmp_path / "empty.qlc", compress_images(model, torch.zeros(0, 784), seed=0)
    )
    out = tmp_path / "r.pt"
    assert main(["decompress", str(empty), "--checkpoint", str(coding_checkpoint),
                 "-o", str(out)]) == 0  # fmt: skip
    assert "no images" in capsys.readouterr().out
    assert torch.load(out, weights_only=True).shape == (0, 784)


def test_train_out_pointing_at_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "not-a-folder"
    target.write_text("keep me")
    code, err = run_cli(
        ["train", "--out", target, "--set", "data=synthetic", "--set", "train.epochs=1"], capsys
    )
    assert code == 2 and one_line_error(err) and target.read_text() == "keep me"


def test_a_checkpoint_with_code_is_refused_by_the_cli(tmp_path, capsys):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"model": {"decoder.2.weight": torch.zeros(3, 4)}, "x": _Payload(marker)}, path)
    code, err = run_cli(
        ["compress", "--checkpoint", path, "--data", "synthetic-test", "-o", tmp_path / "o"],
        capsys,
    )
    assert code == 2 and one_line_error(err) and not marker.exists()


# --------------------------------------------------------------------------- inputs
def _bottlenecks():
    out = {}
    for name in sorted(BOTTLENECKS.names()):
        kwargs = {"num_codes": 16} if "vq" in name else {}
        out[name] = build(name, dim=8, **kwargs)
    out["lattice-e8"] = build("lattice", dim=8, lattice="e8", samples=16, prior_samples=4)
    return out


NECKS = _bottlenecks()


@pytest.mark.parametrize("name", sorted(NECKS))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(0, None), (2, None, 0), (0, None, 3), (1, None, 2, 0)])
def test_empty_inputs_give_empty_outputs_and_zero_rate(name, training, shape):
    neck = NECKS[name].train(training)
    shape = tuple(neck.in_dim if s is None else s for s in shape)
    y = torch.randn(shape, requires_grad=True)
    out = neck(y)
    assert out.y_hat.shape == (shape[0], neck.dim, *shape[2:])
    assert out.rate.shape == (shape[0],) and out.aux_loss.shape == ()
    assert float(out.aux_loss.detach()) == 0.0 and not out.rate.any()
    (out.y_hat.sum() + out.rate.sum() + out.aux_loss).backward()  # still a graph
    if neck.discrete and not training:
        assert out.indices.numel() == 0
        assert neck.dequantize(neck.quantize(y.detach())).shape == out.y_hat.shape


@pytest.mark.parametrize("name", sorted(NECKS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_bottleneck_takes_every_float_dtype(name, dtype):
    neck = NECKS[name]
    for training in (True, False):
        neck.train(training)
        out = neck(torch.randn(3, neck.in_dim).to(dtype))
        # the parameters' dtype; without parameters the input's, at least float32
        expected = torch.float64 if dtype == torch.float64 and name == "identity" else None
        assert out.y_hat.dtype == (expected or neck._target_dtype(dtype))
        assert out.y_hat.dtype in (torch.float32, torch.float64)
        assert torch.isfinite(out.y_hat).all() and torch.isfinite(out.rate).all()


@pytest.mark.parametrize("name", sorted(NECKS))
def test_inputs_beyond_the_limit_are_refused_with_the_limit(name):
    neck = NECKS[name].eval()
    limit = neck.input_limit()
    assert limit == pytest.approx(math.sqrt(torch.finfo(torch.float32).max / (4 * neck.in_dim)))
    with pytest.raises(ValueError, match="limit"):
        neck(torch.full((2, neck.in_dim), 2 * limit))
    with pytest.raises(ValueError, match="limit"):  # a float64 value float32 cannot hold
        neck(torch.full((2, neck.in_dim), 1e300, dtype=torch.float64))


def test_lattice_coordinates_that_would_overflow_int64_are_refused():
    neck = build("lattice", dim=4, init_spacing=1e-6).eval()
    y = torch.full((2, 4), 1e16)  # 1e22 spacings: beyond int64
    with pytest.raises(ValueError, match="2\\^62"):
        neck(y)
    with pytest.raises(ValueError, match="2\\^62"):
        neck.quantize(y)
    learnable = build("learnable_lattice", dim=4).eval()
    with torch.no_grad():
        learnable.basis.fill_(1e-3)
    with pytest.raises(ValueError, match="2\\^62"):
        learnable(torch.full((2, 4), 1e17))
    assert MAX_COORDINATE == 2**62


@pytest.mark.parametrize("name", sorted(NECKS))
@given(data=st.data())
def test_fuzz_bottleneck_inputs_give_finite_outputs_or_a_value_error(name, data):
    neck = NECKS[name]
    neck.train(data.draw(st.booleans(), label="training"))
    dtype = data.draw(
        st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64])
    )
    batch = data.draw(st.integers(0, 3), label="batch")
    spatial = data.draw(st.lists(st.integers(0, 3), max_size=2), label="spatial")
    shape = (batch, neck.in_dim, *spatial)
    count = math.prod(shape)
    scale = data.draw(st.sampled_from([1.0, 1e3, 1e8, 1e15, 1e18, 3e18, 1e30]), label="scale")
    values = data.draw(
        st.lists(st.floats(-1.0, 1.0, width=32), min_size=count, max_size=count), label="y"
    )
    y = (torch.tensor(values, dtype=torch.float64).reshape(shape) * scale).to(dtype)
    try:
        out = neck(y)
    except ValueError as err:
        assert "limit" in str(err) or "non-finite" in str(err) or "2^62" in str(err), err
        return
    assert out.y_hat.shape == (batch, neck.dim, *spatial)
    assert torch.isfinite(out.y_hat).all()
    assert torch.isfinite(out.rate).all() and torch.isfinite(out.aux_loss)


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "override",
    [
        "train.lr=1e300",
        "train.lr=inf",
        "train.lr=nan",
        "train.lr=0",
        "train.lr=-1e-3",
        "train.device=tpu",
        "train.device=cuda:x",
        "model.init_scale=1e-45",
        "model.init_spacing=0",
        "model.latent_dim=0",
        "out_dir=",
        "train.epochs=0",
    ],
)
def test_bad_config_values_are_refused_when_parsed(override):
    with pytest.raises(ValueError):
        apply_overrides(LatticeVAEConfig(), [override])


def test_good_config_values_still_parse():
    cfg = apply_overrides(
        LatticeVAEConfig(), ["train.lr=1e-3", "train.device=cuda:1", "model.init_scale=0.5"]
    )
    assert cfg.train.lr == 1e-3 and cfg.train.device == "cuda:1"
    assert ModelConfig(init_scale=1e-30).init_scale == 1e-30


_KEYS = [
    "train.lr", "train.epochs", "train.batch_size", "train.device", "train.seed",
    "train.lr_decay", "train.patience", "train.optimizer", "model.latent_dim",
    "model.init_scale", "model.init_spacing", "out_dir", "data", "eval_seed", "nope",
]  # fmt: skip


@given(
    key=st.sampled_from(_KEYS),
    value=st.one_of(
        st.text(max_size=12),
        st.floats().map(repr),
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(["inf", "-inf", "nan", "1e-45", "1e308", "none", "true", "cpu"]),
    ),
)
def test_fuzz_config_overrides_parse_or_raise_value_error(key, value):
    try:
        cfg = apply_overrides(LatticeVAEConfig(), [f"{key}={value}"])
    except ValueError:
        return
    assert 0 < cfg.train.lr <= 1 and cfg.train.batch_size >= 1 and cfg.out_dir.strip()
    assert 1e-30 <= cfg.model.init_scale <= 1e30


def test_container_docs_say_a_checksum_cannot_detect_forgery():
    from qlatent.coding import container

    assert "forg" in container.__doc__


def test_crc_of_the_forged_file_is_valid():
    """The forging helper really produces files the container accepts (else the fuzz tests
    above would test nothing but the checksum)."""
    bottleneck = CODERS["lattice"]
    data = compress(bottleneck, torch.randn(5, 8), seed=0)
    assert _forge(bottleneck, data) == data
    forged = _forge(bottleneck, data, seed=99)
    header, _ = unpack(forged, expected_digest=model_digest(bottleneck))
    assert header.seed == 99
    assert zlib.crc32(forged[:-4]) == int.from_bytes(forged[-4:], "little")
    try:  # another dither: decodes to other points, or fails the end-of-stream check
        assert np.isfinite(decompress(bottleneck, forged).numpy()).all()
    except CodingError as err:
        assert "did not end" in str(err) or "failed" in str(err)


def test_reproduce_checks_its_folders_before_training(tmp_path, capsys):
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    code, err = run_cli(
        ["reproduce", "lattice-mnist", "--quick", "--models", "rect_lattice",
         "--runs-dir", tmp_path / "runs", "--results-dir", regular / "res"],
        capsys,
    )  # fmt: skip
    assert code == 2 and one_line_error(err) and "is a file" in err
    assert not (tmp_path / "runs").exists()  # nothing was trained


@pytest.mark.parametrize("command", [["bench", "lattice", "--rows", "-5"],
                                     ["bench", "coding", "--repeats", "0"]])  # fmt: skip
def test_bench_sizes_are_checked_by_the_parser(command):
    from qlatent.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2


def test_decompress_writes_the_format_its_extension_names(tmp_path, capsys, coding_checkpoint):
    import numpy as np

    from qlatent.cli import _write_reconstructions

    codes = tmp_path / "c.qlc"
    args = ["--data", "synthetic-test", "--limit", 6, "-o", codes]
    assert run_cli(["compress", "--checkpoint", coding_checkpoint, *args], capsys)[0] == 0
    decode = ["decompress", codes, "--checkpoint", coding_checkpoint, "-o"]
    code, err = run_cli([*decode, tmp_path / "r.txt"], capsys)
    assert code == 2 and one_line_error(err) and ".npy" in err
    assert not (tmp_path / "r.txt").exists()
    for name in ("r.pt", "r.npy", "r.png"):
        assert run_cli([*decode, tmp_path / name], capsys)[0] == 0
    as_tensor = torch.load(tmp_path / "r.pt", weights_only=True)
    assert np.array_equal(np.load(tmp_path / "r.npy", allow_pickle=False), as_tensor.numpy())
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # conv models' (N, C, H, W) images in their own value range
    rgb = torch.rand(5, 3, 8, 8) - 0.5
    _write_reconstructions(rgb, str(tmp_path / "rgb.png"), (-0.5, 0.5))
    assert (tmp_path / "rgb.png").stat().st_size > 0


# --------------------------------------------------------------------------- model sizes
def _size_cases():
    cases = {}
    for name in sorted(BOTTLENECKS.names()):
        kwargs = {"num_codes": 16} if "vq" in name else {}
        cases[name] = lambda name=name, kwargs=kwargs: build(name, dim=8, **kwargs)
    cases["lattice-e8"] = lambda: build("lattice", dim=16, lattice="e8", prior_samples=4)
    cases["lattice-leech-bw16"] = lambda: build("lattice", dim=40, lattice=["leech", "bw16"])
    cases["lattice-e8-z"] = lambda: build("lattice", dim=10, lattice=["e8", "z", "z"])
    return cases


SIZE_CASES = _size_cases()


@pytest.mark.parametrize("name", sorted(SIZE_CASES))
def test_every_bottleneck_is_sized_on_the_meta_device_without_drawing_numbers(name):
    """Every registered bottleneck (and the good lattices, whose tables are computed from
    values on the CPU meanwhile) builds on the meta device, so :func:`sized` counts it without
    allocating; and the probe draws no random numbers: the module built after it, and the
    generator's state after that, are those of a plain build."""
    from qlatent.models import sized

    make = SIZE_CASES[name]
    with torch.device("meta"):
        probe = make()
    assert all(p.is_meta for p in probe.parameters())
    torch.manual_seed(5)
    plain, after_plain = make().state_dict(), torch.rand(4)
    torch.manual_seed(5)
    checked, after_checked = sized(make).state_dict(), torch.rand(4)
    assert plain.keys() == checked.keys() and torch.equal(after_plain, after_checked)
    for key, value in plain.items():
        assert value.device.type == "cpu" and torch.equal(value, checked[key]), key
    assert {k: v.shape for k, v in probe.state_dict().items()} == {
        k: v.shape for k, v in plain.items()
    }


def test_a_model_past_the_size_limit_is_refused_before_allocating(monkeypatch):
    """The limit holds at its edge (the count of a small model, then one less), and a model of
    a trillion numbers is refused at once, not allocated."""
    from qlatent import _size as size
    from qlatent.models import gated_vae

    small = gated_vae("vq", latent_dim=4, hidden=8, data_dim=16, num_codes=8)
    count = size.numbers(small)
    monkeypatch.setattr(size, "MAX_MODEL_NUMBERS", count)
    gated_vae("vq", latent_dim=4, hidden=8, data_dim=16, num_codes=8)
    monkeypatch.setattr(size, "MAX_MODEL_NUMBERS", count - 1)
    with pytest.raises(ValueError, match=f"would hold {count:,} numbers"):
        gated_vae("vq", latent_dim=4, hidden=8, data_dim=16, num_codes=8)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="would hold"):
        gated_vae("lattice", hidden=10**6)


def test_a_good_lattice_of_too_many_coordinates_is_refused():
    from qlatent.bottlenecks.good_lattice import MAX_DIM

    with pytest.raises(ValueError, match=f"at most {MAX_DIM}"):
        build("lattice", dim=MAX_DIM + 8, lattice="e8")


def test_vector_st_starts_from_the_grid_in_lexicographic_order():
    """The starting code vectors (tensor ops since they are sized on the meta device) are the
    grid of ``itertools.product`` over each axis's levels where M is a k-th power."""
    import itertools

    from qlatent.bottlenecks.vector_st import _initial_codes

    for codes, group in ((1, 2), (4, 2), (8, 3), (9, 2), (16, 4), (4, 1)):
        side = round(codes ** (1 / group))
        axis = torch.linspace(-0.5, 0.5, side).tolist() if side > 1 else [0.0]
        grid = torch.tensor(list(itertools.product(axis, repeat=group)))
        assert torch.equal(_initial_codes(codes, group, 0.5), grid)


def test_oversized_configs_and_checkpoints_give_one_line(tmp_path, capsys):
    """A config or a checkpoint whose sizes would need terabytes is answered with one line (the
    checkpoint's saved config is data, checked as a config is), and nothing is allocated."""
    from qlatent.config import to_dict
    from qlatent.experiments.custom import RunConfig

    config = tmp_path / "huge.toml"
    config.write_text('[bottleneck]\nname = "vq"\n[bottleneck.args]\nnum_codes = 10000000000\n')
    code, err = run_cli(["train", config, "--out", tmp_path / "run"], capsys)
    assert code == 2 and one_line_error(err) and "numbers" in err
    args = ["train", "--set", "model.hidden=100000000", "--out", tmp_path / "r"]
    code, err = run_cli(args, capsys)
    assert code == 2 and one_line_error(err) and "numbers" in err
    run = to_dict(RunConfig())
    for derived, hidden, expect in (
        ({"image_shape": [1, 10**6, 10**6], "data_variance": 0.1}, [300], "numbers"),
        ({"image_shape": [1, 28, 28], "data_variance": 0.1}, [10**6, 10**6], "numbers"),
        ({"image_shape": [1, -28, 28], "data_variance": 0.1}, [300], "image shape"),
    ):
        run["derived"], run["model"]["hidden"] = derived, hidden
        path = tmp_path / "forged.pt"
        save_atomic({"run_config": run, "model": {}}, path)
        code, err = run_cli(["eval", path], capsys)
        assert code == 2 and one_line_error(err) and expect in err, err


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG file that announces ``width × height`` grey pixels and holds none: what a
    decompression bomb looks like to ``Image.open``, without the memory to build one."""
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        (["data.synthetic_size=1000000000000"], "data.synthetic_size"),
        (["data.name=synthetic-text", "data.synthetic_size=100000000000",
          "model.family=text_gru", "model.hidden=[16, 16]"], "data.synthetic_size"),
        (["data.name=synthetic-text", "data.max_tokens=1000000000000",
          "model.family=text_gru", "model.hidden=[16, 16]"], "data.max_tokens"),
    ],
    ids=["synthetic images", "synthetic sentences", "tokens per sentence"],
)  # fmt: skip
def test_data_past_the_machines_memory_is_refused_before_allocating(
    tmp_path, capsys, overrides, setting
):
    """Data sizes from a config (how many synthetic images or sentences, how many tokens a
    sentence is padded to) that would not fit in this machine's memory end in one line naming
    the setting, not in an allocation failure."""
    config = tmp_path / "small.toml"
    config.write_text(
        '[data]\nname = "synthetic"\nsynthetic_size = 60\n[model]\nhidden = [8]\n'
        "latent_dim = 2\n[train]\nprogress = false\n"
    )
    sets = [arg for o in overrides for arg in ("--set", o)]
    code, err = run_cli(["train", config, *sets, "--out", tmp_path / "run"], capsys)
    assert code == 2 and one_line_error(err), err
    assert "more than this machine's" in err and "GiB of memory" in err
    assert setting in err


def test_an_image_folder_too_large_or_with_a_bomb_is_one_line(tmp_path, capsys):
    """An image folder whose images, at the configured size, would not fit in memory is refused
    before anything is allocated; an image announcing more pixels than Pillow's decompression
    bomb limit is a clear data error naming the file, not a traceback."""
    from PIL import Image

    from qlatent.data import DataError
    from qlatent.data.folder import load_image_folder

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (8, 8), color=40 * i).save(folder / f"{i}.png")
    assert load_image_folder(folder, size=4, channels=1, progress=False).shape == (3, 1, 4, 4)
    with pytest.raises(DataError, match=r"3 images of 1 × 10,000,000 × 10,000,000 float32"):
        load_image_folder(folder, size=10**7, channels=1, progress=False)
    pixels = 2 * Image.MAX_IMAGE_PIXELS + 1  # past twice the limit Pillow refuses, not warns
    (folder / "3.png").write_bytes(_png_header_only(pixels // 10_000 + 1, 10_000))
    with pytest.raises(DataError, match=r"cannot read image .*3\.png.*decompression bomb"):
        load_image_folder(folder, size=4, channels=1, progress=False)
    config = tmp_path / "folder.toml"
    config.write_text(
        f'[data]\nname = "folder"\nfolder = "{folder}"\nimage_size = 4\nval_size = 1\n'
        "test_size = 1\n[model]\nhidden = [8]\nlatent_dim = 2\n[train]\nprogress = false\n"
    )
    code, err = run_cli(["train", config, "--out", tmp_path / "run"], capsys)
    assert code == 2 and one_line_error(err) and "3.png" in err, err
