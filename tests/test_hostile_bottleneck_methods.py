"""Hostile or mistaken input to the bottlenecks' methods beyond their constructors (the density
view, the good lattice's Monte-Carlo settings, settings changed after construction, ``update``,
``load_state_dict``, half precision) and to ``make_optimizer`` / ``save_atomic`` / ``load``:
each refused with one ValueError or TypeError naming what was wrong."""

from __future__ import annotations

import math
import os

import pytest
import torch

from qlatent.bottlenecks import build
from qlatent.train.checkpoint import CheckpointError, load, save_atomic
from qlatent.train.optim import make_optimizer


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def e8(**kwargs):
    counts = dict(samples=8, prior_samples=4, eval_samples=8, eval_prior_samples=4)
    return build("lattice", dim=8, lattice="e8", **{**counts, **kwargs})


# --------------------------------------------------------------------------- density view
@pytest.mark.parametrize("name", ["lattice", "gaussian", "gaussian_lattice", "e8"])
def test_log_prior_checks_its_points(name):
    """A wrong width failed inside the prior's maths (RuntimeError) or a reshape, a complex z
    gave a complex density (gaussian) or lost its imaginary part (e8), an integer or boolean
    z was taken as numbers, and a NaN gave a NaN density."""
    torch.manual_seed(0)
    neck = e8() if name == "e8" else build(name, dim=8)
    z = torch.randn(2, 3, 8)
    assert neck.log_prior(z).shape == (2, 3)
    bad = [
        (torch.randn(2, 3, 9), "z must end in the code dimension 8"),
        (torch.randn(2, 3, 16), "z must end in the code dimension 8"),
        (torch.tensor(1.0), "z must end in the code dimension 8"),
        (z.to(torch.complex64), "z must be a floating-point tensor"),
        (z.long(), "z must be a floating-point tensor"),
        (z > 0, "z must be a floating-point tensor"),
        (torch.full((2, 3, 8), math.nan), "z contains 48 non-finite"),
        ("z", "z must be a torch.Tensor, got str"),
    ]
    for value, message in bad:
        with pytest.raises(ValueError, match=message):
            neck.log_prior(value)


@pytest.mark.parametrize("name", ["lattice", "gaussian", "gaussian_lattice"])
def test_posterior_sample_refuses_an_absurd_number_of_samples(name):
    """10^12 samples tried to allocate 48 TB (gaussian) or were blamed on the counter-based
    generator without naming num_samples (lattice)."""
    neck = build(name, dim=4)
    y = torch.randn(3, neck.in_dim)
    with pytest.raises(ValueError, match="num_samples=1000000000000 draws 12,000,000,000,000"):
        neck.posterior_sample(y, 10**12, generator=gen(0))
    assert neck.posterior_sample(y, 2, generator=gen(0))[0].shape == (2, 3, 4)


# ----------------------------------------------------------------- the good lattice's Monte Carlo
@pytest.mark.parametrize(
    ("args", "message"),
    [
        # log(0): "math domain error"
        ((0, 4), r"samples must be an even integer >= 2 \(antithetic pairs\), got 0"),
        # an odd count was taken, its last point unpaired and its weight wrong
        ((3, 4), "samples must be an even integer >= 2"),
        # True was one sample: every log-density -inf
        ((True, 4), "samples must be an even integer >= 2"),
        ((2**40, 4), "samples = 1099511627776 is more draws per row than one row's"),
        # allowed up to the generator's 134,217,727 per row: tens of GB for one row
        ((2**24, 4), "samples = 16777216 is more .* at most 8,388,608"),
        ((4, 2**24), "prior_samples = 16777216 is more .* at most 8,388,608"),
        # "shape must be a tuple of non-negative integers, got (-1, 8)"
        ((4, -1), "prior_samples must be a non-negative integer, got -1"),
        ((4, 1.5), "prior_samples must be a non-negative integer, got 1.5"),
        # IndexError: index 1 is out of bounds
        ((4, [1, 2]), r"prior_samples gives 2 counts for 1 blocks: \[1, 2\]"),
    ],
)
def test_log_density_checks_its_counts(args, message):
    with pytest.raises(ValueError, match=message):
        e8().log_density(torch.randn(3, 8), *args, gen(0))


