"""The lattice cell's shaping gap, KL(U ‖ N(0, Σ_U)) (lattice paper, eq. 12), logged beside
every lattice result (DESIGN.md §3.1): the lattice bottlenecks' ``shaping_gap()`` and the
``shaping_gap`` entry of ``qlatent eval``'s report."""

from __future__ import annotations

import math

import pytest
import torch

from cli_helpers import TINY_RUN
from qlatent.bottlenecks import build
from qlatent.experiments import custom

HALF_LOG = 0.5 * math.log(2 * math.pi * math.e)


@pytest.mark.parametrize(
    ("lattice", "expected"),
    [
        (None, 7.06),  # the rectangular lattice's bottleneck
        ("z", 7.06),
        ("a2", 6.29),
        ("d4", 5.38),
        ("e8", 4.05),
        (["leech", "bw16"], 2.63),
        (["e8", "e8", "e8", *["z"] * 16], 5.25),
    ],
)
def test_the_gap_of_each_lattice_at_dimension_40_is_the_issues_theory_column(lattice, expected):
    """m·½·log(2πe·G) summed over the blocks: the column "ideal-lattice gap (theory)" of the
    Table-1 rows (rectangular 7.06, A2^20 6.29, D4^10 5.38, E8^5 4.05, Λ24 ⊕ Λ16 2.63,
    E8^3 ⊕ Z^16 5.25 nats)."""
    args = {} if lattice is None else {"lattice": lattice}
    gap = build("lattice", dim=40, **args).shaping_gap()
    assert gap.dtype == torch.float64 and gap.dim() == 0
    assert round(gap.item(), 2) == expected


@pytest.mark.parametrize("spacing_per", ["block", "coordinate"])
def test_the_gap_is_the_kl_of_the_cells_own_points_to_their_gaussian(spacing_per):
    """Estimated from the cell itself: ½·log det(2πe·Σ̂) − log V with Σ̂ the covariance of
    40,000 points uniform on a stretched E8 ⊕ A2 cell, which the learned scales do not move
    (KL is unchanged by a linear map of both distributions)."""
    neck = build("lattice", dim=10, lattice=["e8", "a2"], spacing_per=spacing_per).double()
    before = neck.shaping_gap().item()
    with torch.no_grad():
        neck.log_spacing.uniform_(-0.7, 0.7, generator=torch.Generator().manual_seed(1))
    assert neck.shaping_gap().item() == before
    u = neck._unit_dither(40_000, torch.Generator().manual_seed(2), torch.float64)
    u = u * neck._coordinate_scale().detach()  # points uniform on the scaled cell
    covariance = torch.cov(u.T)
    _, log_det = torch.linalg.slogdet(2 * math.pi * math.e * covariance)
    estimate = 0.5 * log_det.item() - neck.log_volume().item()
    assert estimate == pytest.approx(before, abs=0.02)
    assert before == pytest.approx(
        8 * HALF_LOG
        + 0.5 * 8 * math.log(929 / 12960)
        + 2 * (HALF_LOG + 0.5 * math.log(5 / (36 * math.sqrt(3))))
    )


def test_eval_reports_the_gap_per_image_for_a_lattice_and_not_for_a_codebook(tmp_path):
    for name in ("lattice", "vq"):
        path = tmp_path / f"{name}.toml"
        path.write_text(TINY_RUN.format(name=name, family="gated_mlp", hidden="[16]"))
        cfg = custom.load_config(str(path), [f"out_dir={tmp_path / name}"])
        custom.train(cfg)
        report = custom.eval_checkpoint(tmp_path / name / "best.pt", progress=False)
        lines = custom.format_report(report)
        if name == "vq":
            assert "shaping_gap" not in report and "shaping gap" not in lines
            continue
        per_vector = 4 * 0.5 * math.log(2 * math.pi * math.e / 12)  # latent_dim = 4
        assert report["shaping_gap"]["nats"] == pytest.approx(per_vector)  # one code per image
        assert report["shaping_gap"]["per_dimension"] == pytest.approx(per_vector / 4)
        assert f"shaping gap (eq. 12): {per_vector:.3f} nats per image" in lines


def test_a_conv_lattice_counts_every_position(tmp_path):
    """A conv encoder's code is one vector per position: 7 × 7 of them for 28 × 28 synthetic
    images through two stride-2 layers, each paying the gap."""
    path = tmp_path / "conv.toml"
    path.write_text(TINY_RUN.format(name="lattice", family="conv", hidden="[8, 8]"))
    cfg = custom.load_config(str(path), [f"out_dir={tmp_path / 'run'}"])
    custom.train(cfg)
    report = custom.eval_checkpoint(tmp_path / "run" / "best.pt", progress=False)
    per_vector = 4 * 0.5 * math.log(2 * math.pi * math.e / 12)
    assert report["shaping_gap"]["nats"] == pytest.approx(49 * per_vector)


def test_the_gap_is_a_cpu_number_wherever_the_module_is():
    """Under a meta default device (a model sized before it is built) it is still a number."""
    with torch.device("meta"):
        rect, e8 = build("lattice", dim=8), build("lattice", dim=8, lattice="e8")
    for neck, expected in ((rect, 8 * math.log(2 * math.pi * math.e / 12) / 2), (e8, None)):
        with torch.device("meta"):
            gap = neck.shaping_gap()
        assert gap.device.type == "cpu"
        if expected is not None:
            assert gap.item() == pytest.approx(expected)


def test_eval_says_when_its_iwae_rests_on_the_approximate_density(tmp_path):
    """A good lattice trained with ``density="gaussian"``: its IWAE value is no bound on
    log p(x), and the report says so; with the Monte-Carlo density it does not."""
    reports = {}
    for density in ("gaussian", "monte_carlo"):
        path = tmp_path / f"{density}.toml"
        text = TINY_RUN.format(name="lattice", family="gated_mlp", hidden="[16]")
        path.write_text(text.replace("latent_dim = 4", "latent_dim = 8"))
        args = [
            f"out_dir={tmp_path / density}",
            "bottleneck.args.lattice=e8",
            f"bottleneck.args.density={density}",
            "bottleneck.args.eval_samples=8",
            "bottleneck.args.eval_prior_samples=4",
        ]
        custom.train(custom.load_config(str(path), args))
        best = tmp_path / density / "best.pt"
        reports[density] = custom.eval_checkpoint(best, iwae_samples=2, progress=False)
    lines = custom.format_report(reports["gaussian"])
    assert reports["gaussian"]["iwae"]["approximate_prior"] is True
    assert "not a bound on log p(x)" in lines
    assert "approximate_prior" not in reports["monte_carlo"]["iwae"]
    assert "not a bound" not in custom.format_report(reports["monte_carlo"])
    assert reports["gaussian"]["shaping_gap"]["nats"] == pytest.approx(
        8 * 0.5 * math.log(2 * math.pi * math.e * 929 / 12960)
    )
