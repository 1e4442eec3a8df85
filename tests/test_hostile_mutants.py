"""The checks of the two gates where untrusted bytes enter, pinned at their boundaries.

A ``.qlc`` file (:mod:`qlatent.coding.container`) and a checkpoint
(:mod:`qlatent.train.checkpoint`) are read from bytes anyone may have written. Each test below
puts one check exactly at its edge: the last value it accepts and the first it refuses (a
length field one byte too long, a version one higher, a digest that differs in its last hex
digit, a rank of 9), so that a comparison shifted by one, a swapped ``and``/``or`` or a
dropped ``raise`` in either file fails here.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from qlatent.coding import container
from qlatent.coding.container import (
    CODE_MODELS,
    MAGIC,
    VERSION,
    CodingError,
    Header,
    pack,
    register_code_model,
    unpack,
)
from qlatent.train import CheckpointError, load, load_weights, save_atomic
from qlatent.train import checkpoint as checkpoint_module
from qlatent.train.checkpoint import (
    check_optimizer_state,
    check_state_dict,
    check_weight_kinds,
    config_changes,
    content_digest,
)

DIGEST = bytes(range(32))


# --------------------------------------------------------------------------- .qlc: writing
@pytest.fixture()
def own_code_models(monkeypatch):
    """A private copy of the code-model registry, so registering ids here leaves no trace."""
    monkeypatch.setattr(container, "CODE_MODELS", dict(CODE_MODELS))
    return container.CODE_MODELS


@pytest.mark.parametrize("kind", [63, 256, 0, -1, 64.0, True])
def test_code_model_ids_outside_64_to_255_are_refused(own_code_models, kind):
    with pytest.raises(ValueError, match="64, 255"):
        register_code_model(kind, "outside")
    assert kind not in own_code_models or own_code_models[kind] != "outside"


def test_code_model_ids_64_and_255_register_and_a_clash_is_refused(own_code_models):
    assert register_code_model(64, "first") == 64
    assert register_code_model(255, "last") == 255
    assert register_code_model(64, "first") == 64  # the same name again: a no-op
    with pytest.raises(ValueError, match="already 'first'"):
        register_code_model(64, "another")
    assert own_code_models[64] == "first" and own_code_models[255] == "last"
    # a registered id is one files may carry
    header, _ = unpack(pack(Header(255, DIGEST, 0, 0, 0, (1,)), b""))
    assert header.code_model == 255


def _header(**changes) -> Header:
    fields = dict(code_model=1, digest=DIGEST, seed=0, symbol_min=0, symbol_max=0, shape=(2, 3))
    return Header(**{**fields, **changes})


@pytest.mark.parametrize(
    "changes",
    [
        dict(digest=bytes(31)),
        dict(digest=bytes(33)),
        dict(digest="0" * 32),
        dict(code_model=9),
        dict(code_model=63),
        dict(code_model=True),
        dict(code_model=1.0),
        dict(shape=()),
        dict(shape=(1,) * 9),
        dict(shape=(2**32,)),
        dict(shape=(-1,)),
        dict(shape=(True, 2)),
        dict(shape=(2.0,)),
        dict(seed=2**64),
        dict(seed=-1),
        dict(seed=1.5),
        dict(seed=True),
        dict(symbol_min=-(2**31) - 1),
        dict(symbol_max=2**31),
        dict(symbol_min=0.5),
    ],
    ids=repr,
)
def test_pack_refuses_each_field_just_outside_its_range(changes):
    """ValueError, never struct.error and never a field silently padded or cut to fit."""
    with pytest.raises(ValueError, match=next(iter(changes))):
        pack(_header(**changes), b"")


@pytest.mark.parametrize(
    "changes",
    [
        dict(shape=(1,)),
        dict(shape=(1,) * 8),
        dict(shape=(0, 2**32 - 1)),
        dict(shape=(np.int64(3), np.uint32(2))),
        dict(seed=2**64 - 1),
        dict(symbol_min=-(2**31), symbol_max=2**31 - 1),
        dict(code_model=max(CODE_MODELS)),
    ],
    ids=repr,
)
def test_pack_takes_each_field_at_the_edge_of_its_range(changes):
    header = _header(**changes)
    assert unpack(pack(header, b"\x01\x02\x03\x04"), expected_digest=DIGEST) == (
        header,
        b"\x01\x02\x03\x04",
    )


# --------------------------------------------------------------------------- .qlc: reading
def _raw(
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
    code_model: int = 1,
    shape: tuple[int, ...] = (2, 3),
    rank: int | None = None,
    digest: bytes = DIGEST,
    payload: bytes = b"\x00" * 8,
    length: int | None = None,
    extra: bytes = b"",
) -> bytes:
    """A file built field by field with a valid checksum over whatever it says: the header
    may lie (a rank, a length, a version) and only the reader's checks can tell."""
    rank = len(shape) if rank is None else rank
    body = (
        struct.pack("<4sHBB32sQii", magic, version, code_model, rank, digest, 7, -3, 3)
        + struct.pack(f"<{len(shape)}I", *shape)
        + struct.pack("<Q", len(payload) if length is None else length)
        + payload
    )
    return body + struct.pack("<I", zlib.crc32(body)) + extra


