"""A state dict keeps what its weights mean: the structural constructor values of a bottleneck
(its lattice, its prior, its codebook size ...) travel in the state dict's metadata, and weights
saved under other values are refused where they are loaded. Before, E8 weights loaded into a
D8 bottleneck of the same shapes without a word and quantized on the other lattice, and a
checkpoint whose config named another lattice than its weights' coded on that lattice."""

from __future__ import annotations

import io

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.cli import main
from qlatent.models import gated_vae
from qlatent.train import CheckpointError, save_atomic
from qlatent.train.checkpoint import load_weights
from test_contract import CONFIGS, VARIANTS


def _build(case: str):
    name, kwargs = VARIANTS[case] if case in VARIANTS else (case, CONFIGS[case])
    torch.manual_seed(0)
    return build(name, **kwargs)


def _through_a_file(state):
    """``state`` as ``torch.load(weights_only=True)`` reads it back from ``torch.save``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("case", sorted(CONFIGS) + sorted(VARIANTS))
def test_every_bottleneck_keeps_its_record_through_a_file_and_loads_it_back(case):
    module = _build(case)
    state = _through_a_file(module.state_dict())
    record = state._metadata[""]["qlatent"]
    assert record["class"] == type(module).__name__
    assert record["fixed"]["dim"] == module.dim
    assert "compile" not in record["fixed"]
    fresh = _build(case)
    assert fresh.load_state_dict(state) is not None  # strict: the record is no key
    assert set(state) == set(module.state_dict())


# (bottleneck, the module's arguments, the saved weights' arguments, the argument named)
MISMATCHES = [
    ("lattice", dict(dim=8, lattice="d8"), dict(dim=8, lattice="e8"), "lattice='e8'"),
    ("lattice", dict(dim=24, lattice="leech"), dict(dim=24, lattice="d24"), "lattice='d24'"),
    ("lattice", dict(dim=8, lattice="e8"), dict(dim=8, lattice="e8", prior="gaussian"), "prior="),
    ("lattice", dict(dim=4, lattice="a2"), dict(dim=4, lattice="d2"), "lattice='d2'"),
    (
        "lattice",
        dict(dim=16, lattice=["e8", "d8"]),
        dict(dim=16, lattice=["d8", "e8"]),
        "lattice=['d8', 'e8']",
    ),
]


@pytest.mark.parametrize("name, mine, saved, named", MISMATCHES)
def test_weights_saved_under_another_structure_are_refused_and_nothing_is_loaded(
    name, mine, saved, named
):
    torch.manual_seed(1)
    source = build(name, **saved)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    torch.manual_seed(0)
    target = build(name, **mine)
    before = _weights(target)
    state = _through_a_file(source.state_dict())
    with pytest.raises(RuntimeError, match="the weights were saved from a") as err:
        target.load_state_dict(state)
    assert named in str(err.value) and "dict(state_dict)" in str(err.value)
    after = target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a plain dict carries no record: loaded as before, on the caller's word
    target.load_state_dict(dict(state))
    assert all(torch.equal(state[k], target.state_dict()[k]) for k in state)


def test_a_refused_load_leaves_a_counted_code_model_alone():
    source, target = build("scalar_st", dim=3, levels=5), build("scalar_st", dim=3, levels=7)
    target.update(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)))
    counts = _weights(target)
    assert target.code_model_ready
    with pytest.raises(RuntimeError, match="levels=5"):
        target.load_state_dict(source.state_dict())
    assert target.code_model_ready
    assert all(torch.equal(counts[k], v) for k, v in target.state_dict().items())


def test_settings_that_leave_the_weights_meaning_alone_move_freely():
    pairs = [
        ("lattice", dict(dim=8, lattice="e8"), dict(dim=8, lattice="e8", compile=True)),
        ("lattice", dict(dim=9, lattice=["e8", "z"]), dict(dim=9, lattice=["e8", "z"],
                                                          exact_rectangular=False)),
        ("learnable_lattice", dict(dim=4, num_codes=8), dict(dim=4, num_codes=64)),
        ("lattice", dict(dim=8, lattice="e8"), dict(dim=8, lattice="e8", samples=8)),
    ]  # fmt: skip
    for name, a, b in pairs:
        _loads_exactly(build(name, **b), _through_a_file(_moved(build(name, **a)).state_dict()))


def _moved(module):
    """``module`` with weights other than any fresh build's."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.25)
    return module


def _loads_exactly(module, state) -> None:
    """``module.load_state_dict(state)`` strictly, and every saved tensor is then the module's."""
    result = module.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    own = module.state_dict()
    assert all(torch.equal(state[k], own[k]) for k in state)


