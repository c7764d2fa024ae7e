r"""The measurements of the safeguard: of a check step, of the update after it, and of every update's size.

At a check step (:mod:`probprec.safeguard` says when) the optimizer measures, before it updates, with one
Hessian-vector product each on the update's own minibatch,

* the *step ratio* of the update :math:`\Delta = \eta\,P G` (:func:`step_ratio`),

  .. math::

      r = \frac{\Delta^\top (B + \text{wd}\, I)\, \Delta}{G^\top \Delta},
      \qquad G = g + \text{wd}\,\theta ,

  which the safeguard compares with its limit; at the update after it, the same ratio measured by the
  gradient where that step ended (:func:`secant_ratio`, no product); and, with adaptive restarts,
* the minibatch curvature :math:`u^\top (\tilde B + \text{wd}\, I)\, u` along the *tracked direction*
  :math:`u` (:func:`tracked_curvature`), the estimated top direction of the tensor that
  :func:`tracked_choice` picks, which :func:`probprec.schedule.is_stale` compares with its first measurement.

Each product takes the gradients that carry the autograd graph (``loss.backward(create_graph=True)``) and the
factor by which that graph's loss was scaled; each function returns ``None`` when it measured nothing. At every
update the relative limits measure the update's size against the parameters' (:func:`relative_update`, no
product). :mod:`probprec.step_control` applies all of them to the update in progress.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._precision import dot
from .cycle_state import PriorScalars
from .estimator import Estimate
from .hvp import has_graph, hessian_vector_product

__all__ = ["SECANT_STATE", "RelativeUpdate", "StepCheck", "Tracked", "relative_update", "secant_ratio", "step_ratio",
           "tracked_choice", "tracked_curvature"]


def _alone(value: Tensor) -> Tensor:
    """A single process's mean over the ranks: the value itself."""
    return value


SECANT_STATE = "secant"
"""The key of the per-parameter state that holds the last check's step until the update after it."""

Tracked = tuple[int, float | None, float]
"""The tracked direction: parameter index, reference curvature (None until the first check), prior noise."""


class StepCheck(NamedTuple):
    r"""What a check step measured of its update :math:`\Delta`: the step ratio, the slope and the step itself."""

    ratio: float
    """:math:`r`, the step ratio."""
    slope: float
    r""":math:`G^\top \Delta`."""
    steps: list[tuple[Tensor, Tensor]]
    r"""``(p, Δ_p)`` for every tensor measured, :math:`\Delta_p` flat: kept for :func:`secant_ratio`."""

    def taken(self, factor: float) -> StepCheck:
        """The same measurement of the step that was taken: the step sizes were multiplied by ``factor``."""
        if factor == 1.0:
            return self
        return StepCheck(self.ratio * factor, self.slope * factor, [(p, s.mul_(factor)) for p, s in self.steps])


def step_ratio(groups: Sequence[dict[str, Any]], lrs: Sequence[float | None], originals: dict[Tensor, Tensor | None],
               graphs: Mapping[Tensor, Tensor], graph_scale: float, retain_graph: bool,
               mean: Callable[[Tensor], Tensor] = _alone) -> StepCheck | None:
    r"""The step ratio :math:`r` of the update whose rate is ``lrs[i]`` per group and whose step ``p.grad`` holds.

    ``p.grad`` holds the preconditioned gradient :math:`P G` (the step before its rate), ``originals`` the
    gradient :math:`g` for every tensor whose ``p.grad`` was replaced. The graph of :math:`g` is the gradient
    itself, or, in a data-parallel step (:mod:`probprec.distributed`), where :math:`g` is the mean over the
    ranks, this rank's own gradient in ``graphs``; ``mean`` then averages the curvature
    :math:`\Delta^\top B \Delta` over the ranks (a scalar). Groups with a fixed rate or none are left out.
    """
    params, grads, steps, slopes, decay = [], [], [], [], []
    for group, lr in zip(groups, lrs, strict=True):
        if lr is None or not group["adaptive_lr"]:
            continue
        for p in group["params"]:
            gradient = originals.get(p, p.grad)
            graph = graphs.get(p, gradient)
            if p.grad is None or gradient is None or graph is None or not has_graph(graph):
                continue
            step = p.grad.detach().reshape(-1) * lr
            params.append(p)
            grads.append(graph)
            steps.append(step)
            slopes.append((_objective_gradient(p, gradient, group["weight_decay"]), step))
            decay.append(group["weight_decay"])
    if not params:
        return None
    vectors = [s.view_as(p) for s, p in zip(steps, params, strict=True)]
    products = hessian_vector_product(params, grads, vectors, retain_graph=retain_graph)
    sums = [[(s, h.reshape(-1)) for s, h in zip(steps, products, strict=True)],
            [(s * wd, s) for s, wd in zip(steps, decay, strict=True) if wd], slopes]
    for wide in (False, True):  # one host synchronisation; again in float64 where float32 overflowed
        values = [mean(_sum_of_dots(sums[0], wide)) / graph_scale, _sum_of_dots(sums[1], wide),
                  _sum_of_dots(sums[2], wide)]
        curvature, decayed, slope = torch.stack([v.to(values[0].device) for v in values]).tolist()
        if all(map(math.isfinite, (curvature, decayed, slope))):
            break
    ratio = (curvature + decayed) / slope if slope else math.nan  # no slope: nothing to compare with
    return StepCheck(ratio, slope, list(zip(params, steps, strict=True)))


