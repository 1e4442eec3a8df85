"""README workflows run for real on tiny synthetic data: "Train your own" (train, eval with the
IWAE NLL and a defensive proposal, update, compress, decompress to every format) on a folder of
PNGs with the README's conv model, and the IWAE NLL of a model whose code has spatial positions.

The README's ``qlatent eval runs/lattice/best.pt --iwae 1000 --iwae-defensive 0.9:1`` on the conv
lattice of ``examples/folder-vq.toml`` failed with "posterior_sample takes (B, 16), got (8, 16,
7, 7)": the IWAE NLL handed the encoder's (B, D, H, W) code to the density view, which takes
rows. Each position is one row, and an image's log q and log prior are the sums over them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import one_line_error, run_cli
from qlatent.data.folder import write_image_folder
from qlatent.eval import iwae_nll
from qlatent.experiments import custom

#: examples/folder-vq.toml made small: 48 images of 28×28, a conv model of widths [8, 8] with a
#: 4-channel code at each of the 7×7 positions, two updates
FOLDER_RUN = """
[data]
name = "folder"
folder = "{folder}"
image_size = 28
channels = 1
val_size = 8
test_size = 8

[model]
family = "conv"
hidden = [8, 8]
latent_dim = 4
num_residual = 1
likelihood = "bernoulli"

[bottleneck]
name = "{name}"

[train]
epochs = 1
max_steps = 2
batch_size = 16
progress = false
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """48 binary 28×28 PNGs (a stand-in for ``qlatent data export mnist digits``)."""
    root = tmp_path_factory.mktemp("readme")
    g = torch.Generator().manual_seed(0)
    write_image_folder((torch.rand(48, 1, 28, 28, generator=g) > 0.7).float(), root / "digits")
    return root


def train_run(root, name: str, capsys):
    """``qlatent train CONFIG --out runs/NAME`` on the folder; the run's folder."""
    config = root / f"{name}.toml"
    config.write_text(FOLDER_RUN.format(folder=(root / "digits").as_posix(), name=name))
    out = root / "runs" / name
    code, err = run_cli(["train", config, "--out", out], capsys)
    assert code == 0, err
    return out


def test_iwae_of_a_spatial_code_averages_to_the_negative_elbo():
    # one sample from the posterior is the negative ELBO in expectation (Burda et al.): with a
    # code of 7×7 positions the log q and log prior of an image are sums over its positions
    torch.manual_seed(0)
    cfg = custom.load_config(
        None,
        [
            "model.family=conv",
            "model.hidden=[8, 8]",
            "model.latent_dim=2",
            "model.num_residual=1",
            "bottleneck.name=lattice",
        ],
    )
    model = custom.build_model(cfg, (1, 28, 28), 0.1)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 1, 28, 28, generator=g) > 0.7).float().repeat(100, 1, 1, 1)
    assert model.encoder(x[:1]).shape == (1, 2, 7, 7)
    nll = iwae_nll(model, x, num_samples=1, generator=torch.Generator().manual_seed(2))
    assert nll.shape == (400,) and nll.isfinite().all()
    model.train()
    with torch.no_grad():
        out = model.bottleneck(model.encoder(x), generator=torch.Generator().manual_seed(3))
        distortion = model.likelihood.nll(x, model.decoder(out.y_hat))
    elbo = (distortion + out.rate).double()
    diff = nll - elbo
    se = diff.std().item() / len(diff) ** 0.5
    assert abs(diff.mean().item()) < 5 * se, (diff.mean().item(), se)
    # more samples tighten the bound: on average not above the one-sample estimate
    many = iwae_nll(model, x[:4], num_samples=64, generator=torch.Generator().manual_seed(4))
    assert many.mean() <= elbo[:4].mean() + 5 * se


def test_readme_eval_with_iwae_and_a_defensive_proposal_on_the_conv_lattice(
    digits, tmp_path, capsys
):
    run = train_run(digits, "lattice", capsys)
    report = tmp_path / "eval.json"
    args = ["eval", run / "best.pt", "--iwae", 8, "--iwae-defensive", "0.9:1", "-o", report]
    from qlatent.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    printed = capsys.readouterr().out
    assert code == 0
    data = json.loads(report.read_text())
    assert data["iwae_samples"] == 8 and data["iwae"]["count"] == 8
    assert data["iwae_defensive"]["mixture"] == [0.9, 1.0]
    assert data["iwae_defensive"]["count"] == 8
    # the printed numbers are the JSON's
    assert f"IWAE NLL: {data['iwae']['mean']:.3f} ± {data['iwae']['se']:.3f}" in printed
    assert f"{data['iwae_defensive']['mean']:.3f}" in printed
    # an importance-weighted bound is not above the negative ELBO by more than its noise
    elbo = data["training_path"]["total"]
    assert data["iwae"]["mean"] < elbo + 5 * data["iwae"]["se"] + 1.0


def test_readme_train_update_compress_decompress_on_a_folder(digits, tmp_path, capsys):
    run = train_run(digits, "vq", capsys)
    for name in ("config.json", "summary.json", "training_curves.png", "reconstructions.png"):
        assert (run / name).is_file(), name
    counted = tmp_path / "counted.pt"
    code, err = run_cli(
        ["update", "--checkpoint", run / "best.pt", "--data", "checkpoint-train", "-o", counted],
        capsys,
    )
    assert code == 0, err
    codes = tmp_path / "vq.qlc"
    code, err = run_cli(
        ["compress", "--checkpoint", counted, "--data", "checkpoint-test", "-o", codes], capsys
    )
    assert code == 0, err
    outputs = {ext: tmp_path / f"recon{ext}" for ext in (".pt", ".npy", ".png")}
    outputs["/"] = tmp_path / "recon_dir"
    for ext, path in outputs.items():
        target = f"{path}/" if ext == "/" else path
        code, err = run_cli(["decompress", codes, "--checkpoint", counted, "-o", target], capsys)
        assert code == 0, err
    tensor = torch.load(outputs[".pt"])
    array = np.load(outputs[".npy"])
    assert tensor.shape == (8, 1, 28, 28) and array.shape == (8, 1, 28, 28)
    assert np.array_equal(tensor.numpy(), array)
    assert 0.0 <= array.min() and array.max() <= 1.0
    assert np.asarray(Image.open(outputs[".png"])).dtype == np.uint8
    folder = sorted(outputs["/"].iterdir())
    assert len(folder) == 8
    first = np.asarray(Image.open(folder[0]))
    assert np.array_equal(first, np.round(255 * array[0, 0]).astype(np.uint8))
    # the file's size is what eval reports for the counted checkpoint's code
    report = tmp_path / "counted.json"
    code, err = run_cli(["eval", counted, "-o", report], capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["coded"]["bytes"] == codes.stat().st_size
    # a documented refusal: another extension is one line and exit code 2
    code, err = run_cli(["decompress", codes, "--checkpoint", counted, "-o", "x.txt"], capsys)
    assert code == 2 and one_line_error(err), err
