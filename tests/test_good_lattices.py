"""Good lattices (``qlatent.lattices``): A_n, D_n, D_n*, E8, Λ16, Λ24, direct sums, sphere decoder.

Checked for every family: the generator matrix spans the lattice the decoder decodes (basis
vectors are fixed points; |det| is the known volume); the fast closest point is as near as the
Schnorr–Euchner sphere decoder's on random inputs, on points next to Voronoi-cell faces and
vertices (midpoints of two lattice points and deep holes, nudged by 1e-9 either way), and on
inputs translated by huge lattice vectors (float64, exact translation equivariance), in float32
and float64; the sphere decoder itself equals an exhaustive search on small lattices; the codes
behind Λ16 and Λ24 have their weight distributions; the dither is uniform over the cell
(decodes to 0, mean 0, second moment matching G within Monte-Carlo error); coordinates round
trip; direct sums decode block by block; bad names and dimensions are refused.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qlatent.bottlenecks import build
from qlatent.lattices import (
    BarnesWallLattice,
    DirectSum,
    GossetLattice,
    LeechLattice,
    lattice_by_name,
    tile,
)
from qlatent.lattices._glued import closest_point_glued
from qlatent.lattices.bw16 import ReedMullerQuarters, reed_muller_1_4, rm_quarters
from qlatent.lattices.leech import _BY_PARITY, golay_code, golay_sextet
from qlatent.lattices.rectangular import RectangularLattice
from qlatent.lattices.search import GeneralLattice, SphereDecoder

F64 = torch.float64
#: (name, volume of the integer-scaled lattice, points checked against the sphere decoder)
FAMILIES = [
    ("z", 1.0, 200),
    ("a2", math.sqrt(3), 200),
    ("a3", 2.0, 200),
    ("a5", math.sqrt(6), 200),
    ("d3", 2.0, 200),
    ("d4", 2.0, 200),
    ("d5", 2.0, 200),
    ("d3*", 0.5, 200),
    ("d4*", 0.5, 200),
    ("d6*", 0.5, 200),
    ("e8", 1.0, 200),
    ("bw16", 2.0**12, 60),
    ("leech", 8.0**12, 12),
]
#: literature G(Λ) (Conway & Sloane; SPLAG Table 2.3)
NSM = {"a2": 5 / (36 * math.sqrt(3)), "d4": 13 / (120 * math.sqrt(2)), "e8": 929 / 12960}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_as_near_as_reference(lat, x: torch.Tensor, got: torch.Tensor) -> None:
    """``got`` is a lattice point at most as far from ``x`` as the sphere decoder's answer: the
    decoder, asked for the nearest point at squared distance below ‖x − got‖² − tol, finds none
    (the same check as comparing with its unrestricted answer, whose search takes several times
    longer on points near the cell faces)."""
    basis = lat.generator_matrix.T.numpy()
    decoder = SphereDecoder(basis)
    coords = np.linalg.solve(basis.T, got.double().numpy().T).T
    slack = 1e-4 if got.dtype == torch.float32 else 1e-8  # irrational bases (A_n) in float32
    assert np.abs(coords - np.round(coords)).max() < slack, "not a lattice point"
    scale = float(np.abs(basis).max())
    tol = 1e-6 * scale**2 if x.dtype == torch.float32 else 1e-9 * scale**2
    for xi, gi in zip(x.double().numpy(), got.double().numpy(), strict=True):
        d_got = ((xi - gi) ** 2).sum()
        ref = decoder.closest(xi, radius2=d_got - tol)  # None: no point nearer by more than tol
        assert ref is None or d_got <= ((xi - ref) ** 2).sum() + tol, (xi, gi, ref)


def _adversarial(lat, n: int, seed: int, dtype) -> torch.Tensor:
    """Points next to cell faces and vertices: midpoints of pairs of nearby lattice points and
    points equidistant-ish from several, nudged by ±1e-9 (float64) or ±1e-5 (float32)."""
    g = gen(seed)
    basis = lat.generator_matrix.T.to(F64)
    k = torch.randint(-3, 4, (n, 2, lat.dim), generator=g).to(F64)
    points = k @ basis  # (n, 2, m)
    mid = points.mean(1)
    # a deep-hole candidate: the mean of the point and its neighbours along two basis vectors
    tri = (points[:, 0] + (points[:, 0] + basis[0]) + (points[:, 0] + basis[-1])) / 3
    nudge = 1e-9 if dtype == F64 else 1e-5
    eps = nudge * torch.randn(2 * n, lat.dim, generator=g, dtype=F64)
    return (torch.cat([mid, tri]) + eps).to(dtype)


@pytest.mark.parametrize("name,volume,count", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_generator_spans_the_decoded_lattice(name, volume, count):
    lat = lattice_by_name(name)
    assert lat.volume.item() == pytest.approx(volume, rel=1e-9)
    basis_points = lat.generator_matrix.T
    torch.testing.assert_close(lat.closest_point(basis_points), basis_points, rtol=0, atol=1e-12)
    # integer combinations are fixed points too
    k = torch.randint(-5, 6, (50, lat.dim), generator=gen(1))
    pts = lat.points(k)
    torch.testing.assert_close(lat.closest_point(pts), pts, rtol=0, atol=1e-9)
    assert torch.equal(lat.coordinates(pts), k)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,volume,count", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_closest_point_matches_sphere_decoder(name, volume, count, dtype):
    lat = lattice_by_name(name)
    scale = lat.volume.item() ** (1 / lat.dim)
    x = (3 * scale * torch.randn(count, lat.dim, generator=gen(2), dtype=F64)).to(dtype)
    got = lat.closest_point(x)
    assert got.dtype == dtype and got.shape == x.shape
    _assert_as_near_as_reference(lat, x, got)
    adv = _adversarial(lat, max(count // 4, 3), seed=3, dtype=dtype)
    _assert_as_near_as_reference(lat, adv, lat.closest_point(adv))


@pytest.mark.parametrize("name,volume,count", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_huge_coordinates_translate_exactly(name, volume, count):
    """K(x + λ) = K(x) + λ for lattice vectors λ with coordinates up to 10^9 (float64): the
    integer coordinates agree exactly (A_n's irrational basis rounds the points themselves)."""
    lat = lattice_by_name(name)
    x = torch.randn(20, lat.dim, generator=gen(4), dtype=F64)
    k = torch.randint(-(10**9), 10**9, (20, lat.dim), generator=gen(5))
    far = lat.coordinates(lat.closest_point(x + lat.points(k)))
    assert torch.equal(far - k, lat.coordinates(lat.closest_point(x)))


@pytest.mark.parametrize("name", ["a2", "d3*", "d4", "e8", "bw16", "leech"])
def test_float32_inputs_near_a_million_decode_like_float64(name):
    lat = lattice_by_name(name)
    x = (1e6 + torch.randn(100, lat.dim, generator=gen(6), dtype=F64)).to(torch.float32)
    expected = lat.closest_point(x.double()).to(torch.float32)
    assert torch.equal(lat.closest_point(x), expected)


def test_sphere_decoder_equals_exhaustive_search():
    """On random 3-D bases and on A2 and D4: the nearest of all k in a box of radius 6 around the
    Babai point (large enough for these well-conditioned bases, checked by the margin)."""
    g = np.random.default_rng(7)
    bases = [g.normal(size=(3, 3)) + 2 * np.eye(3) for _ in range(3)]
    bases += [lattice_by_name(n).generator_matrix.T.numpy() for n in ("a2", "d4")]
    for basis in bases:
        m = basis.shape[0]
        decoder = SphereDecoder(basis)
        offsets = np.array(list(itertools.product(range(-6, 7), repeat=m)))
        for x in g.normal(scale=3, size=(30, m)):
            centre = np.round(np.linalg.solve(basis.T, x))
            cands = (centre + offsets) @ basis
            best = cands[((cands - x) ** 2).sum(1).argmin()]
            got = decoder.closest(x)
            assert ((x - got) ** 2).sum() == pytest.approx(((x - best) ** 2).sum(), abs=1e-9)


def test_general_lattice_decodes_with_the_sphere_decoder():
    lat = GeneralLattice(GossetLattice().generator_matrix)
    x = torch.randn(20, 8, generator=gen(8), dtype=F64)
    d_general = (x - lat.closest_point(x)).square().sum(-1)
    d_e8 = (x - GossetLattice().closest_point(x)).square().sum(-1)
    torch.testing.assert_close(d_general, d_e8)
    with pytest.raises(ValueError):
        GeneralLattice(torch.ones(3, 3))


def test_glue_codes_have_their_weight_distributions():
    golay = golay_code().words.sum(1)
    assert torch.bincount(golay, minlength=25)[[0, 8, 12, 16, 24]].tolist() == [
        1,
        759,
        2576,
        759,
        1,
    ]
    assert golay.numel() == 4096 and torch.bincount(golay).sum() == 4096
    rm = reed_muller_1_4().words.sum(1)
    assert sorted(torch.bincount(rm).nonzero().flatten().tolist()) == [0, 8, 16]
    assert torch.bincount(rm)[8] == 30


def test_golay_sextet_classes():
    """The sextet's six tetrads pair into octads; its 128 classes hold 32 words each, every
    class one tuple of pattern pairs with one complement parity."""
    sextet = golay_sextet()
    words = golay_code().words
    tetrads = sextet.order.view(6, 4)
    assert sorted(sextet.order.tolist()) == list(range(24))
    for i, j in itertools.combinations(range(6), 2):
        union = torch.zeros(24, dtype=torch.int64)
        union[torch.cat([tetrads[i], tetrads[j]])] = 1
        assert (words == union).all(1).any(), (i, j)
    assert (sextet.word_of >= 0).sum() == 4096
    assert torch.equal(torch.sort(sextet.word_of[sextet.word_of >= 0]).values, torch.arange(4096))
    assert ((sextet.word_of >= 0).sum(1) == 32).all()
    # the 256 decoder classes (o, π, s_0, s_1, s_2): each of the 128 classes once per offset,
    # numbered by its first three symbols, and its six columns give back its six patterns
    assert torch.equal(sextet.classes[:128].sort().values, torch.arange(128))
    assert torch.equal(sextet.classes[128:], sextet.classes[:128])
    assert torch.equal(sextet.offsets, torch.arange(256) // 128)
    cols = sextet.columns
    assert torch.equal(cols // 8, sextet.offsets.unsqueeze(1).expand(-1, 6))
    by_parity = torch.tensor(_BY_PARITY)
    assert torch.equal(by_parity[cols % 8], sextet.tuples[sextet.classes])
    assert torch.equal((cols[:, :3] % 4 * torch.tensor([16, 4, 1])).sum(1), torch.arange(256) % 64)
    assert torch.equal(cols[:, 0] % 8 // 4, torch.arange(256) // 64 % 2)  # π


def test_reed_muller_quarters():
    """Every RM(1, 4) word is (ℓ, σ, c_0, c_2) on its four quarters: the label pattern ℓ
    complemented by c_j on quarter j, with c_1 = c_0 ⊕ σ and c_3 = c_2 ⊕ σ; each number is one
    word. A code without that structure is refused."""
    quarters = rm_quarters()
    words = reed_muller_1_4().words
    assert torch.equal(quarters.word_of.sort().values, torch.arange(32))
    for key, word in enumerate(quarters.word_of.tolist()):
        ell, sigma, c0, c2 = key // 8, key // 4 % 2, key // 2 % 2, key % 2
        first, second = 4 * ell + 2 * sigma + c0, 4 * ell + 2 * sigma + c2  # rows (ℓ, σ, c)
        expected = torch.cat(
            [
                quarters.patterns[0, first],  # c_0
                quarters.patterns[1, first],  # c_0 ⊕ σ
                quarters.patterns[0, second],  # c_2
                quarters.patterns[1, second],  # c_2 ⊕ σ
            ]
        )
        assert torch.equal(quarters.patterns[1, first], quarters.patterns[0, first] ^ sigma)
        assert torch.equal(words[word], expected), key
    swapped = words[:, torch.tensor([0, 4, 2, 3, 1] + list(range(5, 16)))]  # positions 1, 4 swapped
    with pytest.raises(ValueError, match="RM"):
        ReedMullerQuarters(type(reed_muller_1_4())(_row_basis(swapped)))


def _row_basis(words: torch.Tensor) -> torch.Tensor:
    """Five generators of the code spanned by ``words`` (the all-ones word and four of weight 8
    that are independent over GF(2)), by greedy elimination."""
    basis: list[torch.Tensor] = []
    reduced: list[torch.Tensor] = []
    for w in words:
        v = w.clone()
        for r in reduced:
            pivot = int(torch.nonzero(r)[0])
            if v[pivot]:
                v = v ^ r
        if v.any():
            basis.append(w)
            reduced.append(v)
    return torch.stack(basis)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_bw16_quarter_decoder_equals_coset_search(dtype):
    """The quarter decoder finds a point exactly as near as the search over all 32 cosets of
    2·D16 (itself checked against the sphere decoder above), on random points at several scales
    and points near faces and deep holes, in one chunk and in several."""
    lat = BarnesWallLattice()
    g = gen(21)
    x = torch.cat(
        [s * torch.randn(4000, 16, generator=g, dtype=F64) for s in (0.3, 1.0, 3.0, 1e3)]
        + [_adversarial(lat, 1000, seed=22, dtype=F64)]
    ).to(dtype)
    got = lat.closest_point(x)
    ref = closest_point_glued(x, reed_muller_1_4(), 1.0, 2.0, ((0.0, 0),), 4096)
    d_got = (x.double() - got.double()).square().sum(1)
    d_ref = (x.double() - ref.double()).square().sum(1)
    tol = 1e-9 if dtype == F64 else 1e-3
    assert (d_got <= d_ref + tol).all()
    assert torch.equal(lat.closest_point(got), got)
    for rows in (1, 2, 3000):  # one row's transpose has the strides of a contiguous tensor
        assert torch.equal(rm_quarters().decode(x[:rows]), got[:rows])


#: a float32 draw on Λ16's fundamental parallelepiped (seed 3, row 167907 of 200,000) that the
#: quarter decoder and the coset search decode to two points within float32 rounding of a tie
_TIE_ROW = [
    "0x1.92346ap-1", "0x1.d18238p-1", "0x1.ec968p-2", "0x1.076778p+0",
    "0x1.4e1ffcp-2", "0x1.575d28p+1", "0x1.bf3416p+0", "0x1.c3fa6ap-1",
    "0x1.d94f2p-2", "0x1.b2e21p+0", "0x1.5e30e6p-1", "0x1.0a097cp+1",
    "0x1.55e10ep+0", "0x1.411088p+0", "0x1.9414a4p+0", "0x1.ee7d18p+3",
]  # fmt: skip


def test_bw16_dither_keeps_the_coset_search():
    """Files regenerate their dither bit for bit, so the dither's reduction keeps the decoder of
    before the quarters (the coset search), also through a direct sum and ``sample_dither``;
    on ties (midpoints of two lattice points) and near ties the two decoders differ, the quarter
    decoder's point as near."""
    lat = BarnesWallLattice()
    code = reed_muller_1_4()
    search = lambda y: closest_point_glued(y, code, 1.0, 2.0, ((0.0, 0),), 4096)  # noqa: E731
    tie = torch.tensor([float.fromhex(v) for v in _TIE_ROW]).unsqueeze(0)
    assert torch.equal(lat.dither_point(tie), search(tie))
    # exact ties: which of the nearest points each decoder takes depends on its order of
    # operations (and, near ties such as the row above, on the machine's float reductions)
    ends = lat.closest_point(lat.points_from_unit(torch.rand(4000, 16, generator=gen(26))))
    ties = torch.cat([tie, (ends[:2000] + ends[2000:]) / 2])
    quarters, coset = lat.closest_point(ties), search(ties)
    differ = (quarters != coset).any(1)
    assert int(differ.sum()) > 100  # the two decoders do differ on ties
    assert torch.equal(lat.dither_point(ties), coset)
    dist = lambda p: (ties.double() - p.double()).square().sum(1)  # noqa: E731
    assert bool((dist(quarters) <= dist(coset)).all())
    y = lat.points_from_unit(torch.rand(20000, 16, generator=gen(24)))
    assert torch.equal(lat.dither_point(y), search(y))
    pair = tile(["leech", "bw16"], 40)
    u = pair.sample_dither(3000, generator=gen(25))
    draws = pair.points_from_unit(torch.rand(3000, 40, generator=gen(25)))
    expected = draws[:, 24:] - search(draws[:, 24:])
    assert torch.equal(u[:, 24:], expected)
    assert torch.equal(u[:, :24], draws[:, :24] - LeechLattice().closest_point(draws[:, :24]))


@pytest.mark.fuzz
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.sampled_from([1e-3, 0.5, 1.0, 2.0, 10.0]),
    offset=st.sampled_from([0.0, 0.5, 1.0, 1e3, 1e6]),
    dtype=st.sampled_from([F64, torch.float32]),
)
def test_fuzz_bw16_quarter_decoder_is_as_near_as_the_coset_search(seed, scale, offset, dtype):
    """Lattice points moved by small or large steps, half-integer shifts (ties between cosets)
    and large offsets: the quarter decoder returns a Λ16 point as near as the coset search's."""
    lat = BarnesWallLattice()
    g = gen(seed)
    k = torch.randint(-4, 5, (64, 16), generator=g)
    x = lat.points(k) + scale * torch.randn(64, 16, generator=g, dtype=F64)
    x[::4] = torch.round(x[::4] * 2) / 2  # exact half-integers: ties within and across cosets
    x = (x + offset).to(dtype)
    got = lat.closest_point(x)
    ref = closest_point_glued(x, reed_muller_1_4(), 1.0, 2.0, ((0.0, 0),), 4096)
    d_got = (x.double() - got.double()).square().sum(1)
    d_ref = (x.double() - ref.double()).square().sum(1)
    assert (d_got <= d_ref + (1e-9 if dtype == F64 else 1e-3)).all()
    assert torch.equal(lat.closest_point(got), got)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_leech_sextet_decoder_equals_coset_search(dtype):
    """The sextet decoder finds a point exactly as near as the search over all 8192 cosets of
    4·D24 (itself checked against the sphere decoder above), on random points at several scales,
    points near faces and deep holes, and points between the two offsets' cosets."""
    lat = LeechLattice()
    g = gen(13)
    x = torch.cat(
        [s * torch.randn(1500, 24, generator=g, dtype=F64) for s in (0.5, 2.0, 8.0, 100.0)]
        + [
            _adversarial(lat, 400, seed=14, dtype=F64),
            0.5 + torch.randn(500, 24, generator=g, dtype=F64) * 0.1,
        ]
    ).to(dtype)
    got = lat.closest_point(x)
    ref = closest_point_glued(x, golay_code(), 2.0, 4.0, ((0.0, 0), (1.0, 1)), 512)
    d_got = (x.double() - got.double()).square().sum(1)
    d_ref = (x.double() - ref.double()).square().sum(1)
    tol = 1e-9 if dtype == F64 else 1e-3
    assert (d_got <= d_ref + tol).all()
    # the decoder's answer is a lattice point: translating by it changes nothing
    assert torch.equal(lat.closest_point(got), got)


def test_leech_membership_and_faces():
    """Vectors of norm 32 of all three shapes are Leech points; short non-members are not; and
    the midpoint between 0 and a minimal vector (on a Voronoi face) decodes to one of the two."""
    lat = LeechLattice()
    octad = golay_code().words[golay_code().words.sum(1) == 8][0].to(F64)
    minimal = torch.stack(
        [
            torch.tensor([4.0, 4.0] + [0.0] * 22, dtype=F64),
            2 * octad,
            torch.tensor([-3.0] + [1.0] * 23, dtype=F64),
        ]
    )
    assert torch.equal(minimal.square().sum(-1), torch.full((3,), 32.0, dtype=F64))
    assert torch.equal(lat.closest_point(minimal), minimal)
    non_members = torch.stack(
        [torch.tensor([2.0, 2.0] + [0.0] * 22, dtype=F64), torch.ones(24, dtype=F64)]
    )
    assert not torch.equal(lat.closest_point(non_members), non_members)
    for sign in (1e-9, -1e-9):
        half = minimal / 2 * (1 + sign)
        got = lat.closest_point(half)
        expected = minimal if sign > 0 else torch.zeros_like(minimal)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["a2", "d4", "d3*", "e8", "bw16", "leech"])
def test_dither_is_uniform_over_the_voronoi_cell(name):
    lat = lattice_by_name(name)
    n = 4000 if name != "leech" else 1000
    u = lat.sample_dither(n, generator=gen(10), dtype=F64)
    assert torch.equal(lat.closest_point(u), torch.zeros_like(u))
    norm = lat.volume.item() ** (2 / lat.dim)
    second = u.square().sum(-1) / lat.dim / norm  # per-sample G estimates
    assert u.mean(0).abs().max() < 5 * math.sqrt(second.mean().item() * norm / n)
    if name in NSM:
        se = second.std().item() / math.sqrt(n)
        assert abs(second.mean().item() - NSM[name]) < 5 * se


def test_direct_sums_decode_block_by_block():
    spec = ["leech", "bw16", "e8", "e8", "a2"]
    lat = tile(spec, 58)
    assert isinstance(lat, DirectSum) and lat.dim == 58
    assert lat.name == "Leech ⊕ BW16 ⊕ E8^2 ⊕ A2"
    x = 2 * torch.randn(30, 58, generator=gen(11), dtype=F64)
    got = lat.closest_point(x)
    start = 0
    for name in spec:
        block = lattice_by_name(name)
        part = x[:, start : start + block.dim]
        torch.testing.assert_close(got[:, start : start + block.dim], block.closest_point(part))
        start += block.dim
    k = lat.coordinates(got)
    torch.testing.assert_close(lat.points(k), got)
    assert lat.volume.item() == pytest.approx(8.0**12 * 2**12 * math.sqrt(3), rel=1e-9)
    assert tile("e8", 40).name == "E8^5"
    assert tile("d4", 40).runs[0][1] == 10


@pytest.mark.parametrize(
    "spec,dim,match",
    [("e8", 12, "does not divide"), (["e8", "a2"], 8, "add up"), ("e9", 9, "unknown lattice")],
)
def test_bad_specs_are_refused(spec, dim, match):
    with pytest.raises(ValueError, match=match):
        tile(spec, dim)


@pytest.mark.parametrize(
    "lattice",
    [lattice_by_name(n) for n in ("e8", "bw16", "leech", "a2", "a3", "d4", "d4*")]
    + [tile("e8", 40), tile(["leech", "bw16"], 40), GeneralLattice(torch.eye(3) * 2)]
    + [lattice_by_name("z"), RectangularLattice(torch.tensor([0.5, 1.0, 2.0]))],
    ids=lambda lat: lat.name,
)
def test_rows_of_another_width_are_refused(lattice):
    """A wrong width is one clear error on every entry point, not a silent decode as other
    blocks (E8 of 64 coordinates as E8^8), a direct sum's slice cut short (48 coordinates into
    E8^5 gave 40) or a reshape's error."""
    m = lattice.dim
    for bad in (
        torch.zeros(3, m + 8),
        torch.zeros(3, 2 * m),
        torch.zeros(m - 1),
        torch.tensor(1.0),
    ):
        for method in ("closest_point", "coordinates", "points_from_unit"):
            with pytest.raises(ValueError, match=f"rows of {m} coordinates"):
                getattr(lattice, method)(bad)
        with pytest.raises(ValueError, match=f"rows of {m} coordinates"):
            lattice.points(bad.long())
    with pytest.raises(ValueError, match="takes a torch.Tensor"):
        lattice.closest_point([0.0] * m)
    assert lattice.closest_point(torch.zeros(2, 5, m)).shape == (2, 5, m)  # any leading shape
    assert lattice.closest_point(torch.zeros(0, m)).shape == (0, m)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bw16", "leech"])
def test_closest_point_matches_sphere_decoder_many_points(name):
    lat = lattice_by_name(name)
    scale = lat.volume.item() ** (1 / lat.dim)
    x = 3 * scale * torch.randn(400, lat.dim, generator=gen(12), dtype=F64)
    _assert_as_near_as_reference(lat, x, lat.closest_point(x))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_compiled_leech_decoder_matches_eager(dtype):
    """The decoder fused by torch.compile returns the eager decoder's points on random inputs at
    several scales, near faces and between the two offsets' cosets, over partial chunks (padded
    to the compiled shape) and short ones (decoded eagerly), and through a bottleneck built with
    ``compile=True``."""
    eager, fused = LeechLattice(), LeechLattice(compile=True)
    g = gen(31)
    x = torch.cat(
        [s * torch.randn(700, 24, generator=g, dtype=F64) for s in (0.5, 2.0, 100.0)]
        + [
            _adversarial(eager, 300, seed=32, dtype=F64),
            0.5 + 0.1 * torch.randn(77, 24, generator=g, dtype=F64),
        ]
    ).to(dtype)
    assert torch.equal(fused.closest_point(x), eager.closest_point(x))
    for n in (5, 300):
        assert torch.equal(fused.closest_point(x[:n]), eager.closest_point(x[:n]))
    neck = build("lattice", dim=40, lattice=["leech", "bw16"], compile=True)
    assert neck.geometry.blocks[0].compile and "compile=True" in repr(neck)


@pytest.mark.parametrize(
    ("name", "compile"),
    [("e8", False), ("bw16", False), ("leech", False), ("leech", True)]
    # tracing the unrolled column rules takes seconds
    + [pytest.param(n, True, marks=pytest.mark.slow) for n in ("e8", "bw16")],
)
def test_decoders_trace_into_a_callers_torch_compile(name, compile):
    """Inside a caller's own ``torch.compile`` the decoders give the points of a plain call, and
    Dynamo meets none of the cached getters (it warns at each and traces its body again): the
    decoder tables are held by the lattice, and ``compile=True`` traces the plain column rule
    into the caller's graph. Dynamo's ``eager`` backend traces without inductor (seconds)."""
    import warnings

    lat = lattice_by_name(name, compile=compile)
    x = 3 * torch.randn(1024, lat.dim, generator=gen(37))  # a whole compiled chunk for Leech
    torch._dynamo.reset()
    traced = torch.compile(lat.closest_point, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = traced(x)
    assert torch.equal(got, lat.closest_point(x))
    assert not [w for w in caught if "lru_cache" in str(w.message)]


@pytest.mark.parametrize("name", ["e8", "d4", "d3*", "a2"])
def test_small_lattices_decode_large_inputs_in_chunks_with_the_same_points(name, monkeypatch):
    """E8, D_n, D_n* and A2 decode inputs beyond one chunk (batched leading dimensions, the last
    chunk partial) to the points they give in one call."""
    from qlatent.lattices import _utils

    lat = lattice_by_name(name)
    x = 3 * torch.randn(5, 701, lat.dim, generator=gen(36))
    whole = lat.closest_point(x)
    monkeypatch.setattr(_utils, "CHUNK_BYTES", 1000)  # a few dozen rows a chunk
    assert torch.equal(lat.closest_point(x), whole)


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_e8_column_rule_is_the_eager_decoder(dtype):
    """The column-by-column form of the E8 rule that ``compile=True`` compiles gives the eager
    decoder's points on random inputs at several scales and huge coordinates, and a closest point
    next to faces and vertices, where the two may break a tie differently (sums in another
    order), so that one is checked against the sphere decoder."""
    from qlatent.lattices.e8 import _closest_e8, _closest_e8_columns

    lat, g = GossetLattice(), gen(33)
    x = torch.cat(
        [s * torch.randn(2000, 8, generator=g, dtype=F64) for s in (0.3, 2.0, 1e6)]
        + [torch.full((3, 8), 0.5, dtype=F64), torch.zeros(2, 8, dtype=F64)]
    ).to(dtype)
    assert torch.equal(_closest_e8_columns(x.T.contiguous()), _closest_e8(x))
    near = _adversarial(lat, 150, seed=34, dtype=dtype)
    _assert_as_near_as_reference(lat, near, _closest_e8_columns(near.T.contiguous()))


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_e8_planar_decoder_is_the_column_rule_and_the_dither_keeps_the_row_rule(dtype):
    """E8's eager decoder on the CPU (the rule on eight planes of coordinates) gives, bit for
    bit and sign of zero included, the points of the column rule that ``compile=True`` fuses,
    also on rows within rounding of two lattice points; the rule over rows of eight, whose sums
    run in another order, gives the same points off such ties (random rows at several scales,
    huge coordinates, half-integer grids, ±0). On the ties the planar points are as near as the
    sphere decoder's, and ``dither_point`` keeps the row rule (a file's decoder regenerates
    its dither bit for bit)."""
    from qlatent.lattices.e8 import _closest_e8, _closest_e8_columns, _closest_e8_planar

    lat, g = GossetLattice(), gen(38)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    plain = [s * torch.randn(3000, 8, generator=g, dtype=F64) for s in (0.3, 2.0, 1e6, 1e15)]
    plain += [torch.randint(-9, 10, (3000, 8), generator=g) * q for q in (0.5, 0.25)]
    plain += [torch.full((3, 8), 0.5, dtype=F64), torch.zeros(3, 8), -torch.zeros(3, 8)]
    x = torch.cat([v.to(F64) for v in plain]).to(dtype)
    assert torch.equal(_closest_e8_planar(x).view(bits), _closest_e8(x).view(bits))
    # half-integer grids nudged by rounding-sized amounts: many near-ties between the cosets
    nudge = 1e-7 if dtype == torch.float32 else 1e-15
    ties = torch.randint(-3, 4, (20000, 8), generator=g) * 0.5
    ties = (ties + nudge * torch.randn(20000, 8, generator=g, dtype=F64)).to(dtype)
    planar = _closest_e8_planar(ties)
    assert torch.equal(planar.view(bits), _closest_e8_columns(ties.T.contiguous()).view(bits))
    assert torch.equal(lat.closest_point(ties), planar)
    assert torch.equal(lat.dither_point(ties), _closest_e8(ties))
    differ = (planar != _closest_e8(ties)).any(1)
    if dtype == torch.float32:  # the row rule breaks some of these ties the other way
        assert differ.any()
    _assert_as_near_as_reference(lat, ties[differ][:50], planar[differ][:50])
    _assert_as_near_as_reference(lat, ties[:100], planar[:100])


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_bw16_column_rule_is_the_eager_decoder(dtype):
    """The column-by-column form of the Λ16 search that ``compile=True`` compiles (coset costs by
    Walsh–Hadamard transforms) gives the eager decoder's points on random inputs at several
    scales; at huge coordinates points as near as the eager decoder's and on the lattice (in
    float32 the inputs' fractions lie on a coarse grid there, and exact ties between cosets, which
    the two break differently, are common); and next to faces and vertices a closest point, checked
    against the sphere decoder."""
    from qlatent.lattices.bw16 import _closest_bw16_columns

    lat, g = BarnesWallLattice(), gen(36)
    x = torch.cat(
        [s * torch.randn(3000, 16, generator=g, dtype=F64) for s in (0.5, 2.0, 100.0)]
        + [torch.full((3, 16), 0.5, dtype=F64), torch.zeros(2, 16, dtype=F64)]
    ).to(dtype)
    assert torch.equal(_closest_bw16_columns(x.T.contiguous()), lat.closest_point(x))
    huge = (1e6 * torch.randn(2000, 16, generator=g, dtype=F64)).to(dtype)
    got, eager = _closest_bw16_columns(huge.T.contiguous()), lat.closest_point(huge)
    distance = lambda p: (huge.double() - p.double()).square().sum(1)  # noqa: E731
    assert torch.equal(distance(got), distance(eager))
    assert torch.equal(lat.closest_point(got), got)  # a lattice point
    near = _adversarial(lat, 150, seed=37, dtype=dtype)
    _assert_as_near_as_reference(lat, near, _closest_bw16_columns(near.T.contiguous()))


@pytest.mark.slow
def test_compiled_bw16_decoder_matches_eager():
    """``BarnesWallLattice(compile=True)`` (and a bottleneck's Λ16 block with ``compile=True``):
    the eager decoder's points on random inputs of several sizes, short ones decoded eagerly, over
    more than one compiled chunk, and an input that requires grad."""
    from qlatent.lattices import bw16

    eager, fused = BarnesWallLattice(), BarnesWallLattice(compile=True)
    x = 2.0 * torch.randn(bw16._COMPILED_CHUNK + 300, 16, generator=gen(38))
    for n in (5, 64, 1000, x.shape[0]):
        assert torch.equal(fused.closest_point(x[:n]), eager.closest_point(x[:n]))
    assert not fused.closest_point(x[:100].requires_grad_()).requires_grad
    neck = build("lattice", dim=40, lattice=["leech", "bw16"], compile=True)
    assert neck.geometry.blocks[1].compile


@pytest.mark.slow
def test_compiled_e8_decoder_matches_eager():
    """``GossetLattice(compile=True)`` (and a bottleneck's E8 blocks with ``compile=True``): the
    eager decoder's points on random inputs of several sizes, short ones decoded eagerly."""
    eager, fused = GossetLattice(), GossetLattice(compile=True)
    x = 2.0 * torch.randn(5000, 8, generator=gen(35))
    for n in (5, 64, 1000, 5000):
        assert torch.equal(fused.closest_point(x[:n]), eager.closest_point(x[:n]))
    neck = build("lattice", dim=40, lattice="e8", compile=True)
    assert neck.geometry.blocks[0].compile


def test_compile_flag_is_validated():
    for lattice in (LeechLattice, GossetLattice, BarnesWallLattice):
        with pytest.raises(ValueError, match="compile must be True or False"):
            lattice(compile="yes")
    assert not any(b.compile for b in tile(["leech", "bw16"], 40).blocks)
    assert all(b.compile for b in tile(["leech", "bw16"], 40, compile=True).blocks)
    assert tile("e8", 16, compile=True).blocks[0].compile and not tile("e8", 16).blocks[0].compile


@pytest.mark.parametrize("name", [f[0] for f in FAMILIES])
def test_cell_bound_holds_and_known_holes_reach_it(name):
    """``cell_bound`` bounds ‖u‖ over the Voronoi cell (no dither draw beyond it), and where the
    covering radius is given, a known hole at that distance exists (Z, D_n, E8): it is the
    covering radius (Λ16's and Λ24's come from the literature, checked by the draws only)."""
    lat = lattice_by_name(name)
    u = lat.sample_dither(20_000 if lat.dim < 16 else 4000, generator=gen(12), dtype=F64)
    assert u.norm(dim=-1).max().item() <= lat.cell_bound
    holes = {  # points at the covering radius from the lattice, in the library's scalings
        "z": [0.5],
        "d4": [0.5] * 4,
        "d5": [0.5] * 5,
        "e8": [1.0] + [0.0] * 7,
    }
    if name in holes:
        hole = torch.tensor(holes[name], dtype=F64)
        distance = (hole - lat.closest_point(hole)).norm().item()
        assert lat.covering_radius is not None
        assert distance == pytest.approx(lat.covering_radius, rel=1e-12)
