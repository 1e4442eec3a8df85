"""Tampered caches and records of ``qlatent reproduce``: one clear line naming the file, or the
cache computed again and said so; never a traceback.

Each table runs once per module on its quick settings (synthetic data, tiny models); a test
edits a copy of the run folders and runs again. A ``.pt`` cache is saved again with a digest
that matches the edit (as :func:`~qlatent.train.save_atomic` writes it), so that what is tested
is the check of what it holds, not of its digest: such a cache is refused, naming it; a JSON
record or summary that cannot be used is written anew.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import shutil

import pytest
import torch

from cli_helpers import one_line_error, run_cli
from qlatent.cli import main
from qlatent.config import to_dict
from qlatent.train import CheckpointError, load, save_atomic


def _edit(path, change) -> None:
    """Apply ``change`` to the checkpoint dict at ``path`` and save it with a matching digest."""
    saved = load(path)
    change(saved)
    save_atomic(saved, path)


def _copy(root, tmp_path):
    """The module's run and results folders, copied for one test to edit."""
    shutil.copytree(root, tmp_path / "copy")
    return tmp_path / "copy"


def _folders(root) -> list:
    return ["--runs-dir", root / "runs", "--results-dir", root / "results"]


# --------------------------------------------------------------------------- lattice-mnist
LATTICE = ["reproduce", "lattice-mnist", "--quick", "--models", "gaussian_lattice"]
LATTICE += ["--set", "data.name=synthetic", "--set", "model.hidden=[16,16]"]
LATTICE += ["--set", "model.latent_dim=4", "--set", "train.progress=false"]


@pytest.fixture(scope="module")
def lattice_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lattice")
    assert main([str(a) for a in [*LATTICE, *_folders(root)]]) == 0
    return root


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(nll="abc"), r"nll is a string \('abc'\), not a tensor"),
        (
            lambda c: c.update(nll=c["nll"][:, None]),
            r"nll is a tensor of shape \(300, 1\) and dtype float64, not a 1-D floating-point",
        ),
        (lambda c: c.update(nll=c["nll"].long()), "dtype int64, not a 1-D floating-point"),
        (lambda c: c.update(nll=c["nll"] * math.nan), r"nll holds 300 non-finite value\(s\)"),
        (lambda c: c.pop("nll"), "the file holds no nll"),
        (lambda c: c.pop("key"), "the file holds no key"),
        (lambda c: c.update(key=torch.ones(3)), "key holds what a results file cannot"),
        (lambda c: c.update(epoch=torch.ones(3)), r"epoch is a tensor of shape \(3,\)"),
    ],
    ids=["nll text", "nll 2-D", "nll integers", "nll NaN", "no nll", "no key", "key", "epoch"],
)
def test_a_tampered_iwae_chunk_is_one_error_naming_it(
    lattice_runs, tmp_path, capsys, change, message
):
    root = _copy(lattice_runs, tmp_path)
    row = root / "runs" / "lattice-mnist-quick" / "gaussian_lattice"
    (row / "eval.pt").unlink()  # the evaluation is made again from its cached chunks
    chunk = row / "iwae-chunks" / "chunk-000.pt"
    _edit(chunk, change)
    code, err = run_cli([*LATTICE, *_folders(root)], capsys)
    assert code == 2 and one_line_error(err), err
    assert f"error: {chunk}: " in err and re.search(message, err), err
    assert err.strip().endswith("(a cache: delete it to compute it again)")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.update(metrics=[1, 2]), "metrics is a list, not a table"),
        (lambda c: c.pop("metrics"), "the file holds no metrics"),
        (
            lambda c: c["metrics"].update(test_nll_iwae20="abc"),
            r"metrics.test_nll_iwae20 is a string \('abc'\), not a number",
        ),
        (lambda c: c["metrics"].pop("test_nll_iwae_se"), "metrics holds no test_nll_iwae_se"),
        (
            lambda c: c["metrics"].update(test_neg_elbo=torch.ones(2)),
            r"metrics.test_neg_elbo is a tensor of shape \(2,\) and dtype float32, not a number",
        ),
        (
            lambda c: c["metrics"].update(extra={"values": torch.ones(2)}),
            "metrics holds what a results file cannot",
        ),
        (
            lambda c: c["metrics"].update(val_neg_elbo_curve="flat"),
            "its metrics hold val_neg_elbo_curve, which training reports",
        ),
        (lambda c: c.update(best_epoch=torch.ones(3)), "best_epoch holds what a results file"),
        (
            lambda c: c["metrics"].update(iwae_samples=7),
            "its metrics are of IWAE-7, not of the IWAE-20 its config asks for",
        ),
    ],
    ids=[
        "list",
        "no metrics",
        "text",
        "missing",
        "tensor",
        "nested tensor",
        "curve",
        "epoch",
        "samples",
    ],
)
def test_a_tampered_evaluation_cache_is_one_error_naming_it(
    lattice_runs, tmp_path, capsys, change, message
):
    root = _copy(lattice_runs, tmp_path)
    cache = root / "runs" / "lattice-mnist-quick" / "gaussian_lattice" / "eval.pt"
    _edit(cache, change)
    code, err = run_cli([*LATTICE, *_folders(root)], capsys)
    assert code == 2 and one_line_error(err), err
    assert f"error: {cache}: " in err and re.search(message, err), err


