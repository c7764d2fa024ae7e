"""Result files into tidy tables: one row per run, and one row per run x epoch x metric.

:func:`load_results` reads every ``*.json`` under one or more directories (or
single files): ours, DeepOBS 1.2's (the same keys, no status) and, as far as
they go, DeepOBS 1.1's (flat ``optimizer``/``learning_rate``/``hyperparams``
keys and no validation split). It never stops at a bad file: unreadable JSON,
a JSON file that is not a run, or a run whose curves disagree with its
metadata each become one line in :attr:`Results.problems_found`, naming the
file, and everything readable is loaded. Runs that diverged, failed or were
interrupted are kept with their status; a DeepOBS file, which has no status,
is ``diverged`` if a loss is not finite and ``interrupted`` if its curves are
shorter than its budget.

Metrics (the ``metric`` column of :attr:`Results.curves`), per epoch:

* ``train_loss``, ``valid_loss``, ``test_loss``, ``train_accuracy``,
  ``valid_accuracy``, ``test_accuracy`` at epochs 0..N (epoch 0: before training);
* ``epoch_wall_time``, ``epoch_cpu_time`` (seconds of training in that epoch,
  evaluation excluded) and ``elapsed_wall_time`` (their running sum) at epochs 1..N;
* for the preconditioners, ``step_size`` (of the first parameter group) and
  ``top_curvature`` (the largest estimated curvature over the parameter tensors),
  read from the optimizer's ``get_log()`` at the end of epochs 1..N.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["CURVE_METRICS", "METRICS", "Results", "UnknownMetricError", "canonical_metric", "load_results",
           "setting_key"]

CURVE_METRICS = ("train_loss", "valid_loss", "test_loss", "train_accuracy", "valid_accuracy", "test_accuracy")
"""The evaluation curves, DeepOBS's ``<split>_losses``/``<split>_accuracies`` in the singular."""
METRICS = (*CURVE_METRICS, "epoch_wall_time", "epoch_cpu_time", "elapsed_wall_time", "step_size", "top_curvature")
"""Every metric a :class:`Results` table can hold."""
RUN_COLUMNS = ["run_id", "path", "source", "problem", "optimizer", "setting", "hyperparams", "batch_size",
               "num_epochs", "weight_decay", "seed", "status", "status_reason", "epochs_completed", "task",
               "total_wall_time", "total_cpu_time", "started", "device", "environment"]
CURVE_COLUMNS = ["run_id", "problem", "optimizer", "setting", "seed", "status", "epoch", "metric", "value"]
_IGNORED_TRAINING_PARAMS = {"train_log_interval"}
_KNOWN_CURVE_KEYS = ("train_losses", "valid_losses", "test_losses", "train_accuracies", "valid_accuracies",
                     "test_accuracies", "minibatch_train_losses")


class UnknownMetricError(ValueError):
    """A metric name that no result table knows."""


def canonical_metric(name: str) -> str:
    """``valid_accuracies`` (DeepOBS's key) or ``valid_accuracy`` -> ``valid_accuracy``; unknown names raise.

    Example:
        >>> canonical_metric("valid_accuracies"), canonical_metric("test_loss")
        ('valid_accuracy', 'test_loss')
    """
    text = name.strip()
    for plural, singular in (("_losses", "_loss"), ("_accuracies", "_accuracy"), ("_times", "_time")):
        if text.endswith(plural):
            text = text[: -len(plural)] + singular
    if text not in METRICS:
        raise UnknownMetricError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def setting_key(hyperparams: dict[str, Any], batch_size: Any = None, num_epochs: Any = None,
                weight_decay: Any = None, training_params: dict[str, Any] | None = None) -> str:
    """A readable, canonical name of one hyperparameter setting (what the seeds of one setting share).

    Example:
        >>> setting_key({"momentum": 0.9, "lr": 0.1}, 128, 10)
        'lr=0.1, momentum=0.9 | batch_size=128, num_epochs=10'
    """
    hp = ", ".join(f"{k}={json.dumps(_plain(v), default=str)}" for k, v in sorted(hyperparams.items()))
    budget = {"batch_size": batch_size, "num_epochs": num_epochs, "weight_decay": weight_decay,
              **{k: v for k, v in (training_params or {}).items() if k not in _IGNORED_TRAINING_PARAMS}}
    rest = ", ".join(f"{k}={json.dumps(_plain(v), default=str)}" for k, v in budget.items() if v is not None)
    return f"{hp or 'defaults'} | {rest}" if rest else (hp or "defaults")


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
        names = [labels.get((r.problem, r.optimizer, hyperparams_key(r.hyperparams))) for r in self.runs.itertuples()]
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
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                continue
            table.to_parquet(folder / f"{name}.parquet", index=False)
            written.append(folder / f"{name}.parquet")
        return written