def test_a_state_dict_without_a_record_loads_as_before():
    """Older state dicts (and ones whose metadata another tool dropped) load strictly."""
    state = _moved(build("lattice", dim=8, lattice="e8")).state_dict()
    del state._metadata[""]["qlatent"]
    _loads_exactly(build("lattice", dim=8, lattice="d8"), state)
    state._metadata = {}
    _loads_exactly(build("lattice", dim=8, lattice="d8"), state)


@pytest.mark.parametrize(
    "record",
    ["junk", 7, {"fixed": "junk"}, {"class": "X"}, {"fixed": [1, 2]}],
)
def test_a_malformed_record_is_one_error_naming_it(record):
    state = build("lattice", dim=8, lattice="e8").state_dict()
    state._metadata[""]["qlatent"] = record
    with pytest.raises(RuntimeError, match="record of its bottleneck is not one"):
        build("lattice", dim=8, lattice="e8").load_state_dict(state)


@pytest.mark.parametrize(
    "value, shown",
    [("x" * 10_000, "lattice='xxxx"), (None, "lattice=None"), (["e8"] * 200, "lattice=['e8'")],
)
def test_a_recorded_value_read_from_a_file_is_shown_short(value, shown):
    state = build("lattice", dim=8, lattice="e8").state_dict()
    state._metadata[""]["qlatent"]["fixed"]["lattice_spec"] = value
    state._metadata[""]["qlatent"]["class"] = "A\nB" * 1000  # not a name: "bottleneck"
    with pytest.raises(RuntimeError) as err:
        build("lattice", dim=8, lattice="e8").load_state_dict(state)
    message = str(err.value).splitlines()[1]
    assert "saved from a bottleneck with " + shown in message and len(message) < 400


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _shared(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value, value]  # 2^levels paths through one object per level
    return value


@pytest.mark.parametrize(
    "value",
    [torch.ones(3), {"nested": [1, 2]}, _deep(100_000), _shared(60), 10**5000, [[1]], ["x"] * 300],
    ids=["tensor", "dict", "deep", "shared", "huge-int", "nested", "long"],
)
def test_a_recorded_value_of_no_recorded_form_is_refused_without_walking_it(value):
    """Values a bottleneck never records are not compared or shown: a list nested 100,000
    deep overflowed the stack, one sharing itself 60 levels down never ended, and an int of
    5,000 digits has no repr."""
    state = build("lattice", dim=8, lattice="e8").state_dict()
    state._metadata[""]["qlatent"]["fixed"]["lattice_spec"] = value
    with pytest.raises(RuntimeError, match="record of its bottleneck is not one .lattice is a"):
        build("lattice", dim=8, lattice="e8").load_state_dict(state)


def test_values_recorded_that_the_module_does_not_have_are_ignored():
    state = _moved(build("lattice", dim=8, lattice="e8")).state_dict()
    state._metadata[""]["qlatent"]["fixed"]["from_a_later_version"] = 3
    _loads_exactly(build("lattice", dim=8, lattice="e8"), state)


def test_inside_a_model_the_error_names_the_bottleneck_and_the_file(tmp_path):
    saved = gated_vae("lattice", latent_dim=8, hidden=8, data_dim=784, lattice="e8")
    state = _through_a_file(saved.state_dict())
    model = gated_vae("lattice", latent_dim=8, hidden=8, data_dim=784, lattice="d8")
    with pytest.raises(CheckpointError) as err:
        load_weights(model, state, tmp_path / "w.pt")
    text = str(err.value)
    assert "w.pt" in text and "bottleneck: the weights were saved from" in text
    assert "lattice='e8'" in text and "\n" not in text


def test_a_checkpoint_whose_config_names_another_lattice_is_refused_by_compress(tmp_path, capsys):
    """The config is what `qlatent compress` rebuilds the bottleneck from: a config edited (or
    mixed up) to name D8 over E8 weights coded on D8 before."""
    args = {"lattice": "e8", "samples": 16, "eval_samples": 16}
    model = gated_vae("lattice", latent_dim=8, hidden=16, data_dim=784, **args)
    run_config = {"model": {"bottleneck": "lattice", "bottleneck_args": {**args, "lattice": "d8"}}}
    path = tmp_path / "mixed.pt"
    save_atomic({"model": model.state_dict(), "run_config": run_config}, path)
    argv = ["compress", "--checkpoint", path, "--data", "synthetic-test", "--limit", 5]
    code = main([str(a) for a in [*argv, "-o", tmp_path / "out.qlc"]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "mixed.pt" in err[0] and "lattice='e8'" in err[0]
    assert not (tmp_path / "out.qlc").exists()
    run_config["model"]["bottleneck_args"]["lattice"] = "e8"  # the right config still codes
    save_atomic({"model": model.state_dict(), "run_config": run_config}, path)
    assert main([str(a) for a in [*argv, "-o", tmp_path / "out.qlc"]]) == 0