def test_a_warm_start_whose_epoch_is_no_integer_is_one_error(lattice_runs, tmp_path, capsys):
    """The epoch of the checkpoint a row starts from goes into its init.json and the results."""
    root = _copy(lattice_runs, tmp_path)
    best = root / "runs" / "lattice-mnist-quick" / "gaussian_lattice" / "best.pt"
    _edit(best, lambda c: c.update(epoch=torch.ones(2)))
    args = [*LATTICE, *_folders(root)]
    args[args.index("gaussian_lattice")] = "gaussian_gl_lattice"
    code, err = run_cli(args, capsys)
    assert code == 2 and one_line_error(err), err
    assert f"error: {best}: epoch is a tensor of shape (2,)" in err


# --------------------------------------------------------------------------- softvq-mnist
SOFTVQ = ["reproduce", "softvq-mnist", "--quick", "--models", "ae", "--seeds", "0"]
SOFTVQ += ["--set", "data.name=synthetic", "--set", "model.hidden=[24]"]
SOFTVQ += ["--set", "model.latent_dim=4", "--set", "train.max_steps=5"]
SOFTVQ += ["--set", "eval.kmeans_n_init=1", "--set", "eval.probe_steps=20"]
SOFTVQ += ["--set", "eval.probe_cs=[1.0]", "--set", "eval.tsne_points=40"]


@pytest.fixture(scope="module")
def softvq_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("softvq")
    assert main([str(a) for a in [*SOFTVQ, *_folders(root)]]) == 0
    return root


def _record(root):
    return root / "results" / "softvq-mnist-quick-runs" / "ae" / "seed-0.json"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(metrics=5), "metrics is an integer (5), not a table"),
        (
            lambda r: r["metrics"].update(kmeans_acc="high"),
            "metrics.kmeans_acc is a string ('high'), not a number",
        ),
        (lambda r: r["metrics"].pop("nmi"), "metrics holds no nmi"),
        (
            lambda r: r["metrics"].update(test_nmse=[1, 2]),
            "metrics.test_nmse is a list, not a number or None",
        ),
    ],
    ids=["number", "text", "missing", "list"],
)
def test_a_record_that_cannot_be_used_is_run_again(softvq_runs, tmp_path, capsys, change, message):
    root = _copy(softvq_runs, tmp_path)
    record = _record(root)
    good = json.loads(record.read_text())
    edited = copy.deepcopy(good)
    change(edited)
    record.write_text(json.dumps(edited))
    capsys.readouterr()
    assert main([str(a) for a in [*SOFTVQ, *_folders(root)]]) == 0
    assert f"{record} cannot be used ({message}): running it again" in capsys.readouterr().out
    # resumed from its run folder (finished, its evaluation cached): the same scores again
    again = json.loads(record.read_text())["metrics"]
    assert again["kmeans_acc"] == good["metrics"]["kmeans_acc"]
    assert again["nmi"] == good["metrics"]["nmi"] and again["wall_s"] == good["metrics"]["wall_s"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["metrics"].update(kmeans_acc="x"),
            r"metrics.kmeans_acc is a string \('x'\), not a number",
        ),
        (
            lambda c: c["metrics"].update(converged=[1]),
            "metrics.converged is a list, not a table or None",
        ),
        (
            lambda c: c["metrics"]["converged"].update(C="strong"),
            r"metrics.converged.C is a string \('strong'\), not a number",
        ),
        (lambda c: c.update(config=torch.ones(2)), "config holds what a results file cannot"),
    ],
    ids=["text", "list", "probe", "config"],
)
def test_a_tampered_softvq_evaluation_is_one_error_naming_it(
    softvq_runs, tmp_path, capsys, change, message
):
    root = _copy(softvq_runs, tmp_path)
    _record(root).unlink()  # the row runs: its evaluation is read from the cache
    cache = root / "runs" / "softvq-mnist-quick" / "ae" / "seed-0" / "eval.pt"
    _edit(cache, change)
    code, err = run_cli([*SOFTVQ, *_folders(root)], capsys)
    assert code == 2 and one_line_error(err), err
    assert f"error: {cache}: " in err and re.search(message, err), err


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b"not a tensor"), "is not a readable checkpoint"),
        (lambda p: torch.save(torch.randn(3, 4), p), "holds features of 3 images, not of the"),
        (lambda p: save_atomic({"features": "abc"}, p), "features is a string ('abc'), not a 2-D"),
        (
            lambda p: save_atomic({"features": torch.zeros(3, 4)}, p),
            "holds features of 3 images, not of the 200 test images",
        ),
    ],
    ids=["text", "bare tensor", "no tensor", "rows"],
)
def test_test_features_that_cannot_be_drawn_are_one_error_naming_them(
    softvq_runs, tmp_path, capsys, write, message
):
    """The row is read back from its record; the t-SNE figure reads its saved features."""
    root = _copy(softvq_runs, tmp_path)
    features = root / "runs" / "softvq-mnist-quick" / "ae" / "seed-0" / "test_features.pt"
    write(features)
    code, err = run_cli([*SOFTVQ, *_folders(root)], capsys)
    assert code == 2 and one_line_error(err), err
    assert str(features) in err and message in err, err
    assert "to draw the t-SNE figure" in err


