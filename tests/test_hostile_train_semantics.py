"""What the training loop does, against hand computations: the epoch that ends the warm-up
counts against patience (as in the reference code), a step budget or patience raised on resume
trains on as the uninterrupted run with that cap did (or is refused where it cannot), the data
order of every epoch is the seed's permutation with its last partial batch, and the updates
taken are the ones the step budget promises."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DistributedSampler

from qlatent.data import synthetic_binary
from qlatent.models import lattice_vae
from qlatent.train import CheckpointError, TrainConfig, fit
from qlatent.train import loop as loop_module
from run_helpers import same_last_weights, without_time

DATA = synthetic_binary(n=230, dim=16, seed=1)  # 154 training examples: 4 updates of 40
REAL_VALIDATE = loop_module._validate


def _model():
    torch.manual_seed(0)
    return lattice_vae(latent_dim=2, hidden=8, data_dim=16)


def _fit(out, **train):
    model = _model()
    cfg = TrainConfig(batch_size=40, progress=False, **train)
    return model, fit(model, DATA, cfg, out_dir=out)


def _script(monkeypatch, *values):
    """The validation objective of each epoch, in turn."""
    objectives = iter(values)

    def scripted_validate(*args):
        return REAL_VALIDATE(*args) | {"val_objective": next(objectives)}

    monkeypatch.setattr(loop_module, "_validate", scripted_validate)


def test_the_epoch_that_ends_the_warm_up_counts_against_patience(tmp_path, monkeypatch):
    # β = epoch / 3: epochs 1 and 2 warm up, epoch 3 trains at β = 1. The reference code
    # (VampPrior's experiment loop) resets the count for epoch < warmup only; epoch 3 was
    # exempt too, and the run stopped one epoch late
    _script(monkeypatch, 3.0, 2.0, 2.5, 2.6, 2.7)
    _, result = _fit(tmp_path, epochs=5, warmup_epochs=3, patience=0)
    assert [h["beta"] for h in result.history] == [1 / 3, 2 / 3, 1.0]
    assert result.stopped == "early_stopping" and result.best_epoch == 2


def test_a_bad_epoch_inside_the_warm_up_does_not_count(tmp_path, monkeypatch):
    _script(monkeypatch, 3.0, 3.5, 2.0, 2.5, 2.6)
    _, result = _fit(tmp_path, epochs=5, warmup_epochs=3, patience=0)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]  # epoch 2 (β = 2/3) is free
    assert result.stopped == "early_stopping" and result.best_epoch == 3


def test_a_step_budget_raised_on_resume_trains_on_as_the_uninterrupted_run(tmp_path):
    _, straight = _fit(tmp_path / "a", epochs=5, max_steps=10)
    _, first = _fit(tmp_path / "b", epochs=5, max_steps=8)  # two whole epochs
    assert first.stopped == "max_steps"
    _, resumed = _fit(tmp_path / "b", epochs=5, max_steps=10)  # returned at once, 8 updates
    assert [h["step"] for h in resumed.history] == [4, 8, 10]
    assert resumed.stopped == straight.stopped == "max_steps"
    assert without_time(resumed.history) == without_time(straight.history)
    assert same_last_weights(tmp_path / "a", tmp_path / "b")


def test_a_step_budget_raised_after_a_partial_epoch_is_refused(tmp_path):
    _fit(tmp_path, epochs=5, max_steps=6)  # epoch 2 ended after 2 of its 4 updates
    with pytest.raises(CheckpointError, match="epoch 2 after 2 of its 4 updates"):
        _fit(tmp_path, epochs=5, max_steps=10)  # returned the 6-update weights as "max_steps"
    _, again = _fit(tmp_path, epochs=5, max_steps=6)  # the same budget: finished, as before
    assert again.stopped == "max_steps" and [h["step"] for h in again.history] == [4, 6]


def test_a_patience_raised_on_resume_trains_on_as_the_uninterrupted_run(tmp_path, monkeypatch):
    _script(monkeypatch, 3.0, 3.1, 3.2, 2.0, 2.1)
    _, straight = _fit(tmp_path / "a", epochs=5, patience=3)
    _script(monkeypatch, 3.0, 3.1, 3.2, 2.0, 2.1)
    _, first = _fit(tmp_path / "b", epochs=5, patience=1)
    assert first.stopped == "early_stopping" and len(first.history) == 3
    _, resumed = _fit(tmp_path / "b", epochs=5, patience=3)  # returned at once, 3 epochs
    assert straight.stopped == resumed.stopped == "epochs"
    assert straight.best_epoch == resumed.best_epoch == 4
    assert without_time(resumed.history) == without_time(straight.history)
    assert same_last_weights(tmp_path / "a", tmp_path / "b")


def test_every_epoch_is_the_seeds_permutation_and_the_updates_are_the_budgets(tmp_path):
    model = _model()
    seen, updates = [], []
    real_forward = type(model).forward

    def recording_forward(self, x, *args, **kwargs):
        if self.training:
            seen.append(x.clone())
        return real_forward(self, x, *args, **kwargs)

    hook = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: updates.append(opt.param_groups[0]["lr"])
    )
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(model), "forward", recording_forward)
            cfg = TrainConfig(
                epochs=5, max_steps=10, batch_size=40, lr_decay=0.5, seed=3, progress=False
            )
            result = fit(model, DATA, cfg, out_dir=tmp_path)
    finally:
        hook.remove()
    assert result.stopped == "max_steps" and [h["step"] for h in result.history] == [4, 8, 10]
    assert updates == [5e-4] * 4 + [2.5e-4] * 4 + [1.25e-4] * 2  # lr · 0.5^(epoch − 1)
    x, batches = DATA["train"], []
    for epoch in (1, 2, 3):
        sampler = DistributedSampler(range(x.shape[0]), num_replicas=1, rank=0, seed=3)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        assert sorted(order.tolist()) == list(range(x.shape[0]))  # each example once
        batches += [x[i] for i in order.split(40)]  # the last one of 34
    batches = batches[:10]  # the step budget ends epoch 3 after 2 updates
    assert len(seen) == len(batches) and [b.shape[0] for b in seen[:4]] == [40, 40, 40, 34]
    assert all(torch.equal(a, b) for a, b in zip(seen, batches, strict=True))
    assert not torch.equal(seen[0], seen[4])  # another permutation in epoch 2
    assert [h["train_examples"] for h in result.history] == [154, 154, 80]
