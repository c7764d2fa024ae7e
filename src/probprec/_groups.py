"""The values a parameter group of the Preconditioner holds, and their checks.

The optimizer's own values: ``lr`` (the multiplier of the estimated step size, or a fixed learning
rate), ``adaptive_lr``, ``first_cycle_lr``, ``weight_decay``, ``inner_weight_decay`` and ``step_size``
(set by the estimate). Every hyperparameter of the inner optimizer (its ``defaults`` other than ``lr``
and ``weight_decay``: ``momentum``, ``betas``, ``eps``, ...) lives in the Preconditioner's parameter
groups under its own name, given globally or per group, so that LR schedulers see and change it
(``OneCycleLR`` cycles ``momentum`` or ``betas``); before every inner step the group's current values
are copied to the inner group. Two keys differ:

- ``lr``: the inner group's learning rate is the effective one the Preconditioner sets;
- ``weight_decay`` is the objective's L2 coefficient, which enters the curvature model; the inner
  optimizer's *own* decay (e.g. AdamW's decoupled decay) is ``inner_weight_decay``, 0 unless given,
  whatever the inner class's default.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._validation import check_float, check_parameters, group_list

__all__ = ["INNER_WEIGHT_DECAY", "RESERVED_KEYS", "InnerSpec", "check_new_group", "normalized_groups",
           "own_defaults"]

INNER_WEIGHT_DECAY = "inner_weight_decay"
"""The group key of the inner optimizer's own weight decay."""
RESERVED_KEYS = ("adaptive_lr", "step_size")
"""Group keys the optimizer sets itself."""


def own_defaults(weight_decay: Any, inner_weight_decay: Any, lr: Any, first_cycle_lr: Any) -> dict[str, Any]:
    """The optimizer's own per-group defaults, validated.

    Raises:
        ValueError: for a value out of its range (the message names it).
    """
    weight_decay = check_float("weight_decay", weight_decay, positive=False)
    inner_weight_decay = check_float("inner_weight_decay", inner_weight_decay, positive=False)
    if lr is not None:
        lr = check_float("lr", lr, positive=True)
    if first_cycle_lr is not None:
        first_cycle_lr = check_float("first_cycle_lr", first_cycle_lr, positive=True)
        if lr is not None:
            raise ValueError(f"first_cycle_lr needs lr=None (an adaptive step size); with the fixed lr={lr} it "
                             f"would never be used, got first_cycle_lr={first_cycle_lr}")
    return {"lr": 1.0 if lr is None else lr, "adaptive_lr": lr is None, "first_cycle_lr": first_cycle_lr,
            "weight_decay": weight_decay, INNER_WEIGHT_DECAY: inner_weight_decay, "step_size": None}


def check_new_group(group: Mapping[str, Any], index: int, first_param: int, defaults: Mapping[str, Any],
                    spec: InnerSpec) -> None:
    """Validate a group before ``add_param_group`` changes anything.

    Args:
        group: the group as given (``params`` a list).
        index: its index among the groups.
        first_param: the index of its first parameter among all parameters.
        defaults: the optimizer's defaults.
        spec: the inner optimizer's hyperparameters.
    """
    tensors = [p[1] if isinstance(p, tuple) else p for p in group["params"]]
    check_parameters(tensors, first_index=first_param)
    explicit = {k: v for k, v in group.items() if k != "params"}
    filled = {**defaults, **group, "params": tensors}
    label = f"param_groups[{index}]"
    for reserved in RESERVED_KEYS:
        if reserved in explicit:
            raise ValueError(f"{label}: {reserved} is set by the optimizer, not by a group")
    multiplier = " (a multiplier of the adaptive step size)" if filled["adaptive_lr"] else ""
    check_float(f"{label}['lr']{multiplier}", filled["lr"], positive=True)
    for key in ("weight_decay", INNER_WEIGHT_DECAY):
        check_float(f"{label}[{key!r}]", filled[key], positive=False)
    inner_explicit = {k: v for k, v in explicit.items() if k in spec.keys or k == INNER_WEIGHT_DECAY}
    spec.check_group(filled, inner_explicit, f"{label}: ")


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in values.items()) or "its defaults"


