"""``qlatent train CONFIG`` / ``qlatent eval`` (``qlatent.experiments.custom``).

Checked: every registered bottleneck trains a few steps from a config on synthetic images and its
checkpoint evaluates to the numbers the run reported (one parametrized test over the registry,
so a new bottleneck is covered without a new test); the conv family trains too; a bad key, value,
type, bottleneck argument or TOML file is one line naming it, exit code 2, and so is a
``torch.compile`` that cannot build its kernels; ``--list`` lists the registry; a trained
checkpoint codes its own test images to a file and back through ``compress`` / ``decompress``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import TINY_RUN as TINY
from qlatent.bottlenecks import BOTTLENECKS
from qlatent.cli import main
from qlatent.experiments import custom
from qlatent.lattices import tile


def _config(tmp_path, name: str, family: str = "gated_mlp", hidden: str = "[16]") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(name=name, family=family, hidden=hidden))
    return str(path)


def test_a_failed_torch_compile_is_one_line_in_process(monkeypatch, capsys):
    """Any backend failure that Dynamo reports (here a backend that raises) ends a command with
    one line: the reason, the way round it, exit status 2."""
    from qlatent.cli import _parser

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no kernels today\nsecond line of advice")

    def command(args):
        return torch.compile(lambda x: x.sin() + 1, backend=broken_backend)(torch.ones(3))

    monkeypatch.setattr(_parser, "_cmd_bench_coding", command)
    assert main(["bench", "coding"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qlatent: error: torch.compile failed: ") and "\n" not in err
    assert "no kernels today" in err and "second line" not in err
    assert err.endswith(
        "(without it: compile = false in the bottleneck's args, or a benchmark's --no-compile)"
    )


@pytest.mark.slow
def test_a_failed_torch_compile_is_one_line(tmp_path):
    """``compile = true`` where inductor cannot build its kernels (here: no working C++
    compiler, through ``CXX``, with an empty kernel cache) ends ``qlatent train`` with one line
    naming the reason and the way round it, exit status 2, no traceback."""
    path = tmp_path / "compiled.toml"
    text = TINY.format(name="lattice", family="gated_mlp", hidden="[16]")
    path.write_text(text.replace('name = "lattice"', 'name = "lattice"\nargs = { compile = true }'))
    env = dict(
        os.environ, CXX=str(tmp_path / "no-such-c++"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "i")
    )
    done = subprocess.run(
        [sys.executable, "-m", "qlatent", "train", str(path), "--out", str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("qlatent: error: torch.compile failed: "), (
        done.stderr
    )
    assert "C++ compiler" in errors[0] and env["CXX"] in errors[0]
    assert errors[0].endswith(
        "(without it: compile = false in the bottleneck's args, or a benchmark's --no-compile)"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("name", BOTTLENECKS.names())
def test_every_bottleneck_trains_from_a_config(tmp_path, name):
    cfg = custom.load_config(_config(tmp_path, name), [f"out_dir={tmp_path / 'run'}"])
    summary = custom.train(cfg)
    test = summary["test"]
    assert summary["train"]["epochs"] == 1 and test["images"] == 10
    for path in ("training_path", "hard_path"):
        assert all(math.isfinite(v) for v in test[path].values()), (path, test[path])
    for file in ("best.pt", "last.pt", "config.json", "summary.json", "reconstructions.png"):
        assert (tmp_path / "run" / file).is_file(), file
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bottleneck"]["name"] == name
    # a discrete bottleneck with a code model wrote the test set to a real file
    coded = test["coded"]
    if coded["available"]:
        assert coded["bytes"] > 0 and coded["bits_per_image"] > 0
        # the code model's ideal length: below the file, which adds the header and the coder's
        # overhead
        assert 0 < coded["ideal_bits"] < 8 * coded["bytes"]
        assert coded["overhead"] == pytest.approx(8 * coded["bytes"] / coded["ideal_bits"] - 1)
    # the checkpoint alone rebuilds the model: same hard-path numbers
    report = custom.eval_checkpoint(tmp_path / "run" / "best.pt", progress=False)
    assert report["hard_path"] == pytest.approx(test["hard_path"], rel=1e-6, abs=1e-9)


def test_conv_family_and_iwae(tmp_path):
    cfg = custom.load_config(
        _config(tmp_path, "vq", family="conv", hidden="[8, 8]"), [f"out_dir={tmp_path / 'c'}"]
    )
    summary = custom.train(cfg)
    assert summary["test"]["codes"]["used"] >= 1
    assert summary["test"]["coded"]["available"]
    cfg = custom.load_config(_config(tmp_path, "lattice"), [f"out_dir={tmp_path / 'l'}"])
    custom.train(cfg)
    report = custom.eval_checkpoint(tmp_path / "l" / "best.pt", iwae_samples=4, progress=False)
    assert report["iwae_samples"] == 4 and math.isfinite(report["iwae"]["mean"])
    # the defensive mixture on the same draws' seed: at α = 0 the own proposal's estimate
    for mixture in ((0.0, 1.0), (0.5, 2.0)):
        again = custom.eval_checkpoint(
            tmp_path / "l" / "best.pt", iwae_samples=4, iwae_defensive=mixture, progress=False
        )
        d = again["iwae_defensive"]
        assert again["iwae"] == report["iwae"] and d["mixture"] == list(mixture)
        assert d["minus_own"] == pytest.approx(d["mean"] - report["iwae"]["mean"])
        assert (d["mean"] == report["iwae"]["mean"]) == (mixture[0] == 0.0)


def test_eval_defensive_proposal_refusals_are_one_line(tmp_path, capsys):
    cfg = custom.load_config(_config(tmp_path, "vq"), [f"out_dir={tmp_path / 'v'}"])
    custom.train(cfg)
    ckpt = str(tmp_path / "v" / "best.pt")
    for args, needle in (
        (["--iwae", "4", "--iwae-defensive", "0.5:1"], "a lattice or a Gaussian"),
        (["--iwae-defensive", "0.5:1"], "give --iwae S too"),
    ):
        assert main(["eval", ckpt, *args]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err, err
    with pytest.raises(SystemExit) as exit_:
        main(["eval", ckpt, "--iwae", "4", "--iwae-defensive", "1:2"])
    assert exit_.value.code == 2 and "ALPHA:K" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[train]\nepoch = 3\n", "train.epoch"),
        ("[train]\nepochs = 'many'\n", "epochs"),
        ("[model]\nfamily = 'transformer'\n", "model.family"),
        ("[bottleneck]\nname = 'nope'\n", "nope"),
        ("[bottleneck]\nname = 'vq'\nargs = { num_codes = 1 }\n", "num_codes"),
        ("[bottleneck]\nname = 'vq'\nargs = { colour = 1 }\n", "colour"),
        ("[model]\nhidden = [0]\n", "model.hidden"),
        ("[data]\nname = 'folder'\n", "data.folder"),
        ("[loss]\nrate_weight = -1.0\n", "loss.rate_weight"),
        ("eval_seed = -1\n", "eval_seed"),
        ("[train\n", "not valid TOML"),
    ],
)
def test_bad_configs_are_one_line(tmp_path, capsys, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qlatent: error:") and "\n" not in err and needle in err, err
    assert not (tmp_path / "run").exists()


def test_missing_config_and_list(tmp_path, capsys):
    assert main(["train", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml" in capsys.readouterr().err
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in BOTTLENECKS.names())
    # the lattice names it shows, and a lattice of each build at a width of their blocks
    lattices = next(line for line in out.splitlines() if line.startswith("lattices of"))
    shown = ("z", "a<n>", "a2", "d<n>", "d<n>*", "e8", "bw16", "leech")
    assert "(bottleneck.args.lattice)" in lattices and all(name in lattices for name in shown)
    for spec, dim in [("z", 4), ("a3", 6), ("a2", 4), ("d5", 10), ("d4*", 8), ("e8", 16)]:
        assert tile(spec, dim).dim == dim
    assert tile(["leech", "bw16"], 40).dim == 40
    # where the paper tables' configs are, in a checkout or an installed package: a row trains
    # from the files that line names
    line = out.splitlines()[-1]
    folder, tables = re.fullmatch(
        r"paper-table configs \(train BASE ROW\): (.+)/TABLE/\*\.toml, "
        r"TABLE one of (.+)",
        line,
    ).groups()
    assert tables.split(", ") == ["lattice-mnist", "llvq", "softvq-mnist"]
    for table in tables.split(", "):
        assert (Path(folder) / table / "base.toml").is_file()
    assert (Path(folder) / "lattice-mnist" / "e8_lattice.toml").is_file()


def test_eval_refuses_other_checkpoints(tmp_path, capsys):
    from qlatent.train import save_atomic

    save_atomic({"model": {}, "run_config": {"data": "binarized-mnist"}}, tmp_path / "x.pt")
    assert main(["eval", str(tmp_path / "x.pt")]) == 2
    assert "qlatent train CONFIG" in capsys.readouterr().err


def test_compress_and_decompress_a_trained_checkpoint(tmp_path, capsys):
    config = _config(tmp_path, "lattice")
    assert main(["train", config, "--out", str(tmp_path / "run")]) == 0
    ckpt = str(tmp_path / "run" / "best.pt")
    qlc, png, pt = (str(tmp_path / f"codes.{ext}") for ext in ("qlc", "png", "pt"))
    assert main(["compress", "--checkpoint", ckpt, "--data", "checkpoint-test", "-o", qlc]) == 0
    assert main(["decompress", qlc, "--checkpoint", ckpt, "-o", pt]) == 0
    assert main(["decompress", qlc, "--checkpoint", ckpt, "-o", png]) == 0
    recon = torch.load(pt, weights_only=True)
    assert recon.shape == (10, 784) and 0 <= recon.min() and recon.max() <= 1
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "bits per image" in out
    # the images of another experiment are refused for this checkpoint's data source
    vq = _config(tmp_path, "vq")
    assert main(["train", vq, "--out", str(tmp_path / "vq")]) == 0
    other = str(tmp_path / "vq" / "best.pt")
    assert main(["compress", "--checkpoint", other, "--data", "checkpoint-val", "-o", qlc]) == 0
    assert main(["decompress", qlc, "--checkpoint", ckpt, "-o", pt]) == 2


def test_image_folders_round_trip_and_train(tmp_path, capsys):
    """Images written as PNGs read back to within 1/255; a folder trains like any dataset; a
    folder that holds files is never written into."""
    from qlatent.data.folder import load_image_folder, write_image_folder

    images = custom.load_data(custom.DataConfig(name="synthetic", synthetic_size=60))["train"]
    folder = tmp_path / "images"
    assert len(write_image_folder(images, folder)) == images.shape[0]
    back = load_image_folder(folder, size=28, channels=1, progress=False) + 0.5
    assert (back - images).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="new or empty"):
        write_image_folder(images, folder)
    config = tmp_path / "folder.toml"
    config.write_text(
        TINY.format(name="vq", family="gated_mlp", hidden="[16]").replace(
            'name = "synthetic"\nsynthetic_size = 60',
            f'name = "folder"\nfolder = "{folder.as_posix()}"\nval_size = 5\ntest_size = 5',
        )
    )
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    assert "5 images" in capsys.readouterr().out
    # decompress into a folder of PNGs, one per image; never into one that holds files
    ckpt = str(tmp_path / "run" / "best.pt")
    qlc = str(tmp_path / "codes.qlc")
    assert main(["compress", "--checkpoint", ckpt, "--data", "checkpoint-test", "-o", qlc]) == 0
    out = tmp_path / "decoded"
    assert main(["decompress", qlc, "--checkpoint", ckpt, "-o", f"{out}/"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.png" for i in range(5)]
    assert main(["decompress", qlc, "--checkpoint", ckpt, "-o", f"{out}/"]) == 2
    assert "new or empty" in capsys.readouterr().err


def test_downstream_needs_labels_and_scores_features(tmp_path, capsys):
    """Data without class labels refuses the downstream tasks before any work (one line); with
    labels, k-means and the probe score the encoder's features (fractions in [0, 1])."""
    config = _config(tmp_path, "lattice")
    assert main(["train", config, "--out", str(tmp_path / "run")]) == 0
    ckpt = str(tmp_path / "run" / "best.pt")
    capsys.readouterr()
    assert main(["eval", ckpt, "--downstream"]) == 2
    assert "no class labels" in capsys.readouterr().err
    model, cfg = custom.model_from_checkpoint(torch.load(ckpt, weights_only=True))
    data = custom.prepare(cfg, custom.load_data(cfg.data))
    labels = {k: torch.arange(v.shape[0]) % 3 for k, v in data.items()}
    scores = custom.downstream_scores(model, data, labels, n_init=2, probe_steps=20, progress=False)
    for key in ("kmeans_acc", "nmi", "linear_acc"):
        assert 0.0 <= scores[key] <= 1.0, (key, scores[key])


