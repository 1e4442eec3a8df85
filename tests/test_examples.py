"""The analysis scripts under examples/ that README numbers come from, checked on small sizes."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gain():
    return _load("lattice-gain-vs-rate")


@pytest.mark.parametrize("rate", [0.25, 1.0])
def test_monte_carlo_kl_matches_quadrature_on_z(gain, rate):
    sigma2 = 1 / math.expm1(2 * rate)
    est = gain.kl_monte_carlo("z", sigma2, rows=4000, cells=4096, seed=1)
    exact = gain.kl_rectangular(sigma2)
    assert abs(est["kl"] - exact) < 4 * est["kl_se"] + est["log_bias"] + 1e-4


def test_the_output_is_gaussian_at_high_rate(gain):
    """KL(P_Y ‖ N) → 0 as σ² → 0 (E8 at 3 nats/coordinate), so the excess is the whole gap."""
    high = gain.kl_monte_carlo("e8", 1 / math.expm1(6.0), rows=2000, cells=2048, seed=0)
    assert abs(high["kl"]) < 1e-3


def test_quadrature_kl_grows_toward_the_uniform_gap_as_the_rate_falls(gain):
    gap = 0.5 * math.log(2 * math.pi * math.e / 12)
    values = [gain.kl_rectangular(1 / math.expm1(2 * r)) for r in (3.0, 1.0, 0.25, 0.01)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert values[0] < 1e-6 and 0.5 * gap < values[-1] < gap


def test_e8_coset_cost_orders_the_models_on_a_peaked_prior():
    """On E8^2 with six of each block's eight prior scales a tenth of the cell, the product
    model pays about a bit per coset, the rounding-error model less, and the Monte-Carlo exact
    probability about what the rounding-error model pays on the same rows."""
    import torch

    from qlatent.bottlenecks import build

    costs = _load("e8-coset-cost")
    torch.manual_seed(0)
    neck = build("lattice", dim=16, lattice="e8", init_spacing=1.0, init_scale=1.0).eval()
    with torch.no_grad():
        neck.log_scale[[j for j in range(16) if j % 8 < 6]] = math.log(0.1)
    y = torch.distributions.Laplace(0.0, 1.0).sample((300, 16)) * neck.scale.detach()
    blocks = costs.coset_costs(neck, y, seed=3, mc_rows=60, draws=1024)
    assert len(blocks) == 2
    for block in blocks:
        assert block["half_bits"] == pytest.approx(1.0, abs=0.02)
        assert block["errors_bits"] < 0.9
        gap = abs(block["errors_bits_mc_rows"] - block["exact_mc_bits"])
        assert gap < 0.1 + 3 * block["exact_mc_bits_se"]


def test_trained_bias_counts_are_checked():
    """The sweep's count pairs: S_u even (antithetic pairs) and S_q non-negative, or one clear
    argparse error."""
    import argparse

    sweep = _load("trained-log-density-bias")
    parse = sweep.monte_carlo_counts  # the library's parser, as the script's --counts type
    assert parse("512,4") == (512, 4)
    assert parse("2,0") == (2, 0)
    assert parse("512,32:1024") == (512, (32, 1024))  # one draw count per block
    for bad in ("512", "511,4", "0,4", "512,-1", "a,b", "512,4,1", "512,", "512,4:", "512,4:-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_eager_ab_times_a_tree_in_its_own_interpreter():
    """The A/B script's timer imports the library from the tree it is given (asserted inside the
    child process) and reports both medians."""
    ab = _load("lattice-eager-ab")
    timing = ab._time(ROOT / "src", rows=64, dim=8, calls=2)
    assert set(timing) == {"forward_backward_s", "forward_no_grad_s"}
    assert all(0 < v < 60 for v in timing.values())


def test_the_ab_scripts_tree_is_a_worktree_at_the_commit_removed_afterwards():
    """``tree_at`` (both A/B scripts' earlier tree): a checkout of the commit asked for, its
    full hash, and no worktree left registered afterwards."""
    import subprocess

    from qlatent.bench.timing import tree_at

    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)

    if git("rev-parse", "HEAD").returncode:
        pytest.skip("not a git checkout")
    head = git("rev-parse", "HEAD").stdout.strip()
    before = git("worktree", "list").stdout
    with tree_at(ROOT, head[:7]) as (folder, commit):
        assert commit == head
        assert (folder / "src" / "qlatent" / "__init__.py").is_file()
        assert str(folder) in git("worktree", "list").stdout
    assert not folder.exists() and git("worktree", "list").stdout == before


def test_long_run_summary_reads_the_best_epoch_within_the_cap_and_overall(tmp_path):
    """Synthetic logs: the E8 row leads the rectangular one up to the cap and trails it after;
    the summary reports both bests, their differences, and the script writes its outputs."""
    long = _load("lattice-mnist-long")

    def log(values):
        return [
            {"epoch": i + 1, "val_objective": v, "val_rate": v / 3, "val_distortion": 2 * v / 3,
             "wall_s": float(i)}
            for i, v in enumerate(values)
        ]  # fmt: skip

    rect = log([110.0 - 0.01 * i for i in range(300)])  # best 107.01 at 300, 108.01 at 200
    e8 = log([109.0 - 0.005 * i for i in range(260)])  # best 107.705 at 260, 108.005 at 200
    out = long.summary({"rect_lattice": rect, "e8z_lattice": e8})
    assert out["e8z_lattice"]["best_within_cap"]["epoch"] == 200
    assert out["e8z_lattice"]["best_overall"]["epoch"] == 260
    assert math.isclose(out["e8z_lattice"]["best_within_cap"]["minus_rect_lattice"], -0.005)
    assert math.isclose(out["e8z_lattice"]["best_overall"]["minus_rect_lattice"], 0.695)
    runs = tmp_path / "runs" / "lattice-mnist"
    for name, rows in (("rect_lattice", rect), ("e8z_lattice", e8)):
        (runs / name).mkdir(parents=True)
        (runs / name / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    import sys

    argv = ["x", "--runs", str(tmp_path / "runs"), "--models", "rect_lattice,e8z_lattice",
            "--out", str(tmp_path / "out")]  # fmt: skip
    old, sys.argv = sys.argv, argv
    try:
        long.main()
    finally:
        sys.argv = old
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["rows"]["e8z_lattice"]["epochs"] == 260


def test_laplace_gain_quadratures_and_monte_carlo_agree_on_z():
    """For the rectangular cell the excess has a quadrature; the paired Monte-Carlo estimate
    agrees with it within its error, and at high rate both approach the high-rate gap."""
    laplace = _load("lattice-gain-laplace")
    gap = 40 * 0.5 * math.log(2 * math.pi * math.e / 12)
    sigma2 = 1 / math.expm1(2 * 3.0)
    gauss = laplace.entropy_gaussian_channel(sigma2) - 0.5 * math.log(2 * math.pi * math.e * sigma2)
    quadrature = 40 * (laplace.rate_rectangular(sigma2) - gauss)
    assert abs(quadrature - gap) < 0.05
    est = laplace.rate_monte_carlo("z", sigma2, rows=4000, cells=4096, seed=0)
    assert abs(40 * est["excess"] - quadrature) < 4 * 40 * est["excess_se"] + 0.05


def test_gradient_noise_separates_the_monte_carlo_draws_from_the_rest():
    """On an untrained E8 VAE: the gradients are those of the loss, a fixed (batch, dither, draws)
    triple gives the same gradient twice, and other draws change only the rate's part."""
    import torch

    from qlatent.models import gated_vae

    noise = _load("gradient-noise")
    torch.manual_seed(0)
    model = gated_vae("lattice", latent_dim=8, hidden=16, data_dim=12, lattice="e8").train()
    x = (torch.rand(10, 12) > 0.5).float()
    a = noise.gradients(model, x, 1, 2, (32, 4))
    b = noise.gradients(model, x, 1, 2, (32, 4))
    c = noise.gradients(model, x, 1, 3, (32, 4))
    assert set(a) == {"encoder", "bottleneck"}
    for part in a:
        assert torch.equal(a[part], b[part]) and a[part].abs().sum() > 0
        assert not torch.equal(a[part], c[part])
    assert noise.trace_variance([a["encoder"], c["encoder"]]) > 0


def test_latent_usage_marks_a_coordinate_without_signal_idle():
    """An E8 + Z model whose encoder is silent on one coordinate of each kind of block: those two
    are idle, the rest are not, and each is labelled with its block."""
    import torch

    from qlatent.models import gated_vae

    usage = _load("latent-usage")
    torch.manual_seed(0)
    model = gated_vae("lattice", latent_dim=10, hidden=16, data_dim=12, lattice=["e8", "z", "z"])
    x = (torch.rand(200, 12) > 0.5).float()
    silent = {3, 9}

    class Masked(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            mask = torch.ones(y.shape[1])
            mask[list(silent)] = 0.0
            return 5 * y * mask

    model.encoder = Masked(model.encoder)
    rows = usage.usage(model.eval(), x, idle=0.1)
    assert [r["block"] for r in rows] == ["E8"] * 8 + ["Z", "Z"]
    assert [r["block_index"] for r in rows] == [0] * 8 + [1, 2]
    assert {r["coordinate"] for r in rows if r["idle"]} == silent
    # with a scale per coordinate, the cell along a coordinate is its own: one stretched a
    # thousandfold inside the E8 block is idle, its neighbours are not
    model = gated_vae(
        "lattice",
        latent_dim=10,
        hidden=16,
        data_dim=12,
        lattice=["e8", "z", "z"],
        spacing_per="coordinate",
    )
    with torch.no_grad():
        model.bottleneck.log_spacing[0] = math.log(1000.0)
    rows = usage.usage(model.eval(), x, idle=0.1)
    assert {r["coordinate"] for r in rows if r["idle"]} == {0}


def test_plugged_lattices_pay_their_high_rate_gap_over_gaussian_noise():
    """``examples/lattice-plugin.py`` at high resolution (every σ_i = 0.01, the prior a thousand
    times wider): swapping the Gaussian noise for a lattice's dither of the same variance costs
    the cell's whole gap, m·½·log(2πe·G): 7.06 nats for Z^40, 4.05 for E8^5."""
    import torch

    from qlatent.models import gated_vae

    plugin = _load("lattice-plugin")
    torch.manual_seed(0)
    gl = gated_vae("gaussian_lattice", latent_dim=40).eval()
    with torch.no_grad():
        gl.bottleneck.logvar.fill_(2 * math.log(0.01))
    x = (torch.rand(200, 784) < 0.3).float()
    reference = plugin.gl_negative_elbo(gl, x, seed=0)
    for name, gap in (("Z^40", 7.06), ("E8^5", 4.05)):
        parts = plugin.negative_elbo(
            plugin.plugged(gl, plugin.LAYOUTS[name], (256, 16), False), x, 0
        )
        assert abs((parts[:, 1] - reference[:, 1]).mean().item() - gap) < 0.05, name
        assert abs((parts[:, 0] - reference[:, 0]).mean().item()) < 0.05, name


def test_plugin_tails_estimates_converge_on_a_plain_start_and_arguments_are_checked(
    monkeypatch, tmp_path
):
    """``examples/lattice-plugin-tails.py``: on E8^5 at a moderate noise level the estimates at
    small counts are finite and agree with larger counts on average (no collapse), and bad
    layouts, proposals and counts are argparse errors before anything is loaded."""
    import sys

    import torch

    from qlatent.models import gated_vae
    from qlatent.rng import SeedKeys

    tails = _load("lattice-plugin-tails")
    torch.manual_seed(0)
    gl = gated_vae("gaussian_lattice", latent_dim=40).eval()
    with torch.no_grad():
        gl.bottleneck.logvar.fill_(2 * math.log(0.5))
    model = tails.plugin.plugged(
        gl, tails.plugin.LAYOUTS["E8^5"], (64, 8), False, "gaussian", "tilted", True
    )
    neck = model.bottleneck.double().train()
    x = (torch.rand(20, 784, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    with torch.no_grad():
        v = neck(model.encoder(x).double(), generator=SeedKeys(1)).y_hat
    small = tails.estimates(neck, v, (64, 8), 3, 0)
    large = tails.estimates(neck, v, (2048, 256), 2, 100).mean(0)
    assert small.shape == (3, 20) and torch.isfinite(small).all()
    error = small - large
    assert abs(error.mean().item()) < 0.1 and (error > -tails.COLLAPSE_NATS).all()
    assert tails.monte_carlo_counts("512,32:1024") == (512, (32, 1024))
    from qlatent.bottlenecks.good_lattice import check_block_counts

    check_block_counts([(512, 32), (512, (32, 1024))], 2)  # a single count fits any blocks
    with pytest.raises(ValueError, match="counts 512,32:64:8 name 3 blocks, not 2"):
        check_block_counts([(512, (32, 1024)), (512, (32, 64, 8))], 2)
    assert (
        tails.monte_carlo_counts("64,8") == (64, 8)
        and tails.counts_text((512, (32, 1024))) == "512,32:1024"
    )
    base = ["lattice-plugin-tails.py", "--runs", str(tmp_path)]
    bad = (
        ["--layouts", "nope"],
        ["--proposals", "box"],
        ["--counts", "3,0"],
        ["--counts", "8,4:x"],
    )
    for extra in bad:
        monkeypatch.setattr(sys, "argv", [*base, *extra])
        with pytest.raises(SystemExit):
            tails.main()


def test_lattice_plugin_plot_reads_results_and_refuses_other_files(tmp_path):
    plot = _load("lattice-plugin-plot")
    good = tmp_path / "plugin.json"
    row = {"minus_gaussian_lattice": 3.2, "minus_gaussian_lattice_se": 0.07}
    rows = [{"layout": "E8^5", **row, "ideal_lattice_gap_theory": 4.05}]
    good.write_text(json.dumps({"rows": rows}))
    loaded = plot.load_rows([good])
    assert loaded == [{"layout": "E8^5", "gap": 3.2, "se": 0.07, "theory": 4.05}]
    plot.plot(loaded, tmp_path / "plugin.png")
    assert (tmp_path / "plugin.png").stat().st_size > 0
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"rows": [{"layout": "E8^5"}]}))
    with pytest.raises(SystemExit, match="not a lattice-plugin.py result"):
        plot.load_rows([bad])


def test_iwae_density_counts_checks_its_arguments(monkeypatch, tmp_path):
    import sys

    counts = _load("iwae-density-counts")
    bad_counts = ["x", "--row", "e8_gl_lattice", "--runs", str(tmp_path), "--counts", "3,0"]
    monkeypatch.setattr(sys, "argv", bad_counts)
    with pytest.raises(SystemExit):  # odd cell points: an argparse error
        counts.main()
    argv = ["iwae-density-counts.py", "--runs", str(tmp_path), "--counts", "64,8"]
    monkeypatch.setattr(sys, "argv", [*argv, "--row", "rect_lattice"])
    with pytest.raises(SystemExit):  # not a good-lattice row: an argparse error
        counts.main()


def test_seed_spread_reads_the_table_and_the_seeds(tmp_path, monkeypatch, capsys):
    """``examples/lattice-mnist-seeds.py`` on a table of two rows and one extra seed: the row's
    values per seed, their mean and standard deviation, and the other row in those units."""
    import sys

    table = {"models": {"a": {"test_nll_iwae1000": 94.0}, "b": {"test_nll_iwae1000": 93.0}}}
    seed = {"models": {"a": {"test_nll_iwae1000": 95.0}}}
    (tmp_path / "table.json").write_text(json.dumps(table))
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    argv = ["lattice-mnist-seeds.py", "--row", "a", "--table", str(tmp_path / "table.json")]
    argv += ["--seed-results", f"2021={tmp_path / 'seed.json'}", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    _load("lattice-mnist-seeds").main()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    spread = summary["spread"]["test_nll_iwae1000"]
    assert spread["values"] == {"2020": 94.0, "2021": 95.0}
    assert spread["mean"] == 94.5 and spread["sd"] == pytest.approx(math.sqrt(0.5))
    assert spread["others"]["b"]["in_sd"] == pytest.approx(-1.5 / math.sqrt(0.5))
    assert (tmp_path / "out" / "a-seed2021.json").exists()
    assert "94.00, 95.00 -> 94.50" in capsys.readouterr().out


def test_seed_spread_pairs_a_started_row_with_its_own_start(tmp_path, monkeypatch, capsys):
    """With ``--starts``, a row trained from another row's model is read against that start at
    each seed: row minus start per seed, mean and sd; a start file whose best epoch is not the
    epoch the row records having started from is refused with one line."""
    import sys

    def row(nll, epoch):
        return {"test_nll_iwae1000": nll, "init_from": {"row": "s", "checkpoint_epoch": epoch}}

    files = {
        "table.json": {"models": {"a": row(92.5, 247), "s": {"test_nll_iwae1000": 89.4}}},
        "seed.json": {"models": {"a": row(92.6, 200)}},
        "start2020.json": {"models": {"s": {"test_nll_iwae1000": 89.2, "best_epoch": 247}}},
        "start2021.json": {"models": {"s": {"test_nll_iwae1000": 89.5, "best_epoch": 200}}},
        "wrong.json": {"models": {"s": {"test_nll_iwae1000": 89.5, "best_epoch": 199}}},
    }
    for name, payload in files.items():
        (tmp_path / name).write_text(json.dumps(payload))
    argv = ["lattice-mnist-seeds.py", "--row", "a", "--table", str(tmp_path / "table.json")]
    argv += ["--seed-results", f"2021={tmp_path / 'seed.json'}", "--out", str(tmp_path / "out")]
    starts = ["--starts", f"2020={tmp_path / 'start2020.json'}"]
    monkeypatch.setattr(sys, "argv", [*argv, *starts, f"2021={tmp_path / 'start2021.json'}"])
    _load("lattice-mnist-seeds").main()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    paired = summary["paired"]["metrics"]["test_nll_iwae1000"]
    assert paired["minus_start"] == {"2020": pytest.approx(3.3), "2021": pytest.approx(3.1)}
    assert paired["mean"] == pytest.approx(3.2) and paired["sd"] == pytest.approx(math.sqrt(0.02))
    assert (tmp_path / "out" / "start-seed2021.json").exists()
    assert "+3.30, +3.10 -> +3.20 ± 0.14" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [*argv, *starts, f"2021={tmp_path / 'wrong.json'}"])
    with pytest.raises(SystemExit, match="started from epoch 200 of s"):
        _load("lattice-mnist-seeds").main()
    monkeypatch.setattr(sys, "argv", [*argv, *starts])
    with pytest.raises(SystemExit, match=r"no results file for seed\(s\) \[2021\]"):
        _load("lattice-mnist-seeds").main()
    monkeypatch.setattr(sys, "argv", [*argv, *starts, f"2021={tmp_path / 'seed.json'}"])
    with pytest.raises(SystemExit, match="no row 's'"):  # a results file without the start row
        _load("lattice-mnist-seeds").main()


def test_seed_spread_reads_a_row_the_table_does_not_hold_from_its_seeds(tmp_path, monkeypatch):
    """A row without a run at the protocol's seed is read from the extra seeds alone, paired
    with each seed's own start."""
    import sys

    def row(nll):
        return {"test_nll_iwae1000": nll, "init_from": {"row": "s", "checkpoint_epoch": 200}}

    start = {"models": {"s": {"test_nll_iwae1000": 89.5, "best_epoch": 200}}}
    files = {
        "table.json": {"models": {"s": {"test_nll_iwae1000": 89.4}}},
        "seed2021.json": {"models": {"a": row(91.5)}},
        "seed2022.json": {"models": {"a": row(91.9)}},
        "start.json": start,
    }
    for name, payload in files.items():
        (tmp_path / name).write_text(json.dumps(payload))
    argv = ["lattice-mnist-seeds.py", "--row", "a", "--table", str(tmp_path / "table.json")]
    argv += ["--seed-results", *(f"{s}={tmp_path / f'seed{s}.json'}" for s in (2021, 2022))]
    argv += ["--starts", *(f"{s}={tmp_path / 'start.json'}" for s in (2021, 2022))]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "out")])
    _load("lattice-mnist-seeds").main()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["seeds"] == [2021, 2022]
    assert summary["spread"]["test_nll_iwae1000"]["mean"] == pytest.approx(91.7)
    paired = summary["paired"]["metrics"]["test_nll_iwae1000"]
    assert paired["minus_start"] == {"2021": pytest.approx(2.0), "2022": pytest.approx(2.4)}


