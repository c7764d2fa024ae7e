"""Runs into settings: what the seeds of one setting share, compared with a tolerance.

A setting is an optimizer's hyperparameters with the batch size, the epoch budget,
the weight decay and the training parameters. Two runs belong to one setting when
all of these agree, numbers to a relative tolerance of :data:`RELATIVE_TOLERANCE`
(1e-9): DeepOBS writes a learning rate with 10 significant digits in its folder
names and reran its tuned settings from those, so one setting's files can store
``0.0002511886431509582`` (the tuning run) and ``0.00025118864315`` (the reruns);
they must not become two settings. Other values (text, booleans, ``null``) must
be equal; lists and objects are compared element by element.

Each setting is named by the shortest :func:`setting_key` among its runs (the
folder's rounded value rather than the long float).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["RELATIVE_TOLERANCE", "assign_settings", "plain_json", "same_value", "setting_identity", "setting_key"]

RELATIVE_TOLERANCE = 1e-9
"""Numbers closer than this (relative) are the same hyperparameter value."""
IGNORED_TRAINING_PARAMS = frozenset({"train_log_interval"})
"""Training parameters that do not change what is trained (how often a minibatch loss is logged)."""


def plain_json(value: Any) -> Any:
    """A JSON-able copy with sorted object keys and tuples as lists (for canonical texts)."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _close_numbers(a: int | float, b: int | float) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:
        x, y = float(a), float(b)
    except OverflowError:
        return a == b
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=RELATIVE_TOLERANCE, abs_tol=0.0)


def same_value(a: Any, b: Any) -> bool:
    """Whether two hyperparameter values are the same (numbers within the tolerance; see the module docstring).

    Example:
        >>> same_value(0.0002511886431509582, 0.00025118864315), same_value(0.1, 0.1001), same_value(True, 1)
        (True, False, False)
    """
    if _is_number(a) and _is_number(b):
        return _close_numbers(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def setting_identity(hyperparams: dict[str, Any], batch_size: Any = None, num_epochs: Any = None,
                     weight_decay: Any = None, training_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that makes a setting, as one object (what :func:`same_value` compares)."""
    budget = {k: v for k, v in (training_params or {}).items() if k not in IGNORED_TRAINING_PARAMS}
    return {"hyperparams": dict(hyperparams), "batch_size": batch_size, "num_epochs": num_epochs,
            "weight_decay": weight_decay, "training_params": budget}


def setting_key(hyperparams: dict[str, Any], batch_size: Any = None, num_epochs: Any = None,
                weight_decay: Any = None, training_params: dict[str, Any] | None = None) -> str:
    """A readable, canonical name of one hyperparameter setting (what the seeds of one setting share).

    Example:
        >>> setting_key({"momentum": 0.9, "lr": 0.1}, 128, 10)
        'lr=0.1, momentum=0.9 | batch_size=128, num_epochs=10'
    """
    identity = setting_identity(hyperparams, batch_size, num_epochs, weight_decay, training_params)
    hp = ", ".join(f"{k}={json.dumps(plain_json(v), default=str)}" for k, v in sorted(hyperparams.items()))
    budget = {"batch_size": batch_size, "num_epochs": num_epochs, "weight_decay": weight_decay,
              **identity["training_params"]}
    rest = ", ".join(f"{k}={json.dumps(plain_json(v), default=str)}" for k, v in budget.items() if v is not None)
    return f"{hp or 'defaults'} | {rest}" if rest else (hp or "defaults")


def assign_settings(groups: Sequence[Any], identities: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """The setting name of every run: runs of one group (problem, optimizer) with the same identity share one.

    Args:
        groups: per run, what must be equal for two runs to be compared at all (e.g. problem and optimizer).
        identities: per run, its :func:`setting_identity`.
        keys: per run, its own :func:`setting_key`.

    Returns:
        Per run, the shortest key among the runs of its setting (the first of equal length).
    """
    members: list[list[int]] = []
    founders: dict[Any, list[int]] = {}
    for i, (group, identity) in enumerate(zip(groups, identities, strict=True)):
        for setting in founders.setdefault(group, []):
            if same_value(identities[members[setting][0]], identity):
                members[setting].append(i)
                break
        else:
            founders[group].append(len(members))
            members.append([i])
    names = [""] * len(keys)
    for runs in members:
        name = min((keys[i] for i in runs), key=len)
        for i in runs:
            names[i] = name
    return names
