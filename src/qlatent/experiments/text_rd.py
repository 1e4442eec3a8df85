"""``qlatent reproduce text-rd``: rate–distortion curves of the text autoencoder (lattice paper,
appendix A.2, Figure 4) on the ``text-en`` corpus.

Each operating point is one ``qlatent train CONFIG`` run of the sentence autoencoder
(``examples/text-en.toml``'s ``small`` model: 1-layer biGRU of 128 per direction, D = 256,
1-layer GRU of 256, 8k words, sentences of at most 20 tokens) with one bottleneck:

* ``scalar_st``: straight-through scalar quantizers with M ∈ {2, 4, 8, 16} learned levels and a
  learned code (the paper's knob is M);
* ``vector_st``: straight-through 2-D quantizers (N / 2 of them) with M ∈ {2, 4, 8, 16} learned
  code vectors and learned codes (the paper shows M = 4);
* ``gaussian_dither``, ``lattice`` (rectangular) and ``gaussian_lattice``: a sweep of the rate
  weight λ;
* ``language_model``: the rate-0 point — ``scalar_st`` with one level per coordinate, so the
  code is a learned constant and the decoder is a language model that hears nothing of the
  sentence;
* ``identity``: the unquantized autoencoder, the distortion floor (no rate: drawn as lines), both
  as the warm start left it and fine-tuned like every other point, the floor at equal training.

Per point the test set's rate in bits per word (for the discrete methods the size of the real
file of the test codes, with the code model counted on the training set where it is counted;
otherwise the Theorem-1 / KL rate) and the word NLL in bits per word on the hard path.

As in the paper, the unquantized autoencoder is trained first (``WARM_EPOCHS``) and every other
point starts from its weights (``init_from``: embeddings, GRUs and the maps to and from the code);
it is then fine-tuned for ``FINE_TUNE_STEPS`` updates with the rate weight annealed as in the
paper, λ·t / (t + ``ANNEAL_STEPS``): the paper reaches ½ at 100k of its 500k steps, the same
fraction (1/5) of the run here. Cut for a CPU budget of about five hours: the model (``small``,
not the paper's 2 × 250 biGRU), the length of training (2 warm epochs + 600 updates per point
against the paper's 500k), and the data (≤ 20 tokens).

Every run resumes from its own checkpoint folder, and a point whose ``summary.json`` was written
for the same config is read back, not evaluated again (one that cannot be used is written anew).
The runs folder may move between calls: a resumed point names its warm start as it recorded it
(:func:`_as_recorded`). ``jobs`` > 1 trains the points after the warm start in that many
single-thread processes. ``--quick`` runs the same pipeline on a synthetic language for the tests.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from .._utils import check_count, terminal_text
from ..config import apply_mapping, apply_overrides, to_dict
from ..results import MISSING, cell, finite, provenance, read_json, write_json
from ..train.checkpoint import CheckpointError, config_changes, load
from . import custom
from ._cache import problem
from ._jobs import run_jobs

WARM_EPOCHS = 2
FINE_TUNE_STEPS = 600
ANNEAL_STEPS = FINE_TUNE_STEPS // 5
BASE = {
    "data": {"name": "text-en", "vocab_size": 8000, "max_tokens": 20},
    "model": {
        "family": "text_gru",
        "hidden": [128, 256],
        "latent_dim": 256,
        "embed": 128,
        "layers": 1,
    },
    "train": {"epochs": 1, "batch_size": 64, "lr": 1e-3, "progress": False},
}
FINE_TUNE = {"train": {"max_steps": FINE_TUNE_STEPS, "anneal_steps": ANNEAL_STEPS}}
QUICK = {
    "data": {"name": "synthetic-text", "synthetic_size": 240, "vocab_size": 100},
    "model": {"hidden": [16, 32], "latent_dim": 8, "embed": 16},
    "train": {"epochs": 1, "max_steps": 4, "batch_size": 40, "eval_batch_size": 100},
}
QUICK_FINE_TUNE = {"train": {"max_steps": 4, "anneal_steps": 1}}
LAMBDAS = (0.03, 0.1, 0.3, 1.0)
#: the warm start's method and point: trained first, every other point starts from it
WARM = ("identity", "unquantized")
#: method -> [(point label, bottleneck name, bottleneck args, rate weight)]
POINTS: dict[str, list[tuple[str, str, dict, float]]] = {
    "scalar_st": [(f"M={m}", "scalar_st", {"levels": m}, 1.0) for m in (2, 4, 8, 16)],
    "vector_st": [(f"M={m}", "vector_st", {"group": 2, "codes": m}, 1.0) for m in (2, 4, 8, 16)],
    "gaussian_dither": [(f"λ={w}", "gaussian_dither", {}, w) for w in LAMBDAS],
    "lattice": [(f"λ={w}", "lattice", {}, w) for w in LAMBDAS],
    "gaussian_lattice": [(f"λ={w}", "gaussian_lattice", {}, w) for w in LAMBDAS],
    "language_model": [("no code", "scalar_st", {"levels": 1}, 1.0)],
    # the warm start itself, and the same fine-tuning as every other point without a bottleneck:
    # the floor at equal training
    "identity": [("unquantized", "identity", {}, 1.0), ("fine-tuned", "identity", {}, 1.0)],
}


#: what each operating point sets for itself: an override of these would give every point the
#: same value (one rate weight or bottleneck for the whole sweep, one run folder for all)
PER_POINT = ("bottleneck", "loss.rate_weight", "out_dir")


def check_overrides(overrides: list[str] | None) -> None:
    """ValueError for an override of what the sweep sets per point (:data:`PER_POINT`)."""
    for item in overrides or []:
        key = item.split("=", 1)[0].strip()
        hit = next((k for k in PER_POINT if key == k or key.startswith(k + ".")), None)
        if hit is not None:
            raise ValueError(
                f"text-rd sets {hit} for each operating point; --set {key} would give the whole "
                "sweep one value (train a single point with `qlatent train CONFIG` instead)"
            )


def point_config(
    method: str, label: str, *, quick: bool, runs_dir: str, overrides: list[str] | None = None
) -> custom.RunConfig:
    """The run config of one operating point; ValueError for an override of what the point
    sets itself (:func:`check_overrides`)."""
    check_overrides(overrides)
    _, name, args, weight = next(p for p in POINTS[method] if p[0] == label)
    cfg = apply_mapping(custom.RunConfig(), BASE)
    if quick:
        cfg = apply_mapping(cfg, QUICK)
    folder = _folder(runs_dir, method, label)
    mapping: dict[str, Any] = {
        "bottleneck": {"name": name, "args": args},
        "loss": {"rate_weight": weight},
        "out_dir": str(folder),
    }
    if (method, label) == WARM:
        mapping["train"] = {"epochs": QUICK["train"]["epochs"] if quick else WARM_EPOCHS}
    else:
        mapping["init_from"] = str(_folder(runs_dir, *WARM) / "best.pt")
        cfg = apply_mapping(cfg, QUICK_FINE_TUNE if quick else FINE_TUNE)
    cfg = apply_mapping(cfg, mapping)
    configured, cfg = cfg, apply_overrides(cfg, overrides or [])
    if overrides:
        check_effects(cfg, configured)
    custom.check_bottleneck(cfg)
    return cfg


def check_effects(cfg: custom.RunConfig, configured: custom.RunConfig) -> None:
    """ValueError naming a setting that ``--set`` changed from the ``configured`` point and that
    the point's run does not read: a data setting its text data ignores (an image size, a held-out
    size), a model setting the text model ignores (``model.num_residual``,
    ``model.latent_activation`` ...) or an ``eval.*`` setting (each point is evaluated as
    ``qlatent train`` evaluates)."""
    custom.check_data_settings(
        cfg.data,
        defaults=configured.data,
        settings=tuple(f.name for f in dataclasses.fields(custom.DataConfig) if f.name != "name"),
    )
    custom.check_model_settings(cfg.model)
    if cfg.eval:  # the points are runs of `qlatent train`, which evaluates with its own settings
        raise ValueError(
            f"eval.{next(iter(cfg.eval))} has no effect on text-rd: each point is evaluated as "
            "`qlatent train` evaluates; leave it out"
        )


def _folder(runs_dir: str, method: str, label: str) -> Path:
    return Path(runs_dir) / "text-rd" / method / label.replace("=", "-")


def _is_warm_start(init_from: str, out_dir: str) -> bool:
    """Whether ``init_from`` names the warm start's best checkpoint in the runs folder of the
    point whose run folder is ``out_dir`` (``<runs>/text-rd/<method>/<point>``)."""
    runs = Path(out_dir).parents
    return len(runs) > 2 and Path(init_from) == _folder(str(runs[2]), *WARM) / "best.pt"


def _as_recorded(cfg: custom.RunConfig) -> custom.RunConfig:
    """``cfg`` with the warm start named as the run in ``cfg.out_dir`` recorded it, where that
    run has a checkpoint to resume from and both name the warm start of their own runs folder:
    a runs folder moved (or named by another path) since then still resumes, and a finished
    point is still read back. A resumed run ignores ``init_from`` (it continues from its own
    checkpoint), but refuses a config that names another one; a checkpoint given by the user
    (``--set init_from=PATH``) is left as it is. The run's config is read from its
    ``config.json``, or, where a crash after the first checkpoint left none, from the
    checkpoint's own record of it."""
    out_dir = Path(cfg.out_dir)
    if not cfg.init_from or not (out_dir / "last.pt").is_file():
        return cfg
    saved = read_json(out_dir / "config.json")  # written just after a run's first checkpoint
    if saved is None:
        try:
            saved = load(out_dir / "last.pt").get("run_config")
        except (OSError, CheckpointError):
            return cfg  # the resume itself says what is wrong with the checkpoint
    if problem(saved, {"init_from": "string", "out_dir": "string"}) is not None:
        return cfg  # the resumed run compares its checkpoint's config with this one's
    if _is_warm_start(cfg.init_from, cfg.out_dir) and _is_warm_start(
        saved["init_from"], saved["out_dir"]
    ):
        return dataclasses.replace(cfg, init_from=saved["init_from"])
    return cfg


