"""Small hostile inputs that cost minutes or gigabytes: each is refused (or served) within a
bounded time and memory. Every probe runs in a subprocess under a memory limit and a timeout, so
that a regression fails the test instead of the machine."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch

from qlatent.bench.timing import check_sizes
from qlatent.data import folder
from qlatent.lattices.search import GeneralLattice

#: address space of a probe: torch alone maps about 0.7 GiB
LIMIT_BYTES = 2 << 30


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def _probe(code: str, timeout: float = 30) -> dict:
    """Run ``code`` in a fresh interpreter under :data:`LIMIT_BYTES` and ``timeout``; it prints
    one JSON line, returned as a dict (a timeout, a crash or no output fails the test)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_limit,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the probe ran past {timeout} s")
    lines = done.stdout.strip().splitlines()
    assert lines, f"the probe printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------- sphere decoder
#: a full-rank generator of nearly equal rows (its reduced basis has entries near 1e-9) and a
#: row whose coordinates in it reach 2.6e18: past 2^53, k + 1 == k, and the zig-zag stepped in
#: place at every level (more than 10^7 steps in 60 s for this one row)
NEAR_EQUAL_ROWS = [
    [0.9037030502509298, 0.7507792846184635, 0.3861792566696328, 0.13504942008143211,
     -0.9073622831864657, -0.2992398683499312],
    [0.9037030502689986, 0.7507792845837316, 0.38617925671646336, 0.1350494200734312,
     -0.9073622831800638, -0.29923986835105887],
    [0.9037030502607086, 0.750779284597527, 0.3861792566902178, 0.1350494200831954,
     -0.9073622831614846, -0.29923986834824284],
    [0.9037030502500647, 0.7507792846074884, 0.38617925670115877, 0.13504942009840648,
     -0.907362283186378, -0.2992398683666009],
    [0.90370305025219, 0.7507792845939717, 0.3861792566950538, 0.13504942008430204,
     -0.907362283179391, -0.2992398683330078],
    [0.9037030502808169, 0.7507792845956534, 0.3861792566774036, 0.13504942010441773,
     -0.9073622832080077, -0.2992398683589048],
]  # fmt: skip
FAR_ROW = [277186575.5600616, -3684741714.906985, 215071746.9402103, -1720608872.3333688,
           648209099.1776884, -663238629.4423203]  # fmt: skip


def test_sphere_decoder_refuses_coordinates_past_float64_integers():
    """One 6-d row ran for minutes; now a ValueError naming the bound, at once."""
    result = _probe(
        f"""
        import json, torch
        from qlatent.lattices.search import GeneralLattice
        lattice = GeneralLattice(torch.tensor({NEAR_EQUAL_ROWS}, dtype=torch.float64))
        try:
            lattice.closest_point(torch.tensor([{FAR_ROW}], dtype=torch.float64))
            print(json.dumps({{"error": None}}))
        except ValueError as err:
            print(json.dumps({{"error": str(err)}}))
        """,
        timeout=20,
    )
    assert result["error"] is not None
    assert "beyond ±2^53" in result["error"] and "\n" not in result["error"]


def test_sphere_decoder_still_decodes_within_the_bound():
    """The same lattice at coordinates of 2^50 decodes, to a lattice point nearer than x's
    rounding in the basis."""
    lattice = GeneralLattice(torch.tensor(NEAR_EQUAL_ROWS, dtype=torch.float64))
    x = torch.tensor([FAR_ROW], dtype=torch.float64) / 2**12
    assert torch.isfinite(lattice.closest_point(x)).all()
    exact = GeneralLattice(torch.tensor([[1.0, 0.3], [0.0, 0.7]], dtype=torch.float64))
    y = exact.closest_point(torch.tensor([[0.9, 0.8]], dtype=torch.float64))
    torch.testing.assert_close(y, torch.tensor([[1.3, 0.7]], dtype=torch.float64))