def test_the_hand_built_file_is_what_pack_writes():
    header = Header(1, DIGEST, 7, -3, 3, (2, 3))
    assert _raw() == pack(header, b"\x00" * 8)
    assert unpack(_raw(), expected_digest=DIGEST) == (header, b"\x00" * 8)


@pytest.mark.parametrize("version", [VERSION - 1, VERSION + 1, 0, 2**16 - 1])
def test_any_other_format_version_is_refused(version):
    with pytest.raises(CodingError, match=f"unsupported format version {version} "):
        unpack(_raw(version=version))


@pytest.mark.parametrize("code_model", [0, 9, 63, 64, 255])
def test_an_unregistered_code_model_is_refused(code_model):
    assert code_model not in CODE_MODELS
    with pytest.raises(CodingError, match=f"corrupt header \\(code model {code_model},"):
        unpack(_raw(code_model=code_model))


@pytest.mark.parametrize("rank", [0, 9, 255])
def test_a_rank_outside_1_to_8_is_refused(rank):
    shape = (1,) * rank
    with pytest.raises(CodingError, match=f"corrupt header \\(code model 1, rank {rank}\\)"):
        unpack(_raw(shape=shape))


@pytest.mark.parametrize("rank", [1, 8])
def test_ranks_1_and_8_are_read(rank):
    header, payload = unpack(_raw(shape=(3,) * rank))
    assert header.shape == (3,) * rank and payload == b"\x00" * 8


def test_a_file_of_exactly_the_header_size_is_read_and_one_byte_less_is_truncated():
    data = _raw(shape=(5,), payload=b"")
    assert len(data) == 56 + 4 + 8 + 4
    header, payload = unpack(data)
    assert header.shape == (5,) and payload == b""
    for cut in (1, 4, 12, len(data) - 56, len(data) - 55, len(data) - 4):
        with pytest.raises(CodingError, match="truncated file"):
            unpack(data[:-cut])


@pytest.mark.parametrize("size", [4, 55, 56, 57, 59])
def test_a_file_cut_inside_the_fixed_header_is_truncated(size):
    with pytest.raises(CodingError, match=f"truncated file: {size} bytes"):
        unpack(_raw()[:size])


@pytest.mark.parametrize("size", [0, 1, 3])
def test_a_file_shorter_than_the_magic_number_is_not_a_qlatent_file(size):
    with pytest.raises(CodingError, match="bad magic"):
        unpack(MAGIC[:size])


def test_a_bad_magic_number_is_refused_even_when_the_rest_is_valid():
    with pytest.raises(CodingError, match="bad magic"):
        unpack(_raw(magic=b"QLC\x01"))


@pytest.mark.parametrize("delta", [-1, 1])
def test_a_length_field_one_byte_off_is_refused(delta):
    data = _raw(payload=b"\x00" * 8, length=8 + delta)
    what = "truncated file" if delta > 0 else "trailing bytes"
    with pytest.raises(CodingError, match=what):
        unpack(data)


