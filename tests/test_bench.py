"""``qlatent bench quantizers`` on a tiny input: the JSON layout, the peers, the failure paths.

Throughput numbers themselves are never asserted (they go to ``results/``); one thread, 256 rows
and two timed calls per case keep this file to a few seconds on a busy two-core machine.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from qlatent.bench import (
    COMPILED_KWARGS,
    FSQ_LEVELS,
    MODES,
    PEER_CODEBOOK_SIZES,
    QUANTIZER_KWARGS,
    bench_quantizers,
    format_quantizers,
    time_cases,
)
from qlatent.bottlenecks import BOTTLENECKS
from qlatent.cli import main

# the compiled rows cost seconds of compilation: their own (slow) test below
TINY = dict(rows=256, threads=1, repeats=2, min_repeats=2, budget_s=0.0, compile=False)
K_KEYS = [f"K={k}" for k in PEER_CODEBOOK_SIZES]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result():
    return bench_quantizers(**TINY)


def rows_of(result, source):
    return [r for r in result["results"] if r["source"] == source]


def test_every_registered_bottleneck_runs_in_both_modes(result):
    assert result["errors"] == [], (
        "a bottleneck failed; give it constructor arguments in bench.QUANTIZER_KWARGS"
    )
    ours = rows_of(result, "qlatent")
    for name in BOTTLENECKS.names():
        mine = [r for r in ours if r["name"].split("[")[0] == name]
        expected = len(QUANTIZER_KWARGS.get(name, [{}]))
        for mode in MODES:
            assert len([r for r in mine if r["mode"] == mode]) == expected, (name, mode)
    assert all(r["kwargs"]["dim"] == 64 for r in ours)


def test_vq_rows_at_each_peer_codebook_size(result):
    vq = {(r["K"], r["mode"]) for r in rows_of(result, "qlatent") if r["name"].startswith("vq[")}
    assert vq == {(k, m) for k in PEER_CODEBOOK_SIZES for m in MODES}


def test_every_row_is_a_positive_finite_timing(result):
    references = {r["name"] for r in rows_of(result, "reference")}
    floors = {f"addmm + argmin[K={k}]" for k in PEER_CODEBOOK_SIZES}
    floors |= {f"addmm + min(1).indices[K={k}]" for k in PEER_CODEBOOK_SIZES}
    assert references == {"torch.rand (rows x dim numbers alone)", *floors}
    for r in result["results"]:
        assert math.isfinite(r["rows_per_s"]) and r["rows_per_s"] > 0, r["name"]
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["repeats"] == 2
        assert r["params"] >= 0 and r["buffers"] >= 0
        assert r["in_dim"] >= result["input"]["dim"]
        assert r["mode"] in (*MODES, None)
    json.dumps(result, allow_nan=False)  # plain JSON, no NaN or tensors


def test_vq_eval_is_compared_with_its_floor(result):
    """The bare search row at each K, and vq's eval rows/s over it (finite, positive)."""
    ratios = result["speedup_vs_vector_quantize"]["vq_eval_over_floor"]
    assert set(ratios) == {f"K={k}" for k in PEER_CODEBOOK_SIZES}
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    assert "vq eval / bare addmm + argmin" in format_quantizers(result)
    fastest = result["speedup_vs_vector_quantize"]["vq_eval_over_min_floor"]
    assert set(fastest) == set(ratios) and all(v > 0 for v in fastest.values())
    assert "vq eval / bare addmm + min(1).indices" in format_quantizers(result)


def test_peers_measured_in_the_same_run(result):
    pytest.importorskip("vector_quantize_pytorch")
    assert result["peers"]["status"] == "ok"
    peers = {(r["name"], r["mode"]) for r in rows_of(result, "vector_quantize_pytorch")}
    names = [f"VectorQuantize[K={k}]" for k in PEER_CODEBOOK_SIZES]
    names += [f"FSQ[levels={'x'.join(map(str, levels))}]" for levels in FSQ_LEVELS]
    assert peers == {(n, m) for n in names for m in MODES}
    speedup = result["speedup_vs_vector_quantize"]
    for key in K_KEYS:
        assert set(speedup[key]) == set(MODES)
        assert all(v > 0 for v in speedup[key].values())
    assert isinstance(speedup["target_met"], bool)


