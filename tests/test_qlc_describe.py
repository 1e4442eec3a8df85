"""What a ``.qlc`` file holds, from its header alone: ``qlatent.coding.describe``.

A researcher handed a file asks how many examples it codes, at how many bits each, with which
code model, and which model wrote it, before (or without) loading a checkpoint to decode it.
"""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import one_line_error
from qlatent.bottlenecks import build
from qlatent.coding import CODE_MODELS, CodingError, describe, model_digest, unpack


def _file(n: int = 30, seed: int = 7, spatial: tuple[int, ...] = ()) -> tuple[bytes, object]:
    torch.manual_seed(0)
    bn = build("lattice", dim=6, init_spacing=0.5, init_scale=2.0).eval()
    y = 3.0 * torch.randn(n, 6, *spatial, generator=torch.Generator().manual_seed(1))
    return bn.compress(y, seed=seed), bn


@pytest.mark.parametrize("spatial", [(), (3, 2)])
def test_the_description_is_the_header_and_the_sizes(spatial):
    data, bn = _file(spatial=spatial)
    header, payload = unpack(data)
    info = describe(data)
    assert info["shape"] == [30, 6, *spatial]
    assert info["examples"] == 30
    assert info["seed"] == 7
    assert info["code_model"] == header.code_model
    assert info["code_model_name"] == CODE_MODELS[header.code_model]
    assert info["model_digest"] == model_digest(bn).hex()
    assert info["symbol_range"] == [header.symbol_min, header.symbol_max]
    assert info["symbol_range"][0] <= info["symbol_range"][1]
    assert info["file_bytes"] == len(data) == info["header_bytes"] + info["payload_bytes"]
    assert info["payload_bytes"] == len(payload) > 0
    assert info["bits_per_example"] == pytest.approx(8 * len(data) / 30)
    json.dumps(info)  # plain values only


def test_a_file_of_no_examples_has_no_bits_per_example():
    data, _ = _file(n=0)
    info = describe(data)
    assert info["examples"] == 0 and info["bits_per_example"] is None


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\0", "trailing bytes"),
        (lambda d: d[:60] + bytes([d[60] ^ 1]) + d[61:], "checksum"),
        (lambda d: b"PK\3\4" + d[4:], "not a qlatent"),
    ],
)
def test_a_damaged_file_is_refused_as_the_decoder_refuses_it(damage, message):
    data, _ = _file()
    with pytest.raises(CodingError, match=message):
        describe(damage(data))


# --------------------------------------------------------------------------- qlatent inspect
def _compressed(tmp_path, checkpoint, limit: int = 10) -> str:
    from qlatent.cli import main

    out = str(tmp_path / "codes.qlc")
    args = ["compress", "--checkpoint", str(checkpoint), "--data", "synthetic-test"]
    assert main([*args, "--limit", str(limit), "--seed", "3", "-o", out]) == 0
    return out


def test_inspect_prints_the_header_and_json(tmp_path, coding_checkpoint, capsys):
    from qlatent.cli import main

    qlc = _compressed(tmp_path, coding_checkpoint)
    capsys.readouterr()
    assert main(["inspect", qlc]) == 0
    text = capsys.readouterr().out
    info = describe(open(qlc, "rb").read())
    assert f"{qlc}: 10 examples in {info['file_bytes']:,} bytes" in text
    assert f"{info['bits_per_example']:,.2f} bits per example" in text
    assert "shape (10, 4)" in text and "dither seed 3" in text
    assert info["model_digest"] in text and "checkpoint" not in text
    assert main(["inspect", qlc, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"file": qlc, **info}


def test_inspect_says_whether_a_checkpoint_wrote_the_file(tmp_path, coding_checkpoint, capsys):
    from qlatent.cli import main
    from qlatent.models import gated_vae
    from qlatent.train import save_atomic

    qlc = _compressed(tmp_path, coding_checkpoint)
    torch.manual_seed(1)  # the same architecture, other weights
    other = tmp_path / "other.pt"
    save_atomic({"model": gated_vae("lattice", latent_dim=4, hidden=8).state_dict()}, other)
    capsys.readouterr()
    assert main(["inspect", qlc, "--checkpoint", str(coding_checkpoint)]) == 0
    assert "its model wrote this file" in capsys.readouterr().out
    assert main(["inspect", qlc, "--checkpoint", str(other), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["written_by_checkpoint"] is False


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:-2], "truncated"),
        (lambda d: b"QLC\0" + b"\xff\xff" + d[6:], "unsupported format version"),
        (lambda d: b"not a file at all", "bad magic number"),
    ],
)
def test_inspect_answers_a_bad_file_with_one_line(
    tmp_path, coding_checkpoint, capsys, damage, message
):
    from qlatent.cli import main

    qlc = _compressed(tmp_path, coding_checkpoint)
    with open(qlc, "rb") as f:
        data = f.read()
    with open(qlc, "wb") as f:
        f.write(damage(data))
    capsys.readouterr()
    assert main(["inspect", qlc]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and message in err
    assert main(["inspect", str(tmp_path / "missing.qlc")]) == 2
    assert "does not exist" in capsys.readouterr().err