# ------------------------------------------------------------------------------- benchmarks
def test_benchmark_sizes_bound_rows_times_dim():
    """Each within its own bound, 2^24 rows of 2^16 asked for 4 TiB, and ``bench coding
    --rows 16777216 --dim 8`` held 5 GB for minutes before its first timing; ``bench lattices
    --rows 16777216`` reached 4.5 GB before its allocation failed."""
    check_sizes(rows=1 << 20, dim=64)  # the scaling sweep's largest shape
    with pytest.raises(ValueError, match=r"^rows × dim must be at most 2\^26"):
        check_sizes(rows=2**20 + 1, dim=64)
    result = _probe(
        """
        import contextlib, io, json
        from qlatent.cli import main
        runs = []
        for args in (
            ["coding", "--rows", "16777216", "--dim", "8", "--repeats", "1"],
            ["lattice", "--rows", "16777216", "--dim", "65536", "--output", ""],
            ["quantizers", "--rows", "16777216", "--dim", "16", "--output", ""],
            ["lattices", "--rows", "16777216", "--no-steps", "--output", ""],
        ):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(["bench", *args])
            runs.append([code, err.getvalue()])
        print(json.dumps({"runs": runs}))
        """,
        timeout=60,
    )
    bounds = ["rows × dim", "rows × dim", "rows × dim", "rows must be at most 110,558"]
    for (code, err), bound in zip(result["runs"], bounds, strict=True):
        assert code == 2 and err.count("\n") == 1 and bound in err, err


# --------------------------------------------------------------------------- 16-bit images
def _png16(path, width: int, height: int, value: int) -> None:
    """A grey 16-bit PNG of one value, written row by row (it compresses about 200:1)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    pack = zlib.compressobj(9)
    row = b"\x00" + struct.pack(">H", value) * width
    data = b"".join(pack.compress(row) for _ in range(height)) + pack.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_a_small_16_bit_png_is_scaled_without_gigabytes(tmp_path):
    """A 37 kB PNG of 4000 × 4000 16-bit pixels took 292 MB over Pillow's own image (int64
    copies of every pixel: a 344 kB file of 13,300² pixels peaked at 3.4 GB); now a few rows at
    a time."""
    _png16(tmp_path / "a.png", 4000, 4000, 0x8000)
    result = _probe(
        f"""
        import json, resource
        from qlatent.data.folder import load_image_folder
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        x = load_image_folder({str(tmp_path)!r}, size=8, channels=1, progress=False)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({{"value": float(x[0, 0, 0, 0]), "grown_kb": grown}}))
        """
    )
    assert result["value"] == pytest.approx(128 / 255 - 0.5, abs=1e-6)
    assert result["grown_kb"] < 160 * 1024  # Pillow's image (4 bytes a pixel) and the result


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_scaling_is_unchanged(monkeypatch, mode):
    """Row by row, the 8-bit values are those of the whole image at once, in several blocks."""
    from PIL import Image

    monkeypatch.setattr(folder, "_SCALE_CHUNK", 100, raising=False)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65536, size=(37, 29))
    if mode == "I;16":
        image = Image.fromarray(pixels.astype(np.uint16))
        assert image.mode == "I;16"
    else:
        image = Image.fromarray(pixels.astype(np.int32), "I")
        image.format = "PNG"
    out = np.asarray(folder._eight_bit(image, folder.Path("x.png")))
    expected = ((pixels.clip(0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


# ------------------------------------------------------------------------------ direct sums
def test_a_dense_generator_matrix_past_its_bound_is_refused():
    """``tile("z", 2**20).generator_matrix`` asked torch for 8 TiB (an allocator traceback) and
    a width of 40,000 allocated 12.8 GB; Z^m's ``points_from_unit`` formed the same matrix."""
    result = _probe(
        """
        import json, torch
        from qlatent.lattices import integer_lattice, tile
        errors = []
        for lattice in (tile("z", 2**20), tile("e8", 40_000), integer_lattice(40_000)):
            try:
                lattice.generator_matrix
                errors.append(None)
            except ValueError as err:
                errors.append(str(err))
        r = torch.rand(2, 40_000, dtype=torch.float64)
        same = torch.equal(integer_lattice(40_000).points_from_unit(r), r)
        print(json.dumps({"errors": errors, "same": same}))
        """
    )
    for err in result["errors"]:
        assert err is not None and "m must be at most 2^12 (4096)" in err and "\n" not in err
    assert result["same"]


def test_generator_matrices_and_points_within_the_bound_are_unchanged():
    from qlatent.lattices import RectangularLattice, integer_lattice, tile

    for spec, dim in [("e8", 40), (["leech", "bw16"], 40), (["e8", "a2", "z", "z"], 12)]:
        lattice = tile(spec, dim)
        dense = torch.block_diag(*(block.generator_matrix for block in lattice.blocks))
        assert torch.equal(lattice.generator_matrix, dense)
    assert torch.equal(integer_lattice(4096).generator_matrix, torch.eye(4096, dtype=torch.float64))
    spacing = torch.tensor([0.5, 1.0, 2.0, 3.3, 1e-3, 7.1])
    r = torch.rand(100, 6, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.float64):
        lattice = RectangularLattice(spacing.to(dtype))
        expected = r.to(dtype) @ torch.diag(lattice.spacing).T
        assert torch.equal(lattice.points_from_unit(r.to(dtype)), expected)


