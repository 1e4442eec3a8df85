"""Hostile input, round 5: the lattices' Python API, the registries, the counter-based RNG, the
coder's Python API, results files and the priors (README, "Hostile input and edge cases").

Each test names what happened before: a traceback inside torch, a hang, an allocation of
absurd size or a silently wrong value.
"""

from __future__ import annotations

import json

import pytest
import torch

from qlatent import results
from qlatent.bottlenecks import build
from qlatent.coding import compress, decompress, ideal_bits
from qlatent.lattices import (
    CheckerboardLattice,
    DirectSum,
    DualCheckerboardLattice,
    GossetLattice,
    RectangularLattice,
    RootLatticeA,
    integer_lattice,
    lattice_by_name,
    tile,
)
from qlatent.lattices.search import GeneralLattice
from qlatent.priors import gaussian_cell_log_prob, laplace_cell_log_prob, laplace_cell_nll
from qlatent.registry import Registry, UnknownNameError
from qlatent.rng import SeedKeys, counter_uniform, draw_key

E8 = GossetLattice()
KEY = torch.tensor(7, dtype=torch.int32)


# ---------------------------------------------------------------------------- lattices
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_closest_point_refuses_rows_that_are_not_floating_point(dtype):
    """E8 failed inside torch ("result type Float can't be cast to ... Long", "round_vml_cpu
    not implemented for 'Bool'")."""
    with pytest.raises(ValueError, match=f"E8 takes floating-point rows, got {dtype}"):
        E8.closest_point(torch.ones(2, 8, dtype=dtype))


def test_integer_rows_were_decoded_with_a_truncated_spacing_or_basis():
    """Silently wrong: the rectangular lattice cast its spacing 0.5 to the rows' int64 (0) and
    divided by it; E8's unit-cube map multiplied by its basis cast to integers (½ → 0)."""
    with pytest.raises(ValueError, match="floating-point rows"):
        RectangularLattice(torch.full((2,), 0.5)).closest_point(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="floating-point rows"):
        E8.points_from_unit(torch.ones(1, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="floating-point rows"):
        GeneralLattice(torch.tensor([[1.0, 0.5], [0.0, 1.0]])).closest_point(torch.tensor([[0, 1]]))


@pytest.mark.parametrize(
    "lattice", [E8, tile("e8", 16), integer_lattice(8)], ids=["e8", "e8^2", "z8"]
)
def test_coordinates_and_points_refuse_complex_and_boolean_values(lattice):
    """A complex point lost its imaginary part with only a warning; True counted as 1."""
    m = lattice.dim
    with pytest.raises(ValueError, match="complex64"):
        lattice.coordinates(torch.ones(1, m, dtype=torch.complex64))
    with pytest.raises(ValueError, match="torch.bool"):
        lattice.points(torch.ones(1, m, dtype=torch.bool))
    k = torch.arange(m).unsqueeze(0)  # integer coordinates stay what they were
    assert torch.equal(lattice.coordinates(lattice.points(k)), k)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "n must be an integer in"),
        ({"n": 1.5}, "n must be an integer in"),
        ({"n": True}, "n must be an integer in"),
        ({"n": 2**40}, r"n must be an integer in \[0, 268435456\]"),
        ({"n": 2, "dtype": torch.int64}, "dtype must be a floating-point torch.dtype"),
        ({"n": 2, "dtype": "float32"}, "dtype must be a floating-point torch.dtype"),
        ({"n": 2, "generator": 3}, "generator must be a torch.Generator or None, got int"),
        ({"n": 2, "generator": SeedKeys(1)}, "generator must be a torch.Generator .* SeedKeys"),
    ],
)
def test_sample_dither_checks_its_arguments(kwargs, message):
    """A traceback inside torch.rand (or an AttributeError), and 2^40 rows an attempt to
    allocate 32 TiB."""
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=message):
        E8.sample_dither(n, **kwargs)
    with pytest.raises(ValueError, match=message):
        integer_lattice(8).sample_dither(n, **kwargs)  # the closed-form override too