def _summary_problem(summary: Any) -> str | None:
    """What keeps a ``summary.json`` read back from giving its point (:func:`_point`), in
    words; None when nothing does."""
    wrong = problem(summary, {"config": "table", "test": "table", "train": "table"})
    if wrong:
        return wrong
    test = summary["test"]
    wrong = (
        problem(
            test,
            {
                "hard_path": "table",
                "coded": "table or None or missing",
                "examples": "list or missing",
            },
            "test",
        )
        or problem(
            test["hard_path"],
            {"rate_bits_per_word": "number or None", "distortion_bits_per_word": "number or None"},
            "test.hard_path",
        )
        or problem(summary["train"], {"epochs": "integer", "wall_s": "number"}, "train")
        or problem(test.get("coded") or {}, {"available": "flag or missing"}, "test.coded")
    )
    if wrong:
        return wrong
    if (test.get("coded") or {}).get("available"):
        return problem(
            test["coded"],
            {"bits_per_word": "number", "ideal_bits_per_word": "number or None or missing"},
            "test.coded",
        )
    return problem(test, {"training_path": "table"}, "test") or problem(
        test["training_path"], {"rate_bits_per_word": "number or None"}, "test.training_path"
    )


def _point(summary: dict[str, Any]) -> dict[str, Any]:
    test = summary["test"]
    hard, coded = test["hard_path"], test.get("coded") or {}
    extra = {}
    if coded.get("available"):
        rate, rate_kind = coded["bits_per_word"], "file"
        if "ideal_bits_per_word" in coded:  # evaluations from before it was recorded lack it
            extra["ideal_bits_per_word"] = coded["ideal_bits_per_word"]
    else:
        rate, rate_kind = test["training_path"]["rate_bits_per_word"], "estimate"
    return {
        "commit": summary.get("commit"),
        "rate_bits_per_word": rate,
        "rate_kind": rate_kind,
        "rate_estimate_bits_per_word": hard["rate_bits_per_word"],
        "nll_bits_per_word": hard["distortion_bits_per_word"],
        "train_epochs": summary["train"]["epochs"],
        "train_wall_s": summary["train"]["wall_s"],
        "examples": test.get("examples", [])[:4],
        **extra,
    }