def test_seed_spread_reads_a_row_against_a_control_from_the_same_start(tmp_path, monkeypatch):
    """With ``--control ROW --controls``, the row minus that control at each seed, mean and sd; a
    control that records another start than the row's is refused with one line, and the two
    options go together."""
    import sys

    def row(nll, path, epoch=247):
        start = {"row": "s", "checkpoint": path, "checkpoint_epoch": epoch}
        return {"test_nll_iwae1000": nll, "init_from": start}

    files = {
        "table.json": {"models": {"a": row(92.5, "r0/s.pt"), "c": row(93.9, "r0/s.pt")}},
        "seed.json": {"models": {"a": row(92.6, "r1/s.pt", 200)}},
        "control.json": {"models": {"c": row(94.0, "r1/s.pt", 200)}},
        "other.json": {"models": {"c": row(94.0, "r2/s.pt", 200)}},
    }
    for name, payload in files.items():
        (tmp_path / name).write_text(json.dumps(payload))
    table = tmp_path / "table.json"
    argv = ["lattice-mnist-seeds.py", "--row", "a", "--table", str(table), "--out"]
    argv += [str(tmp_path / "out"), "--seed-results", f"2021={tmp_path / 'seed.json'}"]
    controls = ["--control", "c", "--controls", f"2020={table}"]
    monkeypatch.setattr(sys, "argv", [*argv, *controls, f"2021={tmp_path / 'control.json'}"])
    _load("lattice-mnist-seeds").main()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    controlled = summary["controlled"]["metrics"]["test_nll_iwae1000"]
    assert controlled["minus_control"] == {"2020": pytest.approx(-1.4), "2021": pytest.approx(-1.4)}
    assert controlled["mean"] == pytest.approx(-1.4) and controlled["sd"] == pytest.approx(0.0)
    assert summary["controlled"]["control"] == "c"
    assert (tmp_path / "out" / "control-seed2021.json").exists()
    monkeypatch.setattr(sys, "argv", [*argv, *controls, f"2021={tmp_path / 'other.json'}"])
    with pytest.raises(SystemExit, match="seed 2021: c in .* was not started from the row's"):
        _load("lattice-mnist-seeds").main()
    monkeypatch.setattr(sys, "argv", [*argv, *controls])
    with pytest.raises(SystemExit, match=r"--controls has no results file for seed\(s\) \[2021\]"):
        _load("lattice-mnist-seeds").main()
    monkeypatch.setattr(sys, "argv", [*argv, "--control", "c"])
    with pytest.raises(SystemExit):  # --control without --controls: an argparse error
        _load("lattice-mnist-seeds").main()