def test_one_trailing_byte_is_refused():
    with pytest.raises(
        CodingError, match="trailing bytes after the file: 85 bytes, the header announces 84"
    ):
        unpack(_raw(extra=b"\x00"))


@pytest.mark.parametrize("at", [0, 4, 6, 8, 39, 40, 56, 64, -5, -1])
def test_a_flipped_bit_anywhere_is_a_checksum_mismatch_or_refused(at):
    data = bytearray(_raw())
    data[at] ^= 0x01
    with pytest.raises(CodingError):
        unpack(bytes(data))


@pytest.mark.parametrize("at", [8, 39, 48, -5])
def test_a_flipped_bit_in_a_field_no_other_check_reads_is_a_checksum_mismatch(at):
    data = bytearray(_raw())
    data[at] ^= 0x80
    with pytest.raises(CodingError, match="checksum mismatch"):
        unpack(bytes(data))


def test_a_digest_that_differs_in_its_last_byte_is_another_model():
    data = _raw()
    other = DIGEST[:-1] + bytes([DIGEST[-1] ^ 1])
    with pytest.raises(CodingError, match="different model"):
        unpack(data, expected_digest=other)
    assert unpack(data, expected_digest=DIGEST)[0].digest == DIGEST
    assert unpack(data)[0].digest == DIGEST  # no expectation: no check


@pytest.mark.parametrize("digest", [bytes(31), bytes(33), "0" * 32])
def test_an_expected_digest_that_is_not_32_bytes_is_refused(digest):
    with pytest.raises(ValueError, match="expected_digest must be 32 bytes"):
        unpack(_raw(), expected_digest=digest)


@pytest.mark.parametrize("data", ["QLC", 12, None, [1, 2]])
def test_data_that_is_not_bytes_is_a_coding_error(data):
    with pytest.raises(CodingError, match="expected bytes"):
        unpack(data)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_bytes_like_data_is_read(kind):
    assert unpack(kind(_raw()))[1] == b"\x00" * 8


# --------------------------------------------------------------------------- checkpoints
def _write(obj, path):
    """``torch.save`` without the checks and digest of :func:`save_atomic`: a hostile file."""
    torch.save(obj, path)
    return path


def test_the_digest_node_limit_counts_every_value_exactly():
    obj = [1, [2, 3]]  # five values: two lists and three numbers
    assert content_digest(obj, max_nodes=5) == content_digest(obj)
    with pytest.raises(ValueError, match="more than 4 values"):
        content_digest(obj, max_nodes=4)


def test_the_load_node_limit_is_exact(tmp_path, monkeypatch):
    """A dict, its key, a list and its numbers: ``k + 3`` values for ``k`` numbers."""
    monkeypatch.setattr(checkpoint_module, "MAX_NODES", 10)
    assert load(_write({"a": [0] * 7}, tmp_path / "ten.pt"))["a"] == [0] * 7
    with pytest.raises(CheckpointError, match="eleven.pt holds more than 10 values"):
        load(_write({"a": [0] * 8}, tmp_path / "eleven.pt"))


def _nested(levels: int) -> list:
    x: list = []
    for _ in range(levels - 1):
        x = [x]
    return x


def test_the_nesting_limit_is_exact(tmp_path):
    """The checkpoint's dict is level 1: lists down to level 64 load, a 65th level does not."""
    depth = checkpoint_module.MAX_DEPTH
    assert len(load(_write({"x": _nested(depth - 1)}, tmp_path / "ok.pt"))["x"]) == 1
    with pytest.raises(CheckpointError, match="deep.pt nests containers more than 64"):
        load(_write({"x": _nested(depth)}, tmp_path / "deep.pt"))
    with pytest.raises(CheckpointError, match="nests containers"):
        save_atomic({"x": _nested(depth)}, tmp_path / "never.pt")
    assert not (tmp_path / "never.pt").exists()


