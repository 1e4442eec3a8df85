"""What the benchmarks measure and record: the timer's arithmetic, the work each named case does,
the inputs the compared cases share, the ratios derived from the rows, and the threads a run
records. Nothing here asserts a speed: the timings are faked or ignored, only what was run and
what was written is checked, on tiny inputs.
"""

from __future__ import annotations

import json

import pytest
import torch

from qlatent.bench import MODES, PEER_CODEBOOK_SIZES, SPEEDUP_TARGET, time_cases
from qlatent.cli import main


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _fake_timings(cases, **_):
    return {name: {"median_s": 1.0, "min_s": 1.0, "max_s": 1.0, "repeats": 1} for name in cases}


# ------------------------------------------------------------------ the timer
def test_time_cases_statistics_are_over_the_timed_calls_each_with_its_sync(monkeypatch):
    """A fake clock: each call takes the next of a list of durations, each sync 0.5 more. Five
    calls in blocks of up to 3 run as two rounds, 2 warm-ups + 2 timed, then 2 warm-ups + 3
    timed; the warm-ups' huge durations must not appear, and each timed call includes its sync
    (on CUDA: its kernels' time, not only their launch)."""
    import qlatent.bench.timing as timing

    clock = [0.0]
    warm = 1e6
    durations = iter([warm, warm, 3.0, 1.0, warm, warm, 9.0, 5.0, 2.0])
    events = []

    def call():
        events.append("call")
        clock[0] += next(durations)

    def sync():
        events.append("sync")
        clock[0] += 0.5

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    out = time_cases({"a": call}, repeats=5, block=3, warmup=2, sync=sync)["a"]
    assert events == ["call", "sync"] * 9
    assert out == {"median_s": 3.5, "min_s": 1.5, "max_s": 9.5, "repeats": 5}