def test_test_features_saved_as_a_bare_tensor_by_earlier_versions_still_draw(
    softvq_runs, tmp_path, capsys
):
    root = _copy(softvq_runs, tmp_path)
    features = root / "runs" / "softvq-mnist-quick" / "ae" / "seed-0" / "test_features.pt"
    torch.save(load(features)["features"], features)  # the earlier format: no table, no digest
    assert run_cli([*SOFTVQ, *_folders(root)], capsys)[0] == 0


# --------------------------------------------------------------------------- text-rd
def _text_args(root) -> dict:
    return dict(
        quick=True,
        models=["language_model"],
        runs_dir=str(root / "runs"),
        results_dir=str(root / "results"),
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(test=5), "test is an integer (5), not a table"),
        (lambda s: s["test"].update(hard_path=[1]), "test.hard_path is a list, not a table"),
        (
            lambda s: s["test"]["coded"].update(bits_per_word="many"),
            "test.coded.bits_per_word is a string ('many'), not a number",
        ),
        (lambda s: s.update(train=None), "train is None, not a table"),
    ],
    ids=["test", "hard path", "coded", "train"],
)
def test_a_summary_that_cannot_be_used_is_evaluated_again(tmp_path, capsys, change, message):
    from qlatent.experiments import text_rd

    root = tmp_path  # not a copy: the runs record where they lie
    text_rd.reproduce(**_text_args(root))
    summary = root / "runs" / "text-rd" / "language_model" / "no code" / "summary.json"
    good = json.loads(summary.read_text())
    edited = copy.deepcopy(good)
    change(edited)
    summary.write_text(json.dumps(edited))
    capsys.readouterr()
    payload = text_rd.reproduce(**_text_args(root))
    assert f"{summary} cannot be used ({message}): evaluating the point again" in (
        capsys.readouterr().out
    )
    assert json.loads(summary.read_text())["test"]["hard_path"] == good["test"]["hard_path"]
    point = payload["curves"]["language_model"][0]
    assert point["nll_bits_per_word"] == good["test"]["hard_path"]["distortion_bits_per_word"]
    text_rd.markdown_table(payload)