def test_a_folder_or_an_empty_file_is_refused_by_name(tmp_path):
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="dir.pt is a folder"):
        load(tmp_path / "dir.pt")
    with pytest.raises(ValueError, match="dir.pt: it is a folder"):
        save_atomic({"a": 1}, tmp_path / "dir.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt is empty"):
        load(tmp_path / "empty.pt")
    (tmp_path / "one.pt").write_bytes(b"\x80")
    with pytest.raises(CheckpointError, match="one.pt is not a readable checkpoint"):
        load(tmp_path / "one.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load(tmp_path / "missing.pt")


@pytest.mark.parametrize("obj", [[1, 2], torch.zeros(2), 3])
def test_a_file_that_is_not_a_dict_is_refused(tmp_path, obj):
    with pytest.raises(CheckpointError, match=f"holds a {type(obj).__name__}, not a checkpoint"):
        load(_write(obj, tmp_path / "x.pt"))


def test_a_digest_that_differs_in_its_last_hex_digit_is_damage(tmp_path):
    obj = {"model": {"w": torch.ones(3)}, "epoch": 1}
    path = tmp_path / "c.pt"
    save_atomic(obj, path)
    saved = torch.load(path, weights_only=True)
    assert saved[checkpoint_module.DIGEST_KEY] == content_digest(obj)
    assert load(path)["epoch"] == 1 and checkpoint_module.DIGEST_KEY not in load(path)
    digest = saved[checkpoint_module.DIGEST_KEY]
    saved[checkpoint_module.DIGEST_KEY] = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    with pytest.raises(CheckpointError, match="c.pt is damaged"):
        load(_write(saved, path))


def test_a_tensor_that_fills_its_storage_exactly_loads_and_one_element_more_does_not(tmp_path):
    """Six elements over a storage of six load; over a storage of five they are refused (an
    axis of stride 0 keeps every offset in bounds, so only the element count tells)."""
    exact = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(load(_write({"w": exact}, tmp_path / "ok.pt"))["w"], exact)
    wide = torch.arange(5.0)[:3].expand(2, 3)
    with pytest.raises(CheckpointError, match=r"short.pt holds a tensor .* \(20 bytes\) cannot"):
        load(_write({"w": wide}, tmp_path / "short.pt"))
    shared = torch.arange(6.0)[:3].expand(2, 3)  # fills six by count, but shares elements
    with pytest.raises(CheckpointError, match="share memory"):
        load(_write({"w": shared}, tmp_path / "shared.pt"))


@pytest.mark.parametrize(
    ("make", "overlapping"),
    [
        (lambda: torch.arange(3.0).as_strided((1, 3), (0, 1)), False),  # size-1 axes may
        (lambda: torch.arange(3.0).as_strided((3, 1), (1, 0)), False),  # have any stride
        (lambda: torch.arange(6.0).as_strided((2, 1, 3), (3, 100, 1)), False),
        (lambda: torch.arange(12.0).reshape(3, 4).t(), False),
        (lambda: torch.arange(12.0)[::2].reshape(2, 3), False),
        (lambda: torch.arange(12.0).as_strided((2, 2, 3), (6, 3, 1)), False),
        (lambda: torch.arange(6.0)[:3].expand(2, 3), True),
        (lambda: torch.arange(6.0).as_strided((2, 3), (2, 1)), True),  # rows share an element
        (lambda: torch.arange(6.0).as_strided((3, 2), (1, 1)), True),
    ],
)
def test_overlap_is_found_exactly_at_the_span(tmp_path, make, overlapping):
    t = make()
    path = _write({"w": t}, tmp_path / "t.pt")
    if overlapping:
        with pytest.raises(CheckpointError, match="share memory"):
            load(path)
    else:
        assert torch.equal(load(path)["w"], t)


def test_an_empty_tensor_with_a_zero_stride_loads(tmp_path):
    t = torch.zeros(1).expand(0, 4)
    assert load(_write({"w": t}, tmp_path / "e.pt"))["w"].shape == (0, 4)


# --------------------------------------------------------------------------- weights
@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([torch.ones(2)], "holds no model weights"),
        ({1: torch.ones(2)}, "key 1 \\(int\\) that is not a name"),
        ({"w": [1.0, 2.0]}, "weight w is a list, not a tensor"),
        ({"w": torch.ones(2, dtype=torch.complex64)}, "weight w is complex"),
        ({"w": torch.tensor([1.0, float("nan")])}, "weight w holds 1 non-finite"),
        ({"w": torch.tensor([float("inf"), -float("inf"), 0.0])}, "holds 2 non-finite"),
    ],
)
def test_a_state_dict_is_refused_for_each_reason(state, message):
    with pytest.raises(CheckpointError, match=f"ckpt.pt.*{message}"):
        check_state_dict(state, "ckpt.pt")


