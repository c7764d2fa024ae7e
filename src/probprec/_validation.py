"""Checks of the user's arguments: each names the argument and the accepted range, and changes nothing.

Numbers are accepted when they are numbers (``int``, ``float``, NumPy scalars, fractions: anything
registered with :mod:`numbers`), never booleans, strings or tensors, and are returned as plain Python
``int`` or ``float``.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .distributed import is_sharded

__all__ = [
    "check_choice",
    "check_float",
    "check_inner_class",
    "check_int",
    "check_memory",
    "check_parameters",
    "group_list",
]


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_ without importing numpy


def check_int(name: str, value: Any, low: int) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= low``, else raise ``ValueError``."""
    if _is_bool(value) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, *, positive: bool) -> float:
    """Return ``value`` as a ``float`` if it is a finite real number ``> 0`` (``>= 0``), else raise."""
    ok = isinstance(value, numbers.Real) and not _is_bool(value) and math.isfinite(float(value))
    if not ok or value < 0 or (positive and value == 0):
        accepted = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {accepted}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_inner_class(optim_class: Any, own_class: type) -> type[Optimizer]:
    """Return ``optim_class`` if it can be the inner optimizer.

    It must be a ``torch.optim.Optimizer`` subclass whose ``step`` works without a closure (LBFGS needs
    one at every step), and not a :class:`~probprec.Preconditioner` itself.
    """
    if not (isinstance(optim_class, type) and issubclass(optim_class, Optimizer)):
        raise TypeError(f"optim_class must be a torch.optim.Optimizer subclass, got {optim_class!r}")
    if issubclass(optim_class, own_class):
        raise TypeError(f"optim_class must not be a Preconditioner (it wraps one), got {optim_class.__name__}")
    closure = inspect.signature(optim_class.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise TypeError(
            f"optim_class must step without a closure, got {optim_class.__name__}, whose step() needs one "
            "at every step (Preconditioner steps the inner optimizer on the preconditioned gradient)"
        )
    return optim_class


def group_list(params: Any) -> list[Tensor]:
    """The parameters of one group as a list (``torch.optim`` accepts one tensor or an iterable)."""
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, set):
        raise TypeError("params must be an ordered collection of tensors (a list, not a set)")
    return list(params)


def check_parameters(params: Iterable[Tensor], first_index: int = 0) -> None:
    """Refuse parameters that the optimizer cannot estimate: complex ones and data-less (meta) ones."""
    for index, p in enumerate(params, first_index):
        if not isinstance(p, Tensor):
            continue  # torch.optim's own check names it
        if p.is_complex():
            raise TypeError(
                f"parameter {index} has dtype {p.dtype}: complex parameters are not supported (the curvature "
                "model is real); optimize real floating-point parameters (e.g. torch.view_as_real)"
            )
        if is_sharded(p):
            raise TypeError(
                f"parameter {index} is a shard ({type(p).__name__}, from FullyShardedDataParallel or a DTensor): "
                "sharded parameters are not supported; train data-parallel with DistributedDataParallel, whose "
                "parameters are whole on every rank (see probprec.distributed)"
            )
        if p.device.type == "meta":
            raise ValueError(
                f"parameter {index} is on the meta device (it holds no data): materialize the model first, "
                "e.g. model.to_empty(device=...) and initialize it, then create the optimizer"
            )


def _device_memory(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes, or None where it cannot be told."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        if device.type == "cpu":
            return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, RuntimeError, AttributeError):
        return None
    return None


def estimated_state_bytes(params: Sequence[Tensor], num_observations: int, est_rank: int) -> int:
    r"""Bytes the optimizer's own state can reach while estimating.

    Per tensor with :math:`n` elements: the :math:`K` directions and observations and four more flat
    buffers in the parameter's dtype, the top-:math:`k` directions, and two float64 :math:`K \times K`
    Gram matrices.
    """
    total = 0
    for p in params:
        total += p.numel() * p.element_size() * (2 * num_observations + est_rank + 4)
        total += 2 * 8 * num_observations**2
    return total


def _size(num_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if num_bytes < 1000 or unit == "TB":
            return f"{num_bytes:.3g} {unit}"
        num_bytes /= 1000
    raise AssertionError("unreachable")


def check_memory(params: Sequence[Tensor], num_observations: int, est_rank: int) -> None:
    """Refuse a ``num_observations`` whose state cannot fit in the memory of the parameters' device."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for p in params:
        by_device.setdefault(p.device, []).append(p)
    for device, tensors in by_device.items():
        available = _device_memory(device)
        needed = estimated_state_bytes(tensors, num_observations, est_rank)
        if available is not None and needed > available:
            raise ValueError(
                f"num_observations must fit in memory: num_observations={num_observations} needs about "
                f"{_size(needed)} of optimizer state on {device}, which has {_size(available)}"
            )
