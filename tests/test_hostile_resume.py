"""Resumes that must end where an uninterrupted run ends: a run whose step budget or patience
is already used up when it resumes (its stop recorded as the time budget, or a cap lowered on
resume) stops at once, as the uninterrupted run with that cap stopped, instead of training
once more (an empty batch that "diverged", or most of an epoch past the budget)."""

from __future__ import annotations

import torch

from qlatent.data import synthetic_binary
from qlatent.models import lattice_vae
from qlatent.train import TrainConfig, fit, load
from qlatent.train import loop as loop_module
from run_helpers import same_last_weights, without_time

DATA = synthetic_binary(n=300, dim=64, seed=1)  # 200 training examples: 5 updates of 40


def _fit(out, **train):
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=4, hidden=16, data_dim=64)
    cfg = TrainConfig(batch_size=40, progress=False, **train)
    return model, fit(model, DATA, cfg, out_dir=out)


def test_a_step_budget_met_on_resume_ends_the_run_as_an_uninterrupted_one(tmp_path):
    _, straight = _fit(tmp_path / "a", epochs=3, max_steps=5)  # one epoch meets the budget
    _fit(tmp_path / "b", epochs=1)
    _, resumed = _fit(tmp_path / "b", epochs=3, max_steps=5)  # failed: "training diverged"
    assert straight.stopped == resumed.stopped == "max_steps"
    assert without_time(resumed.history) == without_time(straight.history)
    assert same_last_weights(tmp_path / "a", tmp_path / "b")


def test_a_step_budget_lowered_below_the_steps_taken_trains_no_more(tmp_path):
    _fit(tmp_path / "a", epochs=2)  # 10 updates
    _, resumed = _fit(tmp_path / "a", epochs=3, max_steps=7)  # trained a third epoch of 2
    assert resumed.stopped == "max_steps"
    assert [h["step"] for h in resumed.history] == [5, 10]
    assert load(tmp_path / "a" / "last.pt")["state"]["epoch"] == 2


def test_a_time_budget_stop_that_met_the_step_budget_resumes_finished(tmp_path):
    # a budget every epoch exceeds: the stop is recorded as the time budget's
    cfg = {"epochs": 3, "max_steps": 5, "max_minutes": 1e-9}
    _, first = _fit(tmp_path, **cfg)
    assert first.stopped == "time_budget" and [h["step"] for h in first.history] == [5]
    _, again = _fit(tmp_path, **cfg)  # the same command failed: "training diverged"
    assert again.stopped == "max_steps"
    assert without_time(again.history) == without_time(first.history)


def test_a_patience_lowered_on_resume_stops_where_an_uninterrupted_run_stopped(
    tmp_path, monkeypatch
):
    real_validate = loop_module._validate

    def script(*values):  # the validation objective of each epoch, in turn
        objectives = iter(values)

        def scripted_validate(*args):
            return real_validate(*args) | {"val_objective": next(objectives)}

        monkeypatch.setattr(loop_module, "_validate", scripted_validate)

    script(3.0, 3.1, 3.2, 3.3)  # epoch 1 the best, then epochs without improvement
    _, straight = _fit(tmp_path / "a", epochs=4, patience=1)
    script(3.0, 3.1, 3.2, 3.3)
    _fit(tmp_path / "b", epochs=3)
    _, resumed = _fit(tmp_path / "b", epochs=4, patience=1)  # trained epoch 4
    assert straight.stopped == resumed.stopped == "early_stopping"
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert without_time(resumed.history) == without_time(straight.history)
    assert same_last_weights(tmp_path / "a", tmp_path / "b")
