"""The result schema: what a run result must hold before it is analysed, checked key by key.

Three formats are read (:func:`check_record` is given the record already in DeepOBS 1.2's keys, see
:func:`probprec.bench.analysis.records.normalize`):

* **ours**: DeepOBS 1.2's keys plus ``status`` (one of ``probprec.bench.results.STATUSES``), timing,
  optimizer logs and metadata;
* **DeepOBS 1.2**: no status, timing or logs;
* **DeepOBS 1.1**: flat ``optimizer``, ``learning_rate`` and ``hyperparams`` keys, no validation curves.

Every format needs ``testproblem`` and ``optimizer_name`` (text), ``num_epochs`` (an integer >= 0),
``random_seed`` (an integer in [0, 2**64)), ``optimizer_hyperparams`` (an object) and the curves
``train_losses`` and ``test_losses``. Each curve (``<split>_losses``, ``<split>_accuracies``) is a list of
numbers or nulls (null: not finite), at least one and at most ``num_epochs + 1`` long, and all curves of a
file have one length. A run of ours with status ``completed`` has every curve ``num_epochs + 1`` long and
finite, and ``epochs_completed == num_epochs``. Optional keys, where present, have their types: batch size
an integer >= 1, weight decay a number, the timing lists numbers (at most ``num_epochs``), the optimizer logs
objects with lists of numbers, ``metadata``, ``metadata.environment``, its ``packages`` and ``problem``
objects. A DeepOBS 1.1/1.2 problem without accuracies may store them as null.
"""

from __future__ import annotations

import math
from typing import Any

from ..results import STATUSES

__all__ = ["EVALUATION_CURVES", "MAX_SEED", "SchemaError", "check_record"]

EVALUATION_CURVES = ("train_losses", "valid_losses", "test_losses", "train_accuracies", "valid_accuracies",
                     "test_accuracies")
"""The per-epoch evaluation curves of a result file (epochs 0..N)."""
MAX_SEED = 2**64
"""Seeds are integers in [0, MAX_SEED), the range torch accepts."""
_TIMING = ("epoch_wall_times", "epoch_cpu_times")


class SchemaError(ValueError):
    """A result file that does not follow the result schema; the message names the key and what is accepted."""


