"""One result file into one run row and its curve rows, after checking it against the result schema.

Formats: ours, DeepOBS 1.2's (the same keys, no status) and DeepOBS 1.1's (flat
``optimizer``/``learning_rate``/``hyperparams`` keys, no validation split), see
:mod:`.schema`. A DeepOBS file has no status: it is ``diverged`` if a loss is not
finite and ``interrupted`` if its curves are shorter than its budget. Every run is
also checked for a collapse (:func:`probprec.bench.collapse.detect_collapse`): a
run stuck at its initial loss or at chance accuracy is flagged with the epoch and
the evidence, whatever its status.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..collapse import detect_collapse
from .grouping import setting_identity, setting_key
from .schema import EVALUATION_CURVES, SchemaError, check_record

__all__ = ["KNOWN_CURVE_KEYS", "NotARunError", "normalize", "read_run"]

KNOWN_CURVE_KEYS = (*EVALUATION_CURVES, "minibatch_train_losses")
"""The per-epoch and per-minibatch curves a result file may hold."""


class NotARunError(ValueError):
    """A file that cannot be analysed as a run: unreadable, not JSON, not a run, or against the schema."""


def _number(value: Any) -> float:
    """A curve value as a float: null (and anything else) is NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def normalize(record: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A record in DeepOBS 1.2's keys, and its source (``probprec``, ``deepobs-1.2`` or ``deepobs-1.1``).

    Raises:
        NotARunError: neither format (a missing key or a DeepOBS 1.1 key of the wrong type is named).
    """
    if "optimizer_name" in record:
        return record, "probprec" if "status" in record else "deepobs-1.2"
    if "optimizer" in record and "testproblem" in record:  # DeepOBS 1.1 (TensorFlow baselines)
        name, hyperparams, rate = record["optimizer"], record.get("hyperparams"), record.get("learning_rate")
        if not isinstance(name, str):
            raise NotARunError(f"optimizer must be a text, got {name!r:.40}")
        if hyperparams is not None and not isinstance(hyperparams, dict):
            raise NotARunError(f"hyperparams must be an object or null, got {hyperparams!r:.40}")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))):
            raise NotARunError(f"learning_rate must be a number or null, got {rate!r:.40}")
        hyperparams = dict(hyperparams or {})
        if "learning_rate" in record:
            hyperparams["learning_rate"] = rate
        out = dict(record, optimizer_name=name.replace("Optimizer", ""), optimizer_hyperparams=hyperparams)
        out["training_params"] = {k: record[k] for k in ("lr_sched_epochs", "lr_sched_factors") if record.get(k)}
        return out, "deepobs-1.1"
    missing = [k for k in ("testproblem", "optimizer_name") if k not in record]
    raise NotARunError(f"not a run result (missing key {missing[0]!r})")


def _parse(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise NotARunError(f"not a UTF-8 text file (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise NotARunError(f"corrupt JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
    except RecursionError:
        raise NotARunError("corrupt JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise NotARunError(f"not a run result (a JSON {type(record).__name__}, not an object)")
    return record


def _status(record: dict[str, Any], source: str, epochs_recorded: int) -> tuple[str, str | None]:
    if source == "probprec":
        return record["status"], record.get("status_reason")
    losses = [_number(v) for k in ("train_losses", "valid_losses", "test_losses") for v in record.get(k) or []]
    if any(not math.isfinite(v) for v in losses):
        return "diverged", "a recorded loss is not finite"
    planned = record["num_epochs"]
    if epochs_recorded < planned + 1:
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


def _curves(record: dict[str, Any]) -> dict[str, list[float]]:
    """The evaluation curves in the singular (``train_loss``), accuracies left out where all are missing."""
    curves = {}
    for key in EVALUATION_CURVES:
        numbers = [_number(v) for v in record.get(key) or []]
        if not numbers or (key.endswith("accuracies") and all(not math.isfinite(v) for v in numbers)):
            continue  # problems without an accuracy
        curves[key.replace("_losses", "_loss").replace("_accuracies", "_accuracy")] = numbers
    return curves


def _timed(record: dict[str, Any]) -> dict[str, list[float]]:
    """Per-epoch timing and optimizer state (epochs 1..N)."""
    wall = [_number(v) for v in record.get("epoch_wall_times") or []]
    timed = {"epoch_wall_time": wall, "epoch_cpu_time": [_number(v) for v in record.get("epoch_cpu_times") or []]}
    if wall:
        timed["elapsed_wall_time"] = list(pd.Series(wall).cumsum())
    timed.update(_optimizer_series(record.get("optimizer_logs") or []))
    return timed


def _run_row(record: dict[str, Any], source: str, path: Path, run_id: str,
             curves: dict[str, list[float]]) -> dict[str, Any]:
    epochs_recorded = len(curves["train_loss"])
    status, reason = _status(record, source, epochs_recorded)
    hyperparams = dict(record["optimizer_hyperparams"])
    training_params = dict(record.get("training_params") or {})
    metadata = record.get("metadata") or {}
    problem_info = record.get("problem") or {}
    budget = (hyperparams, record.get("batch_size"), record["num_epochs"], record.get("weight_decay"), training_params)
    collapse = detect_collapse(curves["train_loss"], curves.get("train_accuracy"))
    return {
        "run_id": run_id, "path": str(path), "source": source, "problem": record["testproblem"],
        "optimizer": record["optimizer_name"], "setting": setting_key(*budget), "identity": setting_identity(*budget),
        "hyperparams": hyperparams, "batch_size": record.get("batch_size"), "num_epochs": record["num_epochs"],
        "weight_decay": record.get("weight_decay"), "seed": record["random_seed"], "status": status,
        "status_reason": reason,
        "epochs_completed": record.get("epochs_completed", epochs_recorded - 1) if source == "probprec"
        else epochs_recorded - 1,
        "collapsed_at": collapse.epoch if collapse else None,
        "collapse_evidence": collapse.evidence if collapse else None,
        "task": problem_info.get("metric"), "total_wall_time": _number(record.get("total_wall_time")),
        "total_cpu_time": _number(record.get("total_cpu_time")), "started": metadata.get("started"),
        "device": metadata.get("device"), "environment": metadata.get("environment") or {},
    }


def read_run(path: Path, run_id: str) -> tuple[dict[str, Any], list[tuple], list[str]]:
    """One result file: its run row, its curve rows ``(run_id, epoch, metric, value)`` and notes on it.

    Raises:
        NotARunError: the file cannot be analysed; the message says why (OSError for unreadable files).
    """
    record, source = normalize(_parse(path))
    try:
        check_record(record, source)
    except SchemaError as error:
        raise NotARunError(str(error)) from None
    notes = [f"unknown metric {key!r} ignored (known: {', '.join(KNOWN_CURVE_KEYS)})" for key in record
             if key.endswith(("_losses", "_accuracies")) and key not in KNOWN_CURVE_KEYS]
    curves = _curves(record)
    run = _run_row(record, source, path, run_id, curves)
    rows = [(run_id, epoch, metric, v) for metric, values in curves.items() for epoch, v in enumerate(values)]
    rows += [(run_id, epoch, metric, v) for metric, values in _timed(record).items()
             for epoch, v in enumerate(values, start=1)]
    return run, rows, notes
