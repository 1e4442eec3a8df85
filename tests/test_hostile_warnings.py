"""The library's normal paths under warnings-as-errors, as a researcher's own test suite runs
them (``-W error``, ``filterwarnings = ["error"]``): a warning that our code triggers becomes an
exception in theirs.

In-process parts run under ``warnings.simplefilter("error")``: every bottleneck of the contract
suite (training forward and backward, eval forward, quantize / dequantize, ``update``, a
``.qlc`` round trip), IWAE and the code-length report, a training run with its checkpoints and
its resume, ``model_digest`` and the figures. The command line runs in fresh interpreters under
``-W error -X dev`` (which also reports unclosed files and sockets). Warnings that torch issues
only once per process (a read-only NumPy array given to ``torch.from_numpy``; the deprecated
``torch.jit.script_method`` met when ``torch.compile`` first imports inductor) are checked in a
fresh interpreter too: in this one an earlier test may have used them up.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from cli_helpers import TINY_RUN
from qlatent.coding import model_digest
from qlatent.data import synthetic_binary
from qlatent.eval import (
    codelength_report,
    iwae_nll,
    iwae_summary,
    kmeans_scores,
    reconstruction_grid,
    reconstruction_rows,
    training_curves,
    tsne_grid,
)
from qlatent.models import lattice_vae
from qlatent.rng import SeedKeys
from qlatent.train import TrainConfig, fit, load
from test_contract import NAMES, gen, make, make_input


@pytest.fixture()
def strict():
    """Every warning an exception for the test's body, the filters restored afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _fresh(code: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh ``python -W error -X dev``; its output captured."""
    return subprocess.run(
        [sys.executable, "-W", "error", "-X", "dev", "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _clean(done: subprocess.CompletedProcess) -> None:
    """The process ended well and reported no warning, nor one raised where nothing could
    catch it (a ResourceWarning of an unclosed file is printed as "Exception ignored")."""
    assert done.returncode == 0, done.stderr[-3000:]
    for text in (done.stdout, done.stderr):
        assert "Warning" not in text and "Exception ignored" not in text, text[-3000:]


# ------------------------------------------------------------------------------- bottlenecks
@pytest.mark.parametrize("name", NAMES)
def test_every_bottleneck_runs_clean_under_warnings_as_errors(name, strict):
    module = make(name).train()
    y = make_input(module, (4, 5)).requires_grad_()
    out = module(y, generator=gen(1))
    (out.y_hat.square().sum() + out.rate.sum() + out.aux_loss).backward()
    assert torch.isfinite(y.grad).all()
    module.eval()
    with torch.no_grad():
        y_hat = module(y.detach(), generator=gen(2)).y_hat
    assert y_hat.shape == (y.shape[0], module.dim, *y.shape[2:])
    if not module.discrete:
        return
    x = y.detach()
    assert torch.equal(module.dequantize(module.quantize(x, generator=gen(3)), generator=gen(3)),
                       module(x, generator=gen(3)).y_hat)  # fmt: skip
    if hasattr(module, "update"):  # a counted code model, learnt from latents
        module.update(make_input(module, (4, 5), seed=9))
    try:
        module.code_model()
    except TypeError:  # a method without files
        return
    decoded = module.decompress(module.compress(x, seed=0))
    assert torch.equal(decoded, module(x, generator=SeedKeys(0)).y_hat)


# ------------------------------------------------------------------- training and evaluation
def _model():
    torch.manual_seed(0)
    return lattice_vae(latent_dim=4, hidden=16, data_dim=64)


def test_training_resume_evaluation_and_figures_run_clean(tmp_path, strict):
    data = synthetic_binary(n=120, dim=64, seed=1)
    first = fit(
        _model(), data, TrainConfig(epochs=1, batch_size=40, progress=False), out_dir=tmp_path
    )
    model = _model()
    resumed = fit(
        model, data, TrainConfig(epochs=2, batch_size=40, progress=False), out_dir=tmp_path
    )
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0]["val_objective"] == first.history[0]["val_objective"]
    fresh = _model()
    fresh.load_state_dict(load(tmp_path / "last.pt")["model"])
    assert model_digest(fresh) == model_digest(model)

    x = data["val"][:10]
    for progress in (False, True):
        nll = iwae_nll(model, x, num_samples=4, batch_size=5, progress=progress, generator=gen(0))
        assert np.isfinite(iwae_summary(nll)["mean"])
    assert torch.isfinite(
        iwae_nll(model, x, num_samples=4, progress=False, defensive=(0.1, 2.0))
    ).all()
    assert codelength_report(model, x).codelength.rate > 0

    recon = model.reconstruct(x, generator=gen(1))
    paths = [
        reconstruction_grid(x[:4].view(4, 8, 8), recon[:4].view(4, 8, 8), tmp_path / "g.png"),
        reconstruction_rows({"test image": x[:1].view(1, 1, 8, 8)}, tmp_path / "r.png"),
        training_curves(resumed.history, tmp_path / "c.png", title="lattice · gated_mlp"),
    ]
    features = np.random.default_rng(0).normal(size=(30, 3))
    labels = np.arange(30) % 3
    paths.append(tsne_grid({"a": features, "b": torch.from_numpy(features)}, labels,
                           tmp_path / "t.png", perplexity=5))  # fmt: skip
    assert kmeans_scores(features, labels, n_clusters=3, n_init=2)["kmeans_acc"] > 0
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------- once-per-process torch warnings
def test_a_linear_probe_on_read_only_arrays_runs_clean():
    """Features and labels a caller cannot write (``np.load(mmap_mode="r")``, ``np.frombuffer``,
    ``np.broadcast_to``) went to ``torch.from_numpy``, which warns that the tensor is not
    writable; the probe now copies them, with the same accuracies."""
    done = _fresh("""
        import numpy as np
        from qlatent.eval import linear_probe
        x = np.random.default_rng(0).normal(size=(40, 5))
        y = np.arange(40) % 4
        writable = linear_probe(x, y, x, y, steps=20)
        x.setflags(write=False)
        y.setflags(write=False)
        assert linear_probe(x, y, x, y, steps=20) == writable
        print("ok")
    """)
    _clean(done)
    assert done.stdout.strip() == "ok"


@pytest.mark.slow  # inductor compiles a kernel: seconds, and a C++ compiler
def test_a_compiled_codebook_search_runs_clean():
    """``compile=True`` imports inductor on its first call, and inductor imports
    ``torch.utils.mkldnn``, which uses the deprecated ``torch.jit.script_method``: under
    ``-W error`` that first call raised a DeprecationWarning."""
    done = _fresh("""
        import torch
        from qlatent.bottlenecks import build
        fused = build("vq", dim=6, num_codes=5, compile=True).eval()
        plain = build("vq", dim=6, num_codes=5).eval()
        plain.load_state_dict(fused.state_dict())
        y = torch.randn(5000, 6, generator=torch.Generator().manual_seed(0))
        assert torch.equal(fused.quantize(y), plain.quantize(y))
        print("ok")
    """)
    _clean(done)


# ------------------------------------------------------------------------------ command line
#: the commands of a run, in one interpreter (one start instead of six): each must return 0
CLI_SEQUENCE = """
    import sys
    from pathlib import Path
    from qlatent.cli import main
    folder = Path(sys.argv[1])
    config = folder / "tiny.toml"
    config.write_text(sys.argv[2])
    run, counted, qlc = folder / "run", folder / "counted.pt", folder / "x.qlc"
    png = folder / "r.png"
    for args in [
        ["train", config, "--out", run],
        ["eval", run / "best.pt", "--limit", 10, "-o", folder / "eval.json"],
        ["update", "--checkpoint", run / "last.pt", "--data", "checkpoint-train", "-o", counted],
        ["compress", "--checkpoint", counted, "--data", "checkpoint-test", "--limit", 5, "-o", qlc],
        ["decompress", qlc, "--checkpoint", counted, "-o", folder / "r.pt", "--png", png],
        ["decompress", qlc, "--checkpoint", counted, "-o", f"{folder / 'pngs'}/"],
        ["data", "info"],
    ]:
        code = main([str(a) for a in args])
        assert code == 0, (args, code)
    print("ok")
"""

TINY_VQ = TINY_RUN.format(name="vq", family="gated_mlp", hidden="[16]")


def test_the_commands_of_a_run_run_clean_under_w_error_x_dev(tmp_path):
    done = _fresh(CLI_SEQUENCE, tmp_path, TINY_VQ, timeout=180)
    _clean(done)
    assert done.stdout.strip().endswith("ok")
    assert (tmp_path / "r.png").stat().st_size > 0 and len(list((tmp_path / "pngs").iterdir())) == 5


@pytest.mark.slow  # one interpreter per command: about five seconds each
def test_each_command_as_its_own_program_runs_clean(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_RUN.format(name="lattice", family="relu_mlp", hidden="[16]"))
    run, qlc = tmp_path / "run", tmp_path / "x.qlc"
    for args in [
        ["train", config, "--out", run],
        ["train", config, "--out", run],  # resumes a finished run
        ["eval", run / "best.pt", "--iwae", 4, "--iwae-defensive", "0.1:2", "--limit", 10],
        ["compress", "--checkpoint", run / "best.pt", "--data", "synthetic-test", "-o", qlc],
        ["decompress", qlc, "--checkpoint", run / "best.pt", "-o", tmp_path / "r.npy"],
        ["data", "info"],
        ["train", "--list"],
    ]:
        done = subprocess.run(
            [sys.executable, "-W", "error", "-X", "dev", "-m", "qlatent", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        _clean(done)
