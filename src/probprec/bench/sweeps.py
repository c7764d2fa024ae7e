"""Sweep files: problems x optimizers x hyperparameter grids or random search x batch sizes x seeds, in TOML.

A sweep file has optional ``name``, ``description``, ``protocol`` and ``[report]``
tables, and one table per *scale* (``[smoke]``, ``[full]``, or any name) with the
keys below. ``protocol`` says how ``probprec experiment`` runs the file: ``"sweep"``
(the default: every setting with every seed) or ``"tune"`` (the tuning protocol of
:mod:`probprec.bench.tuning`: every setting with the first seed, then per problem and
optimizer the setting best on validation with every seed).

``problems``
    list of problem names.
``optimizers``
    array of tables ``{name = "...", hyperparams = {...}, grid = {key = [values]}, search = {...},
    label = "..."}``; ``hyperparams`` are fixed values, the ``grid`` is a Cartesian product, and
    ``search`` draws ``trials`` random settings (see below); grid and search combine as a product
    (every grid point with every trial). ``label`` names the entry in reports (default: the name).
``seeds``
    list of integers, or ``{from = 42, count = 10}``.
``epochs``, ``batch_size``, ``l2``
    a value, a list of values (a grid), or a table per problem (``{fmnist_2c2d = 100}``).
``restart``
    the runner's re-estimation policy (default ``"default"``).
``data``
    ``"generate"`` writes tiny files in the real formats for problems that need data (smoke tests);
    otherwise the data directory given on the command line is used.
``trials``, ``search_seed``
    random search: the number of settings drawn for every optimizer with a ``search`` table
    (default 10) and the seed of the draw (default 42).

A ``search`` table maps a hyperparameter to a distribution: ``{log_uniform = [low, high]}``
(``0 < low < high``), ``{uniform = [low, high]}`` (``low < high``) or ``{choice = [values]}``.
The draws are deterministic: a ``numpy.random.Generator`` seeded with ``search_seed`` draws, trial
by trial, one value per key in sorted key order, so every optimizer entry with the same ``search``
table gets the same settings. Drawn numbers are rounded to 6 significant digits (readable folder
names and command lines).

Every key is checked before anything runs; an unknown key, an empty grid or an
invalid value (including a hyperparameter the optimizer refuses) is an error that names it.
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError, os_user_error
from .optimizers import get_optimizer
from .problems import PROBLEMS
from .runner import RESTART_POLICIES, RunConfig

__all__ = ["DISTRIBUTIONS", "PROTOCOLS", "SweepError", "SweepRun", "SweepSpec", "expand", "load_sweep", "read_toml",
           "settings"]

TOP_KEYS = {"name", "description", "protocol", "report"}
PROTOCOLS = ("sweep", "tune")
SCALE_KEYS = {"problems", "optimizers", "seeds", "epochs", "batch_size", "l2", "restart", "data", "trials",
              "search_seed"}
OPTIMIZER_KEYS = {"name", "hyperparams", "grid", "search", "label"}
DISTRIBUTIONS = ("choice", "log_uniform", "uniform")
DEFAULT_TRIALS = 10
DEFAULT_SEARCH_SEED = 42
SIGNIFICANT_DIGITS = 6


class SweepError(UserError, ValueError):
    """A sweep file is invalid; the message names the key."""


@dataclass
class SweepSpec:
    """One scale of a sweep file, validated."""

    name: str
    scale: str
    problems: list[str]
    optimizers: list[dict[str, Any]]
    seeds: list[int]
    epochs: Any = None
    batch_size: Any = None
    l2: Any = None
    restart: Any = "default"
    data: str | None = None
    description: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    protocol: str = "sweep"
    """How ``probprec experiment`` runs it: ``sweep`` or ``tune`` (see the module docstring)."""
    path: Path | None = None
    trials: int = DEFAULT_TRIALS
    search_seed: int = DEFAULT_SEARCH_SEED


@dataclass
class SweepRun:
    """One run of a sweep: its configuration and the optimizer entry's label."""

    label: str
    config: RunConfig