@dataclass(frozen=True)
class InnerSpec:
    """The inner optimizer class and the names of its hyperparameters."""

    optim_class: type[Optimizer]
    keys: tuple[str, ...]
    """Hyperparameters mirrored between the Preconditioner's groups and the inner groups."""
    has_weight_decay: bool
    """Whether the inner class takes a ``weight_decay`` (which ``inner_weight_decay`` sets)."""

    @classmethod
    def probe(cls, optim_class: type[Optimizer], hyperparams: Mapping[str, Any],
              groups: list[Any]) -> tuple[InnerSpec, dict[str, Any]]:
        """Build the inner class once on a one-element tensor like the first of ``groups``.

        Returns:
            The spec and the inner class's defaults for the mirrored keys.

        Raises:
            ValueError: if ``hyperparams`` holds a key the Preconditioner reserves, or the inner class
                rejects them (its own message, with the values).
        """
        for reserved in RESERVED_KEYS:
            if reserved in hyperparams:
                raise ValueError(f"{reserved} is not a hyperparameter of the inner optimizer")
        defaults = _construct(optim_class, hyperparams, _first_tensor(groups), "").defaults
        keys = tuple(k for k in defaults if k not in ("lr", "weight_decay"))
        spec = cls(optim_class, keys, "weight_decay" in defaults)
        return spec, {k: defaults[k] for k in keys}

    def inner_values(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """The inner group's hyperparameters (without ``params`` and ``lr``) from a Preconditioner group."""
        values = {key: group[key] for key in self.keys}
        if self.has_weight_decay:
            values["weight_decay"] = group[INNER_WEIGHT_DECAY]
        return values

    def check_group(self, group: Mapping[str, Any], explicit: Mapping[str, Any], label: str) -> None:
        """Let the inner class validate a group's values (it checks only its constructor's arguments).

        Args:
            group: the group with its defaults filled in.
            explicit: the values the user gave in the group (named in the error).
            label: where the group is, for the message (e.g. ``"param_groups[1]: "``).
        """
        if group[INNER_WEIGHT_DECAY] and not self.has_weight_decay:
            raise ValueError(
                f"{label}inner_weight_decay must be 0 with {self.optim_class.__name__}, which has no weight "
                f"decay of its own, got {group[INNER_WEIGHT_DECAY]!r}"
            )
        params = group["params"]
        values = self.inner_values(group)
        given = [("weight_decay" if key == INNER_WEIGHT_DECAY else key) for key in explicit]
        _construct(self.optim_class, values, params[0] if params else None, label, explicit,
                   given={key: values[key] for key in given if key in values})

    def inner_group(self, group: Mapping[str, Any]) -> dict[str, Any]:
        """A new inner group for a Preconditioner group (learning rate 1 until the first step sets it)."""
        return {"params": group["params"], **self.inner_values(group), "lr": 1.0}

    def copy_values(self, group: Mapping[str, Any], inner_group: dict[str, Any]) -> None:
        """Copy the group's current hyperparameters (schedulers may have changed them) to the inner group."""
        for key in self.keys:
            inner_group[key] = group[key]
        if self.has_weight_decay:
            inner_group["weight_decay"] = group[INNER_WEIGHT_DECAY]


def _first_tensor(groups: list[Any]) -> Tensor | None:
    for item in groups:
        params = item.get("params", []) if isinstance(item, dict) else [item]
        for p in params:
            p = p[1] if isinstance(p, tuple) else p
            if isinstance(p, Tensor):
                return p
    return None


def normalized_groups(params: Iterable[Tensor] | Iterable[dict[str, Any]]) -> list[Any]:
    """The ``params`` argument as a list: of tensors, or of groups whose ``params`` are lists."""
    groups: list[Any] = list(params)
    if groups and isinstance(groups[0], dict):
        groups = [{**g, "params": group_list(g.get("params", ()))} for g in groups]
    return groups


def _constructor_arguments(optim_class: type[Optimizer], values: Mapping[str, Any]) -> dict[str, Any]:
    """The values the class's constructor takes (some defaults, e.g. AdamW's, are not arguments).

    Used for values filled in from the class's own defaults; what the user gives is passed as it is, so
    that an unknown keyword is an error.
    """
    parameters = inspect.signature(optim_class.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(values)
    return {key: value for key, value in values.items() if key in parameters}


def _construct(optim_class: type[Optimizer], values: Mapping[str, Any], like: Tensor | None, label: str,
               explicit: Mapping[str, Any] | None = None, given: Mapping[str, Any] | None = None) -> Optimizer:
    """Build the class on a one-element tensor with ``values``.

    ``explicit`` are the values the user gave, as the user named them (for the message; None: all of
    ``values``, and then none is filtered out); ``given`` the same under the inner class's names.
    """
    dummy = torch.zeros(1, requires_grad=True) if like is None else torch.zeros(
        1, dtype=like.dtype, device=like.device, requires_grad=True)
    arguments = dict(values) if explicit is None else {**_constructor_arguments(optim_class, values),
                                                        **(given or {})}
    try:
        return optim_class([dummy], **{**arguments, "lr": 1.0})
    except (ValueError, TypeError, RuntimeError) as error:
        shown = values if explicit is None else explicit
        raise ValueError(f"{label}{_describe(shown)} rejected by {optim_class.__name__}: {error}") from None