def hyperparams_key(hyperparams: dict[str, Any]) -> str:
    """A canonical JSON text of a hyperparameter dict (tuples as lists, keys sorted)."""
    return json.dumps(_plain(hyperparams), sort_keys=True, default=str)


class _NotARun(ValueError):
    """A JSON file that is not a run result."""


def _number(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _normalize(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A DeepOBS 1.1 record in 1.2's keys; returns the record and its source."""
    if "optimizer_name" in record:
        return record, "probprec" if "status" in record else "deepobs-1.2"
    if "optimizer" in record and "testproblem" in record:  # DeepOBS 1.1 (TensorFlow baselines)
        hyperparams = dict(record.get("hyperparams") or {})
        if "learning_rate" in record:
            hyperparams["learning_rate"] = record["learning_rate"]
        out = dict(record, optimizer_name=str(record["optimizer"]).replace("Optimizer", ""),
                   optimizer_hyperparams=hyperparams)
        out["training_params"] = {k: record[k] for k in ("lr_sched_epochs", "lr_sched_factors") if record.get(k)}
        return out, "deepobs-1.1"
    missing = [k for k in ("testproblem", "optimizer_name") if k not in record]
    raise _NotARun(f"not a run result (missing key {missing[0]!r})")


def _status(record: dict[str, Any], source: str, epochs_recorded: int) -> tuple[str, str | None]:
    if source == "probprec":
        return str(record.get("status")), record.get("status_reason")
    losses = [_number(v) for k in ("train_losses", "test_losses") for v in record.get(k) or []]
    if any(not math.isfinite(v) for v in losses):
        return "diverged", "a recorded loss is not finite"
    planned = record.get("num_epochs")
    if isinstance(planned, int) and epochs_recorded < planned + 1:
        return "interrupted", f"{epochs_recorded} of {planned + 1} evaluations recorded"
    return "completed", None


def _optimizer_series(logs: list[dict[str, Any]]) -> dict[str, list[float]]:
    step_sizes, curvatures = [], []
    for log in logs:
        sizes = [s for s in log.get("step_sizes") or [] if s is not None]
        step_sizes.append(_number(sizes[0]) if sizes else math.nan)
        values = [_number(v) for tensor in log.get("eigenvalues") or [] for v in tensor]
        values = [v for v in values if math.isfinite(v)]
        curvatures.append(max(values) if values else math.nan)
    series = {}
    if any(math.isfinite(v) for v in step_sizes):
        series["step_size"] = step_sizes
    if any(math.isfinite(v) for v in curvatures):
        series["top_curvature"] = curvatures
    return series


def _read_run(path: Path, run_id: str) -> tuple[dict[str, Any], list[tuple], list[str]]:
    try:
        record = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise _NotARun("not a text file") from None
    except json.JSONDecodeError as error:
        raise _NotARun(f"corrupt JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    if not isinstance(record, dict):
        raise _NotARun(f"not a run result (a JSON {type(record).__name__}, not an object)")
    record, source = _normalize(record)
    notes = [f"unknown metric {key!r} ignored (known: {', '.join(_KNOWN_CURVE_KEYS)})" for key in record
             if key.endswith(("_losses", "_accuracies")) and key not in _KNOWN_CURVE_KEYS]
    curves = {}
    for split in ("train", "valid", "test"):
        for kind, key in (("loss", f"{split}_losses"), ("accuracy", f"{split}_accuracies")):
            values = record.get(key)
            if values is None:
                continue
            if not isinstance(values, list):
                raise _NotARun(f"{key} is not a list")
            numbers = [_number(v) for v in values]
            if kind == "accuracy" and numbers and all(not math.isfinite(v) for v in numbers):
                continue  # problems without an accuracy
            curves[f"{split}_{kind}"] = numbers
    if "train_loss" not in curves and "test_loss" not in curves:
        raise _NotARun("not a run result (no train_losses or test_losses)")
    epochs_recorded = max(len(v) for v in curves.values())
    status, reason = _status(record, source, epochs_recorded)
    wall = [_number(v) for v in record.get("epoch_wall_times") or []]
    timed = {"epoch_wall_time": wall, "epoch_cpu_time": [_number(v) for v in record.get("epoch_cpu_times") or []]}
    if wall:
        timed["elapsed_wall_time"] = list(pd.Series(wall).cumsum())
    timed.update(_optimizer_series(record.get("optimizer_logs") or []))
    hyperparams = dict(record.get("optimizer_hyperparams") or {})
    training_params = dict(record.get("training_params") or {})
    metadata = record.get("metadata") or {}
    problem_info = record.get("problem") or {}
    run = {
        "run_id": run_id, "path": str(path), "source": source, "problem": str(record["testproblem"]),
        "optimizer": str(record["optimizer_name"]),
        "setting": setting_key(hyperparams, record.get("batch_size"), record.get("num_epochs"),
                               record.get("weight_decay"), training_params),
        "hyperparams": hyperparams, "batch_size": record.get("batch_size"), "num_epochs": record.get("num_epochs"),
        "weight_decay": record.get("weight_decay"), "seed": record.get("random_seed"), "status": status,
        "status_reason": reason, "epochs_completed": record.get("epochs_completed", epochs_recorded - 1),
        "task": problem_info.get("metric"), "total_wall_time": _number(record.get("total_wall_time")),
        "total_cpu_time": _number(record.get("total_cpu_time")), "started": metadata.get("started"),
        "device": metadata.get("device"), "environment": metadata.get("environment") or {},
    }
    rows = []
    for metric, values in curves.items():
        rows += [(run_id, epoch, metric, v) for epoch, v in enumerate(values)]
    for metric, values in timed.items():
        rows += [(run_id, epoch, metric, v) for epoch, v in enumerate(values, start=1)]
    return run, rows, notes


def _files(paths: Iterable[str | Path], found: list[str]) -> list[tuple[Path, Path]]:
    """(root, file) of every visible JSON file under the paths, sorted; missing paths are reported."""
    files = []
    for root in map(Path, paths):
        if root.is_file():
            files.append((root.parent, root))
        elif root.is_dir():
            for path in sorted(root.rglob("*.json")):
                relative = path.relative_to(root)
                if not any(part.startswith(".") for part in relative.parts):
                    files.append((root, path))
        else:
            found.append(f"{root}: no such file or directory")
    return files


def load_results(paths: str | Path | Iterable[str | Path]) -> Results:
    """Every run result under ``paths`` (directories are searched recursively; see the module docstring)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    found: list[str] = []
    runs, rows = [], []
    files = _files(paths, found)
    for root, path in files:
        run_id = path.relative_to(root).as_posix() if len(paths) == 1 else path.as_posix()
        try:
            run, run_rows, notes = _read_run(path, run_id)
        except (_NotARun, OSError) as error:
            found.append(f"{path}: {error}")
            continue
        found += [f"{path}: {note}" for note in notes]
        runs.append(run)
        rows += run_rows
    if not files and not found:
        found.append(f"{', '.join(map(str, paths))}: no result files (*.json) found")
    elif files and not runs:
        found.append(f"{', '.join(map(str, paths))}: none of the {len(files)} JSON files is a readable run result")
    run_table = pd.DataFrame(runs, columns=RUN_COLUMNS)
    curves = pd.DataFrame(rows, columns=["run_id", "epoch", "metric", "value"]).astype(
        {"run_id": object, "epoch": int, "metric": object, "value": float})
    keys = run_table[["run_id", "problem", "optimizer", "setting", "seed", "status"]]
    curves = curves.merge(keys, on="run_id", how="left")[CURVE_COLUMNS]
    return Results(run_table, curves, found)
