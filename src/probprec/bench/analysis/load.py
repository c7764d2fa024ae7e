"""Result files into tidy tables: one row per run, and one row per run x epoch x metric.

:func:`load_results` reads every ``*.json`` under one or more directories (or
single files), but a tuning's record (``tuning.json``): ours, DeepOBS 1.2's and DeepOBS 1.1's (see :mod:`.records` and
:mod:`.schema`). It never stops at a bad file: a file that cannot be read, is
not JSON, is not a run or breaks the result schema becomes one line in
:attr:`Results.problems_found`, naming the file and why, and is not counted;
everything valid is loaded. Runs that diverged, collapsed, failed or were interrupted are
kept with their status, and runs stuck at their initial loss or at chance are
flagged (``collapsed_at``, ``collapse_evidence``). Runs are grouped into settings
with :mod:`.grouping` (numbers compared with a tolerance). The metrics are
listed in :mod:`.metrics`.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import atomic_writer
from ..errors import UserError
from ..results import TUNING_RECORD
from .grouping import assign_settings, plain_json
from .metrics import CURVE_METRICS, METRICS, UnknownMetricError, canonical_metric
from .records import NotARunError, read_run

__all__ = ["CURVE_METRICS", "METRICS", "Results", "UnknownMetricError", "canonical_metric", "hyperparams_key",
           "load_results"]

RUN_COLUMNS = ["run_id", "path", "source", "problem", "optimizer", "setting", "hyperparams", "batch_size",
               "num_epochs", "weight_decay", "seed", "status", "status_reason", "epochs_completed", "collapsed_at",
               "collapse_evidence", "task", "total_wall_time", "total_cpu_time", "started", "device", "environment"]
CURVE_COLUMNS = ["run_id", "problem", "optimizer", "setting", "seed", "status", "epoch", "metric", "value"]


@dataclass
class Results:
    """Loaded results: :attr:`runs` (one row per run) and :attr:`curves` (one row per run x epoch x metric)."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    problems_found: list[str] = field(default_factory=list)
    """One line per file that could not be used, naming it and why."""

    @property
    def problem_names(self) -> list[str]:
        """The problems, in the order they were first met (sorted paths)."""
        return list(dict.fromkeys(self.runs["problem"]))

    @property
    def optimizer_names(self) -> list[str]:
        """The optimizers (or their labels), in the order they were first met."""
        return list(dict.fromkeys(self.runs["optimizer"]))

    def metric_kind(self, problem: str) -> str:
        """``accuracy`` if the problem's runs record accuracies, else ``loss``."""
        rows = self.curves[(self.curves["problem"] == problem) & (self.curves["metric"] == "valid_accuracy")]
        if rows.empty:
            rows = self.curves[(self.curves["problem"] == problem) & (self.curves["metric"] == "test_accuracy")]
        return "accuracy" if not rows.empty else "loss"

    def subset(self, problems: Iterable[str] | None = None, optimizers: Iterable[str] | None = None) -> Results:
        """Only these problems and optimizers (None: all)."""
        runs = self.runs
        if problems is not None:
            runs = runs[runs["problem"].isin(list(problems))]
        if optimizers is not None:
            runs = runs[runs["optimizer"].isin(list(optimizers))]
        curves = self.curves[self.curves["run_id"].isin(runs["run_id"])]
        return Results(runs.reset_index(drop=True), curves.reset_index(drop=True), list(self.problems_found))

    def relabel(self, labels: dict[tuple[str, str, str], str], keep_unmatched: bool = False) -> Results:
        """Name runs by ``(problem, optimizer, hyperparameter key) -> label`` (see :func:`hyperparams_key`).

        Runs that match no entry are dropped unless ``keep_unmatched``. Used to tell apart
        sweep entries that share an optimizer (e.g. PreconditionedSGD with and without a first-epoch lr).
        """
        names = [labels.get((r["problem"], r["optimizer"], hyperparams_key(r["hyperparams"])))
                 for r in self.runs.to_dict("records")]
        runs = self.runs.copy()
        runs["optimizer_name"] = runs["optimizer"]
        runs["optimizer"] = [n if n is not None else o for n, o in zip(names, runs["optimizer"], strict=True)]
        if not keep_unmatched:
            runs = runs[[n is not None for n in names]]
        by_id = dict(zip(runs["run_id"], runs["optimizer"], strict=True))
        curves = self.curves[self.curves["run_id"].isin(by_id)].copy()
        curves["optimizer"] = curves["run_id"].map(by_id)
        return Results(runs.reset_index(drop=True), curves.reset_index(drop=True), list(self.problems_found))

    def to_files(self, folder: str | Path) -> list[Path]:
        """Write ``runs.csv`` and ``curves.csv`` (and ``.parquet`` twins when pyarrow is installed)."""
        from ..results import write_text_atomic

        folder = Path(folder)
        runs = self.runs.copy()
        for column in ("hyperparams", "environment"):
            runs[column] = [json.dumps(v, sort_keys=True, default=str) for v in runs[column]]
        written = []
        for name, table in (("runs", runs), ("curves", self.curves)):
            path = folder / f"{name}.csv"
            write_text_atomic(path, table.to_csv(index=False))
            written.append(path)
            if importlib.util.find_spec("pyarrow") is None:
                continue
            path = folder / f"{name}.parquet"
            with atomic_writer(path, "wb") as handle:
                table.to_parquet(handle, index=False)
            written.append(path)
        return written