def reproduce(
    *,
    quick: bool = False,
    models: list[str] | None = None,
    overrides: list[str] | None = None,
    data_dir: str | None = None,
    runs_dir: str = "runs",
    results_dir: str = "results",
    command: str = "",
    jobs: int = 1,
) -> dict[str, Any]:
    """Train (or resume) every operating point of ``models`` (default: all methods; the warm
    start first, then the rest in ``jobs`` processes), then write ``<results_dir>/text-rd.json``
    and ``text-rd.png``. Returns the JSON payload."""
    custom.check_reproduce(
        quick=quick,
        overrides=overrides,
        runs_dir=runs_dir,
        results_dir=results_dir,
        data_dir=data_dir,
        command=command,
        models=models,
    )
    check_count(jobs, "jobs")  # before the warm start
    methods = list(POINTS) if models is None else models
    unknown = [m for m in methods if m not in POINTS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {list(POINTS)}")
    started = time.perf_counter()
    # the warm start first (whether or not its curve is asked for), then every other point
    order = [WARM] + [(m, p[0]) for m in methods for p in POINTS[m] if (m, p[0]) != WARM]
    cfgs = {
        key: point_config(*key, quick=quick, runs_dir=runs_dir, overrides=overrides)
        for key in order
    }
    summaries = {WARM: _train_point(cfgs[WARM], WARM, data_dir, command)}
    rest = order[1:]
    done = run_jobs(
        _train_point,
        [dict(cfg=cfgs[key], key=key, data_dir=data_dir, command=command) for key in rest],
        jobs=jobs,
    )
    summaries.update(zip(rest, done, strict=True))
    curves: dict[str, list[dict[str, Any]]] = {}
    configs = {}
    for method, label in order:
        if method in methods:
            summary = summaries[(method, label)]
            curves.setdefault(method, []).append({"point": label, **_point(summary)})
            configs[f"{method} {label}"] = to_dict(cfgs[(method, label)])
    suffix = "-quick" if quick else ""
    out = Path(results_dir)
    payload = {
        **provenance(command),
        "quick": quick,
        "wall_s": time.perf_counter() - started,
        "curves": curves,
        "configs": configs,
    }
    write_json(payload, out / f"text-rd{suffix}.json")
    figure(curves, out / f"text-rd{suffix}.png")
    return payload


def _train_point(
    cfg: custom.RunConfig, key: tuple[str, str], data_dir: str | None, command: str
) -> dict[str, Any]:
    """One point's summary: read back when ``summary.json`` was written for this config (keys
    added to the schema since do not count, nor where the run folder was then) and holds what
    the curves read, otherwise trained (or resumed) and evaluated."""
    cfg = _as_recorded(cfg)
    path = Path(cfg.out_dir) / "summary.json"
    if path.is_file():
        summary = read_json(path)
        wrong = "no JSON" if summary is None else _summary_problem(summary)
        if wrong is None:
            current = json.loads(json.dumps(to_dict(cfg)))
            # a key only one side records (an option added since) is not a difference
            if not config_changes(summary["config"], current, frozenset({"out_dir"})):
                before = f"== text-rd: {key[0]} {key[1]} (evaluated before: {path}) =="
                print(terminal_text(before), flush=True)
                return summary
        else:  # written anew, as one that cannot be read is (read_json): evaluated again
            again = f"{path} cannot be used ({wrong}): evaluating the point again"
            print(terminal_text(again), flush=True)
    print(f"== text-rd: {key[0]} {key[1]} ==", flush=True)
    # every point fine-tunes on one schedule, the no-bottleneck point's rate annealed too
    return custom.train(cfg, data_dir=data_dir, command=command, shared_schedule=True)


def figure(curves: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Rate vs word NLL (bits per word), one curve per method, like the paper's Figure 4."""
    from ..eval.plots import save_figure, subplots

    fig, ax = subplots(figsize=(5.5, 4))
    for method, points in curves.items():
        # a point without an NLL or a rate (NaN, null in a results file) is left out; the
        # unquantized lines need no rate
        points = [
            p
            for p in points
            if finite(p["nll_bits_per_word"])
            and (method == "identity" or finite(p["rate_bits_per_word"]))
        ]
        if method == "identity":  # no rate limit: the floor every curve tends to
            for p, style in zip(points, (":", "--"), strict=False):
                label = "unquantized" + (", fine-tuned" if p["point"] == "fine-tuned" else "")
                ax.axhline(p["nll_bits_per_word"], color="0.5", linestyle=style, label=label)
            continue
        ordered = sorted(points, key=lambda p: p["rate_bits_per_word"])
        ax.plot(
            [p["rate_bits_per_word"] for p in ordered],
            [p["nll_bits_per_word"] for p in ordered],
            marker="*" if method == "language_model" else "o",
            markersize=10 if method == "language_model" else 6,
            linestyle="none" if len(ordered) == 1 else "-",
            label="language model (rate 0)" if method == "language_model" else method,
        )
    ax.set_xlabel("representation cost (bits per word)")
    ax.set_ylabel("word NLL (bits per word)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


#: the fields of a point that :func:`markdown_table` reads, and their kinds (None: a NaN or
#: infinity as the results file holds it, which the table shows as missing)
_POINT_FIELDS = {
    "point": "string",
    "rate_bits_per_word": "number or None",
    "rate_kind": "string",
    "nll_bits_per_word": "number or None",
    "train_epochs": "integer",
}


def _payload_problem(payload: Any) -> str | None:
    """What keeps a results payload from being tabled (:func:`markdown_table`), or None."""
    wrong = problem(payload, {"curves": "table"}, "the payload")
    if wrong:
        return wrong
    for method, points in payload["curves"].items():
        wrong = problem({method: points}, {method: "list"}, "curves")
        if wrong:
            return wrong
        for i, p in enumerate(points):
            wrong = problem(p, _POINT_FIELDS, f"curves.{method}[{i}]")
            if wrong:
                return wrong
    return None


def markdown_table(payload: dict[str, Any]) -> str:
    """The table of ``payload`` (:func:`reproduce`'s, or its JSON file read back); ValueError
    naming the first field that keeps it from being one (:func:`_payload_problem`)."""
    wrong = _payload_problem(payload)
    if wrong:
        raise ValueError(f"text-rd results: {wrong}")
    lines = [
        "| method | point | rate (bits/word) | rate from | word NLL (bits/word) | epochs |",
        "|---|---|---|---|---|---|",
    ]
    for method, points in payload["curves"].items():
        for p in points:
            # the unquantized points have no rate term (recorded as 0): no rate, as in the figure
            rate, kind = p["rate_bits_per_word"], p["rate_kind"]
            if method == "identity":
                rate, kind = None, MISSING
            lines.append(
                f"| {method} | {p['point']} | {cell(rate, '.3f')} "
                f"| {kind} | {cell(p['nll_bits_per_word'], '.3f')} "
                f"| {p['train_epochs']} |"
            )
    return "\n".join(lines)