def test_without_the_peer_package_the_bench_still_runs(monkeypatch):
    monkeypatch.setitem(sys.modules, "vector_quantize_pytorch", None)  # import raises
    out = bench_quantizers(names=["identity"], **TINY)
    assert out["peers"]["status"] == "skipped"
    assert "not importable" in out["peers"]["reason"]
    assert {r["source"] for r in out["results"]} == {"reference", "qlatent"}
    speedup = out["speedup_vs_vector_quantize"]
    assert all(speedup[key] == {m: None for m in MODES} for key in K_KEYS)
    assert speedup["target_met"] is None
    assert "peers skipped" in format_quantizers(out)


def test_a_bottleneck_that_fails_to_build_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "vector_quantize_pytorch", None)
    monkeypatch.setitem(QUANTIZER_KWARGS, "identity", [{"no_such_argument": 1}])
    out = bench_quantizers(names=["identity", "lattice"], **TINY)
    [error] = out["errors"]
    assert error["name"] == "identity" and error["stage"] == "build"
    assert "no_such_argument" in error["error"]
    assert {r["name"] for r in rows_of(out, "qlatent")} == {"lattice"}
    assert "FAILED identity (build)" in format_quantizers(out)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="known names: .*identity"):
        bench_quantizers(names=["no_such_bottleneck"], **TINY)


def test_time_cases_per_case_repeats_are_spread_over_interleaved_rounds():
    calls: list[str] = []
    timing = time_cases(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats={"a": 7, "b": 2},
        block=3,
        warmup=1,
    )
    assert timing["a"]["repeats"] == 7 and timing["b"]["repeats"] == 2
    # 3 rounds: a runs 2, 2, 3 calls (+1 warmup each); b runs 0, 1, 1 (+1 warmup when it runs)
    assert "".join(calls) == "aaa" + "aaa" + "bb" + "aaaa" + "bb"
    assert time_cases({"c": lambda: None}, repeats=20, block=10)["c"]["repeats"] == 20
    with pytest.raises(ValueError, match="at least 1"):
        time_cases({"c": lambda: None}, repeats={"c": 0})


def test_cli_quick_writes_the_json(tmp_path, capsys):
    path = tmp_path / "bench-quantizers.json"
    argv = ["bench", "quantizers", "--quick", "--threads", "1", "--no-compile"]
    assert main([*argv, "--output", str(path)]) == 0
    payload = json.loads(path.read_text())
    assert payload["command"].startswith("qlatent bench quantizers --quick")
    assert {"commit", "machine", "input", "modes", "timing", "results", "errors"} <= set(payload)
    assert payload["input"]["rows"] == 256 and not payload["input"]["compiled_rows"]
    assert "vq / VectorQuantize" in capsys.readouterr().out


def test_compiled_vq_rows_are_compared_with_the_peer_and_eager_vq(result):
    """The ratios of ``vq[K=k, compile]`` rows, on a result with made-up timings (no compile)."""
    from qlatent.bench.quantizers import _speedups

    assert "compiled_vq" not in result["speedup_vs_vector_quantize"]  # compile=False: no rows
    rows = []
    for k in PEER_CODEBOOK_SIZES:
        for mode in MODES:
            rows += [
                {"name": f"vq[K={k}]", "mode": mode, "rows_per_s": 2.0},
                {"name": f"vq[K={k}, compile]", "mode": mode, "rows_per_s": 3.0},
                {"name": f"VectorQuantize[K={k}]", "mode": mode, "rows_per_s": 0.5},
            ]
        rows.append({"name": f"addmm + argmin[K={k}]", "mode": None, "rows_per_s": 4.0})
    compiled = _speedups(rows)["compiled_vq"]
    for key in K_KEYS:
        assert compiled[key] == {"train": 6.0, "eval": 6.0}
        assert compiled["over_eager_vq"][key] == {"train": 1.5, "eval": 1.5}
        assert compiled["eval_over_floor"][key] == 0.75
    shown = format_quantizers({**result, "speedup_vs_vector_quantize": _speedups(rows)})
    assert "vq with compile=True / VectorQuantize" in shown and "eval 6.00x (1.50x)" in shown