def test_a_direct_sum_of_too_many_runs_is_refused_and_long_runs_are_cheap():
    """699,050 alternating Z and D2 blocks took 10.7 s to build and 37 s and 1.2 GB to decode
    one row; Z^(2^20)'s log-volume took 4.9 s (a tensor per block)."""
    result = _probe(
        """
        import json, time, torch
        from qlatent.lattices import tile
        start = time.perf_counter()
        try:
            tile(["z", "d2"] * 349_525, 1_048_575)
            error = None
        except ValueError as err:
            error = str(err)
        refused = time.perf_counter() - start
        lattice = tile("z", 2**20)
        start = time.perf_counter()
        log_volume = float(lattice.log_volume)
        lattice.closest_point(torch.zeros(1, 2**20))
        used = time.perf_counter() - start
        print(json.dumps({"error": error, "refused": refused, "used": used, "lv": log_volume}))
        """
    )
    assert result["error"] == (
        "a direct sum takes at most 1024 runs of equal consecutive blocks, got 699050"
    )
    assert result["refused"] < 5 and result["used"] < 2 and result["lv"] == 0.0


def test_a_direct_sums_log_volume_is_unchanged():
    """Summed block by block in order as before, bit for bit (float64 and mixed dtypes)."""
    from qlatent.lattices import DirectSum, RectangularLattice, tile

    for spec, dim in [
        ("e8", 40),
        (["leech", "bw16"], 40),
        (["leech", "e8", "e8"], 40),
        (["a2", "d4*", "e8", "a3"] * 20, 20 * 17),
        ("a2", 1000),
    ]:
        lattice = tile(spec, dim)
        expected = sum(block.log_volume for block in lattice.blocks)
        assert lattice.log_volume.dtype == expected.dtype
        assert torch.equal(lattice.log_volume, expected)
    odd = RectangularLattice(torch.tensor([0.3, 1.7], dtype=torch.float32))
    mixed = DirectSum([odd, odd, tile("a2", 2).blocks[0], odd])
    expected = sum(block.log_volume for block in mixed.blocks)
    assert torch.equal(mixed.log_volume, expected) and mixed.dim == 8


# ------------------------------------------------------------------------------- meta device
def test_a_forward_on_the_meta_device_is_named():
    """NotImplementedError "Cannot copy out of meta tensor; no data!" (a meta input) or torch's
    device mismatch (a bottleneck sized on the meta device)."""
    from qlatent.bottlenecks import build

    with torch.device("meta"):
        sized = build("lattice", dim=8, lattice="e8")
    with pytest.raises(ValueError, match="^DitheredGoodLattice is on the meta device"):
        sized(torch.randn(2, 8))
    neck = build("lattice", dim=8)
    with pytest.raises(ValueError, match=r"^input is on the meta device: .* shape \(2, 8\)"):
        neck(torch.empty(2, 8, device="meta"))


# -------------------------------------------------------------------------- clustering scores
def test_cluster_accuracy_bounds_its_contingency_table():
    """40,000 distinct labels against 40,000 cluster ids (320 kB each) asked for 12 GiB."""
    result = _probe(
        """
        import json
        import numpy as np
        from qlatent.eval.downstream import cluster_accuracy
        try:
            cluster_accuracy(np.arange(40_000), np.arange(40_000))
            error = None
        except ValueError as err:
            error = str(err)
        ok = cluster_accuracy(np.arange(1024), np.arange(1024))
        print(json.dumps({"error": error, "ok": ok}))
        """
    )
    assert result["error"] == (
        "40,000 cluster ids × 40,000 labels make a contingency table of more than 2^24 "
        "(16,777,216) cells"
    )
    assert result["ok"] == 1.0


def test_an_image_size_past_the_model_bound_is_refused_before_the_folder_is_read(tmp_path):
    """``data.image_size = 20000`` on a folder of three images resized every image to 20000²
    (gigabytes) before the model built from that shape was refused: the config now counts the
    model on the meta device from the image shape it names."""
    from qlatent.experiments.custom import load_config

    never_read = tmp_path / "not-there"  # reading it would be a DataError, not the size's error
    config = tmp_path / "big.toml"
    config.write_text(f'[data]\nname = "folder"\nfolder = "{never_read}"\nimage_size = 20000\n')
    with pytest.raises(ValueError, match="would hold 240,000,193,240 numbers"):
        load_config([str(config)])
    config.write_text(f'[data]\nname = "folder"\nfolder = "{never_read}"\nimage_size = 64\n')
    assert load_config([str(config)]).data.image_size == 64