def _fail(where: str, message: str) -> SweepError:
    return SweepError(f"{where}: {message}")


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _values(value: Any, key: str, where: str, problems: list[str]) -> None:
    """Check a per-problem-or-grid value: scalar, non-empty list, or table of known problems."""
    if isinstance(value, list) and not value:
        raise _fail(where, f"{key} is an empty grid")
    if isinstance(value, dict):
        unknown = [p for p in value if p not in problems]
        if unknown:
            raise _fail(where, f"{key} names problem {unknown[0]!r}, which the sweep does not run")
        for p, v in value.items():
            _values(v, f"{key}.{p}", where, problems)
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        if key.split(".")[0] in ("epochs", "batch_size") and not _is_int(item, 1):
            raise _fail(where, f"{key} must be integers >= 1, got {item!r}")
        if key.split(".")[0] == "l2" and (not _is_number(item) or item < 0):
            raise _fail(where, f"{key} must be numbers >= 0, got {item!r}")
    if len(items) != len({repr(i) for i in items}):
        raise _fail(where, f"{key} lists a value twice: {items!r}")


def _check_hyperparam_value(value: Any, key: str, where: str) -> None:
    """Hyperparameters are numbers, booleans, strings, or lists of them (TOML dates and tables are not)."""
    if isinstance(value, list):
        for item in value:
            _check_hyperparam_value(item, key, where)
        return
    if isinstance(value, float) and math.isnan(value):
        raise _fail(where, f"{key} is nan")
    if not isinstance(value, (bool, int, float, str)):
        raise _fail(where, f"{key} must be a number, boolean, string or list of them, got {value!r}")


def _check_distribution(key: str, dist: Any, where: str) -> None:
    at = f"search.{key}"
    example = "{log_uniform = [1e-4, 1.0]}"
    if not isinstance(dist, dict) or len(dist) != 1:
        raise _fail(where, f"{at} must be a table with one distribution, like {example}")
    (kind, args), = dist.items()
    if kind not in DISTRIBUTIONS:
        raise _fail(where, f"{at}: unknown distribution {kind!r} (known: {', '.join(DISTRIBUTIONS)})")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise _fail(where, f"{at}.choice must be a non-empty list of values")
        _check_hyperparam_value(args, f"{at}.choice", where)
        return
    if not isinstance(args, list) or len(args) != 2 or not all(_is_number(a) for a in args):
        raise _fail(where, f"{at}.{kind} must be [low, high] with two finite numbers, got {args!r}")
    low, high = args
    if low >= high:
        raise _fail(where, f"{at}.{kind}: low {low!r} must be below high {high!r}")
    if kind == "log_uniform" and low <= 0:
        raise _fail(where, f"{at}.log_uniform: low must be > 0, got {low!r}")