@pytest.mark.parametrize("name", ["samples", "eval_samples", "prior_samples", "eval_prior_samples"])
def test_a_count_whose_one_row_needs_gigabytes_is_refused_when_set(name):
    """E8^5 took eval_samples = 10^7 (one row: 400 M numbers, about 8 GB of temporaries at the
    19 bytes per number measured); 10^6 is taken."""
    with pytest.raises(ValueError, match=f"{name} = 10000000 is more draws per row"):
        build("lattice", dim=40, lattice="e8", **{name: 10**7})
    neck = build("lattice", dim=40, lattice="e8", **{name: 10**6})
    with pytest.raises(ValueError, match=f"{name} = 1677722 is more .* at most 1,677,721"):
        setattr(neck, name, 1677722)
    assert getattr(neck, name) == 10**6


def test_log_density_checks_its_rows_and_switches():
    neck = e8()
    # RuntimeError from a broadcast, IndexError for one row, NaN densities for NaN rows
    for v, message in [
        (torch.randn(3, 9), r"v must have shape \(N, 8\), got \(3, 9\)"),
        (torch.randn(8), r"v must have shape \(N, 8\), got \(8,\)"),
        (torch.randn(3, 8).long(), "v must be a floating-point tensor, got torch.int64"),
        (torch.full((3, 8), math.nan), "v contains 24 non-finite"),
    ]:
        with pytest.raises(ValueError, match=message):
            neck.log_density(v, 4, 2, gen(0))
    with pytest.raises(ValueError, match="cap must be True or False, got 'no'"):
        neck.log_density(torch.randn(3, 8), 4, 2, gen(0), cap="no")


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("samples", 3, "samples must be an even integer >= 2"),
        ("samples", 0, "samples must be an even integer >= 2"),
        ("eval_samples", 2.0, "eval_samples must be an even integer >= 2"),
        ("prior_samples", -1, "prior_samples must be a non-negative integer"),
        ("eval_prior_samples", [1, 2, 3], "eval_prior_samples gives 3 counts for 1 blocks"),
        # taken, and the box proposal's code ran for it
        ("proposal", "bogus", "proposal must be 'prior', 'box' or 'tilted', got 'bogus'"),
        ("debias", "yes", "debias must be True or False, got 'yes'"),
    ],
)
def test_good_lattice_settings_are_checked_when_changed(attribute, value, message):
    """Settings changed after construction were taken without a word and failed at the next
    forward inside the counter-based generator ("math domain error", "shape must be a tuple
    of non-negative integers") or changed its estimate silently."""
    neck = e8()
    before = getattr(neck, attribute)
    with pytest.raises(ValueError, match=message):
        setattr(neck, attribute, value)
    assert getattr(neck, attribute) == before
    neck.eval_samples, neck.eval_prior_samples = 16, [8]  # a valid change is kept, checked
    assert (neck.eval_samples, neck.eval_prior_samples) == (16, 8)


def test_the_box_proposal_needs_the_laplace_prior_when_changed_too():
    neck = e8(prior="gaussian")
    with pytest.raises(ValueError, match="proposal='box' needs the Laplace prior"):
        neck.proposal = "box"
    with pytest.raises(ValueError, match="proposal='box' needs the Laplace prior"):
        with neck.proposal_set_to("box"):
            pass
    with neck.proposal_set_to("tilted"):
        assert neck.proposal == "tilted"
    assert neck.proposal == "prior"


def test_a_half_precision_good_lattice_has_its_rate():
    """In float16 every Monte-Carlo term counted as the largest (the log-sum's floor, 24 nats
    above float16's smallest normal number, was above 0): every rate was 0 nats, on both
    paths and in ``log_prior``."""
    torch.manual_seed(0)
    neck = e8(samples=32, eval_samples=32)
    y = torch.randn(5, 8)
    for training in (True, False):
        reference = neck.float().train(training)(y, generator=gen(3)).rate
        half = neck.half().train(training)(y, generator=gen(3)).rate
        assert half.dtype == torch.float16
        torch.testing.assert_close(half.float(), reference, atol=0.05, rtol=0.01)
    z = torch.randn(2, 3, 8)
    assert bool((neck.half().log_prior(z) < -1).all())


