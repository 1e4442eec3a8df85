"""``qlatent.train.load_weights`` refuses a checkpoint without touching the module.

``load_state_dict`` copies every weight it can before it raises on a missing, unexpected or
differently shaped one: a caller that caught the ``CheckpointError`` went on with a model
half-loaded from the file it had just been told was wrong.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qlatent.train import CheckpointError, load_weights


def _model(out: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, out))


def _other_state(out: int = 4) -> dict[str, torch.Tensor]:
    """A state whose first layers fit the model: filled with 7.0, so a copy shows."""
    state = _model(out).state_dict()
    return {k: torch.full_like(v, 7) if v.is_floating_point() else v for k, v in state.items()}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize(
    "damage",
    ["other_shape", "unexpected_key", "missing_key"],
)
def test_a_refused_state_leaves_every_weight_as_it_was(damage: str) -> None:
    model = _model()
    before = _snapshot(model)
    params = list(model.parameters())
    if damage == "other_shape":
        state = _other_state(out=5)  # the last layer differs, the first two fit
    else:
        state = _other_state()
        if damage == "unexpected_key":
            state["3.weight"] = torch.zeros(2, 2)
        else:
            del state["2.bias"]
    with pytest.raises(CheckpointError, match="different model"):
        load_weights(model, state, "run/last.pt")
    _assert_unchanged(model, before)
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))


def test_a_buffer_the_module_refuses_leaves_the_weights_as_they_were() -> None:
    class Picky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(2, 2)
            self.register_buffer("counts", torch.ones(3))

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            if (state_dict.get(prefix + "counts", torch.ones(1)) < 0).any():
                raise ValueError("counts must be non-negative")
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(2, 2)  # loaded before the picky child is reached
            self.picky = Picky()

    model = Outer()
    before = _snapshot(model)
    state = {k: torch.full_like(v, 7) for k, v in model.state_dict().items()}
    state["picky.counts"] = -torch.ones(3)
    with pytest.raises(CheckpointError, match="non-negative"):
        load_weights(model, state, "run/last.pt")
    _assert_unchanged(model, before)


def test_a_fitting_state_loads_and_keep_false_skips_the_copy(monkeypatch) -> None:
    from qlatent.train import _model_weights

    copies: list[int] = []
    real = _model_weights.weights_copy
    monkeypatch.setattr(_model_weights, "weights_copy", lambda m: copies.append(1) or real(m))
    model = _model()
    state = _other_state()
    load_weights(model, state, "run/last.pt")
    _assert_unchanged(model, state)
    assert copies == [1]
    load_weights(_model(), state, "run/last.pt", keep=False)
    assert copies == [1]
