"""What the resume tests share: a run's history without its wall times, whether two runs
ended on the same weights, and a tiny run of ``fit``; what the distributed tests share: two
gloo ranks on this machine; and a full disk under the atomic writes."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

from qlatent import _files
from qlatent.train import load


def without_time(history: list[dict]) -> list[dict]:
    """A run's per-epoch records without ``wall_s``, the one field two equal runs differ in."""
    return [{k: v for k, v in h.items() if k != "wall_s"} for h in history]


def same_last_weights(a, b) -> bool:
    """Whether the ``last.pt`` of run folders ``a`` and ``b`` hold the same tensors."""
    a, b = load(a / "last.pt")["model"], load(b / "last.pt")["model"]
    return all(torch.equal(tensor, b[name]) for name, tensor in a.items())


#: Seconds two ranks may take together: a hang detector, not a timing. Alone a run takes about
#: 40 s; under a load of 12 on two cores (other test processes beside it) it took over 120.
RANKS_TIMEOUT_S = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_ranks(argv: list[str], extra_env: dict[str, str] | None = None) -> None:
    """Run ``python argv`` as ranks 0 and 1 of a two-process group on this machine (the
    ``torchrun`` variables set); the test fails with their stderr if one fails or takes more
    than :data:`RANKS_TIMEOUT_S` (then both are killed with their process groups)."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    env |= {"MASTER_PORT": str(_free_port()), **(extra_env or {})}
    procs = [
        subprocess.Popen(
            [sys.executable, *argv],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a hung rank is killed with its group, not left behind
        )
        for rank in (0, 1)
    ]
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=RANKS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            _, err = proc.communicate()
            pytest.fail(f"a rank did not finish in {RANKS_TIMEOUT_S} s: {err[-2000:]}")
        errors.append(err)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(e[-2000:] for e in errors)


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, file, room: int) -> None:
        self._file, self._room = file, room

    def write(self, data) -> int:
        self._room -= len(data)
        if self._room < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)


def fill_disk(monkeypatch, room: int = 0) -> None:
    """Every atomic write (:func:`qlatent._utils.replacing`, under ``write_atomic`` and
    ``save_atomic``) meets a full disk once ``room`` bytes of its file are written."""
    fdopen = os.fdopen
    monkeypatch.setattr(_files.os, "fdopen", lambda *a, **k: _FullDisk(fdopen(*a, **k), room))


def tiny_fit(out, epochs=1):
    """``fit`` of a small lattice VAE on 200 synthetic vectors into ``out``, seeded: one
    checkpoint per epoch, in well under a second."""
    from qlatent.data import synthetic_binary
    from qlatent.models import lattice_vae
    from qlatent.train import TrainConfig, fit

    torch.manual_seed(0)
    model = lattice_vae(latent_dim=3, hidden=8, data_dim=16)
    cfg = TrainConfig(epochs=epochs, batch_size=50, progress=False)
    data = synthetic_binary(n=200, dim=16, seed=0)
    return fit(model, data, cfg, out_dir=out, run_config={"data": "synthetic", "train": {}})
