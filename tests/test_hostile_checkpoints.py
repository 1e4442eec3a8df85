"""Hostile checkpoints: a ``.pt`` file is untrusted input. Whatever it holds (containers nested
thousands deep, shared references that describe 2^60 paths, sparse tensors, keys that are not
names, a code model inconsistent with its bottleneck, a non-finite prior scale), loading it is
one :class:`~qlatent.train.CheckpointError` naming the file, and the CLI prints one line and
exits with status 2: no traceback, no hang, no warnings.
"""

from __future__ import annotations

import sys
import time
import warnings

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.cli import main
from qlatent.experiments import custom
from qlatent.models import gated_vae
from qlatent.train import CheckpointError, load, save_atomic
from qlatent.train import checkpoint as checkpoint_module
from qlatent.train.checkpoint import content_digest


def _gated(bottleneck: str = "lattice", **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return gated_vae(bottleneck, latent_dim=4, hidden=8, data_dim=784, **kwargs).state_dict()


def _run(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _one_line(err: str, *needles: str) -> bool:
    lines = err.strip().splitlines()
    ok = len(lines) == 1 and lines[0].startswith("qlatent: error:")
    return ok and all(needle in lines[0] for needle in needles)


def _compress(path, tmp_path, capsys) -> tuple[int, str]:
    args = ["compress", "--checkpoint", path, "--data", "synthetic-test", "--limit", 5]
    return _run([*args, "-o", tmp_path / "out.qlc"], capsys)


def _nested(depth: int, make) -> object:
    x = make(None)
    for _ in range(depth):
        x = make(x)
    return x


def _save_deep(obj, path) -> None:
    """``torch.save`` of a deeply nested object (pickling it recurses)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        torch.save(obj, path)
    finally:
        sys.setrecursionlimit(limit)


# ------------------------------------------------------------------ 1. deep nesting
@pytest.mark.parametrize("kind", ["list", "dict_in_run_config"])
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path, capsys, kind):
    path = tmp_path / "deep.pt"
    ckpt = {"model": _gated(), "run_config": {"eval": {}}}
    if kind == "list":
        ckpt["junk"] = _nested(2_000, lambda x: [] if x is None else [x])
    else:
        ckpt["run_config"]["eval"] = _nested(2_000, lambda x: {} if x is None else {"a": x})
    _save_deep(ckpt, path)
    with pytest.raises(CheckpointError, match="deep.pt nests containers more than 64"):
        load(path)
    code, err = _compress(path, tmp_path, capsys)
    assert code == 2 and _one_line(err, "deep.pt", "levels deep")


def test_nesting_within_the_limit_loads(tmp_path):
    path = tmp_path / "ok.pt"
    save_atomic(
        {
            "model": {},
            "x": _nested(checkpoint_module.MAX_DEPTH - 2, lambda x: [] if x is None else [x]),
        },
        path,
    )
    assert "x" in load(path)


# ------------------------------------------------------------------ 2. shared references
@pytest.mark.parametrize("kind", ["list", "dict", "tensor"])
def test_shared_reference_blow_up_is_refused_by_the_node_limit(tmp_path, monkeypatch, kind):
    """2^20 paths through 20 containers: refused once the walk passes the limit."""
    monkeypatch.setattr(checkpoint_module, "MAX_NODES", 10_000)
    x: object = torch.zeros(4) if kind == "tensor" else ([] if kind == "list" else {})
    for _ in range(20):
        x = {"a": x, "b": x} if kind == "dict" else [x, x]
    path = tmp_path / "dag.pt"
    torch.save({"model": {}, "run_config": {"eval": x}}, path)
    with pytest.raises(CheckpointError, match="dag.pt holds more than 10,000 values"):
        load(path)
    with pytest.raises(ValueError, match="more than 100 values"):
        content_digest(x, max_nodes=100)


def test_a_sixty_level_shared_reference_bomb_is_refused_quickly(tmp_path, capsys):
    x: list = []
    for _ in range(60):
        x = [x, x]
    path = tmp_path / "bomb.pt"
    torch.save({"model": _gated(), "junk": x}, path)
    assert path.stat().st_size < 200_000
    started = time.perf_counter()
    code, err = _compress(path, tmp_path, capsys)
    assert code == 2 and _one_line(err, "bomb.pt", "values")
    assert time.perf_counter() - started < 60


def test_digest_of_a_real_checkpoint_is_unchanged_and_iterative(tmp_path):
    """The digest's definition is unchanged (a value computed before it became iterative), and
    a nested checkpoint far deeper than the recursion limit digests without recursing."""
    obj = {
        "model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        "epoch": 3,
        "run_config": {"train": {"lr": 1e-3, "hidden": [8, 4]}, "name": "x", "none": None},
        "shape": torch.Size([1, 2]),
        "t": (1, 2.5, "s", True),
        "dtype": torch.float32,
    }
    assert content_digest(obj) == (
        "03c4e058ef5572c1190ed13e27727c32b39ec92a1864f091251ebf2a0057e489"
    )
    deep = _nested(5_000, lambda x: [] if x is None else [x])
    assert len(content_digest(deep)) == 64


# ------------------------------------------------------------------ 3. sparse tensors
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_a_sparse_weight_is_refused_with_one_line(tmp_path, capsys, layout):
    state = _gated()
    weight = state["encoder.2.weight"]
    state["encoder.2.weight"] = weight.to_sparse() if layout == "coo" else weight.to_sparse_csr()
    path = tmp_path / "sparse.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="sparse.pt holds a sparse_"):
        load(path)
    code, err = _compress(path, tmp_path, capsys)
    assert code == 2 and _one_line(err, "sparse.pt", "dense (strided)")


def test_a_sparse_init_from_is_refused_by_train(tmp_path, capsys):
    path = tmp_path / "sparse.pt"
    torch.save({"model": {"encoder.1.weight": torch.eye(3).to_sparse()}}, path)
    model = custom.build_model(custom.load_config(None), (1, 28, 28), 0.1)
    with pytest.raises(CheckpointError, match="sparse.pt holds a sparse_coo tensor"):
        custom.warm_start(model, path)
    config = tmp_path / "run.toml"
    config.write_text(
        f'out_dir = "{tmp_path / "run"}"\ninit_from = "{path}"\n'
        '[data]\nname = "synthetic"\nsynthetic_size = 60\n'
        "[train]\nepochs = 1\nmax_steps = 1\nprogress = false\n"
    )
    code, err = _run(["train", config], capsys)
    assert code == 2 and _one_line(err, "sparse.pt", "sparse_coo")


# ------------------------------------------------------------------ 4. keys that are not names
def test_a_non_string_key_in_the_weights_is_refused(tmp_path, capsys):
    state = _gated()
    state[5] = torch.zeros(1)
    path = tmp_path / "key.pt"
    save_atomic({"model": state}, path)
    code, err = _compress(path, tmp_path, capsys)
    assert code == 2 and _one_line(err, "key.pt", "key 5 (int) that is not a name")
    code, err = _run(["eval", path], capsys)
    assert code == 2 and _one_line(err, "key.pt")


def test_a_complex_weight_is_refused_not_cast_with_a_warning(tmp_path, capsys):
    state = _gated()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].to(torch.complex64)
    path = tmp_path / "complex.pt"
    save_atomic({"model": state}, path)
    code, err = _compress(path, tmp_path, capsys)
    assert code == 2 and _one_line(err, "complex.pt", f"the weight {name} is complex")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_a_weight_of_another_dtype_kind_is_refused_not_cast(tmp_path, capsys, dtype):
    """An integer or boolean tensor under a floating-point weight's name: ``copy_`` would cast
    it silently (3.7 → 3, anything → 0/1)."""
    state = _gated()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.ones(state[name].shape, dtype=dtype)
    path = tmp_path / "kind.pt"
    save_atomic({"model": state}, path)
    code, err = _compress(path, tmp_path, capsys)
    assert code == 2 and _one_line(err, "kind.pt", f"the weight {name} is ", "floating-point")


def test_a_half_precision_checkpoint_still_loads(tmp_path, capsys):
    """Floating-point widths may differ: weights saved from a half-precision model load."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in _gated().items()}
    path = tmp_path / "half.pt"
    save_atomic({"model": state}, path)
    assert _compress(path, tmp_path, capsys)[0] == 0


def test_a_non_string_key_in_init_from_is_refused(tmp_path):
    model = custom.build_model(custom.load_config(None), (1, 28, 28), 0.1)
    state = {**model.state_dict(), 5: torch.zeros(1)}
    path = tmp_path / "key.pt"
    save_atomic({"model": state}, path)
    with pytest.raises(CheckpointError, match="key.pt .*key 5 .* not a name"):
        custom.warm_start(model, path)
    state = {**model.state_dict(), "encoder.1.weight": "abc"}
    save_atomic({"model": state}, path)
    with pytest.raises(CheckpointError, match="encoder.1.weight is a str, not a tensor"):
        custom.warm_start(model, path)
    own = model.state_dict()
    state = {
        **own,
        "encoder.1.h.weight": torch.ones(own["encoder.1.h.weight"].shape, dtype=torch.int64),
    }
    save_atomic({"model": state}, path)
    with pytest.raises(CheckpointError, match="encoder.1.h.weight is integer .*floating-point"):
        custom.warm_start(model, path)


# ------------------------------------------------------------------ 5. counted code models
def _vq_state(**buffers) -> dict[str, torch.Tensor]:
    state = _gated("vq", num_codes=16)
    state["bottleneck.code_low"] = torch.zeros(1, dtype=torch.int64)
    state["bottleneck.code_counts"] = torch.arange(16, dtype=torch.int64).unsqueeze(0)
    state.update({f"bottleneck.{k}": v for k, v in buffers.items()})
    return state


I64 = torch.int64
BAD_COUNTS = {
    "two_rows": dict(code_counts=torch.ones(2, 16, dtype=I64), code_low=torch.zeros(2, dtype=I64)),
    "width_0": dict(code_counts=torch.ones(1, 0, dtype=I64)),
    "rank_3": dict(code_counts=torch.ones(1, 16, 1, dtype=I64)),
    "float": dict(code_counts=torch.full((1, 16), 0.5)),
    "negative": dict(code_counts=torch.full((1, 16), -5, dtype=I64)),
    "too_wide": dict(code_counts=torch.ones(1, 17, dtype=I64)),
    "low_huge": dict(code_low=torch.full((1,), 2**62, dtype=I64)),
    "low_int32": dict(code_low=torch.ones(1, dtype=torch.int32)),
}


@pytest.mark.parametrize("case", sorted(BAD_COUNTS))
def test_an_inconsistent_counted_code_model_is_refused_naming_the_buffer(tmp_path, capsys, case):
    path = tmp_path / "vq.pt"
    save_atomic({"model": _vq_state(**BAD_COUNTS[case])}, path)
    code, err = _compress(path, tmp_path, capsys)
    assert code == 2 and _one_line(err, "vq.pt", "bottleneck.code_")


def test_a_consistent_counted_code_model_still_codes(tmp_path, capsys):
    path = tmp_path / "vq.pt"
    zero = torch.zeros(1, 16, dtype=I64)  # nothing counted yet: every code half a count
    for state in (_vq_state(), _vq_state(code_counts=zero)):
        save_atomic({"model": state}, path)
        assert _compress(path, tmp_path, capsys)[0] == 0


def test_learnable_lattice_counts_are_checked_when_loaded_and_when_used():
    torch.manual_seed(0)
    bn = build("learnable_lattice", dim=3, init_range=0.4).eval()
    bn.update(torch.randn(200, 3, generator=torch.Generator().manual_seed(1)))
    good = bn.state_dict()
    fresh = build("learnable_lattice", dim=3, init_range=0.4).eval()
    fresh.load_state_dict(good)  # as update wrote them
    assert torch.equal(fresh.code_counts, bn.code_counts)
    for change, needle in [
        ({"code_low": good["code_low"][:2]}, "one row per symbol"),
        ({"code_low": torch.full((3,), 2**31 - 1, dtype=I64)}, "beyond 32-bit"),
        ({"code_counts": torch.cat([torch.full((3, 1), -1), good["code_counts"]], 1)}, "padding"),
    ]:
        with pytest.raises(ValueError, match=needle):
            build("learnable_lattice", dim=3).load_state_dict({**good, **change})
    bn._buffers["code_counts"] = torch.ones(2, 4, dtype=I64)  # set behind update's back
    with pytest.raises(ValueError, match="code model is inconsistent"):
        bn.code_model()


# ------------------------------------------------------------------ 6. non-finite parameters
@pytest.mark.parametrize("value", [-float("inf"), float("inf"), float("nan")])
def test_a_non_finite_prior_scale_is_refused_naming_file_and_parameter(tmp_path, capsys, value):
    state = _gated()
    state["bottleneck.log_scale"].fill_(value)
    path = tmp_path / "scale.pt"
    save_atomic({"model": state}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, err = _compress(path, tmp_path, capsys)
    assert code == 2 and _one_line(err, "scale.pt", "bottleneck.log_scale", "non-finite")


@pytest.mark.parametrize("lattice", ["z", "d4"])
def test_a_prior_scale_that_underflows_is_refused_when_the_code_model_is_built(lattice):
    neck = build("lattice", dim=4, lattice=lattice).eval()
    with torch.no_grad():
        neck.log_scale.fill_(-200.0)  # finite, but exp(−200) is 0 in float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="prior scale .*log_scale.* is 0.0"):
            neck.code_model()