def secant_ratio(steps: Sequence[tuple[Tensor, Tensor, float]], slope: float,
                 originals: Mapping[Tensor, Tensor | None]) -> float | None:
    r"""The step ratio of the last check's update :math:`\Delta`, measured by the gradient where it ended.

    With :math:`G_0^\top \Delta` the slope the check measured (``slope``) and :math:`G_1` the gradient of the
    objective at the end of the step (on the next minibatch),

    .. math::

        r_\text{sec} = \frac{(G_0 - G_1)^\top \Delta}{G_0^\top \Delta}
                     = \frac{\int_0^1 \Delta^\top B(\theta - t\Delta)\, \Delta \,\mathrm{d}t}{G_0^\top \Delta},

    the curvature averaged over the step instead of taken at its start: on a quadratic the two agree; where the
    curvature grows along the step (a wall beyond a valley, a function flat far from its minimum) the step ratio
    :math:`r` of :func:`step_ratio` misses the overshoot and this one sees it. ``steps`` holds ``(p, Δ_p, wd)`` for
    each tensor the check measured; ``originals`` the true gradient where ``p.grad`` holds another. None when
    nothing can be compared (no gradient, a slope that is not positive).
    """
    pairs = []
    for p, step, weight_decay in steps:
        gradient = originals.get(p, p.grad)
        if gradient is None:
            return None
        pairs.append((_objective_gradient(p, gradient, weight_decay), step))
    if not pairs or not slope > 0:
        return None
    along = float(_sum_of_dots(pairs))
    return 1.0 - (along if math.isfinite(along) else float(_sum_of_dots(pairs, wide=True))) / slope


def _objective_gradient(p: Tensor, gradient: Tensor, weight_decay: float) -> Tensor:
    r""":math:`G = g + \text{wd}\,\theta`, flat and detached."""
    flat = gradient.detach().reshape(-1)
    return flat.add(p.detach().reshape(-1), alpha=weight_decay) if weight_decay else flat


def _sum_of_dots(pairs: Sequence[tuple[Tensor, Tensor]], wide: bool = False) -> Tensor:
    r""":math:`\sum_i a_i^\top b_i`, a 0-dim float64 tensor (0 for no pairs); no host synchronisation.

    Each product is formed in the operands' precision (at least float32), or with ``wide`` in the accumulation
    dtype (:func:`probprec._precision.dot`): a check compares a ratio of such sums with a threshold, where a
    relative error of 1e-6 does not matter, and widening every operand to float64 cost more than the
    Hessian-vector product. The caller forms them again with ``wide`` where they overflowed.
    """
    if not pairs:
        return torch.zeros((), dtype=torch.float64)
    if wide:
        return torch.stack([dot(a, b).double() for a, b in pairs]).sum()
    return torch.stack([torch.dot(_at_least_float(a), _at_least_float(b)).double() for a, b in pairs]).sum()


def _at_least_float(x: Tensor) -> Tensor:
    return x.float() if x.element_size() < 4 else x


class RelativeUpdate(NamedTuple):
    r"""The size of a group's nominal update :math:`\Delta = \eta\,P G` relative to its parameters.

    ``group`` is :math:`\lVert \Delta \rVert / \lVert \theta \rVert` over the whole group; ``tensor`` the largest
    over its tensors :math:`t` of

    .. math::

        \frac{\lVert \Delta_t \rVert}{\max\bigl(\lVert \theta_t \rVert,\ \lVert \theta \rVert \sqrt{n_t / n}\bigr)},

    with :math:`n_t` the tensor's and :math:`n` the group's number of entries: a tensor is compared with its own
    norm, or with its share of the group's norm where that is larger (a bias initialised at zero).
    """

    group: float
    tensor: float