# ------------------------------------------------------------------ bench lattice
def test_each_lattice_case_does_the_work_it_is_named_for(monkeypatch):
    """Eager cases on a tiny input (no compilation): "no grad" forwards record no graph,
    "autograd" ones do on an input that requires grad, "forward + backward" runs exactly one
    backward, the hard path runs in eval mode with grad off, the others in training mode."""
    import qlatent.bench.lattice as bench
    from qlatent.bottlenecks import build

    captured = {}

    def capture(cases, **kwargs):
        captured.update(cases)
        return _fake_timings(cases)

    monkeypatch.setattr(bench, "time_cases", capture)
    bench.bench_lattice(rows=16, dim=4, threads=1, repeats=1, compile=False, peers=False)

    cls = type(build("lattice", dim=4))
    original = cls._forward_rows
    seen: list[tuple[bool, bool, bool]] = []

    def probe(self, y, generator):
        seen.append((self.training, torch.is_grad_enabled(), y.requires_grad))
        return original(self, y, generator)

    monkeypatch.setattr(cls, "_forward_rows", probe)
    backward = torch.autograd.backward
    backwards = []

    def counting_backward(*args, **kwargs):
        backwards.append(1)
        return backward(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", counting_backward)

    expected = {
        "train path, eager, no grad": ((True, False, False), 0),
        "train path, eager, autograd": ((True, True, True), 0),
        "train path, eager, forward + backward": ((True, True, True), 1),
        "hard path (eval), eager": ((False, False, False), 0),
    }
    for name, (state, n_backward) in expected.items():
        seen.clear()
        backwards.clear()
        captured[name]()
        assert seen == [state], name
        assert len(backwards) == n_backward, name


def test_lattice_ratios_follow_from_the_cases_medians(monkeypatch):
    """``rows_per_s`` = rows / median, ``ratio_to_floor`` = median / the floor's median, and
    ``speedup_vs_compressai`` = CompressAI's median / ours, on made-up medians."""
    import qlatent.bench.lattice as bench

    medians = {bench.FLOOR: 2.0, "train path, eager, forward + backward": 8.0}

    def fake(cases, **_):
        out = {}
        for i, name in enumerate(cases):
            m = medians.get(name, 3.0 + i)
            out[name] = {"median_s": m, "min_s": m / 2, "max_s": 2 * m, "repeats": 1}
        return out

    def fake_peer(y, scale, compile):
        cases = {bench.CAI_TRAIN_EAGER: lambda: None, bench.CAI_GC_EVAL: lambda: None}
        medians[bench.CAI_TRAIN_EAGER] = 40.0
        medians[bench.CAI_GC_EVAL] = 6.0
        return cases, {"status": "measured"}

    monkeypatch.setattr(bench, "time_cases", fake)
    monkeypatch.setattr(bench, "_compressai_cases", fake_peer)
    # the floor is a compiled case: stand it in without compiling anything
    real_build = bench.build

    def eager_build(name, **kwargs):
        kwargs.pop("compile", None)
        return real_build(name, **kwargs)

    monkeypatch.setattr(bench, "build", eager_build)
    monkeypatch.setattr(torch, "compile", lambda fn, **_: fn)
    import qlatent.bottlenecks.lattice as lattice_module

    monkeypatch.setattr(lattice_module, "_compiled_kernel", lambda: lattice_module._training_kernel)
    out = bench.bench_lattice(rows=10, dim=4, threads=1, repeats=1, compile=True)
    cases = out["cases"]
    for case in cases.values():
        assert case["rows_per_s"] == 10 / case["median_s"]
        assert case["rows_per_s_best"] == 10 / case["min_s"]
        assert case["ratio_to_floor"] == case["median_s"] / 2.0
    assert out["speedup_vs_compressai"]["train_eager"] == 40.0 / 8.0
    gc = cases["hard path (eval), eager"]["median_s"]
    assert out["speedup_vs_compressai"]["hard_path_eager_vs_gaussian_conditional"] == 6.0 / gc


# ------------------------------------------------------------------ bench quantizers
def test_timed_call_modes_are_what_the_json_says():
    """``train``: module.train(), grad recorded on an input that requires grad; ``eval``:
    module.eval() under inference mode; the caller's module and input are left as they were."""
    from qlatent.bench.quantizers import MODE_NOTES, _timed_call

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(
                (self.training, torch.is_inference_mode_enabled(), x.requires_grad, x.shape)
            )
            return x * 2

    module, x = Probe().eval(), torch.randn(5, 3)
    train = _timed_call(module, x, "train")
    evaluate = _timed_call(module, x, "eval")
    assert train().requires_grad and not evaluate().requires_grad
    assert seen == [(True, False, True, (5, 3)), (False, True, False, (5, 3))]
    assert not module.training and not x.requires_grad
    assert "inference_mode" in MODE_NOTES["eval"] and "autograd" in MODE_NOTES["train"]


def test_ours_and_the_peers_are_timed_on_the_same_numbers(monkeypatch):
    """The rows a bottleneck of in_dim = dim gets are the rows each peer gets, as (1, rows,
    dim); the same dtype and device; every case in both modes."""
    pytest.importorskip("vector_quantize_pytorch")
    import qlatent.bench.quantizers as bench

    inputs = []
    real = bench._timed_call

    def record(module, x, mode, generator=None):
        inputs.append((type(module).__name__, mode, x))
        return real(module, x, mode, generator)

    monkeypatch.setattr(bench, "_timed_call", record)
    monkeypatch.setattr(bench, "time_cases", lambda cases, **_: _fake_timings(cases))
    out = bench.bench_quantizers(
        names=["identity"], rows=12, dim=8, threads=1, repeats=1, min_repeats=1, budget_s=0.0,
        compile=False,
    )  # fmt: skip
    assert out["errors"] == [] and out["peers"]["status"] == "ok"
    ours = [x for name, _, x in inputs if name == "Identity" or name.endswith("Bottleneck")]
    peers = [x for name, _, x in inputs if name in ("VectorQuantize", "FSQ")]
    assert ours and len(peers) == 2 * (len(PEER_CODEBOOK_SIZES) + 2)
    for x in peers:
        assert x.shape == (1, 12, 8) and x.dtype == ours[0].dtype
        assert torch.equal(x.reshape(12, 8), ours[0])


def test_vq_speedups_follow_their_definition():
    """``speedup_vs_vector_quantize``: our rows/s over VectorQuantize's at the same K and mode;
    ``target_met`` the least of them against the target; the floor ratios vq eval over the bare
    search rows (made-up rates)."""
    from qlatent.bench.quantizers import FLOOR_NAME, MIN_FLOOR_NAME, _speedups

    rows = []
    for i, k in enumerate(PEER_CODEBOOK_SIZES):
        for j, mode in enumerate(MODES):
            rows += [
                {"name": f"vq[K={k}]", "mode": mode, "rows_per_s": 10.0 + i + j},
                {"name": f"VectorQuantize[K={k}]", "mode": mode, "rows_per_s": 2.0},
            ]
        rows.append({"name": FLOOR_NAME.format(k), "mode": None, "rows_per_s": 4.0})
        rows.append({"name": MIN_FLOOR_NAME.format(k), "mode": None, "rows_per_s": 8.0})
    out = _speedups(rows)
    for i, k in enumerate(PEER_CODEBOOK_SIZES):
        assert out[f"K={k}"] == {m: (10.0 + i + j) / 2.0 for j, m in enumerate(MODES)}
        assert out["vq_eval_over_floor"][f"K={k}"] == (11.0 + i) / 4.0
        assert out["vq_eval_over_min_floor"][f"K={k}"] == (11.0 + i) / 8.0
    assert out["target_met"] is (5.0 >= SPEEDUP_TARGET)
    rows[0] = {**rows[0], "rows_per_s": 2.0 * SPEEDUP_TARGET * 0.99}  # one pair under the target
    assert _speedups(rows)["target_met"] is False


# ------------------------------------------------------------------ recorded threads
def _light_steps(monkeypatch):
    """bench_training_step with one step case: the Leech and Λ16 decodes only besides."""
    import qlatent.bench.geometry as geometry

    monkeypatch.setattr(geometry, "STEP_CASES", {"rect_lattice": {}})
    monkeypatch.setattr(geometry, "CONFIGURED_STEPS", ())
    monkeypatch.setattr(geometry, "VARIANT_STEPS", {})
    return geometry


def test_training_steps_time_on_one_thread_and_leave_the_callers_count(monkeypatch):
    geometry = _light_steps(monkeypatch)
    during = []
    real = geometry.time_cases

    def record(cases, **kwargs):
        during.append(torch.get_num_threads())
        return real(cases, **kwargs)

    monkeypatch.setattr(geometry, "time_cases", record)
    torch.set_num_threads(2)
    steps = geometry.bench_training_step(repeats=1)
    assert during == [1] and "step: rect_lattice" in steps
    assert torch.get_num_threads() == 2


def test_bench_lattices_records_the_threads_of_its_closest_point_timings(monkeypatch, tmp_path):
    """The provenance written after ``bench lattices`` reads torch's thread count then: it must
    be the count the closest points were timed with (``input.threads``), not the one thread of
    the training steps timed last."""
    _light_steps(monkeypatch)
    out = tmp_path / "g.json"
    argv = ["bench", "lattices", "--names", "z", "--rows", "64", "--repeats", "1"]
    argv += ["--target-rse", "0.05", "--threads", "2", "--no-compile", "--output", str(out)]
    assert main(argv) == 0
    payload = json.loads(out.read_text())
    assert payload["input"]["threads"] == 2
    assert payload["machine"]["torch_threads"] == 2
    assert "step: rect_lattice" in payload["training_step_ms"]