@pytest.mark.slow
def test_compiled_vq_rows_run():
    """``compile=True`` (the default) adds ``vq[K=k, compile]`` in both modes at every K."""
    out = bench_quantizers(names=["vq"], **{**TINY, "compile": True})
    assert out["errors"] == [] and out["input"]["compiled_rows"]
    names = {(r["name"], r["mode"]) for r in rows_of(out, "qlatent")}
    assert {
        (f"vq[K={e['num_codes']}, compile]", m) for e in COMPILED_KWARGS["vq"] for m in MODES
    } <= names
    compiled = out["speedup_vs_vector_quantize"]["compiled_vq"]
    assert all(v > 0 for v in compiled["over_eager_vq"]["K=128"].values())


def test_cli_unknown_name_is_an_error(capsys):
    argv = ["bench", "quantizers", "--quick", "--names", "nope", "--output", ""]
    assert main(argv) == 2
    assert "unknown bottleneck" in capsys.readouterr().err


def test_bench_coding_measures_both_directions_and_the_overhead(no_compressai):
    from qlatent.bench.coding import bench_coding, format_coding

    result = bench_coding(rows=300, dim=8, repeats=1)
    for name in ("lattice", "vq"):
        case = result["cases"][name]
        assert case["round_trip_exact"]
        assert case["encode_symbols_per_s"] > 0 and case["decode_symbols_per_s"] > 0
        assert case["symbols"] == (300 * 8 if name == "lattice" else 300)
        assert case["payload_overhead_percent"] > -0.01  # not below the exact rate
    alone = result["lattice_coder_alone"]
    assert alone["round_trip_exact"] and alone["symbols"] == 300 * 8
    assert set(alone["symbols_per_s"]) == {
        f"{code}_{op}"
        for code in ("sign_magnitude", "quantized_laplace")
        for op in ("encode", "decode")
    }
    # the factorized code and constriction's parametric model both code the exact rate
    exact = result["cases"]["lattice"]["exact_bits"]
    for bits in alone["payload_bits"].values():
        assert exact - 1 <= bits <= 1.001 * exact + 64
    peer = result["compressai"]  # not installed in the test environment
    assert peer["status"] == "skipped" and "not installed" in peer["reason"]
    assert peer["quoted"]["encode_symbols_per_s"] > 0
    assert "CompressAI" in format_coding(result) and "quoted" in format_coding(result)


def test_bench_coding_codes_with_compressai_beside_the_lattice(fake_compressai, monkeypatch):
    """With CompressAI loadable, its EntropyBottleneck is fitted, codes the lattice case's
    numbers, round-trips, and is timed interleaved with the lattice's whole calls."""
    from qlatent.bench import coding

    monkeypatch.setattr(coding, "FIT_STEPS", 3)
    monkeypatch.setattr(coding, "AUX_STEPS", 3)
    result = coding.bench_coding(rows=300, dim=8, repeats=1)
    peer = result["compressai"]
    assert peer["status"] == "measured" and peer["version"] == "9.9"
    assert peer["round_trip_exact"] and peer["symbols"] == 300 * 8
    assert peer["payload_bits"] == 16 * 300 * 8  # the stand-in writes int16 values
    assert set(peer["symbols_per_s"]) == {
        f"{who}_{op}" for who in ("compressai", "lattice") for op in ("encode", "decode")
    }
    assert all(v > 0 for v in peer["symbols_per_s"].values())
    assert "interleaved" in coding.format_coding(result)