def test_a_finite_state_dict_of_every_kind_passes():
    state = {
        "w": torch.tensor([torch.finfo(torch.float32).max, 0.0]),
        "n": torch.tensor([2**40]),
        "m": torch.tensor([True]),
        "e": torch.empty(0),
    }
    assert check_state_dict(state, "ckpt.pt") is state


@pytest.mark.parametrize(
    ("saved", "own", "ok"),
    [
        (torch.float16, torch.float32, True),
        (torch.int32, torch.int64, True),
        (torch.bool, torch.bool, True),
        (torch.float32, torch.int64, False),
        (torch.int64, torch.bool, False),
        (torch.bool, torch.float32, False),
        (torch.uint8, torch.bool, False),
    ],
)
def test_weight_kinds_must_match_but_widths_may_differ(saved, own, ok):
    state, mine = {"w": torch.zeros(2, dtype=saved)}, {"w": torch.zeros(2, dtype=own)}
    if ok:
        check_weight_kinds(state, mine, "ckpt.pt")
    else:
        with pytest.raises(CheckpointError, match="ckpt.pt: the weight w is"):
            check_weight_kinds(state, mine, "ckpt.pt")
    check_weight_kinds(state, {"other": torch.zeros(2, dtype=own)}, "ckpt.pt")  # no such key


def test_load_weights_names_the_file_for_a_different_architecture():
    module = torch.nn.Linear(2, 3)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    load_weights(module, state, "ckpt.pt")
    with pytest.raises(CheckpointError, match="ckpt.pt holds weights of a different model"):
        load_weights(module, {**state, "weight": torch.zeros(3, 3)}, "ckpt.pt")


# --------------------------------------------------------------------------- optimizer state
def _adam(**kwargs) -> tuple[torch.optim.Optimizer, dict]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.Adam(params, lr=1e-2, **kwargs)
    sum((p**2).sum() for p in params).backward()
    optimizer.step()
    return optimizer, optimizer.state_dict()


def _copy(state: dict) -> dict:
    return {
        "state": {i: dict(entry) for i, entry in state["state"].items()},
        "param_groups": [dict(group) for group in state["param_groups"]],
    }


def test_an_optimizer_state_of_the_same_form_passes():
    optimizer, saved = _adam()
    check_optimizer_state(_copy(saved), optimizer, "ckpt.pt")
    bigger = _copy(saved)
    bigger["param_groups"][0].update(lr=0.5, eps=1.7976931348623157e308, weight_decay=0)
    bigger["state"][0]["exp_avg_sq"] = torch.zeros(3, 2)  # zero is a valid second moment
    check_optimizer_state(bigger, optimizer, "ckpt.pt")


