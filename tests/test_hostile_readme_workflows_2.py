"""README workflows run for real on tiny synthetic data, second part: the LL-VQ table on an
image folder (``qlatent reproduce llvq-celeba --set data.folder=PATH``), a paper table given a
folder it does not read, and ``qlatent decompress --png`` of the "Real bitstreams" section.

- The LL-VQ results file said its codes were counted "over every 14×14 position" whatever the
  images: a 16-pixel folder has an 8×8 latent grid, a 64-pixel CelebA folder 32×32.
- ``qlatent reproduce llvq-fashion --set data.folder=PATH`` (and any other table's) trained on
  the table's own data and said nothing: the folder was ignored.
- ``decompress --png`` of a demo or coding-mnist model (flat rows) drew each of the first 20
  decoded images twice, as its own "original" above itself; of image models it drew ten where
  the option's help says the first 20.
"""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import TINY_RUN, one_line_error, run_cli
from qlatent.data.folder import write_image_folder
from qlatent.experiments import lattice_mnist, llvq_fashion, softvq_mnist

#: the LL-VQ table made tiny: one row, one schedule, one epoch, a 16-pixel folder
CELEBA_TINY = [
    "--models", "vq", "--schedules", "constant",
    "--set", "data.image_size=16", "--set", "data.val_size=2", "--set", "data.test_size=2",
    "--set", "train.epochs=1", "--set", "model.hidden=[8]", "--set", "model.latent_dim=8",
    "--set", "model.num_residual=1",
]  # fmt: skip


def _drawn(monkeypatch):
    """The figures the plots would save, kept open for inspection."""
    from qlatent.eval import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    return figures


def _images_of(figure) -> list:
    """The pixel arrays drawn in ``figure``, in axes order."""
    return [image.get_array() for ax in figure.axes for image in ax.get_images()]


def test_llvq_on_a_folder_names_the_latent_grid_its_codes_were_counted_over(tmp_path, capsys):
    """12 RGB images of 16 pixels (10 train + val, 2 test) halved once: 8×8 positions."""
    folder = tmp_path / "faces"
    faces = torch.rand(12, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    write_image_folder(faces, folder)
    dirs = ["--runs-dir", tmp_path / "runs", "--results-dir", tmp_path / "results"]
    args = ["reproduce", "llvq-celeba", "--set", f"data.folder={folder}", *CELEBA_TINY, *dirs]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    payload = json.loads((tmp_path / "results" / "llvq-celeba.json").read_text())
    row = payload["rows"]["constant"]["vq"]
    assert (row["total_vectors"], row["total_vectors_test"]) == (10 * 64, 2 * 64)
    assert "every 8×8 position" in payload["counts_note"]
    assert "14×14" not in payload["counts_note"]


@pytest.mark.parametrize(
    "config",
    [
        lambda o: llvq_fashion.model_config("vq", "constant", quick=True, overrides=o),
        lambda o: llvq_fashion.model_config("ll_vq", "reference", quick=False, overrides=o),
        lambda o: softvq_mnist.model_config("vq", quick=True, overrides=o),
        lambda o: lattice_mnist.model_config("rect_lattice", quick=True, overrides=o),
    ],
    ids=["llvq-quick", "llvq-fashion", "softvq-mnist", "lattice-mnist"],
)
def test_a_paper_table_refuses_a_folder_its_data_does_not_read(config):
    with pytest.raises(ValueError, match=r"data\.folder = '/images' has no effect on data\.name"):
        config(["data.folder=/images"])


def test_reproduce_llvq_fashion_with_a_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    """It trained all eight rows on the synthetic images and wrote their table."""
    dirs = ["--runs-dir", tmp_path / "runs", "--results-dir", tmp_path / "results"]
    args = ["reproduce", "llvq-fashion", "--quick", "--set", f"data.folder={tmp_path}", *dirs]
    code, err = run_cli(args, capsys)
    assert code == 2 and one_line_error(err) and "data.folder" in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    # the tables that read a folder still take it
    cfg = llvq_fashion.model_config(
        "vq", "constant", dataset="celeba", overrides=[f"data.folder={tmp_path}"]
    )
    assert cfg.data.folder == str(tmp_path)


def test_decompress_png_draws_the_first_20_decoded_rows_once_each(tmp_path, capsys, monkeypatch):
    """A coding-mnist lattice VAE (flat rows, the demo's kind of model) on 25 images."""
    dirs = ["--runs-dir", tmp_path / "runs", "--results-dir", tmp_path / "results"]
    code, err = run_cli(
        ["reproduce", "coding-mnist", "--quick", "--models", "lattice", *dirs], capsys
    )
    assert code == 0, err
    ckpt = tmp_path / "runs" / "coding-mnist-quick" / "lattice" / "best.pt"
    codes, recon = tmp_path / "codes.qlc", tmp_path / "recon.pt"
    common = ["--data", "synthetic-test", "--limit", 25]
    assert run_cli(["compress", "--checkpoint", ckpt, *common, "-o", codes], capsys)[0] == 0
    figures = _drawn(monkeypatch)
    args = ["decompress", codes, "--checkpoint", ckpt, "-o", recon, "--png", tmp_path / "g.png"]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    decoded = torch.load(recon, weights_only=True)
    assert decoded.shape == (25, 784)
    drawn = _images_of(figures[0])
    assert len(drawn) == 20
    for image, row in zip(drawn, decoded[:20], strict=True):
        assert torch.allclose(torch.as_tensor(image).float(), row.reshape(28, 28).clamp(0, 1))


def test_decompress_png_draws_20_decoded_images_of_an_image_model(tmp_path, capsys, monkeypatch):
    """A ``qlatent train`` model records its image shape; 30 test images, 20 drawn."""
    config = tmp_path / "run.toml"
    text = TINY_RUN.format(family="gated_mlp", hidden="[16]", name="lattice")
    config.write_text(text.replace("synthetic_size = 60", "synthetic_size = 200"))
    code, err = run_cli(["train", config, "--out", tmp_path / "run"], capsys)
    assert code == 0, err
    ckpt, codes = tmp_path / "run" / "best.pt", tmp_path / "codes.qlc"
    code, err = run_cli(
        ["compress", "--checkpoint", ckpt, "--data", "checkpoint-test", "-o", codes], capsys
    )
    assert code == 0, err
    figures = _drawn(monkeypatch)
    args = ["decompress", codes, "--checkpoint", ckpt, "-o", tmp_path / "r.pt"]
    code, err = run_cli([*args, "--png", tmp_path / "g.png"], capsys)
    assert code == 0, err
    assert torch.load(tmp_path / "r.pt", weights_only=True).shape[0] >= 20
    assert len(_images_of(figures[0])) == 20