def relative_update(params: Sequence[Tensor], lr: float) -> RelativeUpdate:
    r"""The nominal update's size relative to the parameters, over the group and per tensor (:class:`RelativeUpdate`).

    ``p.grad`` holds :math:`P G` for each of ``params`` (a group), the update is ``lr`` times it. Parameters
    that are all zero (a model initialised at zero) give no scale to compare with: 0.0, no limit. The norms
    are taken per tensor in its own precision (at least float32) and combined in float64: the result is
    compared with a threshold, a relative error of 1e-7 does not matter, and this runs at every update (one
    host synchronisation; again in float64 where float32's squares underflow or overflow).
    """
    params = list(params)
    steps = [p.grad for p in params if p.grad is not None]
    if not steps:
        return RelativeUpdate(0.0, 0.0)
    counts = [p.numel() for p in params if p.grad is not None]
    values = [p for p in params if p.grad is not None] + [p for p in params if p.grad is None]
    for wide in (False, True):
        norms = _tensor_norms([*steps, *values], wide).tolist()  # the one host synchronisation
        update, size = norms[: len(steps)], norms[len(steps):]
        update_total, size_total = math.hypot(*update), math.hypot(*size)
        if 0.0 < update_total < math.inf and 0.0 < size_total < math.inf:
            break
    if not 0.0 < size_total < math.inf:
        return RelativeUpdate(0.0, 0.0)
    scale = size_total / math.sqrt(sum(p.numel() for p in params))  # per entry
    tensor = max(u / max(t, scale * math.sqrt(n)) for u, t, n in zip(update, size, counts, strict=False))
    return RelativeUpdate(lr * update_total / size_total, lr * tensor)


def _tensor_norms(tensors: Sequence[Tensor], wide: bool) -> Tensor:
    """The Euclidean norm of each tensor (computed in float64 if ``wide``, else in at least float32).

    One ``_foreach_norm`` per dtype, so a mixed-precision model costs a call per dtype, not per tensor.
    """
    if wide:
        return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float64))
    by_dtype: dict[torch.dtype, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_dtype.setdefault(tensor.dtype, []).append(index)
    if len(by_dtype) == 1 and tensors[0].element_size() >= 4:  # the common case: one call, one stack
        return torch.stack(torch._foreach_norm(list(tensors), 2))
    norms: list[Tensor] = [torch.empty(0)] * len(tensors)
    for dtype, indices in by_dtype.items():
        low = torch.finfo(dtype).bits < 32
        values = torch._foreach_norm([tensors[i] for i in indices], 2, dtype=torch.float32 if low else None)
        for index, value in zip(indices, values, strict=True):
            norms[index] = value.double()
    return torch.stack(norms)


def tracked_curvature(p: Tensor, graph: Tensor | None, U: Tensor | None, weight_decay: float,
                      graph_scale: float, mean: Callable[[Tensor], Tensor] = _alone) -> float | None:
    r"""The minibatch curvature :math:`u^\top \tilde B u + \text{wd}` along ``u = U[0]``, the top direction of ``p``.

    ``mean`` averages :math:`u^\top \tilde B u` over the ranks of a data-parallel step.
    """
    if graph is None or not has_graph(graph) or U is None:
        return None
    u = U[0]
    (product,) = hessian_vector_product([p], [graph], [u.view_as(p)])
    return float(mean(dot(u, product.reshape(-1))) / graph_scale) + weight_decay


def tracked_choice(estimate: Estimate, priors: Sequence[PriorScalars | None],
                   group_of: Sequence[int]) -> Tracked | None:
    r"""The direction to track: the top direction of the tensor most curved relative to its prior.

    The tensor's score is :math:`\lambda_1 / \mu_0`, its top estimated curvature over its group's prior
    mean (``group_of[i]`` is tensor ``i``'s group); None if no tensor has an estimate.
    """
    best: tuple[float, int, float] | None = None
    for index, tensor in estimate.tensors.items():
        prior = priors[group_of[index]]
        if tensor.eigvecs is None or not tensor.eigenvalues or prior is None:
            continue
        score = tensor.eigenvalues[0] / prior.mean
        if best is None or score > best[0]:
            best = (score, index, prior.noise)
    return None if best is None else (best[1], None, best[2])