TEXT = """
[data]
name = "synthetic-text"
synthetic_size = 120

[model]
family = "text_gru"
hidden = [16, 32]
latent_dim = 8
embed = 16

[bottleneck]
name = "{name}"

[train]
epochs = 1
max_steps = 3
batch_size = 20
progress = false
"""


@pytest.mark.parametrize("name", ["scalar_st", "gaussian_dither", "lattice", "vq"])
def test_text_models_train_and_evaluate_from_a_config(tmp_path, name):
    path = tmp_path / "text.toml"
    path.write_text(TEXT.format(name=name))
    cfg = custom.load_config(path, [f"out_dir={tmp_path / 'run'}"])
    summary = custom.train(cfg)
    test = summary["test"]
    assert test["sentences"] == 20 and test["words"] > 3 * 20
    assert math.isfinite(test["hard_path"]["distortion_bits_per_word"])
    assert len(test["examples"]) == 8 and all(e["sentence"] for e in test["examples"])
    if name != "gaussian_dither":  # discrete: the test set's codes went to a file
        assert test["coded"]["available"] and test["coded"]["bits_per_word"] > 0
    report = custom.eval_checkpoint(tmp_path / "run" / "best.pt", progress=False)
    assert report["hard_path"] == pytest.approx(test["hard_path"], rel=1e-6, abs=1e-9)