def test_bench_lattices_estimates_g_and_times_the_decoders(monkeypatch):
    """G within its own 5 s.e. of the literature for D4 and E8 (a coarse target here), every
    requested lattice timed next to plain rounding, and the training-step breakdown filled in.

    Several configured rows (``leech_gl_lattice``, ``e8z_gl_lattice``, ...) set ``compile = true``;
    here they are built eager, so nothing is compiled: the compiled training steps and decoders
    are run by the slow ``test_bench_lattices_times_the_compiled_leech_decoder`` (its
    ``steps=True`` builds every configured row as configured, compiled) and
    ``test_bench_lattices_times_the_compiled_e8_and_bw16_decoders``."""
    # lattice_mnist imported before the patch below: first imported under it, it kept the
    # patched builder for the rest of the process (a later test's Gaussian-lattice row was
    # built with compile=False, which that bottleneck does not take)
    import qlatent.experiments.lattice_mnist  # noqa: F401
    import qlatent.models
    from qlatent.bench.geometry import bench_lattices, bench_training_step, format_lattices

    build_vae = qlatent.models.gated_vae
    compiled = []
    monkeypatch.setattr(
        qlatent.models, "gated_vae", lambda *a, **kw: build_vae(*a, **{**kw, "compile": False})
    )
    monkeypatch.setattr(torch, "compile", lambda *a, **kw: compiled.append(a) or a[0])

    result = bench_lattices(
        names=["d4", "e8"], rows=256, repeats=1, target_rse=0.01, steps=False, compile=False
    )  # the compiled decoders' rows: the slow tests below
    for g in result["geometry"].values():
        assert g["relative_se"] < 0.01
        assert abs(g["nsm"] - g["literature"]) < 5 * g["se"]
    assert set(result["closest_point"]) == {"d4", "e8", "round (Z, torch.round)"}
    assert all(t["rows_per_s"] > 0 for t in result["closest_point"].values())
    assert set(result["allocator"]) == {"environment", "transparent_hugepage"}
    assert "| E8 |" in format_lattices(result)
    steps = bench_training_step(repeats=1)
    from qlatent.bench.geometry import CONFIGURED_STEPS, STEP_CASES, VARIANT_STEPS

    # every training-step case (the fused-Adam one, the configured rows and their variants too)
    # and the three decode timings
    assert len(steps) == len(STEP_CASES) + len(CONFIGURED_STEPS) + len(VARIANT_STEPS) + 3
    assert "step: leechz_gl_lattice, Z blocks estimated" in steps
    assert all(v > 0 for v in steps.values())
    assert "step: rect_lattice, fused Adam" in steps
    assert "step: e8z_lattice (configs/lattice-mnist)" in steps
    with pytest.raises(ValueError, match="unknown lattices"):
        bench_lattices(names=["e9"], steps=False)
    assert compiled == []


@pytest.mark.slow
def test_bench_lattices_times_the_compiled_leech_decoder():
    """With Leech among the names, the compiled decoder's row (checked against the eager one in
    the run), its compile time, the formatted line, and the compiled training-step cases."""
    from qlatent.bench.geometry import (
        COMPILED_LEECH,
        COMPILED_STEP,
        bench_lattices,
        format_lattices,
    )

    result = bench_lattices(names=["leech"], rows=300, repeats=1, target_rse=0.05, steps=True)
    assert result["closest_point"][COMPILED_LEECH]["rows_per_s"] > 0
    assert result["leech_compile_s"] >= 0
    assert "Leech, torch.compile" in format_lattices(result)
    steps = result["training_step_ms"]
    assert steps[f"step: {COMPILED_STEP}"] > 0 and steps["Leech decodes: 800, torch.compile"] > 0
    assert steps["BW16 decodes: 964, torch.compile"] > 0
    unfused = bench_lattices(
        names=["leech"], rows=64, repeats=1, target_rse=0.05, steps=False, compile=False
    )
    assert COMPILED_LEECH not in unfused["closest_point"] and unfused["leech_compile_s"] is None