def test_lattice_step_profile_checks_its_arguments(monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["lattice-step-profile.py", "--steps", "0"])
    with pytest.raises(SystemExit):  # an argparse error, before anything is compiled
        _load("lattice-step-profile").main()


@pytest.mark.slow
def test_lattice_step_profile_writes_the_top_operators(monkeypatch, tmp_path):
    """The profile of a compiled training step (tiny here): the step's wall time, the profiled
    self time per step and the operators with the most of it, largest first."""
    import sys

    out = tmp_path / "profile.json"
    argv = ["lattice-step-profile.py", "--rows", "64", "--dim", "8", "--steps", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--top", "5", "--out", str(out)])
    _load("lattice-step-profile").main()
    result = json.loads(out.read_text())
    assert result["step_ms_median"] > 0 and len(result["top"]) == 5
    times = [row["self_ms_per_step"] for row in result["top"]]
    assert times == sorted(times, reverse=True)
    assert sum(times) <= result["profiled_self_ms_per_step"] * (1 + 1e-9)
    assert set(result["allocator"]) == {"environment", "transparent_hugepage"}


def test_good_lattice_step_times_a_trained_rows_bottleneck(monkeypatch, tmp_path):
    """``examples/good-lattice-step.py`` on a row's checkpoint (an untrained E8^5 model here, on
    random images): the step's wall time and the density's parts, each inside ``log_density``'s
    own time; a row without Monte-Carlo density and a missing checkpoint are refused."""
    import sys

    import torch

    from qlatent.experiments import lattice_mnist
    from qlatent.train.checkpoint import save_atomic

    images = (torch.rand(64, 784, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    monkeypatch.setattr(
        lattice_mnist, "load_data", lambda cfg, d: {"train": images, "test": images}
    )
    script = _load("good-lattice-step")
    argv = ["good-lattice-step.py", "--runs", str(tmp_path), "--batch", "8", "--steps", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--row", "rect_lattice"])
    with pytest.raises(SystemExit):  # not a good-lattice row: an argparse error
        script.main()
    monkeypatch.setattr(sys, "argv", [*argv, "--row", "e8_lattice"])
    with pytest.raises(SystemExit, match="best.pt"):  # no checkpoint: one line
        script.main()
    cfg = lattice_mnist.model_config("e8_lattice", quick=True, overrides=[])
    model = lattice_mnist.build_model(cfg, 784)
    save_atomic(
        {"model": model.state_dict()}, tmp_path / "lattice-mnist" / "e8_lattice" / "best.pt"
    )
    out = tmp_path / "step.json"
    monkeypatch.setattr(sys, "argv", [*argv, "--row", "e8_lattice", "--out", str(out)])
    script.main()
    result = json.loads(out.read_text())
    parts = result["parts_ms_per_step"]
    assert result["step_ms_median"] > 0 and len(result["step_ms"]) == 2
    assert {"_log_density", "_inside_cell", "_cell_points_log_pdf"} <= set(parts)
    assert 0 < parts["_inside_cell"] <= parts["_log_density"]
    # the timing wrappers are taken off again
    assert script.good_lattice.DitheredGoodLattice._inside_cell.__name__ == "_inside_cell"
    assert script._lattice_density._group_slopes.__name__ == "_group_slopes"
    assert not hasattr(script._lattice_density, "_relative_variance")  # left out, not an error


def test_codelength_counts_reads_the_evaluation_at_other_counts(monkeypatch, tmp_path, capsys):
    """``examples/codelength-counts.py`` on a row's checkpoint (an untrained E8^5 model, random
    images): one row per count setting with the codelength, the −ELBO (the same at every setting:
    the training path does not read the evaluation counts) and their difference; counts for the
    wrong number of blocks and a missing checkpoint are refused."""
    import sys

    import torch

    from qlatent.experiments import lattice_mnist
    from qlatent.train.checkpoint import save_atomic

    images = (torch.rand(40, 784, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    monkeypatch.setattr(
        lattice_mnist, "load_data", lambda cfg, d: {"train": images, "test": images}
    )
    script = _load("codelength-counts")
    argv = [
        "codelength-counts.py",
        "--row",
        "e8_lattice",
        "--runs",
        str(tmp_path),
        "--repeats",
        "2",
    ]
    monkeypatch.setattr(sys, "argv", [*argv, "--counts", "16,4"])
    with pytest.raises(SystemExit, match="best.pt"):  # no checkpoint: one line
        script.main()
    cfg = lattice_mnist.model_config("e8_lattice", quick=True, overrides=[])
    save_atomic(
        {"model": lattice_mnist.build_model(cfg, 784).state_dict(), "epoch": 3},
        tmp_path / "lattice-mnist" / "e8_lattice" / "best.pt",
    )
    monkeypatch.setattr(sys, "argv", [*argv, "--counts", "16,4:4"])
    with pytest.raises(SystemExit):  # two counts for five blocks: an argparse error
        script.main()
    out = tmp_path / "counts.json"
    monkeypatch.setattr(sys, "argv", [*argv, "--counts", "16,4", "64,16", "--out", str(out)])
    script.main()
    result = json.loads(out.read_text())
    assert result["checkpoint_epoch"] == 3 and result["images"] == 40 and result["repeats"] == 2
    first, second = result["rows"]
    assert first["counts"] == [16, 4] and second["counts"] == [64, 16]
    assert first["neg_elbo"] == second["neg_elbo"]
    for row in result["rows"]:
        gap = row["codelength"] - row["neg_elbo"]
        assert math.isclose(row["codelength_minus_neg_elbo"], gap, rel_tol=1e-9, abs_tol=1e-9)
        assert row["codelength_minus_neg_elbo_se"] > 0
    assert "counts 64,16" in capsys.readouterr().out


def test_lattice_mnist_curves_reads_each_seeds_rows_and_refuses_bad_items(tmp_path, monkeypatch):
    """``examples/lattice-mnist-curves.py``: ``{seed}`` in a path picks each seed's file, the
    JSON beside the figure holds each run's best validation −ELBO and epoch, and a malformed
    item or a file without the row ends in one line."""
    import sys

    curves = _load("lattice-mnist-curves")
    for seed, shift in ((1, 0.0), (2, 1.0)):
        rows = {
            "a": {"val_neg_elbo_curve": [99.0 + shift, 97.0 + shift, 98.0 + shift]},
            "s": {"val_neg_elbo_curve": [96.5, 96.0]},
        }
        (tmp_path / f"r{seed}.json").write_text(json.dumps({"models": rows}))
    template = str(tmp_path / "r{seed}.json")
    argv = ["x", "--seeds", "1", "2", "--run", f"row a={template}:a", "--start", f"{template}:s"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "c.png")])
    curves.main()
    assert (tmp_path / "c.png").stat().st_size > 0
    record = json.loads((tmp_path / "c.json").read_text())["seeds"]
    assert record["2"]["row a"]["best"] == 98.0 and record["2"]["row a"]["best_epoch"] == 2
    assert record["1"]["start"]["best"] == 96.0
    for bad in ([f"{template}:a"], [f"row a={template}:b"], ["row a=:a"]):
        monkeypatch.setattr(sys, "argv", ["x", "--seeds", "1", "--run", *bad, "--out", "y.png"])
        with pytest.raises(SystemExit) as err:
            curves.main()
        assert isinstance(err.value.code, str)  # one line, not a traceback


def test_proposal_support_example_parses_mixtures_and_keeps_the_own_proposal():
    import argparse

    from torch import nn

    from qlatent.eval import DefensiveProposal

    support = _load("iwae-proposal-support")
    assert support.parse_mixture("0.9:1") == (0.9, 1.0)
    for bad in ("0.5", "1:2", "0.5:0", "a:b", "0.5:inf"):
        with pytest.raises(argparse.ArgumentTypeError, match="ALPHA:K"):
            support.parse_mixture(bad)
    from qlatent.models import lattice_vae

    model = lattice_vae(latent_dim=8, hidden=16, lattice="e8")
    assert support.with_proposal(model, None) is model
    view = support.with_proposal(model, (0.5, 1.0))
    assert isinstance(view, nn.Module) and isinstance(view.bottleneck, DefensiveProposal)
    assert view.decoder is model.decoder and view.bottleneck.inner is model.bottleneck


def test_proposal_support_example_takes_finished_readings_from_its_partial_file(tmp_path):
    """A stopped reading's partial file is used only with the same settings, and only for
    entries with one finite value per image, a wall time and a checkpoint epoch."""
    from qlatent.results import write_json

    support = _load("iwae-proposal-support")
    out = tmp_path / "reading.json"
    path = support.partial_path(out)
    assert path == tmp_path / "reading.json.partial.json" and support.partial_path(None) is None
    settings = {"runs": "/r", "split": "test", "images": 3, "samples": 10, "seed": 1}
    assert support.load_partial(path, settings) == {}  # no file
    good = {"checkpoint_epoch": 7, "wall_s": 1.5, "nll": [90.0, 91.25, 89.5]}
    done = {
        "a": {
            "own": good,
            "0.5:1": {**good, "nll": [90.0, float("nan"), 1.0]},
            "0.9:1": {**good, "nll": [90.0, 91.0]},
            "0.5:2": {"checkpoint_epoch": 7, "nll": good["nll"]},
        },
        "b": {"own": {**good, "checkpoint_epoch": None}, "0.5:1": [1.0, 2.0, 3.0]},
        "c": "not a row",
    }
    write_json({"settings": settings, "done": done}, path)
    kept = support.load_partial(path, settings)
    assert kept == {"a": {"own": good}, "b": {"own": {**good, "checkpoint_epoch": None}}}
    assert support.load_partial(path, {**settings, "images": 4}) == {}
    assert support.load_partial(path, {**settings, "seed": 2}) == {}
    path.write_text("{not json")
    assert support.load_partial(path, settings) == {}
    path.write_text("[1, 2]")
    assert support.load_partial(path, settings) == {}


def test_proposal_support_summary_reads_seeds_and_the_validation_choice(tmp_path, capsys):
    summary = _load("iwae-proposal-support-summary")

    def file(values):  # row -> proposal -> NLL
        rows = {
            row: {"proposals": {name: {"iwae_nll": v} for name, v in props.items()}}
            for row, props in values.items()
        }
        path = tmp_path / f"f{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps({"reference": "gl", "rows": rows}))
        return path

    seeds = {
        2021: summary.read(
            file({"gl": {"own": 88.0, "0.5:1": 87.8}, "e8": {"own": 91.5, "0.5:1": 89.0}})
        ),
        2022: summary.read(
            file({"gl": {"own": 88.2, "0.5:1": 88.0}, "e8": {"own": 91.7, "0.5:1": 89.4}})
        ),
    }
    val = summary.read(
        file({"gl": {"own": 90.0, "0.5:1": 90.1}, "e8": {"own": 93.0, "0.5:1": 91.0}})
    )
    out = summary.summarize(seeds, val)
    e8 = out["rows"]["e8"]
    assert e8["own"]["minus_reference"]["mean"] == pytest.approx(3.5)
    assert e8["0.5:1"]["minus_own"]["values"] == pytest.approx([-2.5, -2.3])
    assert e8["0.5:1"]["minus_reference"]["mean"] == pytest.approx(1.3)
    assert out["chosen_on_validation"] == {"gl": "own", "e8": "0.5:1"}
    chosen = out["minus_reference_chosen"]["e8"]  # e8 with its mixture against gl's own
    assert chosen["values"] == pytest.approx([1.0, 1.2]) and chosen["row"] == "0.5:1"
    assert "left_out" not in out
    # a proposal one seed did not read is left out (and listed); a chosen one must be everywhere
    extra = summary.read(
        file(
            {"gl": {"own": 88.1, "0.5:1": 87.9, "0.9:1": 88.1}, "e8": {"own": 91.6, "0.5:1": 89.2}}
        )
    )
    out = summary.summarize({**seeds, 2023: extra}, val)
    assert list(out["rows"]["gl"]) == ["own", "0.5:1"] and out["left_out"] == {"gl": ["0.9:1"]}
    assert out["minus_reference_chosen"]["e8"]["values"] == pytest.approx([1.0, 1.2, 1.1])
    short = summary.read(file({"gl": {"own": 88.1}, "e8": {"own": 91.6}}))
    with pytest.raises(SystemExit, match="chosen proposal is not in every seed"):
        summary.summarize({**seeds, 2023: short}, val)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="not a file of iwae-proposal-support"):
        summary.read(bad)


def test_proposal_support_summary_joins_readings_and_compares_two_rows(tmp_path):
    """Readings of other rows beside the same reference join into one per seed (the reference
    read twice must agree), and ``compare`` reads one row against another per seed."""
    summary = _load("iwae-proposal-support-summary")

    def file(name, values, **settings):  # row -> proposal -> NLL
        rows = {
            row: {
                "checkpoint_epoch": 200,
                "proposals": {p: {"iwae_nll": v} for p, v in props.items()},
            }
            for row, props in values.items()
        }
        base = {"runs": "/r", "split": "test", "images": 4, "iwae_samples": 10}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"reference": "gl", "rows": rows, **base, **settings}))
        return str(path)

    gl = {"own": 88.0, "0.5:1": 87.8}
    seeds = {
        2021: summary.read_all(
            file("r1", {"gl": gl, "z": {"own": 94.0, "0.9:1": 90.0}})
            + ","
            + file("e1", {"gl": {**gl, "0.5:1": 87.8 + 1e-6}, "e8": {"own": 93.0, "0.5:1": 89.0}}),
            "seed 2021",
        ),
        2022: summary.read_all(
            file("r2", {"gl": gl, "z": {"own": 94.4, "0.9:1": 90.6}})
            + ","
            + file("e2", {"gl": gl, "e8": {"own": 93.2, "0.5:1": 89.0}}),
            "seed 2022",
        ),
    }
    assert seeds[2021]["rows"].keys() == {"gl", "z", "e8"}
    assert seeds[2021]["rows"]["gl"]["proposals"]["0.5:1"]["iwae_nll"] == 87.8  # the first kept
    val = summary.read_all(
        file("v1", {"gl": {"own": 90.0, "0.5:1": 90.1}, "z": {"own": 96.0, "0.9:1": 92.0}})
        + ","
        + file("v2", {"gl": {"own": 90.0}, "e8": {"own": 95.0, "0.5:1": 91.0}}),
        "--select",
    )
    out = summary.compare(seeds, val, [("e8", "z")])["e8 − z"]
    assert out["own"]["values"] == pytest.approx([-1.0, -1.2])
    assert out["chosen"]["row"] == "0.5:1" and out["chosen"]["other"] == "0.9:1"
    assert out["chosen"]["values"] == pytest.approx([-1.0, -1.6])
    assert out["chosen"]["mean"] == pytest.approx(-1.3)
    assert "chosen" not in summary.compare(seeds, None, [("e8", "z")])["e8 − z"]
    with pytest.raises(SystemExit, match="not a row read beside the reference"):
        summary.compare(seeds, val, [("e8", "gl")])
    with pytest.raises(SystemExit, match="not a row read beside the reference"):
        summary.compare(seeds, val, [("e8", "leech")])
    # readings that are not of the same images, model or checkpoint are refused
    a = file("a", {"gl": gl, "z": {"own": 94.0}})
    with pytest.raises(SystemExit, match="differ in images"):
        summary.read_all(a + "," + file("b", {"gl": gl}, images=5), "seed 1")
    with pytest.raises(SystemExit, match="gl under own differs"):
        summary.read_all(a + "," + file("c", {"gl": {**gl, "own": 88.01}}), "seed 1")
    moved = file("d", {"gl": gl})
    payload = json.loads(Path(moved).read_text())
    payload["rows"]["gl"]["checkpoint_epoch"] = 150
    Path(moved).write_text(json.dumps(payload))
    with pytest.raises(SystemExit, match="two checkpoints"):
        summary.read_all(a + "," + moved, "seed 1")
    with pytest.raises(SystemExit, match="an empty path"):
        summary.read_all(a + ",", "seed 1")