# ----------------------------------------------------- other settings changed after construction
@pytest.mark.parametrize(
    ("name", "path", "value", "message"),
    [
        # RuntimeError: invalid multinomial distribution
        ("soft_em_vq", "temperature", 0.0, "temperature must be at least 1e-30"),
        ("soft_em_vq", "temperature", math.nan, "temperature must be a non-negative number"),
        # "cannot sample n_sample <= 0 samples"; 10^12 tried to allocate 48 TB
        ("soft_em_vq", "num_samples", 0, "num_samples must be a positive integer, got 0"),
        ("soft_em_vq", "num_samples", 10**12, "num_samples must be at most 1,048,576"),
        ("soft_em_vq", "vib_weight", math.inf, "vib_weight must be at most"),
        # the codebook became garbage (a decay of 1.5 grows the averages without bound)
        ("vq_ema", "ema.decay", 1.5, r"decay must lie in \[0, 1\), got 1.5"),
        ("soft_em_vq", "ema.decay", math.nan, r"decay must lie in \[0, 1\), got nan"),
        # eps = 0 made the codebook infinite, NaN made it NaN
        ("vq_ema", "ema.eps", 0.0, "eps must be a finite positive number, got 0.0"),
        ("vq_ema", "ema.store_smoothed", "yes", "store_smoothed must be True or False"),
        # a NaN aux loss, or a negative commitment that rewarded moving away
        ("vq", "commitment", math.nan, "commitment must be a non-negative number, got nan"),
        ("vq_ema", "commitment", -1.0, "commitment must be a non-negative number"),
        ("vq", "compile", "no", "compile must be True or False, got 'no'"),
        ("soft_vq", "noise_std", math.inf, "noise_std must be at most"),
        ("soft_vq", "variant", "notebook", "variant must be 'paper' or 'reference'"),
        ("learnable_lattice", "size_weight", math.nan, "size_weight must be finite, got nan"),
        ("learnable_lattice", "commitment", True, "commitment must be a non-negative number"),
        ("info_dropout", "alpha_max", math.nan, "alpha_max must be a positive finite number"),
        ("gaussian", "logvar_min", math.nan, "logvar_min must be a finite number or None"),
        # a truthy string switched the compiled kernels on
        ("lattice", "compile", "yes", "compile must be True or False, got 'yes'"),
    ],
)
def test_settings_changed_after_construction_are_checked(name, path, value, message):
    neck = build(name, dim=4, **({"num_codes": 8} if "vq" in name else {}))
    *owners, attribute = path.split(".")
    owner = neck
    for part in owners:
        owner = getattr(owner, part)
    before = getattr(owner, attribute)
    with pytest.raises(ValueError, match=message):
        setattr(owner, attribute, value)
    assert getattr(owner, attribute) == before


def test_a_temperature_float32_rounds_to_zero_is_refused():
    """1e-300 is 0 in float32: every logit −d/T was infinite or NaN and the first training
    forward failed in ``torch.multinomial``."""
    with pytest.raises(ValueError, match="temperature must be at least 1e-30 .*got 1e-300"):
        build("soft_em_vq", dim=4, num_codes=8, temperature=1e-300)


# ------------------------------------------------------------------------ update, loading
@pytest.mark.parametrize("name", ["vq", "learnable_lattice", "scalar_st"])
def test_update_skips_empty_batches(name):
    """An empty batch failed in a reshape ("cannot reshape tensor of 0 elements")."""
    neck = build(name, dim=4, **({"num_codes": 8} if name == "vq" else {}))
    empty, y = torch.zeros(0, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match="needs at least one non-empty batch"):
        neck.update(empty)
    assert neck.update([empty, y, torch.zeros(2, 4, 0)])["symbols"] == neck.update(y)["symbols"]


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("vq", "codebook"),
        ("vq_ema", "ema.ema_sum"),
        ("lattice", "log_scale"),
        ("vector_st", "logits"),
    ],
)
def test_load_state_dict_refuses_non_finite_weights(name, key):
    """Loaded directly (not through ``load_weights``), a NaN or an infinity was taken and every
    later output was NaN."""
    neck = build(name, dim=4, **({"num_codes": 8} if "vq" in name else {}))
    state = neck.state_dict()
    kept = state[key].clone()
    for value in (math.nan, math.inf):
        bad = dict(state)
        bad[key] = torch.full_like(kept, value)
        with pytest.raises(ValueError, match=f"{key} contains {kept.numel()} non-finite"):
            neck.load_state_dict(bad)
        assert torch.equal(neck.state_dict()[key], kept)
    model = torch.nn.Sequential(neck)  # inside a larger model, under its prefix
    bad = {f"0.{k}": v for k, v in state.items()} | {f"0.{key}": torch.full_like(kept, math.nan)}
    with pytest.raises(ValueError, match=f"0.{key} contains"):
        model.load_state_dict(bad)


