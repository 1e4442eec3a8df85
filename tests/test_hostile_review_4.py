"""A review of the run lock's and the PNG writer's folder bookkeeping and of the dither draws
while ``make_fx`` records a ``torch.func`` transform.

Fixed here: the folders a failed start or write took back were those that did not exist before
``mkdir(parents=True)``, judged by name. Through a ``..`` after a missing folder
(``new/../keep``) every name below it looked missing, since the kernel cannot walk through a
missing folder: the user's own empty folder ``keep`` was removed, and ``new``, which the call
made, was left. The folders taken back are now those the call itself made
(``_utils.made_folders``), also where another process made one meanwhile, and by absolute
path: a relative run folder was taken back by name in a working folder changed meanwhile.

Also fixed: ``make_fx`` of ``torch.func.grad`` / ``vjp`` / ``jvp`` over a dithered lattice in
training drew the key and dither once, while tracing, and kept them as constants of the graph
(every call of it had one dither), as only ``torch.func.linearize`` must: ``linearize`` was
told by forward mode being possible, which any transform makes it; it is ``make_fx`` under a
dual level of ``torch.autograd.forward_ad`` and in no transform.

Also fixed: a good lattice's index tables (plain attributes since they left the buffers) stayed
on the first device in an ``nn.DataParallel`` replica, which gets its buffers on its own device
and a shallow copy of the module's attributes; they now follow the buffers. Simulated here with
a replica whose buffers are on the meta device (no second GPU is needed to see the tables stay).
"""

from __future__ import annotations

import errno
import pickle
from pathlib import Path

import pytest
import torch
from torch.func import grad, jvp, linearize, vjp
from torch.fx.experimental.proxy_tensor import make_fx

from qlatent.bottlenecks import build
from qlatent.train.lock import hold


# ------------------------------------------------------------------ folders taken back
class _Fails(Exception):
    pass


def test_a_failed_start_through_dotdot_keeps_the_users_empty_folder(tmp_path):
    """``hold(new/../keep)`` that fails: ``keep`` (the user's, empty) stays, ``new`` (made by
    the call) goes."""
    keep = tmp_path / "keep"
    keep.mkdir()
    with pytest.raises(_Fails), hold(tmp_path / "new" / ".." / "keep"):
        raise _Fails
    assert keep.is_dir()
    assert not (tmp_path / "new").exists()


def test_a_failed_start_through_dotdot_takes_back_what_it_made(tmp_path):
    """``hold(new/../runs/a)`` with ``runs`` the user's: ``runs/a`` and ``new`` go, ``runs``
    stays; a start that succeeds keeps its folder."""
    runs = tmp_path / "runs"
    runs.mkdir()
    with pytest.raises(_Fails), hold(tmp_path / "new" / ".." / "runs" / "a"):
        raise _Fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert list(runs.iterdir()) == []
    with hold(tmp_path / "new" / ".." / "runs" / "a"):
        pass
    assert (runs / "a").is_dir()


def test_a_folder_made_meanwhile_by_another_process_is_not_taken_back(tmp_path, monkeypatch):
    """A run folder that appeared between the look and the mkdir is another's: it stays."""
    from qlatent import _files

    folder = tmp_path / "run"
    mkdir = _files.os.mkdir

    def another_process_first(path, *args, **kwargs):
        if str(path) == str(folder) and not folder.exists():
            mkdir(path)  # made by the other process just before this one
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(_files.os, "mkdir", another_process_first)
    with pytest.raises(_Fails), hold(folder):
        raise _Fails
    assert folder.is_dir()


def test_a_relative_run_folder_is_taken_back_where_it_was_made(tmp_path, monkeypatch):
    """A relative run folder whose start fails after the working folder changed (a notebook's
    ``%cd``): the folders made go, the user's empty ``runs/a`` in the new working folder stays."""
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    (there / "runs" / "a").mkdir(parents=True)
    monkeypatch.chdir(here)
    with pytest.raises(_Fails), hold(Path("runs") / "a"):
        monkeypatch.chdir(there)
        raise _Fails
    assert (there / "runs" / "a").is_dir()
    assert list(here.iterdir()) == []


def test_a_run_folder_that_cannot_be_made_leaves_none_above_it(tmp_path):
    """A run folder whose name is too long: the folder above it, made for it, goes too."""
    with pytest.raises(OSError, match="too long"), hold(tmp_path / "new" / ("a" * 300)):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_png_folder_through_dotdot_keeps_the_users_empty_folder(tmp_path, monkeypatch):
    """``write_image_folder`` whose disk fills: the user's empty ``keep`` stays, ``new`` goes."""
    from qlatent.data import folder
    from qlatent.data.folder import write_image_folder

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(folder, "write_atomic", full)
    keep = tmp_path / "keep"
    keep.mkdir()
    with pytest.raises(OSError, match="No space"):
        write_image_folder(torch.rand(2, 1, 4, 4), tmp_path / "new" / ".." / "keep")
    assert keep.is_dir()
    assert not (tmp_path / "new").exists()