@pytest.mark.slow
@pytest.mark.parametrize("name,label", [("e8", "E8"), ("bw16", "BW16")])
def test_bench_lattices_times_the_compiled_e8_and_bw16_decoders(name, label):
    from qlatent.bench.geometry import bench_lattices, format_lattices

    result = bench_lattices(names=[name], rows=300, repeats=1, target_rse=0.05, steps=False)
    assert result["closest_point"][f"{name}, torch.compile"]["rows_per_s"] > 0
    assert result[f"{name}_compile_s"] >= 0 and result["leech_compile_s"] is None
    assert f"{label}, torch.compile" in format_lattices(result)


def test_bench_lattice_times_every_path_and_records_the_load():
    """Tiny input, no compilation: the eager cases, forward + backward among them; no floor
    (it is the compiled kernel), so no ratios."""
    from qlatent.bench.lattice import FLOOR, bench_lattice

    result = bench_lattice(rows=64, dim=8, threads=1, repeats=2, compile=False, peers=False)
    assert set(result["cases"]) == {
        "torch.rand (rows x dim numbers alone)",
        "train path, eager, no grad",
        "train path, eager, autograd",
        "train path, eager, forward + backward",
        "hard path (eval), eager",
    }
    assert FLOOR not in result["cases"] and result["compile_s"] is None
    for case in result["cases"].values():
        assert case["rows_per_s"] > 0 and "ratio_to_floor" not in case
    assert len(result["load_average"]["before"]) == 3
    competing = result["competing_runnable_before"]
    assert competing is None or competing >= 0


@pytest.fixture
def no_compressai(monkeypatch):
    """CompressAI not installed, whatever the environment."""
    import importlib.util

    for name in [n for n in sys.modules if n.split(".")[0] == "compressai"]:
        monkeypatch.delitem(sys.modules, name)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "compressai" else real_find_spec(name, *a),
    )


def test_bench_lattice_without_compressai_records_why(no_compressai):
    """Not installed: the lattice cases run and the peer is reported as skipped, with a reason."""
    from qlatent.bench.lattice import bench_lattice

    result = bench_lattice(rows=64, dim=8, threads=1, repeats=1, compile=False)
    peer = result["peers"]["compressai"]
    assert peer["status"] == "skipped" and "not installed" in peer["reason"]
    assert result["speedup_vs_compressai"] == {}
    assert not any(name.startswith("CompressAI") for name in result["cases"])


FAKE_ENTROPY_MODELS = """
import numpy as np
import torch
from compressai import available_entropy_coders, get_entropy_coder

assert get_entropy_coder() in available_entropy_coders()


class EntropyBottleneck(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(channels, 1))
        self.quantiles = torch.nn.Parameter(torch.zeros(channels, 1, 3))

    def forward(self, x):
        y = x + torch.rand_like(x) - 0.5 if self.training else torch.round(x)
        return y, torch.sigmoid(y * self.scale).clamp_min(1e-9)

    def loss(self):
        return self.quantiles.pow(2).sum()

    def update(self, force=False):
        return True

    def compress(self, x):
        return [torch.round(x).to(torch.int16).numpy().tobytes()]

    def decompress(self, strings, size):
        values = np.frombuffer(strings[0], dtype=np.int16)
        return torch.from_numpy(values.astype(np.float32)).reshape(1, -1, *size)


class GaussianConditional(torch.nn.Module):
    def __init__(self, scale_table):
        super().__init__()

    def forward(self, x, scales):
        y = torch.round(x)
        return y, torch.exp(-0.5 * (y / scales) ** 2).clamp_min(1e-9)
"""