def hyperparams_key(hyperparams: dict[str, Any]) -> str:
    """A canonical JSON text of a hyperparameter dict (tuples as lists, keys sorted)."""
    return json.dumps(plain_json(hyperparams), sort_keys=True, default=str)


def check_inputs(paths: Iterable[str | Path], what: str = "result") -> None:
    """Every path exists (a folder or a file).

    Raises:
        UserError: the first missing path, named (nothing is read or written before).
    """
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{what} path {path}: no such file or directory")


def _files(paths: list[Path]) -> list[tuple[Path, Path]]:
    """(root, file) of every visible JSON file under the paths, sorted (a tuning's record left out)."""
    files = []
    for root in paths:
        if root.is_file():
            files.append((root.parent, root))
            continue
        for path in sorted(root.rglob("*.json")):
            hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
            if not hidden and path.name != TUNING_RECORD:
                files.append((root, path))
    return files


def _tables(runs: list[dict[str, Any]], rows: list[tuple]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run and curve tables; runs of one problem and optimizer with the same identity share a setting."""
    groups = [(run["problem"], run["optimizer"]) for run in runs]
    names = assign_settings(groups, [run.pop("identity") for run in runs], [run["setting"] for run in runs])
    for run, name in zip(runs, names, strict=True):
        run["setting"] = name
    run_table = pd.DataFrame(runs, columns=RUN_COLUMNS).astype({"collapsed_at": "Int64"})
    curves = pd.DataFrame(rows, columns=["run_id", "epoch", "metric", "value"]).astype(
        {"run_id": object, "epoch": int, "metric": object, "value": float})
    keys = run_table[["run_id", "problem", "optimizer", "setting", "seed", "status"]]
    return run_table, curves.merge(keys, on="run_id", how="left")[CURVE_COLUMNS]


def load_results(paths: str | Path | Iterable[str | Path]) -> Results:
    """Every run result under ``paths`` (directories are searched recursively; see the module docstring).

    Raises:
        UserError: a path does not exist.
    """
    roots = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    check_inputs(roots)
    found: list[str] = []
    runs, rows = [], []
    files = _files(roots)
    for root, path in files:
        run_id = path.relative_to(root).as_posix() if len(roots) == 1 else path.as_posix()
        try:
            run, run_rows, notes = read_run(path, run_id)
        except NotARunError as error:
            found.append(f"{path}: {error}")
            continue
        except OSError as error:
            found.append(f"{path}: cannot read it ({error.strerror or error})")
            continue
        found += [f"{path}: {note}" for note in notes]
        runs.append(run)
        rows += run_rows
    if not files:
        found.append(f"{', '.join(map(str, roots))}: no result files (*.json) found")
    elif not runs:
        found.append(f"{', '.join(map(str, roots))}: none of the {len(files)} JSON files is a readable run result")
    run_table, curves = _tables(runs, rows)
    return Results(run_table, curves, found)
