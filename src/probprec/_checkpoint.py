"""The Preconditioner's state dict: its format versions, and the checks before one is loaded.

Format 1 (this release)::

    {"state": {index: {"eigvecs", "eigvals", "factors"}},   # the preconditioner in use, per parameter,
                                                              # and "secant": the last check's step
     "param_groups": [...],                                   # torch.optim's, with "step_size"
     "probprec": {"version": 1, "config": {...}, "shapes": [...],
                  "schedule": probprec.schedule.CycleSchedule, "safeguard": probprec.safeguard.Safeguard,
                  "log": probprec.log.OptimizerLog.as_state,
                  "gains": [...], "estimator": None or the cycle in progress (CycleEstimator.state_dict)},
     "inner": the inner optimizer's state dict}

Format 0 (the releases before the estimator was its own object) kept the cycle's buffers in the
per-parameter state and the phase machine in ``"probprec"`` without a version, and knew no safeguard;
:func:`upgrade` turns it into format 1 with the options added since off (:data:`FORMAT_0_BEHAVIOUR`: the
behaviour that wrote it). A state dict
of an unknown (newer) version is refused. :func:`check_state_dict` runs before ``load_state_dict``
changes anything, so a state dict from another model (other shapes), another configuration
(``num_observations``, the inner optimizer's class, the mode, the safeguard, ...) or a damaged file is
refused with one clear ``ValueError`` and the optimizer is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .check_step import SECANT_STATE
from .config import MECHANISMS
from .cycle_state import GroupCycle, TensorCycle
from .estimate_in_use import ESTIMATE_KEYS
from .metric import METRIC_STATE, MOMENTUM_STATE

__all__ = ["VERSION", "Expected", "check_state_dict", "upgrade"]

VERSION = 1
_ROW_KEYS = ("directions", "observations")
_SCHEDULE_INTS = ("cycle", "optimize_steps", "failures", "cycles_completed")
_PRIOR_KEYS = ("step_size", "mean", "width", "noise", "noise_measured")
FORMAT_0_BEHAVIOUR = dict.fromkeys(MECHANISMS, False)
"""The options added since format 0, at the values that reproduce the code that wrote it."""
LATER_OPTIONS = {"secant_check": False, "metric": "identity", "max_factor": 1.0}
"""Options added to the configuration since format 1, at the values of the code before them (a state dict saved
without one was saved with this value)."""


@dataclass(frozen=True)
class Expected:
    """What a state dict must match."""

    config: Mapping[str, Any]
    """The structural configuration (saved with the state dict, compared on load)."""
    group_sizes: Sequence[int]
    """Number of parameters per group."""
    shapes: Sequence[tuple[int, ...]]
    """Shape of every parameter, in ``param_groups`` order."""


def _fail(message: str) -> ValueError:
    return ValueError(f"state dict {message}")


def _mapping(value: Any, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise _fail(f"is damaged: {where} must be a dict, got {type(value).__name__}")
    return value


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, (list, tuple)):
        raise _fail(f"is damaged: {where} must be a list, got {type(value).__name__}")
    return value


def _tensor_shape(value: Any, where: str, shape: tuple[int | None, ...]) -> None:
    """Check that ``value`` is a tensor of ``shape`` (None: any size)."""
    if not torch.is_tensor(value):
        raise _fail(f"is damaged: {where} must be a tensor, got {type(value).__name__}")
    ok = value.dim() == len(shape) and all(s is None or s == v for s, v in zip(shape, value.shape, strict=True))
    if not ok:
        wanted = "x".join("*" if s is None else str(s) for s in shape) or "scalar"
        raise _fail(f"does not match this optimizer: {where} has shape {tuple(value.shape)}, expected {wanted}")


# ------------------------------------------------------------------- versions


def upgrade(state_dict: Any) -> Any:
    """Return ``state_dict`` in format 1 (a new dict; the tensors are shared).

    Raises:
        ValueError: for a newer (unknown) version, or a format-0 state dict too damaged to convert.
    """
    if not isinstance(state_dict, Mapping) or not isinstance(state_dict.get("probprec"), Mapping):
        return state_dict  # check_state_dict says what is wrong
    version = state_dict["probprec"].get("version", 0)
    if version == VERSION:
        return state_dict
    if version != 0:
        raise _fail(f"has format version {version!r}; this release of probprec reads versions 0 to {VERSION} "
                    "(it was written by a newer release, or is damaged)")
    try:
        return _from_format_0(state_dict)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise _fail(f"(format 0) is damaged: {type(error).__name__}: {error}") from None


def _from_format_0(sd: Mapping[str, Any]) -> dict[str, Any]:
    extra = sd["probprec"]
    cycle, log, groups = extra["cycle"], extra["log"], extra["groups"]
    state, buffers = {}, {}
    for index, entry in sd["state"].items():
        estimate = {k: v for k, v in entry.items() if k in ESTIMATE_KEYS}
        rest = {k: v for k, v in entry.items() if k not in ESTIMATE_KEYS}
        if estimate:
            state[index] = estimate
        if rest:
            buffers[index] = rest
    estimator = None
    if cycle["phase"] != "optimize":
        posterior = cycle["phase"] == "posterior"
        estimator = {"phase": cycle["phase"], "step": cycle["step"], "observed": cycle["observed"],
                     "switch": bool(cycle.get("switch", False)), "tensors": buffers,
                     "groups": [{**{k: gs.get(k) for k in GroupCycle.TENSORS}, "active": gs["active"],
                                 "posterior": gs["posterior"], "prior": gs["prior"] if posterior else None}
                                for gs in groups]}
    schedule = {"cycle": cycle["index"], "optimize_steps": cycle["optimize_steps"],
                "failures": cycle.get("failures", 0), "retry_after": cycle.get("retry_after"),
                "cycles_completed": log["cycles_completed"]}
    new_log = {"events": list(log["events"]), "priors": [gs["prior"] for gs in groups],
               "tensors": dict(log.get("tensors", {})), "hvp_count": log["hvp_count"]}
    safeguard = {"factors": [1.0] * len(groups), "last": [None] * len(groups), "next_check": 1, "interval": 1,
                 "checks": 0, "cuts": 0}
    probprec = {"version": VERSION, "schedule": schedule, "safeguard": safeguard, "log": new_log,
                "gains": [gs.get("gain", 1.0) for gs in groups], "estimator": estimator}
    if "config" in extra:
        probprec["config"] = {**extra["config"], **FORMAT_0_BEHAVIOUR}
    if "shapes" in extra:
        probprec["shapes"] = extra["shapes"]
    return {**sd, "state": state, "probprec": probprec}


# --------------------------------------------------------------------- checks


def check_state_dict(state_dict: Any, expected: Expected) -> None:
    """Raise ``ValueError`` (its message starts with "state dict") unless ``state_dict`` fits ``expected``."""
    sd = _mapping(state_dict, "the state dict")
    if "probprec" not in sd or "inner" not in sd:
        raise _fail("is not a Preconditioner state dict (no 'probprec' and 'inner' entries): it was saved by "
                    "another optimizer")
    extra = _mapping(sd["probprec"], "'probprec'")
    _check_config(extra, expected)
    _check_group_sizes(_sequence(sd.get("param_groups"), "'param_groups'"), expected, "the state dict's")
    _check_estimate(_mapping(sd.get("state"), "'state'"), expected)
    _check_record(extra, expected)
    if extra.get("estimator") is not None:
        _check_estimator(_mapping(extra["estimator"], "'probprec'['estimator']"), expected)
    inner = _mapping(sd["inner"], "'inner'")
    _check_group_sizes(_sequence(inner.get("param_groups"), "'inner'['param_groups']"), expected,
                       "the inner optimizer's")
    _mapping(inner.get("state"), "'inner'['state']")


def _check_config(extra: Mapping[str, Any], expected: Expected) -> None:
    saved = extra.get("config")
    if saved is not None:
        saved = _mapping(saved, "'probprec'['config']")
        for key, value in expected.config.items():
            saved_value = saved.get(key, LATER_OPTIONS.get(key))
            if saved_value != value:
                raise _fail(f"does not match this optimizer: it was saved with {key}={saved_value!r}, "
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


def _numel(expected: Expected, index: Any, whose: str) -> int:
    if not isinstance(index, int) or not 0 <= index < len(expected.shapes):
        raise _fail(f"does not match this optimizer: it holds {whose} of parameter {index!r}, this optimizer has "
                    f"{len(expected.shapes)} parameters")
    return int(torch.Size(expected.shapes[index]).numel())


def _check_estimate(state: Mapping[Any, Any], expected: Expected) -> None:
    k = expected.config["est_rank"]
    for index, entry in state.items():
        n = _numel(expected, index, "state")
        where = f"the state of parameter {index}"
        for key, value in _mapping(entry, where).items():
            if key == SECANT_STATE:
                _tensor_shape(value, f"{where}[{key!r}]", (n,))
                continue
            if key in (METRIC_STATE, MOMENTUM_STATE):
                _tensor_shape(value, f"{where}[{key!r}]", tuple(expected.shapes[index]))
                continue
            if key not in ESTIMATE_KEYS:
                raise _fail(f"is damaged: {where}[{key!r}] is not a key of this optimizer's state")
            _tensor_shape(value, f"{where}[{key!r}]", (None, n) if key == "eigvecs" else (None,))
            if value.shape[0] > k:
                raise _fail(f"does not match this optimizer: {where}[{key!r}] has {value.shape[0]} rows, at most "
                            f"est_rank={k} here")


def _check_record(extra: Mapping[str, Any], expected: Expected) -> None:
    schedule = _mapping(extra.get("schedule"), "'probprec'['schedule']")
    for key in _SCHEDULE_INTS:
        if not isinstance(schedule.get(key), int):
            raise _fail(f"is damaged: 'probprec'['schedule'][{key!r}] must be an integer, got {schedule.get(key)!r}")
    if not isinstance(schedule.get("retry_after"), (int, type(None))):
        raise _fail("is damaged: 'probprec'['schedule']['retry_after'] must be an integer or None")
    groups = len(expected.group_sizes)
    safeguard = _mapping(extra.get("safeguard"), "'probprec'['safeguard']")
    for key in ("factors", "last"):
        if len(_sequence(safeguard.get(key), f"'probprec'['safeguard'][{key!r}]")) != groups:
            raise _fail(f"is damaged: 'probprec'['safeguard'][{key!r}] must have one entry per group ({groups})")
    for key in ("next_check", "interval", "checks", "cuts"):
        if not isinstance(safeguard.get(key), int):
            raise _fail(f"is damaged: 'probprec'['safeguard'][{key!r}] must be an integer")
    if not isinstance(extra.get("metric_steps", 0), int):
        raise _fail("is damaged: 'probprec'['metric_steps'] must be an integer")
    log = _mapping(extra.get("log"), "'probprec'['log']")
    priors = _sequence(log.get("priors"), "'probprec'['log']['priors']")
    gains = _sequence(extra.get("gains"), "'probprec'['gains']")
    if len(priors) != groups or len(gains) != groups:
        raise _fail(f"is damaged: 'probprec' has {len(priors)} priors and {len(gains)} gains for {groups} groups")
    for index, prior in enumerate(priors):
        if prior is not None and set(_mapping(prior, f"prior {index}")) != set(_PRIOR_KEYS):
            raise _fail(f"is damaged: prior {index} must have the keys {list(_PRIOR_KEYS)}")
    for index, entry in _mapping(log.get("tensors"), "'probprec'['log']['tensors']").items():
        _numel(expected, index, "a log")
        if not {"eigenvalues", "preconditioned"} <= set(_mapping(entry, f"the log of parameter {index}")):
            raise _fail(f"is damaged: the log of parameter {index} lacks 'eigenvalues' or 'preconditioned'")
    _sequence(log.get("events"), "'probprec'['log']['events']")
    if not isinstance(log.get("hvp_count"), int):
        raise _fail("is damaged: 'probprec'['log']['hvp_count'] must be an integer")


def _check_estimator(estimator: Mapping[str, Any], expected: Expected) -> None:
    if estimator.get("phase") not in ("prior", "posterior"):
        raise _fail(f"is damaged: the cycle's phase must be 'prior' or 'posterior', got {estimator.get('phase')!r}")
    for key in ("step", "observed"):
        if not isinstance(estimator.get(key), int):
            raise _fail(f"is damaged: the cycle's {key!r} must be an integer, got {estimator.get(key)!r}")
    groups = _sequence(estimator.get("groups"), "the cycle's 'groups'")
    if len(groups) > len(expected.group_sizes):
        raise _fail(f"is damaged: the cycle has {len(groups)} groups, this optimizer {len(expected.group_sizes)}")
    K = expected.config["num_observations"]
    for index, (group, size) in enumerate(zip(groups, expected.group_sizes, strict=False)):
        where = f"the cycle's group {index}"
        group = _mapping(group, where)
        missing = [key for key in (*GroupCycle.TENSORS, "active", "posterior", "prior") if key not in group]
        if missing:
            raise _fail(f"is damaged: {where} lacks {missing}")
        for key, shape in (("curvature", (3,)), ("noise", (2,)), ("gram_ss", (size, K, K)), ("gram_sy", (size, K, K))):
            if group[key] is not None:
                _tensor_shape(group[key], f"{where}[{key!r}]", shape)
    for index, entry in _mapping(estimator.get("tensors"), "the cycle's 'tensors'").items():
        n = _numel(expected, index, "cycle buffers")
        where = f"the cycle's buffers of parameter {index}"
        for key, value in _mapping(entry, where).items():
            _check_buffer(key, value, f"{where}[{key!r}]", n, K)


def _check_buffer(key: str, value: Any, where: str, n: int, K: int) -> None:
    if key in TensorCycle.BUFFERS:
        _tensor_shape(value, where, (n,))
    elif key in _ROW_KEYS:
        rows = _sequence(value, where)
        if len(rows) > K:
            raise _fail(f"does not match this optimizer: {where} has {len(rows)} rows, at most "
                        f"num_observations={K} here")
        for i, row in enumerate(rows):
            _tensor_shape(row, f"{where}[{i}]", (n,))
    else:
        raise _fail(f"is damaged: {where} is not a buffer of this optimizer's cycle")
