"""Result files: DeepOBS 1.2's folder layout and keys, strict JSON, atomic writes.

One JSON file per run at::

    <output_dir>/<testproblem>/<optimizer>/num_epochs__<N>__batch_size__<B>[__weight_decay__<wd>]
        __<hp1>__<v1>__.../random_seed__<seed>__<YYYY-MM-DD-HH-MM-SS>.json

with DeepOBS 1.2's keys (``testproblem``, ``batch_size``, ``num_epochs``,
``random_seed``, ``weight_decay``, ``optimizer_name``, ``optimizer_hyperparams``,
``training_params``, the per-epoch ``train/valid/test_losses`` and ``_accuracies``
of length N+1, ``minibatch_train_losses``), so tools written for DeepOBS read
them, plus ours: ``status`` and its reason, step and epoch, per-epoch timing,
environment metadata and the optimizer's logs. Non-finite numbers are written as
``null``; files are written to a temporary name and renamed, so a reader never
sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "dump_strict",
    "existing_results",
    "format_value",
    "result_path",
    "settings_folder",
    "write_json_atomic",
]

SCHEMA_VERSION = 1
STATUSES = ("completed", "diverged", "interrupted", "failed")


def format_value(value: Any) -> str:
    """DeepOBS's rendering of a value in a folder name: floats with 10 significant digits.

    Example:
        >>> format_value(0.01), format_value(0.039810717055349734), format_value(128), format_value(None)
        ('1.e-02', '3.9810717055e-02', '128', 'None')
    """
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        mantissa, exponent = f"{value:.10e}".split("e")
        return f"{mantissa.rstrip('0')}e{exponent}"
    return str(value)


def settings_folder(num_epochs: int, batch_size: int, weight_decay: float | None, hyperparams: dict[str, Any],
                    training_params: dict[str, Any] | None = None) -> str:
    """The folder name of one setting: epochs, batch size, weight decay and hyperparameters sorted by name."""
    parts = ["num_epochs", format_value(num_epochs), "batch_size", format_value(batch_size)]
    if weight_decay is not None:
        parts += ["weight_decay", format_value(weight_decay)]
    for key in sorted(hyperparams):
        parts += [key, format_value(hyperparams[key])]
    for key in sorted(training_params or {}):
        parts += [key, format_value(training_params[key])]  # type: ignore[index]
    return "__".join(parts)


def result_path(output_dir: str | Path, problem: str, optimizer: str, folder: str, seed: int,
                started: datetime) -> Path:
    """The JSON file of one run."""
    stamp = started.strftime("%Y-%m-%d-%H-%M-%S")
    return Path(output_dir) / problem / optimizer / folder / f"random_seed__{seed}__{stamp}.json"


def existing_results(folder: Path, seed: int) -> list[tuple[Path, dict[str, Any]]]:
    """Readable results of ``seed`` in a settings folder, oldest first (unreadable files are skipped)."""
    found = []
    for path in sorted(folder.glob(f"random_seed__{seed}__*.json")):
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


def _strict(value: Any) -> Any:
    """Replace non-finite floats by None, recursively (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def dump_strict(data: Any) -> str:
    """Strict JSON text (``NaN`` and ``Infinity`` become ``null``), indented like DeepOBS 1.2."""
    return json.dumps(_strict(data), indent=4, allow_nan=False, default=str)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON to ``path`` through a temporary file in the same folder."""
    write_text_atomic(path, dump_strict(data) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
