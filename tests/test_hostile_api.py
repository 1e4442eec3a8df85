"""Hostile arguments to the Python API: one ValueError or TypeError naming the argument.

Each case was found by calling the library as a researcher does, with a wrong type, a value out
of range or an absurd size: constructors by name (``build``), the bottleneck methods, the
coder's arguments and the lattice builder. Before, they ended in an allocation failure, a torch
error from deep inside (``_make_subclass(): argument 'require_grad' ...``), an AttributeError,
a NaN codebook, or were accepted without a word (``compile="no"`` switched compilation on).
"""

from __future__ import annotations

import math

import pytest
import torch

from qlatent import coding
from qlatent.bottlenecks import build
from qlatent.lattices import tile
from qlatent.rng import SeedKeys


# ------------------------------------------------------------------------ sizes by name
@pytest.mark.parametrize(
    ("name", "kwargs", "named"),
    [
        ("vq", {"dim": 8, "num_codes": 2**40}, "num_codes=1099511627776"),
        ("vq_ema", {"dim": 10**9}, "dim=1000000000"),
        ("soft_vq", {"dim": 8, "num_codes": 10**9}, "num_codes=1000000000"),
        ("scalar_st", {"dim": 8, "levels": 2**40}, "levels=1099511627776"),
        ("lattice", {"dim": 10**9}, "dim=1000000000"),
    ],
)
def test_absurd_sizes_are_refused_before_allocating(name, kwargs, named):
    """Counted on the meta device first: before, each tried to allocate terabytes."""
    with pytest.raises(ValueError, match=rf"bottleneck '{name}' \(.*{named}.*\) would hold"):
        build(name, **kwargs)


def test_a_width_whose_square_overflows_torch_is_refused():
    """gaussian_dither's two N x N maps at N = 2^40: torch's storage size overflowed, even on
    the meta device ("Storage size calculation overflowed")."""
    with pytest.raises(ValueError, match=r"dim must be at most 1,073,741,824 .*1099511627776"):
        build("gaussian_dither", dim=2**40)


