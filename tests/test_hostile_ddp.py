"""The training loop on a world of two gloo processes, measured against one process and against
the README's promises: the data order per rank, metrics over shards of unequal size, gradient
averaging and EMA codebooks equal to one process on the global batch, early stopping and the
best weights on both ranks, and exact resume.

Each run launches this file twice as a script (``WORLD_SIZE=2``, ranks 0 and 1); each rank writes
its history, its weights and what its encoder and bottleneck saw.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from qlatent.data import synthetic_binary
from qlatent.losses import RateDistortionLoss, evaluate_objective
from qlatent.models import gated_vae
from qlatent.train import TrainConfig, fit, load
from run_helpers import launch_two_ranks, without_time


def _data(n_train: int, n_val: int) -> dict[str, torch.Tensor]:
    """Synthetic rows with their index in a last column (index / 1000), so a rank's batches
    say which examples they hold."""
    base = synthetic_binary(n=3 * max(n_train, n_val), dim=16, seed=3)
    x = torch.cat([base["train"], base["val"], base["test"]])
    x = torch.cat([x, torch.arange(x.shape[0], dtype=torch.float32).unsqueeze(1) / 1000], 1)
    return {"train": x[:n_train], "val": x[n_train : n_train + n_val]}


def _model(neck: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {} if neck == "lattice" else {"num_codes": 8}
    return gated_vae(neck, latent_dim=4, hidden=8, data_dim=17, **kwargs)


def _worker(spec_json: str, out: str) -> None:
    """One rank: fit, then write the history, the weights, the training rows per batch and the
    first dither the bottleneck drew."""
    spec = json.loads(spec_json)
    data = _data(spec.pop("n_train"), spec.pop("n_val"))
    model = _model(spec.pop("neck"))
    seen, noise = [], []

    def rows(module, inputs, output):
        if module.training:
            seen.append(inputs[0][:, -1].mul(1000).round().long().tolist())

    def dither(module, inputs, output):
        if module.training and not noise:
            noise.append((output.y_hat - inputs[0]).flatten().tolist())

    model.encoder.register_forward_hook(rows)
    model.bottleneck.register_forward_hook(dither)
    result = fit(model, data, TrainConfig(progress=False, **spec), out_dir=Path(out, "run"))
    rank = os.environ["RANK"]
    torch.save(model.state_dict(), Path(out, f"weights{rank}.pt"))
    record = {"history": result.history, "stopped": result.stopped, "seen": seen, "noise": noise}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


def _two_ranks(out: Path, **spec) -> list[dict]:
    """Run :func:`_worker` on ranks 0 and 1; each rank's record and final weights."""
    out.mkdir(parents=True, exist_ok=True)
    launch_two_ranks([__file__, json.dumps(spec), str(out)], {"QLATENT_DIST_TIMEOUT": "60"})
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, record in enumerate(ranks):
        record["weights"] = torch.load(out / f"weights{r}.pt")
    return ranks


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_ranks_at_half_the_batch_train_as_one_process_on_the_whole_batch(tmp_path):
    """Ranks at batch 8 see, step by step, the two halves of one process's batch of 16 (the same
    permutation, interleaved): DDP's averaged gradient and the all-reduced EMA statistics make
    the same run up to float rounding, and the validation means over shards of 11 and 10
    examples are the 21 examples' means. Validation in batches of 10 takes two batches on rank 0
    and one on rank 1: an all-reduce per EMA update there paired rank 0's codebook statistics
    with rank 1's metric totals, and the run failed on a collective mismatch."""
    spec = dict(n_train=48, n_val=21, neck="vq_ema", epochs=2, keep="last", eval_batch_size=10)
    ranks = _two_ranks(tmp_path / "ddp", batch_size=8, **spec)
    assert _same(ranks[0]["weights"], ranks[1]["weights"])  # codebook buffers included
    assert ranks[0]["history"][-1]["step"] == 6  # 24 examples per rank in batches of 8, twice

    data = _data(48, 21)
    model = _model("vq_ema")
    one = fit(
        model,
        data,
        TrainConfig(epochs=2, batch_size=16, keep="last", eval_batch_size=10, progress=False),
        out_dir=tmp_path / "one",
    )
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(ranks[0]["weights"][name], tensor, rtol=0, atol=1e-5)
    for two, single in zip(ranks[0]["history"], one.history, strict=True):
        assert two["train_examples"] == single["train_examples"] == 48
        for key in ("train_objective", "val_objective", "val_distortion", "val_rate"):
            assert two[key] == pytest.approx(single[key], rel=1e-6), key
    # the last validation is the final weights' mean over all 21 examples, in one process
    parts = evaluate_objective(model, RateDistortionLoss(), data["val"])
    mean = (parts["distortion"] + parts["rate"]).mean().item()
    assert ranks[0]["history"][-1]["val_objective"] == pytest.approx(mean, rel=1e-6)