# ---------------------------------------------------------------------------- optimizers
def test_make_optimizer_checks_its_arguments():
    w = torch.nn.Parameter(torch.zeros(3))
    # an infinite or huge lr made the weights inf at the first step; True counted as 1;
    # a string or None failed inside torch ("'<=' not supported")
    for lr in (math.inf, 1e300, True, "0.1", None, 0.0, -1.0):
        with pytest.raises(ValueError, match=r"lr must be a finite number in \(0, 1\]"):
            make_optimizer([w], name="adam", lr=lr)
    # a single tensor was iterated row by row: "can't optimize a non-leaf Tensor"
    with pytest.raises(TypeError, match="params must be an iterable of tensors, got Parameter"):
        make_optimizer(w, name="adam", lr=0.1)
    with pytest.raises(TypeError, match="params must hold tensors only, got a int"):
        make_optimizer([1], name="adam", lr=0.1)  # AttributeError: no 'requires_grad'
    # taken with a warning: the tensor was stepped twice per step
    with pytest.raises(ValueError, match="params holds a tensor more than once"):
        make_optimizer([w, w], name="adam_normgrad", lr=0.1)
    frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    with pytest.raises(ValueError, match="params holds no tensor that requires grad"):
        make_optimizer([frozen], name="adam", lr=0.1)


# ---------------------------------------------------------------------------- checkpoints
def test_save_atomic_refuses_a_folder_or_a_pipe_before_writing(tmp_path):
    """A folder failed in the rename after the whole write (IsADirectoryError naming the
    temporary file); a pipe or a device was replaced by the checkpoint."""
    folder = tmp_path / "run.pt"
    folder.mkdir()
    with pytest.raises(ValueError, match="run.pt: it is a folder"):
        save_atomic({"a": 1}, folder)
    pipe = tmp_path / "pipe.pt"
    os.mkfifo(pipe)
    with pytest.raises(ValueError, match="pipe.pt: it is not a regular file"):
        save_atomic({"a": 1}, pipe)
    assert pipe.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.pt", "run.pt"]


def test_save_atomic_refuses_what_load_would_refuse(tmp_path):
    """A checkpoint nested deeper than load reads was written, then refused by every load;
    an object that is not plain data was pickled when it was not in a dict."""
    deep = inner = {}
    for _ in range(100):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(CheckpointError, match="nests containers more than 64 levels deep"):
        save_atomic(deep, tmp_path / "deep.pt")
    with pytest.raises(TypeError, match="plain data only, not Linear"):
        save_atomic(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    assert list(tmp_path.iterdir()) == []
    save_atomic(torch.ones(2), tmp_path / "tensor.pt")  # one tensor, as decompress writes
    assert torch.equal(torch.load(tmp_path / "tensor.pt", weights_only=True), torch.ones(2))


def test_load_of_a_folder_says_it_is_a_folder(tmp_path):
    """It was "no checkpoint at ..." (FileNotFoundError), as if nothing were there."""
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load(tmp_path / "missing.pt")


def test_the_repr_shows_every_monte_carlo_count():
    """Two good lattices that drew 4 or 1024 proposal points per row printed the same."""
    few, many = e8(prior_samples=4), e8(prior_samples=1024, eval_prior_samples=[2])
    assert "prior_samples=4, " in repr(few) and "eval_prior_samples=4," in repr(few)
    assert "prior_samples=1024, " in repr(many) and "eval_prior_samples=2," in repr(many)


@pytest.mark.parametrize(
    ("name", "kwargs", "key"),
    [
        ("lattice", {}, "log_scale"),
        ("lattice", {"lattice": "e8"}, "log_spacing"),
        ("gaussian_lattice", {}, "logvar"),
        ("gaussian_dither", {}, "logvar"),
    ],
)
@pytest.mark.parametrize("value", [1e30, -200.0])
def test_a_loaded_logarithm_whose_exponential_is_not_a_number_is_refused(name, kwargs, key, value):
    """A finite log-scale of 1e30 (or -200, whose exponential is 0 in float32) loaded into a
    lattice gave NaN rates on every row, or an error that blamed the input."""
    neck = build(name, dim=8, **kwargs)
    state = {k: v.clone() for k, v in neck.state_dict().items()}
    state[key][0] = value
    with pytest.raises(ValueError, match=f"{key} holds 1 logarithm.s. whose exponential is 0"):
        neck.load_state_dict(state)
    state[key][0] = 80.0  # large, still finite in float32
    neck.load_state_dict(state)