@pytest.mark.parametrize("lattice", ["e8", "bw16"])
def test_decoder_chunks_times_every_chunk_size_on_the_same_points(lattice):
    """One worker process's table: every chunk size timed each round, with its page faults per
    call counted (and the chunked decode checked against the whole input's points)."""
    chunks = _load("decoder-chunks")
    out = chunks.one_process(
        lattice,
        rows=256,
        chunks=[64, 2048],
        rounds=2,
        calls=2,
        estimate_g=["a2"],
        target_rse=0.05,
        beside="d4",
    )
    assert set(out) == {"64", "2048"}
    for runs in out.values():
        assert len(runs) == 2
        assert all(r["rows_per_s"] > 0 and r["faults_per_call"] >= 0 for r in runs)


def test_vq_search_variants_checks_its_arguments(monkeypatch):
    variants = _load("vq-search-variants")
    for bad in (["--codes", "128,x"], ["--rows", "8"], ["--codes", "1"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):  # an argparse error, before anything is compiled
            variants.main(bad)


@pytest.mark.slow
def test_vq_search_variants_times_every_variant_with_the_eager_indices(tmp_path):
    """Every variant at each K (all checked against the eager search's indices before timing),
    one timing per round, and the profile of a compiled vq eval call, largest operator first."""
    out = tmp_path / "variants.json"
    argv = ["--rows", "256", "--codes", "8,128", "--rounds", "2", "--calls", "2"]
    assert _load("vq-search-variants").main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["by_K"]) == {"K=8", "K=128"}
    for cases in result["by_K"].values():
        assert "compiled rows (vq, compile=True)" in cases and "eager search (vq)" in cases
        assert all(len(c["median_ms_per_round"]) == 2 for c in cases.values())
    profile = result["profile_compiled_vq_eval_K128"]
    times = [row["self_cpu_ms_per_call"] for row in profile["top"]]
    assert times == sorted(times, reverse=True) and sum(times) <= profile[
        "self_cpu_ms_per_call"
    ] * (1 + 1e-9)
