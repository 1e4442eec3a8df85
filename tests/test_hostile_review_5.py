"""A review of the good lattices' Gaussian density approximation and the TensorBoard thread
hook.

Checked: a good-lattice bottleneck pickled whole before ``density`` existed runs (with the
Monte-Carlo estimate it had); the second moments' tables, kept per device, are not carried
through a pickle, where ``map_location`` moves their tensors but not their keys; TensorBoard
boards of two runs that end in another order than they began leave ``threading.excepthook``
as it was before both (the first one's hook was kept for good), and a hook set by someone else
meanwhile stays.
"""

from __future__ import annotations

import copy
import io
import pickle
import threading

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.train.loop import _Board


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_good_lattice_pickled_before_the_density_setting_runs_as_it_did():
    module = build("lattice", dim=16, lattice="e8", samples=8, prior_samples=4)
    y = torch.randn(3, 16, generator=gen(0))
    old = copy.deepcopy(module)
    del old.__dict__["density"]  # as a module pickled before the setting
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.density == "monte_carlo"
    for training in (True, False):
        want = module.train(training)(y, generator=gen(1)).rate
        got = loaded.train(training)(y, generator=gen(1)).rate
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_second_moments_are_numbers_not_tensors_kept_by_device():
    """Tensors kept per device travelled inside a whole-module pickle under their device's key,
    which ``torch.load``'s ``map_location`` does not move (saved on a GPU, loaded to the CPU,
    moved back: a CPU table under the GPU's key). The moments are plain numbers made with the
    module, formed on the input's device and dtype at each call; a module pickled without
    them makes them again."""
    module = build("lattice", dim=16, lattice="e8", density="gaussian")
    y = torch.randn(4, 16, generator=gen(2))
    want = module(y, generator=gen(3)).rate.detach()
    values = module.__dict__["_moment_values"]
    assert isinstance(values, tuple) and all(type(v) is float for v in values)
    assert not any(isinstance(v, torch.Tensor) for v in vars(module).values() if v is not values)
    moments = module._cell_moments(torch.float64, "meta")
    assert moments.device.type == "meta" and moments.dtype == torch.float64
    buffer = io.BytesIO()
    old = copy.deepcopy(module)
    del old.__dict__["_moment_values"]  # as a module pickled before them
    torch.save(old, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False, map_location="cpu")
    got = loaded(y, generator=gen(3)).rate.detach()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert loaded.__dict__["_moment_values"] == values


def _board(folder) -> _Board:
    board = _Board(folder, first_epoch=1)
    board.__enter__()
    board.write({"epoch": 1, "train_loss": 1.0})
    return board


@pytest.mark.parametrize("order", ["first-in-first-out", "last-in-first-out"])
def test_overlapping_boards_restore_the_hook_before_both(tmp_path, order):
    pytest.importorskip("tensorboard")
    before = threading.excepthook
    try:
        first, second = _board(tmp_path / "a"), _board(tmp_path / "b")
        assert threading.excepthook != before  # set while a writer runs
        for board in (first, second) if order == "first-in-first-out" else (second, first):
            board.__exit__(None, None, None)
        assert threading.excepthook is before, threading.excepthook
    finally:
        threading.excepthook = before


def test_a_hook_set_by_someone_else_meanwhile_stays(tmp_path):
    pytest.importorskip("tensorboard")
    before = threading.excepthook

    def own(args):  # pragma: no cover (never called)
        before(args)

    try:
        board = _board(tmp_path / "a")
        threading.excepthook = own
        board.__exit__(None, None, None)
        assert threading.excepthook is own
    finally:
        threading.excepthook = before