def test_text_family_goes_with_text_data(tmp_path, capsys):
    path = tmp_path / "mixed.toml"
    path.write_text(TEXT.format(name="vq").replace('name = "synthetic-text"', 'name = "synthetic"'))
    assert main(["train", str(path)]) == 2
    assert "text_gru" in capsys.readouterr().err


def test_example_configs_load():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))
    assert len(examples) >= 2
    for path in examples:
        custom.load_config(path)  # raises with the file and key on any problem


def test_init_from_copies_the_shared_weights(tmp_path):
    """``init_from`` starts a run from another bottleneck's weights wherever names and shapes
    match, leaving the new bottleneck's own parameters as initialised."""
    path = tmp_path / "text.toml"
    path.write_text(TEXT.format(name="identity"))
    first = custom.load_config(path, [f"out_dir={tmp_path / 'warm'}"])
    custom.train(first)
    warm = torch.load(tmp_path / "warm" / "best.pt", weights_only=True)["model"]
    second = custom.load_config(
        path,
        [f"out_dir={tmp_path / 'fine'}", "bottleneck.name=scalar_st",
         f"init_from={tmp_path / 'warm' / 'best.pt'}", "train.max_steps=1"],
    )  # fmt: skip
    model = custom.build_model(second, (), 0.0, vocabulary=len(warm["embed.weight"]) - 4)
    left = custom.warm_start(model, second.init_from)
    state = model.state_dict()
    assert torch.equal(state["encoder.weight_ih_l0"], warm["encoder.weight_ih_l0"])
    assert torch.equal(state["output.weight"], warm["output.weight"])
    assert all(name.startswith("bottleneck.") for name in left) and "bottleneck.codes" in left
    lattice = custom.build_model(custom.load_config(None), (1, 28, 28), 0.1)
    with pytest.raises(ValueError, match="shares no weights"):
        custom.warm_start(lattice, second.init_from)