def _is_number(value: Any) -> bool:
    """A JSON number that is a float (not a boolean, not an integer too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _integer(record: dict[str, Any], key: str, low: int, high: int | None = None, high_text: str = "") -> None:
    """``record[key]`` is an integer in [low, high) (no upper bound if ``high`` is None)."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value >= high):
        accepted = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high_text or high})"
        raise SchemaError(f"{key} must be {accepted}, got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _typed(container: dict[str, Any], key: str, kind: type, where: str = "") -> None:
    value = container.get(key)
    if value is not None and not isinstance(value, kind):
        raise SchemaError(f"{where}{key} must be {'an object' if kind is dict else 'text'} or null, got "
                          f"{_show(value)}")


def _numbers(key: str, values: Any, longest: float, finite: bool = False) -> None:
    """A list of numbers (or nulls unless ``finite``), at most ``longest`` long."""
    if not isinstance(values, list):
        raise SchemaError(f"{key} must be a list of numbers, got {_show(values)}")
    if len(values) > longest:
        raise SchemaError(f"{key} has {len(values)} values, more than the {longest} that num_epochs allows")
    for i, value in enumerate(values):
        if value is None and not finite:
            continue
        if not _is_number(value):
            raise SchemaError(f"{key}[{i}] must be a number{'' if finite else ' or null'}, got {_show(value)}")
        if finite and not math.isfinite(value):
            raise SchemaError(f"{key}[{i}] is {value}, not finite, in a run with status completed")


def _curves(record: dict[str, Any], source: str) -> dict[str, list]:
    """The evaluation curves present, checked; accuracies of a DeepOBS problem without them may be null."""
    epochs = record["num_epochs"]
    completed = record.get("status") == "completed"
    curves = {}
    for key in EVALUATION_CURVES:
        if key not in record or (record[key] is None and source != "probprec" and key.endswith("accuracies")):
            continue
        if record[key] is None:
            raise SchemaError(f"{key} is null; a curve is a list of numbers")
        _numbers(key, record[key], epochs + 1, finite=completed)
        curves[key] = record[key]
    for key in ("train_losses", "test_losses"):
        if key not in curves:
            raise SchemaError(f"not a run result (missing key {key!r})")
    lengths = {key: len(values) for key, values in curves.items()}
    if len(set(lengths.values())) > 1:
        raise SchemaError("curves of different lengths: " + ", ".join(f"{k} {n}" for k, n in lengths.items()))
    if min(lengths.values()) == 0:
        raise SchemaError("empty curves: no evaluation recorded")
    if completed and lengths["train_losses"] != epochs + 1:
        raise SchemaError(f"status completed but train_losses has {lengths['train_losses']} values, not "
                          f"num_epochs + 1 = {epochs + 1}")
    return curves


def _ours(record: dict[str, Any]) -> None:
    """The keys only our runner writes."""
    status = record.get("status")
    if status not in STATUSES:
        raise SchemaError(f"status must be one of {', '.join(STATUSES)}, got {_show(status)}")
    _typed(record, "status_reason", str)
    epochs = record["num_epochs"]
    if "epochs_completed" in record:
        _integer(record, "epochs_completed", 0, epochs + 1)
        if status == "completed" and record["epochs_completed"] != epochs:
            raise SchemaError(f"status completed but epochs_completed is {record['epochs_completed']}, not "
                              f"num_epochs = {epochs}")
    if record.get("eval_wall_times") is not None:
        _numbers("eval_wall_times", record["eval_wall_times"], epochs + 1)
    for key in ("total_wall_time", "total_cpu_time"):
        if record.get(key) is not None and not _is_number(record[key]):
            raise SchemaError(f"{key} must be a number or null, got {_show(record[key])}")


def _logs(record: dict[str, Any]) -> None:
    logs = record.get("optimizer_logs")
    if logs is None:
        return
    if not isinstance(logs, list) or len(logs) > record["num_epochs"]:
        raise SchemaError(f"optimizer_logs must be a list of at most num_epochs objects, got {_show(logs)}")
    for i, log in enumerate(logs):
        if not isinstance(log, dict):
            raise SchemaError(f"optimizer_logs[{i}] must be an object, got {_show(log)}")
        if log.get("step_sizes") is not None:
            _numbers(f"optimizer_logs[{i}].step_sizes", log["step_sizes"], math.inf)
        tensors = log.get("eigenvalues")
        if tensors is None:
            continue
        if not isinstance(tensors, list):
            raise SchemaError(f"optimizer_logs[{i}].eigenvalues must be a list of lists, got {_show(tensors)}")
        for j, values in enumerate(tensors):
            _numbers(f"optimizer_logs[{i}].eigenvalues[{j}]", values, math.inf)


def _metadata(record: dict[str, Any]) -> None:
    _typed(record, "metadata", dict)
    _typed(record, "problem", dict)
    metadata = record.get("metadata") or {}
    _typed(metadata, "started", str, "metadata.")
    _typed(metadata, "device", str, "metadata.")
    _typed(metadata, "environment", dict, "metadata.")
    environment = metadata.get("environment") or {}
    _typed(environment, "packages", dict, "metadata.environment.")
    _typed(record.get("problem") or {}, "metric", str, "problem.")


def check_record(record: dict[str, Any], source: str) -> None:
    """Check a record (in DeepOBS 1.2's keys) against the result schema (see the module docstring).

    Args:
        record: the parsed file, DeepOBS 1.1's flat keys already mapped to 1.2's.
        source: ``probprec``, ``deepobs-1.2`` or ``deepobs-1.1``.

    Raises:
        SchemaError: the first violation, naming the key and what is accepted.
    """
    for key in ("testproblem", "optimizer_name"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise SchemaError(f"{key} must be a non-empty text, got {_show(record.get(key))}")
    _integer(record, "num_epochs", 0)
    _integer(record, "random_seed", 0, MAX_SEED, "2**64")
    if record.get("batch_size") is not None:
        _integer(record, "batch_size", 1)
    if not isinstance(record.get("optimizer_hyperparams"), dict):
        raise SchemaError(f"optimizer_hyperparams must be an object, got {_show(record.get('optimizer_hyperparams'))}")
    _typed(record, "training_params", dict)
    if record.get("weight_decay") is not None and not _is_number(record["weight_decay"]):
        raise SchemaError(f"weight_decay must be a number or null, got {_show(record['weight_decay'])}")
    if source == "probprec":
        _ours(record)
    _curves(record, source)
    for key in _TIMING:
        if record.get(key) is not None:
            _numbers(key, record[key], record["num_epochs"])
    _logs(record)
    _metadata(record)
