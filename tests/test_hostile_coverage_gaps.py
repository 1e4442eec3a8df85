"""Behaviour that the rest of the default run never executes: error branches for bad input
to the config overrides, the ``.qlc`` container and codec, and two bottlenecks' constructors.

Each test checks the result (the value parsed, the error and what it names), not only that a
branch ran."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qlatent import coding
from qlatent.bottlenecks import build
from qlatent.coding import CODE_MODELS, CodingError, Header
from qlatent.config import apply_mapping, apply_overrides
from qlatent.train.loop import TrainConfig


@dataclasses.dataclass
class _Section:
    limit: None | int = None  # None first in the union: the parser must skip it, not stop
    sizes: tuple[int, ...] = (1, 2)


@dataclasses.dataclass
class _Config:
    section: _Section = dataclasses.field(default_factory=_Section)


# --- config overrides -------------------------------------------------------------------


def test_an_optional_number_takes_a_number_or_none_and_refuses_other_text():
    cfg = TrainConfig()
    assert apply_overrides(cfg, ["max_steps=7"]).max_steps == 7
    assert apply_overrides(cfg, ["max_minutes=2.5"]).max_minutes == 2.5
    assert (
        apply_overrides(apply_overrides(cfg, ["max_steps=7"]), ["max_steps=None"]).max_steps is None
    )
    with pytest.raises(ValueError, match=r"max_steps expects int, got 'seven'"):
        apply_overrides(cfg, ["max_steps=seven"])


def test_none_first_in_a_union_is_skipped_for_a_value():
    cfg = apply_overrides(_Config(), ["section.limit=12"])
    assert cfg.section.limit == 12 and type(cfg.section.limit) is int
    assert apply_overrides(cfg, ["section.limit=null"]).section.limit is None
    with pytest.raises(ValueError, match="section.limit expects int"):
        apply_overrides(_Config(), ["section.limit=1.5"])


def test_a_sequence_field_takes_json_and_names_the_key_on_bad_json():
    assert apply_overrides(_Config(), ["section.sizes=[3, 4, 5]"]).section.sizes == [3, 4, 5]
    with pytest.raises(ValueError, match=r"section.sizes expects JSON, got '\[3, 4'"):
        apply_overrides(_Config(), ["section.sizes=[3, 4"])
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match="nested too deeply"):
        apply_overrides(_Config(), [f"section.sizes={deep}"])


def test_a_toml_table_for_an_optional_number_is_parsed_like_the_command_line():
    cfg = apply_mapping(TrainConfig(), {"patience": 3, "lr_decay": None})
    assert cfg.patience == 3 and cfg.lr_decay is None
    with pytest.raises(ValueError, match="patience expects int"):
        apply_mapping(TrainConfig(), {"patience": "soon"})


# --- the .qlc container and codec -------------------------------------------------------


@pytest.fixture(scope="module")
def lattice_file():
    neck = build("lattice", dim=4).eval()
    y = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    return neck, y, coding.compress(neck, y, seed=1)


def test_decompress_takes_a_digest_or_a_model_not_both(lattice_file):
    neck, _, data = lattice_file
    header, _ = coding.unpack(data)
    with pytest.raises(ValueError, match="a digest or a model"):
        coding.decompress(neck, data, digest=header.digest, model=neck)
    # either alone decodes the same y_hat
    a = coding.decompress(neck, data, digest=header.digest)
    b = coding.decompress(neck, data, model=neck)
    assert a.shape == (3, 4) and torch.equal(a, b)


def test_a_file_of_another_code_model_is_refused_naming_both(lattice_file):
    _, _, data = lattice_file
    header, _ = coding.unpack(data)
    vq = build("vq", dim=4).eval()  # uniform code model before update()
    with pytest.raises(CodingError, match=r"'dithered lattice, Laplace prior'.*'uniform'"):
        coding.decompress(vq, data, digest=header.digest)


def test_unpack_reads_any_bytes_like_and_refuses_other_objects(lattice_file):
    neck, _, data = lattice_file
    header, payload = coding.unpack(data)
    for form in (bytearray(data), memoryview(data)):
        assert coding.unpack(form) == (header, payload)
    assert torch.equal(coding.decompress(neck, bytearray(data)), coding.decompress(neck, data))
    with pytest.raises(CodingError, match="expected bytes, got str"):
        coding.unpack(data.hex())


def test_unpack_with_another_expected_digest_names_both_digests(lattice_file):
    _, _, data = lattice_file
    header, _ = coding.unpack(data)
    other = bytes(32)
    with pytest.raises(CodingError, match="different model") as err:
        coding.unpack(data, expected_digest=other)
    assert header.digest.hex()[:16] in str(err.value) and "0" * 16 in str(err.value)


def test_unpack_refuses_an_unknown_code_model_in_an_otherwise_intact_file(lattice_file):
    import struct
    import zlib

    _, _, data = lattice_file
    unknown = next(k for k in range(255, 63, -1) if k not in CODE_MODELS)
    body = bytearray(data[:-4])
    body[6] = unknown  # magic (4), version (2), then the code model byte
    forged = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    with pytest.raises(CodingError, match=f"corrupt header \\(code model {unknown}, rank 2\\)"):
        coding.unpack(forged)


@pytest.mark.parametrize("shape", [(), tuple([1] * 9)])
def test_pack_refuses_a_shape_of_no_or_too_many_axes(shape):
    header = Header(1, bytes(32), 0, 0, 0, shape)
    with pytest.raises(ValueError, match="shape must have 1 to 8 entries"):
        coding.pack(header, b"")


def test_register_code_model_refuses_a_taken_id_under_another_name():
    kind = next(k for k in range(255, 63, -1) if k not in CODE_MODELS)
    try:
        assert coding.register_code_model(kind, "first") == kind
        assert coding.register_code_model(kind, "first") == kind  # the same name: a no-op
        with pytest.raises(ValueError, match=f"code model {kind} is already 'first'"):
            coding.register_code_model(kind, "second")
        assert CODE_MODELS[kind] == "first"
    finally:
        CODE_MODELS.pop(kind, None)


def test_compress_without_a_code_model_is_a_type_error():
    neck = build("gaussian", dim=4).eval()
    with pytest.raises(TypeError, match="no entropy model"):
        coding.compress(neck, torch.zeros(2, 8), seed=0)


# --- constructor checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group": 0}, "group must be a positive integer"),
        ({"group": True}, "group must be a positive integer"),
        ({"group": 3}, r"dim \(4\) must be a multiple of group \(3\)"),
        ({"codes": 0}, "codes must be a positive integer"),
        ({"codes": 2.0}, "codes must be a positive integer"),
        ({"init_range": "1"}, "init_range must be a positive number"),
        ({"init_range": False}, "init_range must be a positive number"),
    ],
)
def test_vector_st_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build("vector_st", dim=4, **kwargs)


def test_vector_st_dequantize_refuses_code_numbers_out_of_range():
    neck = build("vector_st", dim=4, group=2, codes=3).eval()
    y = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    indices = neck.quantize(y)
    assert torch.equal(neck.dequantize(indices), neck(y).y_hat)
    with pytest.raises(ValueError, match=r"code numbers must lie in \[0, 3\)"):
        neck.dequantize(torch.full_like(indices, 3))


@pytest.mark.parametrize("value", ["-2", True, None])
def test_gaussian_dither_refuses_a_non_number_log_variance(value):
    with pytest.raises(ValueError, match="init_logvar must be a number"):
        build("gaussian_dither", dim=4, init_logvar=value)


def test_gaussian_dither_repr_names_its_settings():
    neck = build("gaussian_dither", dim=3, init_logvar=-1.5)
    assert "dim=3, init_logvar=-1.5" in repr(neck)