def test_made_folders_names_a_file_in_the_way(tmp_path):
    """A file where a folder goes is an error, as ``mkdir(parents=True)`` makes it."""
    from qlatent._utils import made_folders

    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError):
        made_folders(tmp_path / "f")
    with pytest.raises(NotADirectoryError):
        made_folders(tmp_path / "f" / "a")
    assert made_folders(tmp_path / "a" / "b") == [tmp_path / "a" / "b", tmp_path / "a"]
    assert made_folders(tmp_path / "a" / "b") == []


# ----------------------------------------------------- dither draws under make_fx(transform)
def _lattice():
    torch.manual_seed(0)
    return build("lattice", dim=4).train()


def _y():
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("transform", ["vjp", "grad", "jvp"])
def test_make_fx_of_a_transform_draws_each_calls_dither(transform):
    """Each call of the graph draws its own dither, as each eager call does (the graph of a
    ``vjp``, ``grad`` or ``jvp`` gave one dither on every call), and the eager numbers from
    the same seed."""
    module, y = _lattice(), _y()

    def value(y):
        return vjp(lambda t: module(t).y_hat, y)[0]

    def gradient(y):
        return grad(lambda t: (module(t).y_hat * t).sum() + module(t).rate.sum())(y)

    def tangent(y):
        return jvp(lambda t: module(t).y_hat, (y,), (torch.ones_like(y),))[1] * module(y).y_hat

    f = {"vjp": value, "grad": gradient, "jvp": tangent}[transform]
    assert not torch.equal(f(y), f(y))  # eager: another dither each call
    graph = make_fx(f)(y)
    first, second = graph(y), graph(y)
    assert not torch.equal(first, second)
    torch.manual_seed(5)
    eager = f(y)
    torch.manual_seed(5)
    assert torch.equal(graph(y), eager)


def test_make_fx_of_a_vjp_through_a_good_lattice_draws_each_calls_dither():
    """The same for E8's dither and Monte-Carlo draws (counter-based numbers)."""
    torch.manual_seed(0)
    module = build("lattice", dim=8, lattice="E8", samples=8, prior_samples=4).train()
    y = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))

    def f(y):
        return vjp(lambda t: torch.cat([module(t).y_hat, module(t).rate[:, None]], 1), y)[0]

    graph = make_fx(f)(y)
    assert not torch.equal(graph(y), graph(y))
    torch.manual_seed(5)
    eager = f(y)
    torch.manual_seed(5)
    assert torch.equal(graph(y), eager)


def test_linearize_still_keeps_the_traced_calls_dither():
    """``linearize``'s jvp_fn gives the same tangents on every call (one dither, the traced
    one's), equal to ``torch.func.jvp`` under the same generator seed."""
    module, y = _lattice(), _y()

    def f(t):
        return module(t, generator=torch.Generator().manual_seed(3)).y_hat

    _, jvp_fn = linearize(f, y)
    t = torch.randn_like(y)
    first, second = jvp_fn(t), jvp_fn(t)
    assert torch.equal(first, second)
    expected = jvp(f, (y,), (t,))[1]
    torch.testing.assert_close(first, expected)


# ------------------------------------------------------ index tables of a replica
_TABLES = ("_block_of", "_exact", "_mc_blocks", "_mc_coords")


def test_a_replicas_index_tables_follow_its_buffers():
    """A ``DataParallel`` replica (``_replicate_for_data_parallel`` and its own buffers, as
    ``nn.parallel.replicate`` makes it) reads its tables on its buffers' device; the module it
    was copied from keeps its own."""
    module = build("lattice", dim=40, lattice=["leech", "bw16"])
    replica = module._replicate_for_data_parallel()
    replica._buffers = {
        name: None if b is None else b.to("meta") for name, b in replica._buffers.items()
    }
    for name in _TABLES:
        assert getattr(replica, name).device.type == "meta", name
        assert getattr(module, name).device.type == "cpu", name


def test_a_module_pickled_with_its_tables_as_attributes_loads():
    """A whole module pickled while the tables were plain attributes (or, earlier, buffers)
    loads with them in place and computes as before."""
    module = build("lattice", dim=16, lattice="e8")
    y = torch.randn(8, 16)
    expected = module(y, generator=torch.Generator().manual_seed(1)).rate
    for as_buffers in (False, True):
        state = module.__dict__.copy()
        tables = state.pop("_index_tables")
        if as_buffers:
            state["_buffers"] = {**state["_buffers"], **tables}
            state["_non_persistent_buffers_set"] = {*state["_non_persistent_buffers_set"], *tables}
        else:
            state.update(tables)
        old = object.__new__(type(module))
        old.__setstate__(state)
        loaded = pickle.loads(pickle.dumps(old))
        rate = loaded(y, generator=torch.Generator().manual_seed(1)).rate
        assert torch.equal(rate, expected), as_buffers
        assert not set(_TABLES) & set(loaded._buffers), as_buffers
