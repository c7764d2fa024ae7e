r"""Loss scaling for mixed precision (``torch.amp.GradScaler``): what the gradients and their graph hold.

With a loss scaler the loop differentiates :math:`sL` instead of :math:`L`. The gradient *values* are
unscaled at some point (by the scaler, or by the optimizer), but the autograd *graph* that the
Hessian-vector products differentiate stays the graph of :math:`sL`: a product taken from it is
:math:`s\,Hv`, and an estimate built on it would be :math:`s` times too large (the step size
:math:`s` times too small). The optimizer therefore needs the scale of the graph.

The Preconditioner declares ``_step_supports_amp_scaling``, so ``scaler.step(optimizer)`` does not unscale
the gradients itself: it hands the optimizer ``grad_scale`` (the factor on the gradient values) and
``found_inf`` (whether any gradient is infinite or NaN) as attributes, and the optimizer unscales, divides
the Hessian-vector products by the same factor, and skips the step when ``found_inf`` is set. If the loop
unscales first (``scaler.unscale_(optimizer)``, e.g. to clip gradients), the values arrive unscaled and
the scaler passes no scale: the loop must then pass it, ``scaler.step(optimizer,
loss_scale=scaler.get_scale())``. A loop that scales its loss by hand passes ``loss_scale`` likewise
(with ``p.grad`` holding the unscaled gradient).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["LossScale", "resolve", "unscale_"]


class LossScale(NamedTuple):
    """How the gradients of one step are scaled."""

    values: float | None
    """Factor on the values of ``p.grad`` still to be divided out (None: they are unscaled)."""
    graph: float | None
    """Factor of the loss whose graph ``p.grad`` carries (None: unknown, the gradients were unscaled
    by the scaler but no ``loss_scale`` was passed)."""
    skip: bool
    """The scaler found infinite or NaN gradients: the step must change nothing."""


def resolve(optimizer: Any, loss_scale: float | None) -> LossScale:
    """Read the attributes that ``GradScaler.step`` sets on the optimizer (one host sync when present).

    Args:
        optimizer: the optimizer being stepped.
        loss_scale: the ``loss_scale`` argument of ``step()`` (validated), or None.
    """
    found_inf = getattr(optimizer, "found_inf", None)
    grad_scale = getattr(optimizer, "grad_scale", None)
    if found_inf is None and grad_scale is None:  # no scaler at this step
        return LossScale(None, 1.0 if loss_scale is None else loss_scale, False)
    skip = bool(found_inf is not None and float(found_inf) > 0)
    if grad_scale is None:  # scaler.unscale_() ran before step(): values unscaled, graph scaled
        return LossScale(None, loss_scale, skip)
    scale = float(grad_scale)
    return LossScale(scale, scale, skip)


def unscale_(grads: Iterable[Tensor | None], scale: float) -> None:
    """Divide the gradient values by ``scale`` in place (their graph, if any, is left as it is)."""
    with torch.no_grad():
        for g in grads:
            if g is not None:
                g.div_(scale)