def _check_optimizer(entry: Any, at: str) -> None:
    """One entry of ``optimizers``: its keys, grid, search and fixed hyperparameters."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise _fail(at, "each optimizer is a table with a name")
    _check_keys(entry, OPTIMIZER_KEYS, at)
    try:
        get_optimizer(entry["name"])
    except KeyError as error:
        raise _fail(at, str(error)) from None
    for key in ("hyperparams", "grid", "search"):
        if not isinstance(entry.get(key, {}), dict):
            raise _fail(at, f"{key} must be a table")
    if "label" in entry and (not isinstance(entry["label"], str) or not entry["label"]):
        raise _fail(at, "label must be a non-empty string")
    for key, value in entry.get("hyperparams", {}).items():
        _check_hyperparam_value(value, f"hyperparams.{key}", at)
    for key, values in entry.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise _fail(at, f"grid.{key} is an empty grid" if isinstance(values, list)
                        else f"grid.{key} must be a list of values")
        _check_hyperparam_value(values, f"grid.{key}", at)
        if len(values) != len({repr(v) for v in values}):
            raise _fail(at, f"grid.{key} lists a value twice: {values!r}")
    for key, dist in entry.get("search", {}).items():
        _check_distribution(key, dist, at)
        if key in entry.get("grid", {}):
            raise _fail(at, f"{key} is both in grid and in search")


def _check_seeds(seeds: Any, where: str) -> list[int]:
    if isinstance(seeds, dict):
        _check_keys(seeds, {"from", "count"}, f"{where} seeds")
        start, count = seeds.get("from", 42), seeds.get("count", 1)
        if not _is_int(start, 0):
            raise _fail(where, f"seeds.from must be an integer >= 0, got {start!r}")
        if not _is_int(count, 1):
            raise _fail(where, f"seeds.count must be an integer >= 1, got {count!r}")
        return list(range(start, start + count))
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s, 0) for s in seeds):
        raise _fail(where, f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise _fail(where, f"seeds lists a seed twice: {seeds!r}")
    return seeds


def _check_scalars(table: dict[str, Any], where: str) -> None:
    """``restart``, ``data``, ``trials`` and ``search_seed``."""
    restart = table.get("restart", "default")
    if not (restart in RESTART_POLICIES or _is_int(restart, 1)):
        raise _fail(where, f"restart must be one of {', '.join(RESTART_POLICIES)} or an integer >= 1, "
                           f"got {restart!r}")
    if "data" in table and table["data"] != "generate":
        raise _fail(where, f"data must be \"generate\" (or left out to use --data-dir), got {table['data']!r}")
    if "trials" in table and not _is_int(table["trials"], 1):
        raise _fail(where, f"trials must be an integer >= 1, got {table['trials']!r}")
    if "search_seed" in table and not _is_int(table["search_seed"], 0):
        raise _fail(where, f"search_seed must be an integer >= 0, got {table['search_seed']!r}")


def _check_builds(spec: SweepSpec, where: str) -> None:
    """Build every optimizer setting of every problem on a dummy parameter: refused values fail now."""
    for i, entry in enumerate(spec.optimizers):
        optimizer = get_optimizer(entry["name"])
        for point in settings(spec, entry):
            for problem in spec.problems:
                hyperparams = optimizer.hyperparameters(problem, point)
                try:
                    optimizer.build([torch.nn.Parameter(torch.zeros(2))], hyperparams)
                except (ValueError, TypeError) as error:
                    shown = ", ".join(f"{k}={v!r}" for k, v in sorted(point.items())) or "its defaults"
                    raise _fail(f"{where} optimizers[{i}]",
                                f"{entry['name']} with {shown} on {problem}: {error}") from None


def read_toml(path: str | Path, kind: str = "sweep file") -> dict[str, Any]:
    """The tables of a TOML file that the user named.

    Args:
        path: the file.
        kind: what the file is, for the messages (``"sweep file"``, ``"ablation file"``).

    Raises:
        SweepError: the file is missing, not a file, unreadable, not UTF-8 or not TOML (naming it and where).
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SweepError(f"{path}: no such {kind}") from None
    except IsADirectoryError:
        raise SweepError(f"{path}: is a directory (expected: the {kind})") from None
    except OSError as error:
        raise SweepError(str(os_user_error(error, path, "read"))) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise SweepError(f"{path}: not valid UTF-8 at byte {error.start} (line {line}); save the {kind} as UTF-8") \
            from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SweepError(f"{path}: not valid TOML: {error}") from None