def test_second_moment_needs_a_sample():
    """``samples=0`` returned NaN."""
    with pytest.raises(ValueError, match="samples must be a positive integer, got 0"):
        E8.second_moment(samples=0)


def test_lattice_names_take_ascii_digits_and_compile_a_bool():
    """``\\d`` matched any script's digits ('a١' built A1), and ``compile="yes"`` was ignored
    by every lattice without a compiled decoder."""
    for name in ("a\u0661", "d\u0664", "d\u0664*"):
        with pytest.raises(ValueError, match="unknown lattice"):
            lattice_by_name(name)
    with pytest.raises(ValueError, match="compile must be True or False, got 'yes'"):
        lattice_by_name("a2", compile="yes")
    assert lattice_by_name(" D4 ").name == "D4"


def test_tile_and_families_refuse_absurd_sizes():
    """``tile("z", 2**40)`` was a MemoryError building a list of 2^40 blocks; A_n, D_n and D_n*
    formed (n, n) bases in Python (A_10000: 15 s, 800 MB); ``RootLatticeA(True)`` failed in
    torch.zeros; ``integer_lattice`` passed its argument to torch.ones."""
    with pytest.raises(ValueError, match=r"dim must be at most 2\^20"):
        tile("z", 2**40)
    for family in (RootLatticeA, CheckerboardLattice, DualCheckerboardLattice):
        for n in (True, 4097):
            with pytest.raises(ValueError, match="needs an integer n in"):
                family(n)
    for dim in (-1, 2.5, True, 2**40):
        with pytest.raises(ValueError, match=r"dim must be an integer in \[1, 2\^30\]"):
            integer_lattice(dim)


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ([1, 2], "blocks\\[0\\] must be a Lattice, got int"),
        ([E8, "e8"], "blocks\\[1\\] must be a Lattice, got str"),
        ("e8", "blocks must be a list of lattices, got str"),
        (torch.ones(3), "blocks must be a list of lattices, got Tensor"),
    ],
)
def test_direct_sum_takes_lattices(blocks, message):
    """AttributeError ('int' object has no attribute 'dim'), or "Boolean value of Tensor with
    more than one value is ambiguous"."""
    with pytest.raises(ValueError, match=message):
        DirectSum(blocks)


@pytest.mark.parametrize(
    ("spacing", "message"),
    [
        ([1.0, 2.0], "spacing must be a torch.Tensor, got list"),
        (torch.ones(2, dtype=torch.complex64), "spacing must be a real-valued tensor"),
        (torch.ones(2, dtype=torch.bool), "spacing must be a real-valued tensor"),
    ],
)
def test_rectangular_spacing_is_a_real_tensor(spacing, message):
    """A list was an AttributeError, a complex spacing failed in torch's ``le``, a boolean one
    was taken as spacings of 1."""
    with pytest.raises(ValueError, match=message):
        RectangularLattice(spacing)


@pytest.mark.parametrize(
    ("generator", "message"),
    [
        (torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]), "generator must be finite"),
        (torch.eye(2, dtype=torch.complex64), "generator must be a real matrix"),
        (torch.zeros(0, 0), "square matrix of 1 to 64 rows"),
        (torch.eye(65), "square matrix of 1 to 64 rows"),
        ("e8", "generator must be a matrix, got str"),
    ],
)
def test_general_lattice_checks_its_generator(generator, message):
    """NaN: a LinAlgError from the rank; complex: its real part without a word; 0 × 0: an
    empty lattice; 128 × 128: minutes of LLL in Python; a string: torch's "new(): invalid
    data type"."""
    with pytest.raises(ValueError, match=message):
        GeneralLattice(generator)