def test_a_moved_text_rd_runs_folder_still_resumes(tmp_path, capsys):
    """Every point but the warm start records the warm start's checkpoint in its config: a runs
    folder moved since reads its finished points back and resumes the others; a checkpoint the
    user names is kept as named."""
    from qlatent.experiments import text_rd

    old = tmp_path / "old"
    text_rd.reproduce(**_text_args(old))
    new = tmp_path / "new"
    shutil.move(old, new)
    capsys.readouterr()
    text_rd.reproduce(**_text_args(new))
    out = capsys.readouterr().out
    assert out.count("(evaluated before:") == 2, out
    point = new / "runs" / "text-rd" / "language_model" / "no code"
    (point / "summary.json").unlink()  # resumed (from a finished checkpoint) and evaluated
    payload = text_rd.reproduce(**_text_args(new))
    assert payload["curves"]["language_model"][0]["rate_bits_per_word"] >= 0
    recorded = json.loads((point / "summary.json").read_text())["config"]["init_from"]
    assert recorded == str(old / "runs" / "text-rd" / "identity" / "unquantized" / "best.pt")
    cfg = text_rd.point_config("language_model", "no code", quick=True, runs_dir=str(new / "runs"))
    mine = dataclasses.replace(cfg, init_from=str(tmp_path / "mine.pt"))
    assert text_rd._as_recorded(mine) == mine


# --------------------------------------------------------------------------- llvq-fashion
LLVQ = ["reproduce", "llvq-fashion", "--quick", "--models", "vq", "--schedules", "constant"]


@pytest.fixture(scope="module")
def llvq_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llvq")
    assert main([str(a) for a in [*LLVQ, *_folders(root)]]) == 0
    return root


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("eval.pt", lambda c: c.update(metrics=[1]), "metrics is a list, not a table"),
        ("eval.pt", lambda c: c.update(key=torch.ones(2)), "key holds what a results file"),
        (
            "eval.pt",
            lambda c: c["metrics"].update(unique_codes_test=torch.ones(2)),
            r"metrics.unique_codes_test is a tensor of shape \(2,\) and dtype float32, not an",
        ),
        ("coding.pt", lambda c: c.update(coding="x"), r"coding is a string \('x'\), not a table"),
        (
            "coding.pt",
            lambda c: c["coding"].update(coded_bits_per_image="x"),
            r"coding.coded_bits_per_image is a string \('x'\), not a number",
        ),
    ],
    ids=["metrics", "key", "count", "coding", "bits"],
)
def test_a_tampered_llvq_cache_is_one_error_naming_it(
    llvq_runs, tmp_path, capsys, file, change, message
):
    root = _copy(llvq_runs, tmp_path)
    cache = root / "runs" / "llvq-fashion-quick" / "constant" / "vq" / file
    _edit(cache, change)
    code, err = run_cli([*LLVQ, *_folders(root)], capsys)
    assert code == 2 and one_line_error(err), err
    assert f"error: {cache}: " in err and re.search(message, err), err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["run_config"]["model"].update(hidden=[0]), "model.hidden must be a list"),
        (lambda c: c["run_config"]["model"].update(num_residual=10**5), "more than the 64"),
        (lambda c: c["run_config"]["model"].update(bottleneck="nope"), "is not registered"),
        (lambda c: c["model"].popitem(), "holds weights of a different model"),
    ],
    ids=["hidden", "depth", "bottleneck", "weights"],
)
def test_a_tampered_llvq_checkpoint_is_one_error_naming_it(
    llvq_runs, tmp_path, capsys, change, message
):
    """``compress`` rebuilds an LL-VQ model from the config saved in its checkpoint: that
    config is checked as ``qlatent train``'s and the weights as every checkpoint's."""
    root = _copy(llvq_runs, tmp_path)
    checkpoint = root / "runs" / "llvq-fashion-quick" / "constant" / "vq" / "last.pt"
    _edit(checkpoint, change)
    args = ["compress", "--checkpoint", checkpoint, "--data", "synthetic-images", "--limit", 2]
    code, err = run_cli([*args, "-o", tmp_path / "out.qlc"], capsys)
    assert code == 2 and one_line_error(err), err
    assert f"error: {checkpoint}" in err and message in err, err


