"""The training loop: exact resume, atomic checkpoints, early stopping with best-model reload,
torchrun/DDP with two gloo processes, and the ``qlatent train`` command on synthetic data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qlatent.cli import main
from qlatent.data import synthetic_binary
from qlatent.models import lattice_vae
from qlatent.train import AdamNormGrad, TrainConfig, fit, load, make_optimizer, save_atomic
from qlatent.train import loop as loop_module
from qlatent.train.distributed import resolve_device
from run_helpers import without_time

DATA = synthetic_binary(n=300, dim=64, seed=1)


def _model():
    torch.manual_seed(0)
    return lattice_vae(latent_dim=4, hidden=16, data_dim=64)


def _fit(out, epochs, **kwargs):
    model = _model()
    cfg = TrainConfig(epochs=epochs, batch_size=40, progress=False, **kwargs)
    return model, fit(model, DATA, cfg, out_dir=out)


def test_resume_is_exact(tmp_path):
    _, straight = _fit(tmp_path / "a", 3)
    _fit(tmp_path / "b", 2)  # "interrupted" after epoch 2 ...
    _, resumed = _fit(tmp_path / "b", 3)  # ... and continued from its checkpoint
    a, b = load(tmp_path / "a" / "last.pt"), load(tmp_path / "b" / "last.pt")
    assert a["state"]["epoch"] == b["state"]["epoch"] == 3
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert without_time(straight.history) == without_time(resumed.history)
    logged = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1, 2, 3]


def test_checkpoint_holds_everything_needed(tmp_path):
    _fit(tmp_path, 1, seed=5)
    ckpt = load(tmp_path / "last.pt")
    assert set(ckpt) >= {"model", "optimizer", "train_config", "state", "rng", "world_size"}
    assert ckpt["train_config"]["seed"] == 5
    assert ckpt["state"]["step"] == -(-200 // 40)  # 200 training examples, batches of 40
    assert isinstance(ckpt["rng"][0]["torch"], torch.Tensor)


def test_save_atomic_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"v": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"v": 2}, path)
    monkeypatch.undo()
    assert load(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_early_stopping_reloads_best_model(tmp_path, monkeypatch):
    values = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])
    real_validate = loop_module._validate

    def scripted_validate(*args):
        out = real_validate(*args)
        out["val_objective"] = next(values)
        return out

    monkeypatch.setattr(loop_module, "_validate", scripted_validate)
    model, result = _fit(tmp_path, 10, patience=1)
    assert result.stopped == "early_stopping"
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]  # two non-improving > patience 1
    assert result.best_epoch == 2
    best = load(tmp_path / "best.pt")
    assert best["epoch"] == 2
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best["model"][name]), name
    last = load(tmp_path / "last.pt")["model"]
    assert any(not torch.equal(last[k], best["model"][k]) for k in last)


def test_warmup_scales_rate_weight(tmp_path):
    _, result = _fit(tmp_path, 3, warmup_epochs=4)
    assert [h["beta"] for h in result.history] == [0.25, 0.5, 0.75]


def test_annealing_scales_rate_weight_per_update(tmp_path, monkeypatch):
    seen = []
    real_loss = loop_module.RateDistortionLoss.__call__

    def recording_loss(self, *args, lmbda=None, **kwargs):
        seen.append(lmbda)
        return real_loss(self, *args, lmbda=lmbda, **kwargs)

    monkeypatch.setattr(loop_module.RateDistortionLoss, "__call__", recording_loss)
    _, result = _fit(tmp_path, 2, warmup_epochs=2, anneal_steps=3)
    # 5 updates per epoch; update t of epoch e weighs the rate by (e / 2) · t / (t + 3)
    expected = [(1 if t <= 5 else 2) / 2 * t / (t + 3) for t in range(1, 11)]
    training = [w for w in seen if w is not None]  # validation calls at the loss's own λ
    assert training == pytest.approx(expected, rel=1e-12)
    assert [h["beta"] for h in result.history] == pytest.approx([0.5 * 5 / 8, 10 / 13])
    with pytest.raises(ValueError, match="anneal_steps"):
        TrainConfig(anneal_steps=0)


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_torchrun_two_processes(tmp_path):
    """Two gloo ranks: identical final weights, rank 0 alone writes, metrics summed over ranks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # in a session of its own, so that a hung rank is killed with the launcher, not left behind
    proc = subprocess.Popen(
        [*cmd, str(worker), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"torchrun did not finish in 300 s: {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    # metrics are reduced across ranks, so both ranks log the same numbers
    assert without_time(ranks[0]["history"]) == without_time(ranks[1]["history"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best.pt",
        "last.pt",
        "log.jsonl",
    ]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["train_examples"] for r in log] == [400, 400]  # both shards of the 400 counted
    ckpt = load(tmp_path / "run" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # own dither streams


def test_cli_train_on_synthetic_data(tmp_path, capsys):
    args = ["train", "--set", "data=synthetic", "--set", "model.latent_dim=4"]
    args += ["--set", "model.hidden=16", "--set", "train.epochs=2", "--set", "train.progress=false"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train"]["epochs"] == 2
    assert summary["config"]["model"]["latent_dim"] == 4
    assert summary["command"].startswith("qlatent train")
    assert (tmp_path / "reconstructions.png").stat().st_size > 0
    assert (tmp_path / "training_curves.png").stat().st_size > 0
    assert "two-part codelength" in capsys.readouterr().out


def test_cli_rejects_unknown_override(capsys):
    assert main(["train", "--set", "train.epoch=3"]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err


def test_adam_normgrad_is_adam_on_normalised_gradients():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = make_optimizer([a], name="adam_normgrad", lr=0.1)
    opt_b = make_optimizer([b], name="adam", lr=0.1)
    for step in range(3):
        grad = torch.randn(5, 3) * (10.0**step)  # scale changes, direction is what counts
        a.grad = grad.clone()
        b.grad = grad / (grad.norm() + 1e-7)
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b)
    assert isinstance(opt_a, AdamNormGrad)
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer([a], name="sgd", lr=0.1)


def test_fused_adam_takes_the_same_steps_as_adam():
    """``optimizer="adam_fused"`` is torch's fused kernel for the same update: after 20 steps on
    the same gradients the weights agree with the per-tensor loop to float rounding."""
    from qlatent.train.optim import make_optimizer

    torch.manual_seed(0)
    a = torch.nn.Linear(30, 7)
    b = torch.nn.Linear(30, 7)
    b.load_state_dict(a.state_dict())
    opt_a = make_optimizer(a.parameters(), name="adam", lr=1e-2)
    opt_b = make_optimizer(b.parameters(), name="adam_fused", lr=1e-2)
    for _ in range(20):
        x = torch.randn(16, 30)
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a.weight, torch.nn.Linear(30, 7).weight)