def test_ranks_share_each_epoch_of_an_odd_count_and_count_each_example_once(tmp_path):
    """41 examples on two ranks: each epoch the ranks' batches are disjoint but for one repeat
    that evens the shards (21 each, batches of 8, 8 and 5), and together cover all 41. The
    repeat is trained on but not counted: train_examples is 41 (it was 42, the training means
    counting one example twice). A step budget ends both ranks in the same update; the
    ranks draw different dithers."""
    spec = dict(n_train=41, n_val=9, neck="lattice", epochs=3, max_steps=5, batch_size=8)
    ranks = _two_ranks(tmp_path, **spec)
    seen = [r["seen"] for r in ranks]
    assert [[len(b) for b in s] for s in seen] == [[8, 8, 5, 8, 8]] * 2
    first = [sum(s[:3], []) for s in seen]
    assert sorted(first[0] + first[1]) == sorted([*range(41), first[0][0]])  # one repeat
    second = sum(seen[0][3:], []) + sum(seen[1][3:], [])
    assert len(set(second)) == len(second) == 32  # part of epoch 2: no example twice
    for record in ranks:
        assert record["stopped"] == "max_steps"
        assert [h["step"] for h in record["history"]] == [3, 5]
        assert [h["train_examples"] for h in record["history"]] == [41, 32]
    assert without_time(ranks[0]["history"]) == without_time(ranks[1]["history"])
    assert ranks[0]["noise"] != ranks[1]["noise"]  # each rank its own dither stream
    assert _same(ranks[0]["weights"], ranks[1]["weights"])


def test_a_one_epoch_run_keeping_the_best_ends_on_both_ranks_with_its_weights(tmp_path):
    """Rank 1 looked for best.pt before rank 0 had written it after a one-epoch run, found
    none and left; rank 0 then waited for it in vain and failed. With one example of
    validation rank 1's shard is empty."""
    ranks = _two_ranks(tmp_path, n_train=20, n_val=1, neck="vq_ema", epochs=1, batch_size=8)
    best = load(tmp_path / "run" / "best.pt")["model"]
    assert _same(ranks[0]["weights"], best) and _same(ranks[1]["weights"], best)
    assert ranks[0]["history"][0]["best_epoch"] == 1


def test_early_stopping_and_the_best_weights_agree_on_both_ranks(tmp_path):
    """Patience 0 at a learning rate that overshoots: both ranks stop after the same epoch and
    reload the same best epoch's weights, those in best.pt."""
    spec = dict(n_train=41, n_val=21, neck="soft_em_vq", epochs=6, patience=0, lr=0.05)
    ranks = _two_ranks(tmp_path, batch_size=8, **spec)
    assert ranks[0]["stopped"] == ranks[1]["stopped"] == "early_stopping"
    history = ranks[0]["history"]
    best_epoch = history[-1]["best_epoch"]
    assert best_epoch < len(history) < 6
    assert min(h["val_objective"] for h in history) == history[best_epoch - 1]["val_objective"]
    best = load(tmp_path / "run" / "best.pt")
    assert best["epoch"] == best_epoch
    assert _same(ranks[0]["weights"], best["model"]) and _same(ranks[1]["weights"], best["model"])


def test_two_ranks_resume_exactly_from_the_checkpoint_of_rank_0(tmp_path):
    """Soft EM draws its codes from each rank's own stream: a run of two epochs equals one
    stopped after its first epoch and resumed, on both ranks, because last.pt holds both
    ranks' RNG states."""
    spec = dict(n_train=41, n_val=21, neck="soft_em_vq", batch_size=8, keep="last")
    straight = _two_ranks(tmp_path / "straight", epochs=2, **spec)
    _two_ranks(tmp_path / "resumed", epochs=1, **spec)
    assert len(load(tmp_path / "resumed" / "run" / "last.pt")["rng"]) == 2
    resumed = _two_ranks(tmp_path / "resumed", epochs=2, **spec)
    for r in (0, 1):
        assert _same(resumed[r]["weights"], straight[r]["weights"])
    assert without_time(resumed[0]["history"]) == without_time(straight[0]["history"])


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