# --------------------------------------------------------------------------- coding-mnist
def test_coding_mnist_reads_a_table1_rows_checkpoints_as_data(tmp_path):
    """A Table-1 row's best.pt gives its epoch to the results: one that is no integer is
    refused, naming the file; the run's last.pt only reports how far the run got, and one
    whose state cannot be read is reported so."""
    from qlatent.experiments import coding_mnist, lattice_mnist

    cfg = coding_mnist.config(quick=True, overrides=[f"table1_runs={tmp_path}"])
    data = coding_mnist.load_data(cfg, None)
    lcfg = lattice_mnist.model_config("rect_lattice", quick=False, overrides=[])
    weights = lattice_mnist.build_model(lcfg, data["train"].shape[1]).state_dict()
    folder = tmp_path / "lattice-mnist" / "rect_lattice"
    save_atomic({"model": weights, "epoch": torch.ones(2)}, folder / "best.pt")

    def table1_model():
        return coding_mnist._table1_model("rect_lattice", cfg, data, quick=False, runs_dir=tmp_path)

    with pytest.raises(CheckpointError, match=re.escape(f"{folder / 'best.pt'}: epoch is a")):
        table1_model()
    save_atomic({"model": weights, "epoch": 3}, folder / "best.pt")
    for state, reason in [
        ([1, 2], "state is a list, not a table"),
        ({"epoch": torch.ones(2), "stopped": ""}, "state.epoch is a tensor of shape (2,)"),
    ]:
        save_atomic({"state": state}, folder / "last.pt")
        _, info = table1_model()
        assert info["run_state"].startswith(f"unreadable ({reason}")
        json.dumps(info)  # written to the results as it is
    save_atomic({"state": {"epoch": 4, "stopped": ""}}, folder / "last.pt")
    _, info = table1_model()
    assert info["checkpoint_epoch"] == 3 and info["run_epochs"] == 4
    assert info["run_stopped"] == "in progress"


def test_a_table1_row_is_analysed_as_its_checkpoint_trained_it(tmp_path):
    """A row's config may change after its run (counts, proposal: not parameters, so the weights
    load into either model): the model is rebuilt from the model section the checkpoint
    recorded, and what changed since is reported beside it."""
    from qlatent.experiments import coding_mnist, lattice_mnist

    cfg = coding_mnist.config(quick=True, overrides=[f"table1_runs={tmp_path}"])
    data = coding_mnist.load_data(cfg, None)
    lcfg = lattice_mnist.model_config("d4_lattice", quick=False, overrides=[])
    weights = lattice_mnist.build_model(lcfg, data["train"].shape[1]).state_dict()
    run = to_dict(lcfg)
    older = {"lattice": "d4", "samples": 128, "prior_samples": 32, "eval_prior_samples": 32}
    run["model"]["bottleneck_args"] = older
    best = tmp_path / "lattice-mnist" / "d4_lattice" / "best.pt"
    save_atomic({"model": weights, "epoch": 3, "run_config": run}, best)
    model, info = coding_mnist._table1_model(
        "d4_lattice", cfg, data, quick=False, runs_dir=tmp_path
    )
    neck = model.bottleneck
    assert (neck.samples, neck.prior_samples, neck.eval_prior_samples) == (128, 32, 32)
    assert neck.proposal == "prior" != lcfg.model.bottleneck_args["proposal"]
    assert info["bottleneck_args"] == older
    now = lcfg.model.bottleneck_args["prior_samples"]
    assert f"model.bottleneck_args.prior_samples: 32 → {now}" in info["config_since_trained"]
    assert "model.bottleneck_args.proposal: (default) → 'box'" in info["config_since_trained"]
    # the config as this tree has it: nothing to report; no recorded config: this tree's
    for saved in ({"model": weights, "run_config": to_dict(lcfg)}, {"model": weights}):
        save_atomic(saved, best)
        model, info = coding_mnist._table1_model(
            "d4_lattice", cfg, data, quick=False, runs_dir=tmp_path
        )
        assert "config_since_trained" not in info and model.bottleneck.proposal == "box"


@pytest.mark.parametrize(
    "run_config, message",
    [
        ([1, 2], "records no model section"),
        ({"model": "d4"}, "records no model section"),
        ({"model": {"latent_dim": "forty"}}, "is not this table's"),
        ({"model": {"nope": 1}}, "is not this table's"),
        ({"model": {"hidden": 10**7}}, "is not this table's"),
        ({"model": {"bottleneck_args": {"lattice": "e9"}}}, "is not this table's"),
    ],
)
def test_a_table1_checkpoints_recorded_model_config_is_checked(tmp_path, run_config, message):
    """The model section a checkpoint recorded is untrusted: one that describes no model of this
    table (or a model too large to build) is one error naming the file, before any allocation."""
    from qlatent.experiments import lattice_mnist

    lcfg = lattice_mnist.model_config("d4_lattice", quick=False, overrides=[])
    path = tmp_path / "best.pt"
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: its saved ") + ".*" + message):
        lattice_mnist.trained_config(lcfg, {"run_config": run_config}, path)
