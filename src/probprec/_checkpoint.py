"""Checks of a state dict before the Preconditioner loads it: it must fit this optimizer and these parameters.

``load_state_dict`` runs :func:`check_state_dict` before it changes anything, so a state dict from
another model (other shapes), another configuration (``num_observations``, the inner optimizer's class,
the mode, ...) or a damaged file is refused with one clear ``ValueError`` and the optimizer is left as it
was. State dicts written before the configuration and the shapes were recorded are checked by the shapes
of the tensors they hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Expected", "check_state_dict"]

_FLAT_KEYS = ("grad_sum", "probe", "probe_hvp", "probe_sum", "hvp_sum")
_ROW_KEYS = ("directions", "observations")
_GROUP_KEYS = ("active", "posterior", "curvature", "noise", "gram_ss", "gram_sy", "prior", "gain")
_CYCLE_INTS = ("step", "index", "observed", "optimize_steps")


@dataclass(frozen=True)
class Expected:
    """What a state dict must match."""

    config: Mapping[str, Any]
    """The structural configuration (saved with the state dict, compared on load)."""
    group_sizes: Sequence[int]
    """Number of parameters per group."""
    shapes: Sequence[tuple[int, ...]]
    """Shape of every parameter, in ``param_groups`` order."""
    phases: Sequence[str]


def _fail(message: str) -> ValueError:
    return ValueError(f"state dict {message}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(f"is damaged: {where} must be a dict, got {type(value).__name__}")
    return value


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise _fail(f"is damaged: {where} must be a list, got {type(value).__name__}")
    return value


def _tensor_shape(value: Any, where: str, shape: tuple[int | None, ...]) -> None:
    """Check that ``value`` is a tensor of ``shape`` (None: any size, at most the given bound elsewhere)."""
    if not torch.is_tensor(value):
        raise _fail(f"is damaged: {where} must be a tensor, got {type(value).__name__}")
    ok = value.dim() == len(shape) and all(s is None or s == v for s, v in zip(shape, value.shape, strict=True))
    if not ok:
        wanted = "x".join("*" if s is None else str(s) for s in shape) or "scalar"
        raise _fail(f"does not match this optimizer: {where} has shape {tuple(value.shape)}, expected {wanted}")


def check_state_dict(state_dict: Any, expected: Expected) -> None:
    """Raise ``ValueError`` (its message starts with "state dict") unless ``state_dict`` fits ``expected``."""
    sd = _mapping(state_dict, "the state dict")
    if "probprec" not in sd or "inner" not in sd:
        raise _fail("is not a Preconditioner state dict (no 'probprec' and 'inner' entries): it was saved by "
                    "another optimizer")
    extra = _mapping(sd["probprec"], "'probprec'")
    _check_config(extra, expected)
    _check_groups(sd, extra, expected)
    _check_param_state(_mapping(sd.get("state"), "'state'"), expected)
    _check_cycle(_mapping(extra.get("cycle"), "'probprec'['cycle']"), expected)
    _mapping(extra.get("log"), "'probprec'['log']")
    inner = _mapping(sd["inner"], "'inner'")
    inner_groups = _sequence(inner.get("param_groups"), "'inner'['param_groups']")
    _check_group_sizes(inner_groups, expected, "the inner optimizer's")
    _mapping(inner.get("state"), "'inner'['state']")


def _check_config(extra: Mapping[str, Any], expected: Expected) -> None:
    saved = extra.get("config")
    if saved is not None:
        saved = _mapping(saved, "'probprec'['config']")
        for key, value in expected.config.items():
            if saved.get(key) != value:
                raise _fail(f"does not match this optimizer: it was saved with {key}={saved.get(key)!r}, "
                            f"this optimizer has {key}={value!r}")
    shapes = extra.get("shapes")
    if shapes is not None:
        shapes = _sequence(shapes, "'probprec'['shapes']")
        if len(shapes) != len(expected.shapes):
            raise _fail(f"does not match this optimizer: it holds {len(shapes)} parameters, this optimizer "
                        f"{len(expected.shapes)}")
        for index, (saved_shape, shape) in enumerate(zip(shapes, expected.shapes, strict=True)):
            if tuple(saved_shape) != tuple(shape):
                raise _fail(f"does not match these parameters: parameter {index} has shape "
                            f"{tuple(saved_shape)} in the state dict and {tuple(shape)} here")


def _check_group_sizes(groups: Sequence[Any], expected: Expected, whose: str) -> None:
    if len(groups) != len(expected.group_sizes):
        raise _fail(f"does not match this optimizer: {whose} {len(groups)} parameter groups, this optimizer "
                    f"has {len(expected.group_sizes)}")
    for index, (group, size) in enumerate(zip(groups, expected.group_sizes, strict=True)):
        params = _sequence(_mapping(group, f"{whose} group {index}").get("params"), f"{whose} group {index}")
        if len(params) != size:
            raise _fail(f"does not match this optimizer: {whose} group {index} has {len(params)} parameters, "
                        f"this optimizer's {size}")


def _check_groups(sd: Mapping[str, Any], extra: Mapping[str, Any], expected: Expected) -> None:
    _check_group_sizes(_sequence(sd.get("param_groups"), "'param_groups'"), expected, "the state dict's")
    groups = _sequence(extra.get("groups"), "'probprec'['groups']")
    if len(groups) != len(expected.group_sizes):
        raise _fail(f"is damaged: 'probprec'['groups'] has {len(groups)} entries for "
                    f"{len(expected.group_sizes)} parameter groups")
    K = expected.config["num_observations"]
    for index, (gs, size) in enumerate(zip(groups, expected.group_sizes, strict=True)):
        where = f"'probprec'['groups'][{index}]"
        gs = _mapping(gs, where)
        missing = [key for key in _GROUP_KEYS if key not in gs]
        if missing:
            raise _fail(f"is damaged: {where} lacks {missing}")
        for key, shape in (("curvature", (3,)), ("noise", (2,)), ("gram_ss", (size, K, K)),
                           ("gram_sy", (size, K, K))):
            if gs[key] is not None:
                _tensor_shape(gs[key], f"{where}[{key!r}]", shape)


def _check_param_state(state: Mapping[Any, Any], expected: Expected) -> None:
    K, k = expected.config["num_observations"], expected.config["est_rank"]
    for index, entry in state.items():
        if not isinstance(index, int) or not 0 <= index < len(expected.shapes):
            raise _fail(f"does not match this optimizer: it holds state of parameter {index!r}, this optimizer "
                        f"has {len(expected.shapes)} parameters")
        n = int(torch.Size(expected.shapes[index]).numel())
        where = f"the state of parameter {index}"
        for key, value in _mapping(entry, where).items():
            _check_param_entry(key, value, f"{where}[{key!r}]", n, K, k)


def _check_param_entry(key: str, value: Any, where: str, n: int, K: int, k: int) -> None:
    if key in _FLAT_KEYS:
        _tensor_shape(value, where, (n,))
    elif key in _ROW_KEYS:
        rows = _sequence(value, where)
        if len(rows) > K:
            raise _fail(f"does not match this optimizer: {where} has {len(rows)} rows, at most "
                        f"num_observations={K} here")
        for i, row in enumerate(rows):
            _tensor_shape(row, f"{where}[{i}]", (n,))
    elif key == "eigvecs":
        _tensor_shape(value, where, (None, n))
        if value.shape[0] > k:
            raise _fail(f"does not match this optimizer: {where} has {value.shape[0]} rows, at most est_rank={k}")
    elif key in ("eigvals", "factors"):
        _tensor_shape(value, where, (None,))
        if value.shape[0] > k:
            raise _fail(f"does not match this optimizer: {where} has {value.shape[0]} entries, at most "
                        f"est_rank={k}")
    else:
        raise _fail(f"is damaged: {where} is not a key of this optimizer's state")


def _check_cycle(cycle: Mapping[str, Any], expected: Expected) -> None:
    if cycle.get("phase") not in expected.phases:
        raise _fail(f"is damaged: the phase must be one of {list(expected.phases)}, got {cycle.get('phase')!r}")
    for key in _CYCLE_INTS:
        if not isinstance(cycle.get(key), int):
            raise _fail(f"is damaged: 'probprec'['cycle'][{key!r}] must be an integer, got {cycle.get(key)!r}")
