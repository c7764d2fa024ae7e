r"""The estimate in use: kept in the optimizer's per-parameter state, applied to the gradients, carried over.

A cycle ends with one :class:`~probprec.estimator.TensorEstimate` per parameter tensor :math:`p`. Its tensors
live in ``optimizer.state[p]`` under :data:`ESTIMATE_KEYS` (so that the state dict saves them like any
``torch.optim`` state), until the next cycle replaces them:

- ``eigvecs`` :math:`U_p` (``(a, n)``, orthonormal rows, in :math:`p`'s dtype) and ``eigvals``
  :math:`\sigma_p` (``(a,)``): the estimated top curvature directions and values;
- ``factors`` (``(b,)``, :math:`b \le a`): :math:`c_j - 1` for the directions the preconditioner rescales,
  :math:`P g = g + U_b^\top \operatorname{diag}(c - 1)\, U_b\, g` (:func:`probprec.precondition.precondition`);
- ``weights`` (``(a,)``): how many cycles each curvature averages, for the next warm start
  (:mod:`probprec.warm_start`).

:func:`apply_plan` reads them once per cycle into what an update needs, so that an update does no dictionary
lookups; :func:`precondition_gradients` applies the plan to ``p.grad``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from torch import Tensor

from .estimator import Estimate
from .precondition import precondition
from .warm_start import Memory

__all__ = ["ESTIMATE_KEYS", "PlanEntry", "apply", "apply_plan", "curvatures", "discard", "memory",
           "precondition_gradients", "store"]

ESTIMATE_KEYS = ("eigvecs", "eigvals", "factors", "weights")
"""The keys of the per-parameter state that hold the estimate in use."""

PlanEntry = tuple[Tensor, Tensor | None, Tensor | None]
"""``(p, U_b, factors)``: a tensor whose gradient an update changes (``U_b`` None: weight decay only)."""

State = MutableMapping[Tensor, dict[str, Any]]
Held = Mapping[Tensor, dict[str, Any]]


def store(state: State, params: Sequence[Tensor], estimate: Estimate) -> None:
    """Keep the tensors of ``estimate`` (indexed like ``params``) in the per-parameter state."""
    for index, tensor in estimate.tensors.items():
        if tensor.eigvecs is not None:
            state[params[index]].update(eigvecs=tensor.eigvecs, eigvals=tensor.eigvals, factors=tensor.factors,
                                        weights=tensor.weights)


def discard(state: State, params: Sequence[Tensor]) -> None:
    """Drop the estimate in use from the per-parameter state (other keys stay)."""
    for p in params:
        entry = state.get(p)
        if entry:
            for key in ESTIMATE_KEYS:
                entry.pop(key, None)


def memory(state: Held, params: Sequence[Tensor]) -> dict[int, Memory]:
    """The estimate in use per parameter index, as the next cycle's warm start reads it."""
    kept = {}
    for index, p in enumerate(params):
        entry = state.get(p, {})
        if entry.get("eigvecs") is not None and entry.get("weights") is not None:
            kept[index] = Memory(entry["eigvecs"], entry["eigvals"].double(), entry["weights"])
    return kept


def apply_plan(groups: Sequence[Mapping[str, Any]], state: Held) -> list[list[PlanEntry]]:
    """Per group, the tensors whose gradient an update changes: rescaled directions, or the weight decay."""
    plan = []
    for group in groups:
        entries: list[PlanEntry] = []
        for p in group["params"]:
            entry = state.get(p, {})
            factors = entry.get("factors")
            if factors is not None and factors.numel():
                entries.append((p, entry["eigvecs"][: factors.numel()], factors))
            elif group["weight_decay"]:
                entries.append((p, None, None))
        plan.append(entries)
    return plan


def precondition_gradients(entries: Sequence[PlanEntry], wd: float) -> list[tuple[Tensor, Tensor | None]]:
    r"""Replace each ``p.grad`` by :math:`P(g + \text{wd}\,\theta)`; return ``(p, g)`` for every one replaced."""
    swapped: list[tuple[Tensor, Tensor | None]] = []
    for p, U, factors in entries:
        g = p.grad
        if g is None:
            continue
        flat = g.reshape(-1)
        if wd:
            flat = flat.add(p.detach().reshape(-1), alpha=wd)
        if U is not None:
            flat = precondition(flat, U, factors)  # type: ignore[arg-type]
        elif not wd:
            continue
        swapped.append((p, g))
        p.grad = flat.view_as(p)
    return swapped


def curvatures(state: Held, params: Sequence[Tensor]) -> list[tuple[Tensor, Tensor] | None]:
    """Per tensor, ``(eigvals, eigvecs)`` with the directions in the parameter's shape, or None (no estimate)."""
    out: list[tuple[Tensor, Tensor] | None] = []
    for p in params:
        entry = state.get(p, {})
        U = entry.get("eigvecs")
        out.append(None if U is None else (entry["eigvals"], U.reshape(U.shape[0], *p.shape)))
    return out


def apply(state: Held, params: Sequence[Tensor], vectors: Iterable[Tensor]) -> list[Tensor]:
    """:math:`P v` for one vector per tensor (a copy of :math:`v` where no direction is rescaled)."""
    out = []
    for p, v in zip(params, vectors, strict=True):
        factors = state.get(p, {}).get("factors")
        if factors is None or factors.numel() == 0:
            out.append(v.clone())
        else:
            U = state[p]["eigvecs"][: factors.numel()]
            out.append(precondition(v.reshape(-1).to(U.dtype), U, factors).view_as(v))
    return out