# ------------------------------------------------------------------- constructor values
@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        # the float32 parameter's fill overflowed ("value cannot be converted to type float")
        ("gaussian_lattice", {"init_logvar": 1e300}, r"init_logvar must lie in \[-30, 30\]"),
        # accepted: σ² = exp(100) is infinite in float32, every rate inf
        ("gaussian_lattice", {"init_logvar": 100.0}, r"init_logvar must lie in \[-30, 30\]"),
        # "from is out of bounds for float"
        ("learnable_lattice", {"init_range": 1e300}, "init_range must be a positive number of"),
        ("learnable_lattice", {"init_range": float("inf")}, "init_range must be a positive"),
        ("vector_st", {"init_range": 1e300}, "init_range must be a positive number of at most"),
        ("scalar_st", {"init_range": 1e300}, "init_range must be a positive number of at most"),
        # accepted: exp(log 1e300) is infinite in float32, the training rate NaN
        ("lattice", {"init_spacing": 1e300}, r"init_spacing must be a .* in \[1e-30, 1e30\]"),
        ("lattice", {"init_scale": 1e300}, r"init_scale must be a .* in \[1e-30, 1e30\]"),
        ("lattice", {"init_scale": True}, "init_scale must be a finite positive number"),
        ("lattice", {"init_spacing": 1e-300, "lattice": "e8"}, "init_spacing must be a finite"),
        # accepted: an infinite eps made the smoothed counts, then the codebook, NaN
        ("vq_ema", {"eps": float("inf")}, "eps must be a finite positive number, got inf"),
        ("vq_ema", {"eps": True}, "eps must be a number, got True"),
        # "'>' not supported between instances of 'str' and 'int'"
        ("soft_em_vq", {"eps": "1e-5"}, "eps must be a number, got '1e-5'"),
        ("vq_ema", {"decay": None}, "decay must be a number, got None"),
    ],
)
def test_constructor_values_out_of_range_are_named(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(name, **{"dim": 8, **kwargs})


def test_scalar_st_names_its_own_argument():
    """``levels`` was reported under VectorST's name for it: "codes must be ..."."""
    with pytest.raises(ValueError, match="levels must be a positive integer, got 2.5"):
        build("scalar_st", dim=4, levels=2.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # "_make_subclass(): argument 'require_grad' (position 3) must be bool, not str"
        ({"learn_spacing": "no"}, "learn_spacing must be True or False, got 'no'"),
        ({"learn_scale": 0}, "learn_scale must be True or False, got 0"),
        ({"learn_scale": None, "lattice": "e8"}, "learn_scale must be True or False, got None"),
        # accepted, and a truthy string switched compilation on
        ({"compile": "no"}, "compile must be True or False, got 'no'"),
    ],
)
def test_lattice_switches_must_be_bools(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build("lattice", **{"dim": 8, **kwargs})


def test_vq_ema_store_smoothed_must_be_a_bool():
    """Any value was taken by its truth: ``store_smoothed="no"`` stored smoothed counts."""
    with pytest.raises(ValueError, match="store_smoothed must be True or False, got 'no'"):
        build("vq_ema", dim=4, num_codes=8, store_smoothed="no")


@pytest.mark.parametrize(
    ("spec", "dim", "message"),
    [
        (["e8", 5], 16, r"lattice must be a name or a non-empty list of names, got \['e8', 5\]"),
        ([1], 8, r"lattice must be a name or a non-empty list of names, got \[1\]"),
        (None, 8, "lattice must be a name or a non-empty list of names, got None"),
        ([], 8, r"lattice must be a name or a non-empty list of names, got \[\]"),
        ("e8", 16.0, "dim must be a positive integer, got 16.0"),
    ],
)
def test_tile_refuses_what_is_not_a_list_of_names(spec, dim, message):
    """A list holding a number failed with AttributeError ('int' object has no attribute
    'strip'), None with "'NoneType' object is not iterable", a float dim deep in a list
    product."""
    with pytest.raises(ValueError, match=message):
        tile(spec, dim)


def test_a_good_lattice_named_by_a_number_is_refused():
    with pytest.raises(ValueError, match="lattice must be a name or a non-empty list of names"):
        build("lattice", dim=8, lattice=8)


# ---------------------------------------------------------------------------- methods
@pytest.mark.parametrize("name", ["gaussian", "lattice", "soft_vq", "soft_em_vq"])
def test_a_training_forward_checks_its_generator(name):
    """Only the hard path checked it: training forwards failed with AttributeError ('int'
    object has no attribute 'device')."""
    bottleneck = build(name, dim=4).train()
    y = torch.randn(3, bottleneck.in_dim)
    with pytest.raises(ValueError, match="generator must be a torch.Generator .* got int"):
        bottleneck(y, generator=5)


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("gaussian", "Gaussian noise"),
        ("gaussian_dither", "Gaussian noise"),
        ("info_dropout", "Gaussian noise"),
        ("soft_vq", "Gaussian noise"),
        ("soft_em_vq", "sampling codes"),
    ],
)
def test_seed_keys_where_torch_draws_the_noise_is_named(name, what):
    """``randn() received an invalid combination of arguments`` (a torch error listing
    overloads) or ``multinomial(): argument 'generator' must be torch.Generator``."""
    bottleneck = build(name, dim=4).train()
    y = torch.randn(3, bottleneck.in_dim)
    with pytest.raises(ValueError, match=f"must be a torch.Generator for {what}, got a qlatent"):
        bottleneck(y, generator=SeedKeys(0))


def test_posterior_sample_checks_its_arguments():
    bottleneck = build("lattice", dim=4)
    y = torch.randn(3, 4)
    # True was taken as one sample; 5 as a generator failed with AttributeError
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got True"):
        bottleneck.posterior_sample(y, True)
    with pytest.raises(ValueError, match="generator must be a torch.Generator .* got int"):
        bottleneck.posterior_sample(y, 2, generator=5)


# ------------------------------------------------------------------------------ coding
@pytest.fixture(scope="module")
def coded():
    torch.manual_seed(0)
    bottleneck = build("lattice", dim=4).eval()
    y = torch.randn(6, 4)
    return bottleneck, y, bottleneck.compress(y, seed=1)


@pytest.mark.parametrize("max_elements", ["x", None, 1.5, True, -1])
def test_decompress_checks_max_elements(coded, max_elements):
    """A string or None failed comparing it ("'>' not supported between ..."); 1.5, True and
    -1 were taken, then blamed on the file ("the header announces 24 values ... more than
    max_elements=-1")."""
    bottleneck, _, data = coded
    with pytest.raises(ValueError, match="max_elements must be a non-negative integer") as err:
        coding.decompress(bottleneck, data, max_elements=max_elements)
    assert not isinstance(err.value, coding.CodingError)


