"""Sweep files: problems x optimizers x hyperparameter grids x batch sizes x seeds, in TOML.

A sweep file has optional ``name``, ``description`` and ``[report]`` tables, and
one table per *scale* (``[smoke]``, ``[full]``, or any name) with:

``problems``
    list of problem names.
``optimizers``
    array of tables ``{name = "...", hyperparams = {...}, grid = {key = [values]}, label = "..."}``; the
    grid is a Cartesian product; ``label`` names the entry in reports (default: the name).
``seeds``
    list of integers, or ``{from = 42, count = 10}``.
``epochs``, ``batch_size``, ``l2``
    a value, a list of values (a grid), or a table per problem (``{fmnist_2c2d = 100}``).
``restart``
    the runner's re-estimation policy (default ``"default"``).
``data``
    ``"generate"`` writes tiny files in the real formats for problems that need data (smoke tests);
    otherwise the data directory given on the command line is used.

Every key is checked before anything runs; an unknown key, an empty grid or an
invalid value is an error that names it.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .optimizers import get_optimizer
from .problems import PROBLEMS
from .runner import RunConfig

__all__ = ["SweepError", "SweepRun", "SweepSpec", "expand", "load_sweep"]

TOP_KEYS = {"name", "description", "report"}
SCALE_KEYS = {"problems", "optimizers", "seeds", "epochs", "batch_size", "l2", "restart", "data"}
OPTIMIZER_KEYS = {"name", "hyperparams", "grid", "label"}


class SweepError(ValueError):
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
    path: Path | None = None


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
        if key.split(".")[0] in ("epochs", "batch_size") and (isinstance(item, bool) or not isinstance(item, int)
                                                               or item < 1):
            raise _fail(where, f"{key} must be integers >= 1, got {item!r}")
        if key.split(".")[0] == "l2" and (isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0):
            raise _fail(where, f"{key} must be numbers >= 0, got {item!r}")


def load_sweep(path: str | Path, scale: str) -> SweepSpec:
    """Read and validate one scale of a sweep file.

    Raises:
        SweepError: naming the offending key, before anything runs.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except tomllib.TOMLDecodeError as error:
        raise SweepError(f"{path}: not valid TOML: {error}") from None
    scales = [k for k, v in data.items() if k not in TOP_KEYS and isinstance(v, dict)]
    _check_keys({k: v for k, v in data.items() if not (isinstance(v, dict) and k not in TOP_KEYS)}, TOP_KEYS,
                str(path))
    if scale not in scales:
        raise SweepError(f"{path}: no scale {scale!r} (the file has {', '.join(scales) or 'none'})")
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
    optimizers = table["optimizers"]
    if not isinstance(optimizers, list) or not optimizers:
        raise _fail(where, "optimizers must be a non-empty array of tables")
    for i, entry in enumerate(optimizers):
        at = f"{where} optimizers[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise _fail(at, "each optimizer is a table with a name")
        _check_keys(entry, OPTIMIZER_KEYS, at)
        try:
            get_optimizer(entry["name"])
        except KeyError as error:
            raise _fail(at, str(error)) from None
        for key, values in entry.get("grid", {}).items():
            if not isinstance(values, list) or not values:
                raise _fail(at, f"grid.{key} is an empty grid" if isinstance(values, list)
                            else f"grid.{key} must be a list of values")
    seeds = table["seeds"]
    if isinstance(seeds, dict):
        _check_keys(seeds, {"from", "count"}, f"{where} seeds")
        seeds = list(range(int(seeds.get("from", 42)), int(seeds.get("from", 42)) + int(seeds.get("count", 1))))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise _fail(where, f"seeds must be a non-empty list of integers >= 0, got {table['seeds']!r}")
    for key in ("epochs", "batch_size", "l2"):
        if key in table:
            _values(table[key], key, where, problems)
    return SweepSpec(
        name=str(data.get("name", path.stem)), scale=scale, problems=problems, optimizers=optimizers, seeds=seeds,
        epochs=table.get("epochs"), batch_size=table.get("batch_size"), l2=table.get("l2"),
        restart=table.get("restart", "default"), data=table.get("data"), description=str(data.get("description", "")),
        report=dict(data.get("report", {})), path=path,
    )


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
            grid = entry.get("grid", {})
            keys = sorted(grid)
            for point in itertools.product(*(grid[k] for k in keys)):
                hyperparams = {**entry.get("hyperparams", {}), **dict(zip(keys, point, strict=True))}
                for epochs, batch_size, l2 in itertools.product(_per_problem(spec.epochs, problem),
                                                                _per_problem(spec.batch_size, problem),
                                                                _per_problem(spec.l2, problem)):
                    for seed in spec.seeds:
                        config = RunConfig(problem, entry["name"], dict(hyperparams), seed=seed, epochs=epochs,
                                           batch_size=batch_size, l2=l2, restart=spec.restart, data_dir=data_dir,
                                           output_dir=str(output_dir), device=device, progress=progress)
                        yield SweepRun(entry.get("label", entry["name"]), config)
