r"""Warm starts: a cycle learns from the estimate before it instead of starting over.

Two things carry over from one estimate to the next (per parameter tensor):

- **Directions.** The first posterior directions of the new cycle are the previous estimate's top
  directions :math:`u_j` (orthogonalised against the directions already observed, scaled to the length of
  the active direction they replace), observed afresh at the current parameters. The Rayleigh-Ritz step
  of the new cycle then works on a space that already holds the previous top directions, so that on a
  stationary problem the directions improve from cycle to cycle, as in a restarted subspace iteration.
- **Curvatures.** A new Ritz pair :math:`(\sigma, u)` that matches a previous one
  (:math:`|u^\top u_\text{prev}| \ge` :data:`MATCH`) is averaged with it, weighted by how many cycles
  the previous value already averages, discounted for the updates in between:

  .. math::

      \sigma \leftarrow \frac{\sigma + \rho\, n_\text{prev}\, \sigma_\text{prev}}{1 + \rho\, n_\text{prev}},
      \qquad n \leftarrow 1 + \rho\, n_\text{prev}, \qquad
      \rho = 2^{-\text{updates} / \text{HALF\_LIFE}} .

  On a stationary problem the noise of the estimated curvatures shrinks like :math:`1/\sqrt n`; after a
  change the discount and the failed match let the new values take over.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["HALF_LIFE", "MATCH", "Memory", "carried_direction", "combine", "discount"]

MATCH = 0.9
"""A new direction continues a previous one when their cosine is at least this (in absolute value)."""
HALF_LIFE = 256
"""Updates after which a previous estimate counts half."""


@dataclass(frozen=True)
class Memory:
    """The previous estimate of one tensor: directions (rows), their curvatures and weights."""

    directions: Tensor
    """``(a, n)``, orthonormal rows."""
    values: Tensor
    """``(a,)``."""
    weights: Tensor
    """``(a,)``: how many cycles each value averages."""


def carried_direction(memory: Memory | None, slot: int) -> Tensor | None:
    """The previous direction that replaces posterior direction ``slot`` (1, 2, ...), if any."""
    if memory is None or slot > memory.directions.shape[0]:
        return None
    return memory.directions[slot - 1]


def discount(updates: int) -> float:
    r"""The weight :math:`\rho` of a previous estimate ``updates`` updates old."""
    return 0.5 ** (max(updates, 0) / HALF_LIFE)


def combine(values: list[float], valid: list[bool], directions: Tensor, memory: Memory | None,
            updates: int) -> tuple[list[float], list[float]]:
    """Average new curvatures with the matching previous ones; return the values and their weights.

    Args:
        values: the new top curvatures (one per row of ``directions``).
        valid: which of them are valid.
        directions: ``(k, n)`` the new directions (rows).
        memory: the previous estimate of the tensor, or None.
        updates: updates since the previous estimate.

    Example:
        >>> import torch
        >>> old = Memory(torch.eye(2), torch.tensor([4.0, 1.0]), torch.tensor([3.0, 1.0]))
        >>> combine([2.0, 9.0], [True, True], torch.eye(2), old, updates=0)
        ([3.5, 5.0], [4.0, 2.0])
    """
    weights = [1.0] * len(values)
    if memory is None or directions.shape[0] == 0:
        return list(values), weights
    rho = discount(updates)
    cosines = (directions.to(memory.directions) @ memory.directions.mT).abs()
    best = cosines.max(dim=1) if cosines.numel() else None
    if best is None:
        return list(values), weights
    matched, which = best.values.tolist(), best.indices.tolist()
    previous, counts = memory.values.tolist(), memory.weights.tolist()
    out = list(values)
    for j, (value, ok) in enumerate(zip(values, valid, strict=True)):
        if not ok or j >= len(matched) or matched[j] < MATCH:
            continue
        weight = rho * counts[which[j]]
        out[j] = (value + weight * previous[which[j]]) / (1.0 + weight)
        weights[j] = 1.0 + weight
    return out, weights
