"""A resume that is refused leaves the caller's model and torch's random state as they were:
``fit`` loaded the weights of ``last.pt`` (and set its random state) before it checked the saved
training state, so a notebook that caught the CheckpointError went on with the checkpoint's
weights, or a mix of them and its own, and another random stream."""

from __future__ import annotations

import shutil

import pytest
import torch

from qlatent.data import synthetic_binary
from qlatent.models import gated_vae, lattice_vae
from qlatent.train import CheckpointError, TrainConfig, fit, load, save_atomic
from run_helpers import tiny_fit

DATA = synthetic_binary(n=200, dim=16, seed=0)  # tiny_fit's data: 4 updates of 50 an epoch
RUN_CONFIG = {"data": "synthetic", "train": {}}


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """The folder of a finished one-epoch run (each test works on its own copy)."""
    folder = tmp_path_factory.mktemp("run")
    tiny_fit(folder)
    return folder


def _copy(one_epoch, tmp_path):
    shutil.copytree(one_epoch, tmp_path / "run")
    return tmp_path / "run"


def _rewrite(path, change):
    """``path`` (a checkpoint) rewritten with ``change`` applied to its dict, digest renewed."""
    ckpt = load(path)
    change(ckpt)
    save_atomic(ckpt, path)


def _refused_fit(folder, match, run_config=RUN_CONFIG, make=None, **train):
    """``fit`` of a freshly built model (``make()``, a tiny_fit model by default) into
    ``folder``, refused with ``match``; asserts that the model holds the same parameter objects
    with the same values afterwards, and that torch's global random state is the one before."""
    torch.manual_seed(12345)  # other initial weights than the run's
    model = make() if make else lattice_vae(latent_dim=3, hidden=8, data_dim=16)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    params = list(model.parameters())
    rng = torch.get_rng_state()
    cfg = TrainConfig(batch_size=50, progress=False, **{"epochs": 2, **train})
    with pytest.raises(CheckpointError, match=match):
        fit(model, DATA, cfg, out_dir=folder, run_config=run_config)
    after = model.state_dict()
    changed = [name for name, t in before.items() if not torch.equal(t, after[name])]
    assert changed == [], f"a refused resume changed {changed}"
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert torch.equal(torch.get_rng_state(), rng), "a refused resume changed the random state"


def _state(**values):
    return lambda ckpt: ckpt["state"].update(values)


def _drop_first_weight(ckpt):
    ckpt["model"].pop(next(iter(ckpt["model"])))


@pytest.mark.parametrize(
    "change, match",
    [
        (_state(step=-1), "state.step must be a non-negative integer"),
        (_state(history=[]), "state.history holds 0 records for 1 epochs"),
        (lambda ckpt: ckpt.update(rng=[{"torch": torch.zeros(3, dtype=torch.uint8)}]), "state"),
        (lambda ckpt: ckpt.update(rng=[]), "unusable training state"),
        # a model of another architecture: every weight that fits was copied before the refusal
        (_drop_first_weight, "weights of a different model"),
        (lambda ckpt: ckpt.update(world_size=2), r"written by 2 process\(es\)"),
    ],
    ids=["state", "history", "rng-size", "rng-rank", "architecture", "world-size"],
)
def test_a_refused_last_checkpoint_leaves_the_model_and_rng_as_they_were(
    tmp_path, one_epoch, change, match
):
    folder = _copy(one_epoch, tmp_path)
    _rewrite(folder / "last.pt", change)
    _refused_fit(folder, match)


def test_a_resume_with_another_config_leaves_the_random_state_as_it_was(tmp_path, one_epoch):
    folder = _copy(one_epoch, tmp_path)
    _refused_fit(folder, "different config", run_config={**RUN_CONFIG, "data": "other"})


def test_a_missing_best_checkpoint_of_an_earlier_epoch_leaves_the_model_as_it_was(
    tmp_path, one_epoch
):
    folder = _copy(one_epoch, tmp_path)
    tiny_fit(folder, epochs=2)
    _rewrite(folder / "last.pt", _state(best_epoch=1))  # the best epoch an earlier one
    (folder / "best.pt").unlink()
    _refused_fit(folder, "best.pt is missing", epochs=3)


def test_a_finished_run_whose_best_checkpoint_is_another_leaves_the_model_as_it_was(
    tmp_path, one_epoch
):
    folder = _copy(one_epoch, tmp_path)
    _rewrite(folder / "best.pt", lambda ckpt: ckpt.update(epoch=5))
    _refused_fit(folder, "does not hold this run's best epoch", epochs=1)


def test_a_part_epoch_that_cannot_be_finished_leaves_the_model_as_it_was(tmp_path):
    folder = tmp_path / "run"
    torch.manual_seed(0)
    model = lattice_vae(latent_dim=3, hidden=8, data_dim=16)
    cfg = TrainConfig(epochs=2, batch_size=50, max_steps=2, progress=False)
    fit(model, DATA, cfg, out_dir=folder, run_config=RUN_CONFIG)  # stops 2 updates into epoch 1
    _refused_fit(folder, "cannot finish that epoch", max_steps=None)


def test_a_bottleneck_built_with_other_arguments_leaves_the_model_as_it_was(tmp_path):
    # the encoder and decoder fit and were copied before the bottleneck was refused
    folder = tmp_path / "run"
    torch.manual_seed(0)
    model = gated_vae("vq_ema", latent_dim=4, hidden=8, data_dim=16, num_codes=8)
    cfg = TrainConfig(epochs=1, batch_size=50, progress=False)
    fit(model, DATA, cfg, out_dir=folder, run_config=RUN_CONFIG)

    def other():
        return gated_vae("vq_ema", latent_dim=4, hidden=8, data_dim=16, num_codes=16)

    _refused_fit(folder, "saved from a EMAVectorQuantizer with num_codes=8", make=other)