def test_general_lattice_refuses_a_generator_whose_reduction_overflows():
    """Entries near 1e200 overflowed LLL's inner products: "cannot convert float NaN to
    integer" from deep inside the reduction."""
    big = torch.tensor([[1e200, 1e200], [1e200, 1.0000001e200]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^generator entries reach 1e\+200: the squared"):
        GeneralLattice(big)
    scaled = GeneralLattice(big / 1e190)  # within range: built, and decodes exactly
    x = torch.tensor([[3.0e10, -2.0e10]], dtype=torch.float64)
    assert torch.isfinite(scaled.closest_point(x)).all()


def test_general_lattice_refuses_non_finite_rows():
    """The sphere decoder failed on "cannot convert float NaN to integer"."""
    lattice = GeneralLattice(torch.eye(2))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="general\\(2\\) takes finite rows"):
            lattice.closest_point(torch.tensor([[bad, 0.0]]))


# ---------------------------------------------------------------------------- registry
def test_registry_refuses_names_and_factories_it_could_not_build():
    """A number or None was registered (and broke ``names()``: "'<' not supported between
    'NoneType' and 'int'"), a list was "unhashable type", a non-callable factory failed only
    when built ("'int' object is not callable")."""
    reg = Registry[object]("widget")
    for name in (3, None, "", " x", ["a"]):
        with pytest.raises(ValueError, match="a widget name must be a non-empty string"):
            reg.register(name)
    with pytest.raises(TypeError, match="'x': a factory must be callable .* got int"):
        reg.register("x")(5)
    assert reg.names() == [] and "x" not in reg


def test_registry_lookup_of_an_unhashable_name_lists_the_known_ones():
    """``get(["a"])`` and ``["a"] in registry`` were a TypeError "unhashable type: 'list'"."""
    reg = Registry[object]("widget")
    reg.register("plain")(dict)
    with pytest.raises(UnknownNameError, match=r"unknown widget \['a'\]; known names: plain"):
        reg.get(["a"])
    assert ["a"] not in reg and "plain" in reg


# ---------------------------------------------------------------------------- rng
@pytest.mark.parametrize("generator", [5, "seed", 1.5])
def test_draw_key_names_a_generator_of_another_kind(generator):
    """AttributeError: 'int' object has no attribute 'device'."""
    with pytest.raises(ValueError, match="generator must be a torch.Generator, a .*SeedKeys"):
        draw_key(generator)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.tensor(1.5), (3,)), "key must be a 0-d int32 tensor"),  # was hashed as 1
        ((torch.tensor([1, 2], dtype=torch.int32), (3,)), "key must be a 0-d int32 tensor"),
        ((5, (3,)), "key must be a 0-d int32 tensor .* got 5"),
        ((KEY, (-2, -3)), "shape must be a tuple of non-negative integers"),  # product 6
        ((KEY, 5), "shape must be a tuple of non-negative integers, got 5"),
        ((KEY, (2.5,)), "shape must be a tuple of non-negative integers"),
        ((KEY, (3,), torch.int32), "dtype must be a floating-point torch.dtype"),
        ((KEY, (3,), torch.float32, 1.5), "offset must be an integer, got 1.5"),
    ],
)
def test_counter_uniform_checks_its_arguments(args, message):
    """A float key was silently hashed as its integer part on the CPU; the others failed in
    NumPy or torch (a reshape of negative sizes, "result type Float can't be cast")."""
    with pytest.raises(ValueError, match=message):
        counter_uniform(*args)


def test_counter_uniform_in_float16_is_finite():
    """The grid's integers (up to 2^24) overflowed float16 before the scaling: all but the
    smallest draws were inf, and a lattice bottleneck in half precision gave y_hat = −inf (a
    "coordinates reach inf" error on the hard path)."""
    r = counter_uniform(KEY, (4096,), torch.float16)
    wide = counter_uniform(KEY, (4096,), torch.float32)
    assert torch.isfinite(r).all() and torch.equal(r, wide.half())
    neck = build("lattice", dim=4).half()
    y = torch.randn(3, 4)
    assert torch.isfinite(neck(y, generator=SeedKeys(1)).y_hat).all()
    neck.eval()
    y_hat = neck(y, generator=SeedKeys(1)).y_hat
    assert torch.isfinite(y_hat).all()
    assert torch.equal(decompress(neck, compress(neck, y, seed=1)), y_hat)