def _break(saved: dict, how: str) -> object:
    bad = _copy(saved)
    group, entry = bad["param_groups"][0], bad["state"][0]
    if how == "not a dict":
        return [bad]
    if how == "state not a dict":
        bad["state"] = list(bad["state"].values())
    elif how == "groups not a list":
        bad["param_groups"] = tuple(bad["param_groups"])
    elif how == "two groups":
        bad["param_groups"] = [group, dict(group, params=[])]
    elif how == "params not a list":
        group["params"] = tuple(group["params"])
    elif how == "one param":
        group["params"] = [0]
    elif how == "bool id":
        group["params"] = [False, 1]
    elif how == "repeated id":
        group["params"] = [0, 0]
    elif how == "infinite beta":
        group["betas"] = (0.9, float("inf"))
    elif how == "one beta":
        group["betas"] = (0.9,)
    elif how == "bool eps":
        group["eps"] = True
    elif how == "amsgrad number":
        group["amsgrad"] = 1
    elif how == "unknown index":
        bad["state"][7] = entry
    elif how == "entry not a dict":
        bad["state"][1] = [1]
    elif how == "integer moment":
        entry["exp_avg"] = torch.zeros(3, 2, dtype=torch.int64)
    elif how == "moment of the other shape":
        entry["exp_avg"] = torch.zeros(4)
    elif how == "two steps":
        entry["step"] = torch.ones(2)
    elif how == "no step":
        entry["step"] = torch.empty(0)
    elif how == "nan moment":
        entry["exp_avg"] = entry["exp_avg"].clone().index_fill_(0, torch.tensor([2]), float("nan"))
    elif how == "negative second moment":
        entry["exp_avg_sq"] = entry["exp_avg_sq"].clone().index_fill_(0, torch.tensor([2]), -1e-30)
    elif how == "negative step":
        entry["step"] = torch.tensor(-1.0)
    return bad


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("not a dict", "holds no optimizer state"),
        ("state not a dict", "holds no optimizer state"),
        ("groups not a list", "other parameter groups"),
        ("two groups", "other parameter groups"),
        ("params not a list", "other parameter groups"),
        ("one param", "other parameter groups"),
        ("bool id", "other parameter groups"),
        ("repeated id", "other parameter groups"),
        ("infinite beta", "betas is \\(0.9, inf\\)"),
        ("one beta", "betas is \\(0.9,\\)"),
        ("bool eps", "eps is True"),
        ("amsgrad number", "amsgrad is 1,"),
        ("unknown index", "names parameter 7"),
        ("entry not a dict", "names parameter 1"),
        ("integer moment", "exp_avg of parameter 0 is not a floating-point tensor"),
        ("moment of the other shape", "has shape \\[4\\], the parameter \\[3, 2\\]"),
        ("two steps", "step of parameter 0 is not a single number"),
        ("no step", "step of parameter 0 is not a single number"),
        ("nan moment", "exp_avg of parameter 0 holds non-finite"),
        ("negative second moment", "exp_avg_sq of parameter 0 holds negative"),
        ("negative step", "step of parameter 0 holds negative"),
    ],
)
def test_an_optimizer_state_is_refused_for_each_reason(how, message):
    optimizer, saved = _adam()
    with pytest.raises(CheckpointError, match=f"ckpt.pt.*{message}"):
        check_optimizer_state(_break(saved, how), optimizer, "ckpt.pt")


def test_a_negative_first_moment_is_fine():
    optimizer, saved = _adam()
    ok = _copy(saved)
    ok["state"][0]["exp_avg"] = -ok["state"][0]["exp_avg"].abs() - 1
    check_optimizer_state(ok, optimizer, "ckpt.pt")


def test_a_flag_or_optional_hyperparameter_takes_none_or_a_flag():
    optimizer, saved = _adam()
    for key, value in [("foreach", None), ("foreach", True), ("maximize", False)]:
        ok = _copy(saved)
        ok["param_groups"][0][key] = value
        check_optimizer_state(ok, optimizer, "ckpt.pt")
    bad = _copy(saved)
    bad["param_groups"][0]["foreach"] = 0
    with pytest.raises(CheckpointError, match="foreach is 0"):
        check_optimizer_state(bad, optimizer, "ckpt.pt")


# --------------------------------------------------------------------------- config changes
def test_config_changes_lists_differences_outside_the_allowed_keys():
    saved = {"lr": 1e-3, "epochs": 3, "model": {"dim": 4, "hidden": 8}, "only_saved": 1}
    current = {"lr": 1e-3, "epochs": 9, "model": {"dim": 8, "hidden": 8}, "only_new": 2}
    assert config_changes(saved, current, frozenset({"epochs"})) == ["model.dim: 4 → 8"]
    assert config_changes(saved, current, frozenset()) == ["epochs: 3 → 9", "model.dim: 4 → 8"]
    assert config_changes(saved, saved, frozenset()) == []
    assert config_changes(None, current, frozenset()) == []
    assert config_changes(saved, "x", frozenset()) == []
    empty = config_changes({"eval": {}}, {"eval": {"n": 1}}, frozenset())
    assert empty == []  # "eval" and "eval.n": a key that only one side records
