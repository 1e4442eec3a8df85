"""Reading a run's config: the TOML files of ``qlatent train CONFIG`` (:func:`load_config`), a
paper table's base and row files (:func:`paper_config`), the checks across keys and the model
counted on the meta device before any data is read (:func:`check_model`), and the argument checks
the paper tables' pipelines share (:func:`require`, :func:`check_reproduce` ...).
:mod:`~qlatent.experiments.custom` re-exports every name.
"""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any

from .._size import check_size
from .._utils import check_folder
from ..bottlenecks import BOTTLENECKS, build
from ..config import apply_mapping, apply_overrides
from ..models import sized
from ._custom_config import (
    DATASETS,
    FAMILIES,
    TEXT_DATA,
    DataConfig,
    RunConfig,
    check_model_settings,
)
from ._custom_model import _assemble

#: the largest config file read (a paper table's base and row files are a few kB)
_MAX_CONFIG_BYTES = 1 << 20


def _read_config_text(path: Path) -> str:
    """The text of the config file at ``path``: a regular file of at most
    :data:`_MAX_CONFIG_BYTES` (a FIFO would block and a device or a huge file fill the memory:
    ValueError before reading)."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"config {path} is not a regular file")
    if info.st_size > _MAX_CONFIG_BYTES:
        raise ValueError(
            f"config {path} has {info.st_size:,} bytes, more than a config's {_MAX_CONFIG_BYTES:,}"
        )
    with path.open("rb") as f:
        return f.read(_MAX_CONFIG_BYTES + 1).decode("utf-8")


def load_config(
    path: str | Path | list[str | Path] | None, overrides: list[str] | None = None
) -> RunConfig:
    """The defaults, the TOML file at ``path`` (if any; several files are merged in order,
    table by table, as a paper table's base and row files are), then ``key=value`` overrides.

    Raises ValueError with one line naming the file or the key for an unreadable file, bad TOML,
    an unknown key, a value of the wrong type, or a bottleneck that rejects its arguments.
    """
    cfg = RunConfig()
    paths = [] if path is None else [path] if isinstance(path, str | Path) else list(path)
    table: dict[str, Any] = {}
    for item in map(Path, paths):
        try:
            table = _merge(table, tomllib.loads(_read_config_text(item)))
        except OSError as err:
            raise ValueError(f"cannot read config {item}: {err.strerror or err}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"config {item} is not valid TOML: {err}") from None
        except RecursionError:
            raise ValueError(f"config {item} is not valid TOML: nested too deeply") from None
    if paths:
        where = "config " + " + ".join(map(str, paths))
        cfg = _apply(lambda c: apply_mapping(c, table), cfg, where)
    cfg = _apply(lambda c: apply_overrides(c, overrides or []), cfg, "--set")
    # checks across keys, once every key is set
    if cfg.data.name == "folder" and not cfg.data.folder:
        raise ValueError("data.folder must name an image folder when data.name = 'folder'")
    if (cfg.model.family == "text_gru") != (cfg.data.name in TEXT_DATA):
        raise ValueError(
            f"model.family = 'text_gru' goes with text data ({', '.join(TEXT_DATA)}) and only "
            f"with it; got model.family = {cfg.model.family!r} and data.name = {cfg.data.name!r}"
        )
    if cfg.model.latent_activation and cfg.model.family != "conv":
        raise ValueError(
            f"model.latent_activation is for the conv family's encoder; model.family = "
            f"{cfg.model.family!r} ends in its own output layer"
        )
    if cfg.model.family == "text_gru" and len(cfg.model.hidden) != 2:
        raise ValueError(
            "model.hidden must be [encoder width per direction, decoder width] for text_gru, "
            f"got {cfg.model.hidden}"
        )
    check_model(cfg)
    return cfg


def paper_config(
    experiment: str, parts: list[str], overrides: list[str] | None = None
) -> RunConfig:
    """A paper table's run in this schema: the defaults, ``configs/<experiment>/base.toml`` (the
    table's shared protocol), then each of ``parts`` (the row's file, a schedule's, ``quick``)
    merged table by table, then ``key=value`` overrides; the bottleneck is built once, counted
    on the meta device (:func:`check_bottleneck`). Errors as :func:`load_config`'s."""
    from ..configs import load

    table: dict[str, Any] = {}
    for part in ("base", *parts):
        table = _merge(table, load(experiment, part))
    where = f"config {experiment}/{'+'.join(parts) or 'base'}"
    cfg = _apply(lambda c: apply_mapping(c, table), RunConfig(), where)
    cfg = _apply(lambda c: apply_overrides(c, overrides or []), cfg, "--set")
    if cfg.data.folder is not None and cfg.data.name != "folder":
        # a table that reads no folder trained on its own data whatever folder was named
        raise ValueError(
            f"data.folder = {cfg.data.folder!r} has no effect on data.name = "
            f"{cfg.data.name!r} ({where}); leave it out"
        )
    if cfg.out_dir != RunConfig().out_dir:  # each row's folder is under the table's --runs-dir
        raise ValueError(
            f"out_dir = {cfg.out_dir!r} has no effect on {experiment}: its rows' runs go under "
            "--runs-dir; leave it out"
        )
    check_model_settings(cfg.model)
    check_model(cfg)
    return cfg


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``; tables present in both merge key by key, except ``args`` (a
    bottleneck's arguments are stated whole)."""
    out = dict(base)
    for key, value in top.items():
        if key != "args" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def paper_eval(cls: type, run: RunConfig, **defaults: Any):
    """The pipeline's evaluation config ``cls`` from ``run.eval`` (keys named ``eval.*`` in
    errors), starting from ``defaults``."""
    try:
        return apply_mapping(cls(**defaults), run.eval)
    except (TypeError, ValueError) as err:
        raise ValueError(f"eval: {err}") from None


def require(checks: dict[str, tuple[Any, Any]], table: str) -> None:
    """Refuse a run that sets a key to a value the pipeline of ``table`` cannot honour:
    ``checks`` maps a key to (its value, the allowed values)."""
    for key, (value, allowed) in checks.items():
        if value not in allowed:
            raise ValueError(f"{table} runs {key} = {list(allowed)} only, got {value!r}")


def fixed_data(data: DataConfig) -> dict[str, tuple[Any, Any]]:
    """:func:`require` checks for a table whose data sets are its own (MNIST's fixed split, a
    synthetic set of its own size and shape drawn from ``train.seed``): the data keys it does
    not read stay at the schema's defaults, where a value set was recorded and changed nothing."""
    default = DataConfig()
    return {
        f"data.{name}": (getattr(data, name), (getattr(default, name),))
        for name in (
            *("split_seed", "synthetic_size", "channels", "image_size", "test_size"),
            *("vocab_size", "max_tokens"),  # text settings: no image table reads them
        )
    }


def _apply(step, cfg: RunConfig, where: str) -> RunConfig:
    try:
        return step(cfg)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


def check_names(names: Any, argument: str) -> list[str] | None:
    """A list of row names as the tables' ``reproduce`` take it (None: the default rows): a
    list of distinct names, one at least; the tables themselves refuse an unknown name. A string
    would be read letter by letter, an empty list would run the default rows."""
    if names is None:
        return None
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{argument} must be a list of names or None, got {names!r}")
    if not names:
        raise ValueError(f"{argument} must name at least one (None: the defaults), got []")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{argument} names {', '.join(twice)} more than once")
    return list(names)


def check_reproduce(
    *,
    quick: Any,
    overrides: Any,
    runs_dir: Any,
    results_dir: Any,
    data_dir: Any,
    command: Any,
    **names: Any,
) -> None:
    """The arguments the tables' ``reproduce`` share, checked before anything is trained:
    ``quick`` a bool, ``overrides`` None or a list of ``key=value`` strings, each folder
    (``data_dir`` may be None) one that exists or can be made (no regular file on its path),
    ``command`` a string (recorded in the results) and each of ``names`` as :func:`check_names`
    takes it."""
    if not isinstance(command, str):
        raise TypeError(f"command must be a string (the command recorded), got {command!r}")
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be True or False, got {quick!r}")
    if overrides is not None and (
        not isinstance(overrides, list | tuple) or not all(isinstance(o, str) for o in overrides)
    ):
        raise TypeError(f"overrides must be a list of 'key=value' strings, got {overrides!r}")
    folders = [("runs_dir", runs_dir), ("results_dir", results_dir)]
    if data_dir is not None:
        folders.append(("data_dir", data_dir))
    for argument, folder in folders:
        if not isinstance(folder, str | Path):
            raise TypeError(f"{argument} must name a folder, got {folder!r}")
        check_folder(folder, argument)
    for argument, value in names.items():
        check_names(value, argument)


def image_shape(data: DataConfig) -> tuple[int, int, int] | None:
    """The ``(C, H, W)`` of the images ``data`` names, known from the config alone (``None``
    for text)."""
    if data.name in TEXT_DATA:
        return None
    if data.name == "folder":
        return data.channels, data.image_size, data.image_size
    return (data.channels if data.name == "synthetic" else 1), 28, 28


def check_model(cfg: RunConfig) -> None:
    """The bottleneck (:func:`check_bottleneck`), then for image data the whole model, counted
    on the meta device from the config's image shape: an image size or width past
    :data:`~qlatent._size.MAX_MODEL_NUMBERS` fails before a folder of images is read
    and resized (text models are sized by the vocabulary the data gives, counted later)."""
    check_bottleneck(cfg)
    shape = image_shape(cfg.data)
    if shape is not None:
        check_size(lambda: _assemble(cfg, shape, 1.0, None))


def check_bottleneck(cfg: RunConfig) -> None:
    """Build the bottleneck once, counted first on the meta device (:func:`sized`), so that a
    bad argument or a size past :data:`~qlatent._size.MAX_MODEL_NUMBERS` fails before any
    data is read."""
    try:
        sized(
            lambda: build(cfg.bottleneck.name, dim=cfg.model.latent_dim, **cfg.bottleneck.args),
            "the bottleneck",
        )
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"bottleneck {cfg.bottleneck.name!r} with args {cfg.bottleneck.args}: {err}"
        ) from None


#: the names ``bottleneck.args.lattice`` takes (:func:`qlatent.lattices.tile`), as ``--list``
#: shows them
LATTICE_NAMES = (
    'z, a<n> (a2 hexagonal), d<n>, d<n>*, e8, bw16, leech; a list is a direct sum (["leech", '
    '"bw16"]); one name is repeated to fill the latent width'
)


def components() -> str:
    """What ``qlatent train --list`` prints: the registered parts, and where the paper tables'
    config files are installed (``src/qlatent/configs`` in a checkout, under site-packages in
    an installed package), each table a folder of a ``base.toml`` and one file per row."""
    from importlib import resources

    folder = resources.files("qlatent.configs")
    tables = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name[0] != "_")
    return "\n".join(
        [
            f"datasets (data.name):       {', '.join(DATASETS)}",
            f"model families (model.family): {', '.join(FAMILIES)}",
            "likelihoods (model.likelihood): bernoulli, squared_error",
            f"bottlenecks (bottleneck.name): {', '.join(BOTTLENECKS.names())}",
            f"lattices of bottleneck.name = lattice (bottleneck.args.lattice): {LATTICE_NAMES}",
            f"paper-table configs (train BASE ROW): {folder}/TABLE/*.toml, TABLE one of "
            f"{', '.join(tables)}",
        ]
    )