# ---------------------------------------------------------------------------- coding
@pytest.mark.parametrize("lattice", ["z", "e8"])
def test_a_bfloat16_lattice_bottleneck_codes_its_files(lattice):
    """TypeError "Got unsupported ScalarType BFloat16" from the dither's ``numpy()``."""
    neck = build("lattice", dim=8, lattice=lattice).to(torch.bfloat16).eval()
    y = torch.randn(3, 8)
    y_hat = neck(y, generator=SeedKeys(2)).y_hat
    assert torch.equal(decompress(neck, compress(neck, y, seed=2)), y_hat)


def test_compress_refuses_a_shape_the_container_cannot_hold_before_coding():
    """Rank 9 was coded whole, then refused by ``pack`` ("shape must have 1 to 8 entries");
    an expanded (1, 4, 2^32) view was an attempt to allocate 64 GiB in the input check."""
    neck = build("lattice", dim=4).eval()
    with pytest.raises(ValueError, match=r"y has shape \(1, 4, 1, 1, 1, 1, 1, 1, 1\)"):
        compress(neck, torch.randn(1, 4, *[1] * 7), seed=0)
    huge = torch.zeros(1, 4, 1).expand(1, 4, 2**32)
    with pytest.raises(ValueError, match="at most 8 axes of fewer than 2\\^32 entries"):
        compress(neck, huge, seed=0)
    assert ideal_bits(neck, torch.randn(1, 4, *[1] * 7), seed=0) > 0  # no file: any rank


def test_meta_tensors_are_named_not_copied():
    """NotImplementedError "Cannot copy out of meta tensor; no data!" from deep in torch."""
    with torch.device("meta"):
        sized = build("lattice", dim=4)
    neck = build("lattice", dim=4).eval()
    y = torch.randn(2, 4)
    with pytest.raises(ValueError, match="meta device"):
        compress(sized.eval(), y, seed=0)
    with pytest.raises(ValueError, match="meta device"):
        decompress(sized, compress(neck, y, seed=0))
    for call in (compress, ideal_bits):
        with pytest.raises(ValueError, match="y is on the meta device"):
            call(neck, torch.empty(2, 4, device="meta"), seed=0)


# ---------------------------------------------------------------------------- results
def test_write_json_refuses_a_payload_too_deep_for_the_encoder(tmp_path):
    """RecursionError from inside the json module."""
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="nests too deeply"):
        results.write_json({"a": deep}, tmp_path / "a.json")
    assert not (tmp_path / "a.json").exists()


def test_read_json_does_not_read_a_huge_file(tmp_path, monkeypatch):
    """A file of any size was read into memory whole."""
    path = results.write_json({"rows": list(range(10))}, tmp_path / "r.json")
    assert results.read_json(path) == {"rows": list(range(10))}
    monkeypatch.setattr(results, "MAX_JSON_BYTES", 16, raising=False)
    assert results.read_json(path) is None
    assert json.loads(path.read_text()) == {"rows": list(range(10))}  # not touched


# ---------------------------------------------------------------------------- priors
@pytest.mark.parametrize("cell", [laplace_cell_log_prob, gaussian_cell_log_prob, laplace_cell_nll])
def test_priors_refuse_complex_and_non_tensor_centres(cell):
    """A complex η was read as its modulus without a word; a list failed on a missing ``abs``;
    the Laplace cell failed on a number as its scale ("'float' object has no attribute
    'reciprocal'"), which the Gaussian one took."""
    ones = torch.ones(3)
    eta = torch.tensor([[0.0, 1.0, -3.0]])
    with pytest.raises(ValueError, match="eta must be a real-valued tensor, got torch.complex64"):
        cell(eta.to(torch.complex64), ones, ones)
    with pytest.raises(ValueError, match="eta must be a tensor, got list"):
        cell([0.0, 1.0, -3.0], ones, ones)
    with pytest.raises(ValueError, match="scale must be a tensor or a number, got str"):
        cell(eta, ones, "1")
    torch.testing.assert_close(cell(eta, 1.0, 1.0), cell(eta, ones, ones))