@pytest.mark.parametrize(
    ("digest", "message"),
    [("abc", "got str"), (5, "got int"), (b"x", "got 1"), (b"", "got 0")],
)
def test_digests_must_be_32_bytes(coded, digest, message):
    """decompress: AttributeError ('str' object has no attribute 'hex'), or a short digest
    blamed on the file ("written by a different model"); compress: "object of type 'int' has
    no len()", and an empty digest was replaced by the model's without a word."""
    bottleneck, y, data = coded
    with pytest.raises(ValueError, match=f"digest must be 32 bytes, {message}") as err:
        coding.decompress(bottleneck, data, digest=digest)
    assert not isinstance(err.value, coding.CodingError)
    with pytest.raises(ValueError, match=f"digest must be 32 bytes, {message}"):
        coding.compress(bottleneck, y, seed=0, digest=digest)
    with pytest.raises(ValueError, match=f"expected_digest must be 32 bytes, {message}"):
        coding.unpack(data, expected_digest=digest)


@pytest.mark.parametrize("call", ["compress", "decompress", "ideal_bits"])
def test_coding_something_that_is_not_a_bottleneck_is_named(coded, call):
    """AttributeError: 'NoneType' object has no attribute 'parameters' (or 'state_dict',
    '_check_input')."""
    _, y, data = coded
    calls = {
        "compress": lambda: coding.compress(None, y, seed=0),
        "decompress": lambda: coding.decompress(None, data),
        "ideal_bits": lambda: coding.ideal_bits(None, y, seed=0),
    }
    with pytest.raises(TypeError, match=r"expected a bottleneck \(a torch.nn.Module\), got None"):
        calls[call]()


# -------------------------------------------------------------------------------- eval
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # RuntimeError from manual_seed: "expected a long, but got str"
        ({"seed": "x"}, r"seed must be an integer in \[-2\^63, 2\^64\), got 'x'"),
        # "Overflow when unpacking long long"
        ({"seed": 2**64}, r"seed must be an integer in \[-2\^63, 2\^64\)"),
        # a weight matrix of 3 x 10^12 numbers was allocated
        ({"num_classes": 10**12}, "num_classes=1,000,000,000,000 makes a probe of more than"),
        # taken as lr = 1.0
        ({"lr": True}, "lr must be a positive number, got True"),
        # permutations of 8 rows joined until 10^12 indices: ran until the memory was full
        ({"batch_size": 10**12}, "batch_size=1,000,000,000,000 makes batches of more than"),
    ],
)
def test_linear_probe_checks_its_arguments(kwargs, message):
    from qlatent.eval import linear_probe

    x, y = torch.randn(8, 3), torch.arange(8) % 2
    with pytest.raises(ValueError, match=message):
        linear_probe(x, y, x, y, steps=1, **kwargs)


def test_a_probe_batch_larger_than_the_data_is_the_same_stream_of_permutations():
    """Batches past the data size join fresh permutations in one go, the same indices as one
    permutation at a time."""
    from qlatent.eval.downstream import _batch_indices

    def one_at_a_time(n, batch_size, steps, generator):
        stream = torch.empty(0, dtype=torch.long)
        for _ in range(steps):
            while stream.numel() < batch_size:
                stream = torch.cat([stream, torch.randperm(n, generator=generator)])
            yield stream[:batch_size]
            stream = stream[batch_size:]

    for n, batch_size in [(8, 3), (8, 8), (8, 21), (5, 100)]:
        a = list(_batch_indices(n, batch_size, 7, torch.Generator().manual_seed(1)))
        b = list(one_at_a_time(n, batch_size, 7, torch.Generator().manual_seed(1)))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("seed", [-1, 2**32, "x", 1.5, True])
def test_kmeans_scores_names_its_seed(seed):
    """sklearn's error named its own ``random_state``."""
    from qlatent.eval import kmeans_scores

    x, y = torch.randn(12, 3), torch.arange(12) % 3
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^32\), got"):
        kmeans_scores(x, y, n_clusters=3, n_init=1, seed=seed)


@pytest.mark.parametrize("latents", [None, 5])
def test_update_names_what_it_takes(latents):
    """``update(None)`` was "'NoneType' object is not iterable"."""
    with pytest.raises(TypeError, match="latents must be a tensor or an iterable of tensors"):
        build("vq", dim=4, num_codes=8).update(latents)


@pytest.mark.parametrize("value", [math.inf, 1e300, True, "1", -1.0])
def test_loss_weights_are_finite_numbers(value):
    """``lmbda=inf`` or ``1e300`` was taken: the first step's float32 loss was infinite and the
    weights NaN (the next batch then failed on a non-finite input); ``True`` counted as 1."""
    from qlatent.losses import RateDistortionLoss

    for name in ("lmbda", "aux_weight"):
        with pytest.raises(ValueError, match=name):
            RateDistortionLoss(**{name: value})
    with pytest.raises(ValueError, match="commitment"):
        build("vq", dim=4, num_codes=8, commitment=value)