@pytest.fixture
def fake_compressai(tmp_path, monkeypatch):
    """A stand-in CompressAI whose ``__init__`` fails to import, as the real one does beside the
    CPU torch (torchvision's operators), with entropy models that do the same kinds of work."""
    package = tmp_path / "compressai"
    (package / "entropy_models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms')\n")
    (package / "entropy_models" / "__init__.py").write_text(FAKE_ENTROPY_MODELS)
    (tmp_path / "compressai-9.9.dist-info").mkdir()
    (tmp_path / "compressai-9.9.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: compressai\nVersion: 9.9\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n.split(".")[0] == "compressai"]:
        monkeypatch.delitem(sys.modules, name)
    yield
    for name in [n for n in sys.modules if n.split(".")[0] == "compressai"]:
        del sys.modules[name]


def test_bench_lattice_times_compressai_without_running_its_init(fake_compressai):
    """The entropy models are loaded although the package's ``__init__`` raises, timed on the
    same numbers, and read against our paths."""
    from qlatent.bench.lattice import COMPRESSAI_PAIRS, bench_lattice, compressai_entropy_models

    entropy_bottleneck, gaussian_conditional, version = compressai_entropy_models()
    assert version == "9.9" and entropy_bottleneck.__module__ == "compressai.entropy_models"
    result = bench_lattice(rows=64, dim=8, threads=1, repeats=1, compile=False)
    assert result["peers"]["compressai"] == {
        "status": "measured",
        "version": "9.9",
        "layout": [1, 8, 64],
    }
    for name in result["cases"]:
        assert result["cases"][name]["rows_per_s"] > 0
    eager_pairs = {k for k, (ours, _) in COMPRESSAI_PAIRS.items() if "compile" not in ours}
    assert set(result["speedup_vs_compressai"]) == eager_pairs
    assert all(v > 0 for v in result["speedup_vs_compressai"].values())


def test_a_broken_compressai_is_reported_and_unloaded(tmp_path, monkeypatch):
    """Its entropy models fail to import (say a mismatched extension): one line of reason, and
    the stand-in package is taken out of ``sys.modules`` again."""
    from qlatent.bench.lattice import compressai_entropy_models

    (tmp_path / "compressai" / "entropy_models").mkdir(parents=True)
    (tmp_path / "compressai" / "__init__.py").write_text("")
    (tmp_path / "compressai" / "entropy_models" / "__init__.py").write_text(
        "raise ImportError('undefined symbol in _CXX')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [n for n in sys.modules if n.split(".")[0] == "compressai"]:
        monkeypatch.delitem(sys.modules, name)
    reason = compressai_entropy_models()
    assert isinstance(reason, str) and "did not import" in reason and "_CXX" in reason
    assert "\n" not in reason
    assert not any(n.split(".")[0] == "compressai" for n in sys.modules)


def test_allocator_settings_name_what_is_set(monkeypatch, tmp_path):
    """The lattice(s) and quantizer benchmarks record the allocator variables set in the
    environment (and only those) and the kernel's transparent-huge-page mode, None where it
    cannot be read."""
    from qlatent.bench import timing

    for name in timing.ALLOCATOR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    monkeypatch.setattr(timing, "_THP_MODE", str(mode))
    assert timing.allocator_settings() == {
        "environment": {"THP_MEM_ALLOC_ENABLE": "1"},
        "transparent_hugepage": "madvise",
    }
    monkeypatch.setattr(timing, "_THP_MODE", str(tmp_path / "missing"))
    assert timing.allocator_settings()["transparent_hugepage"] is None
    result = bench_quantizers(names=["identity"], **TINY)
    assert result["allocator"] == {
        "environment": {"THP_MEM_ALLOC_ENABLE": "1"},
        "transparent_hugepage": None,
    }


def test_bench_lattice_scaling_reports_each_shape(tmp_path, capsys):
    """The scaling sweep times both eager paths per shape (tiny shapes here) and the CLI
    writes them."""
    from qlatent.bench.lattice import bench_lattice_scaling

    result = bench_lattice_scaling(shapes=((64, 8), (256, 8), (64, 16)), threads=1, repeats=1)
    assert set(result["allocator"]) == {"environment", "transparent_hugepage"}
    rows = result["scaling"]
    assert len(rows) == 6 and {r["case"] for r in rows} == {
        "train path, forward + backward",
        "hard path",
    }
    assert {(r["rows"], r["dim"]) for r in rows} == {(64, 8), (256, 8), (64, 16)}
    for r in rows:
        assert r["rows_per_s"] > 0 and r["values_per_s"] == pytest.approx(
            r["rows_per_s"] * r["dim"]
        )
    for case, spread in result["spread"].items():  # over (64, 8), (256, 8); over 8 and 16 wide
        speeds = {(r["rows"], r["dim"]): r["values_per_s"] for r in rows if r["case"] == case}
        pair = speeds[64, 8], speeds[256, 8]
        assert spread["over_rows"] == pytest.approx(max(pair) / min(pair))
        pair = speeds[64, 8], speeds[64, 16]
        assert spread["over_dims"] == pytest.approx(max(pair) / min(pair))


def test_bench_lattice_scaling_of_a_good_lattice(tmp_path, capsys):
    """``lattice="d4"`` sweeps direct sums of D4 (its shapes in blocks by default) and the CLI
    writes them under the lattice's name; ``--lattice`` needs ``--scaling``."""
    from qlatent.bench.lattice import (
        GOOD_SCALING_BLOCKS,
        bench_lattice_scaling,
        good_scaling_shapes,
    )
    from qlatent.cli import main

    assert good_scaling_shapes("d4") == tuple((r, 4 * b) for r, b in GOOD_SCALING_BLOCKS)
    result = bench_lattice_scaling(shapes=((8, 8), (16, 8)), threads=1, repeats=1, lattice="d4")
    assert result["lattice"] == "d4" and len(result["scaling"]) == 4
    assert all(r["values_per_s"] > 0 for r in result["scaling"])
    out = tmp_path / "s.json"
    with pytest.raises(SystemExit) as refused:  # not a lattice: the parser's error
        main(["bench", "lattice", "--lattice", "x1"])
    assert refused.value.code == 2 and "unknown lattice" in capsys.readouterr().err
    assert main(["bench", "lattice", "--lattice", "d4", "--output", str(out)]) == 2
    assert "--scaling" in capsys.readouterr().err and not out.exists()


def test_competing_runnable_counts_other_threads_ready_to_run(monkeypatch, tmp_path):
    """The runnable count of /proc/loadavg minus the reader, median over the reads; None where
    the file is missing or malformed."""
    from qlatent.bench import timing

    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.90 1.20 0.80 3/120 4242\n")
    monkeypatch.setattr(timing, "_LOADAVG", str(loadavg))
    assert timing.competing_runnable(samples=3, interval_s=0.0) == 2.0
    loadavg.write_text("0.10 0.20 0.30 1/99 4242\n")
    assert timing.competing_runnable(samples=2, interval_s=0.0) == 0.0
    loadavg.write_text("garbage\n")
    assert timing.competing_runnable(samples=2, interval_s=0.0) is None
    monkeypatch.setattr(timing, "_LOADAVG", str(tmp_path / "missing"))
    assert timing.competing_runnable(samples=2, interval_s=0.0) is None


def test_the_busy_warning_reads_the_runnable_count_before_the_load_average(result, monkeypatch):
    """A load average left by a benchmark just before does not warn when no other thread is
    runnable at the start; other runnable threads do; without the count the load decides
    (on a machine of two cores here)."""
    import copy
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    busy = copy.deepcopy(result)
    timing = busy["timing"]
    timing["load_average_1_5_15min"]["before"] = [9.0, 9.0, 9.0]
    timing["competing_runnable_before"] = 0.0
    assert "warning:" not in format_quantizers(busy)
    timing["competing_runnable_before"] = 8.0
    assert "8 other runnable threads" in format_quantizers(busy)
    timing["competing_runnable_before"] = None
    assert "load average 9.0" in format_quantizers(busy)