def load_sweep(path: str | Path, scale: str) -> SweepSpec:
    """Read and validate one scale of a sweep file.

    Raises:
        SweepError: naming the offending key, before anything runs.
    """
    path = Path(path)
    data = read_toml(path)
    scales = [k for k, v in data.items() if k not in TOP_KEYS and isinstance(v, dict)]
    _check_keys({k: v for k, v in data.items() if not (isinstance(v, dict) and k not in TOP_KEYS)}, TOP_KEYS,
                str(path))
    if scale not in scales:
        raise SweepError(f"{path}: no scale {scale!r} (the file has {', '.join(scales) or 'none'})")
    if data.get("protocol", "sweep") not in PROTOCOLS:
        raise SweepError(f"{path}: protocol must be one of {', '.join(PROTOCOLS)}, got {data['protocol']!r}")
    table = data[scale]
    where = f"{path} [{scale}]"
    _check_keys(table, SCALE_KEYS, where)
    for key in ("problems", "optimizers", "seeds"):
        if key not in table:
            raise _fail(where, f"missing key {key!r}")
    problems = table["problems"]
    if not isinstance(problems, list) or not problems:
        raise _fail(where, "problems must be a non-empty list")
    for name in problems:
        if name not in PROBLEMS:
            raise _fail(where, f"problems: unknown problem {name!r}")
    if len(set(problems)) != len(problems):
        raise _fail(where, f"problems lists a problem twice: {problems!r}")
    optimizers = table["optimizers"]
    if not isinstance(optimizers, list) or not optimizers:
        raise _fail(where, "optimizers must be a non-empty array of tables")
    for i, entry in enumerate(optimizers):
        _check_optimizer(entry, f"{where} optimizers[{i}]")
    seeds = _check_seeds(table["seeds"], where)
    for key in ("epochs", "batch_size", "l2"):
        if key in table:
            _values(table[key], key, where, problems)
    _check_scalars(table, where)
    if "trials" in table and not any(entry.get("search") for entry in optimizers):
        raise _fail(where, "trials is set but no optimizer has a search table")
    spec = SweepSpec(
        name=str(data.get("name", path.stem)), scale=scale, problems=problems, optimizers=optimizers, seeds=seeds,
        epochs=table.get("epochs"), batch_size=table.get("batch_size"), l2=table.get("l2"),
        restart=table.get("restart", "default"), data=table.get("data"), description=str(data.get("description", "")),
        report=dict(data.get("report", {})), protocol=data.get("protocol", "sweep"), path=path,
        trials=table.get("trials", DEFAULT_TRIALS),
        search_seed=table.get("search_seed", DEFAULT_SEARCH_SEED),
    )
    _check_builds(spec, where)
    return spec


def _round(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _draw(kind: str, args: list[Any], rng: np.random.Generator) -> Any:
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    low, high = float(args[0]), float(args[1])
    if kind == "log_uniform":
        return _round(math.exp(rng.uniform(math.log(low), math.log(high))))
    return _round(rng.uniform(low, high))


def _search_points(search: dict[str, Any], trials: int, seed: int) -> list[dict[str, Any]]:
    """``trials`` settings drawn from ``search`` (one draw per key, in sorted key order, trial by trial)."""
    if not search:
        return [{}]
    rng = np.random.default_rng(seed)
    points = []
    for _ in range(trials):
        point = {}
        for key in sorted(search):
            (kind, args), = search[key].items()
            point[key] = _draw(kind, args, rng)
        points.append(point)
    return points


def settings(spec: SweepSpec, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The hyperparameter settings of one optimizer entry: fixed values, then every grid point x search draw.

    Settings that coincide (a search that draws the same value twice) are listed once.
    """
    grid = entry.get("grid", {})
    keys = sorted(grid)
    draws = _search_points(entry.get("search", {}), spec.trials, spec.search_seed)
    found: dict[str, dict[str, Any]] = {}
    for point in itertools.product(*(grid[k] for k in keys)):
        for draw in draws:
            hyperparams = {**entry.get("hyperparams", {}), **dict(zip(keys, point, strict=True)), **draw}
            found.setdefault(repr(sorted(hyperparams.items())), hyperparams)
    return list(found.values())


def _per_problem(value: Any, problem: str) -> list[Any]:
    if isinstance(value, dict):
        value = value.get(problem)
    if value is None:
        return [None]
    return value if isinstance(value, list) else [value]


def expand(spec: SweepSpec, output_dir: str | Path, data_dir: str = "data", device: str = "cpu",
           progress: bool = False) -> Iterator[SweepRun]:
    """Every run of the sweep, problem by problem, seeds innermost."""
    for problem in spec.problems:
        for entry in spec.optimizers:
            for hyperparams in settings(spec, entry):
                for epochs, batch_size, l2 in itertools.product(_per_problem(spec.epochs, problem),
                                                                _per_problem(spec.batch_size, problem),
                                                                _per_problem(spec.l2, problem)):
                    for seed in spec.seeds:
                        config = RunConfig(problem, entry["name"], dict(hyperparams), seed=seed, epochs=epochs,
                                           batch_size=batch_size, l2=l2, restart=spec.restart, data_dir=data_dir,
                                           output_dir=str(output_dir), device=device, progress=progress)
                        yield SweepRun(entry.get("label", entry["name"]), config)
