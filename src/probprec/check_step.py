r"""The measurements of a check step, each one Hessian-vector product on the update's own minibatch.

At a check step (:mod:`probprec.safeguard` says when) the optimizer measures, before it updates,

* the *step ratio* of the update :math:`\Delta = \eta\,P G` (:func:`step_ratio`),

  .. math::

      r = \frac{\Delta^\top (B + \text{wd}\, I)\, \Delta}{G^\top \Delta},
      \qquad G = g + \text{wd}\,\theta ,

  which the safeguard compares with its limit, and, with adaptive restarts,
* the minibatch curvature :math:`u^\top (\tilde B + \text{wd}\, I)\, u` along the *tracked direction*
  :math:`u` (:func:`tracked_curvature`), the estimated top direction of the tensor that
  :func:`tracked_choice` picks, which :func:`probprec.schedule.is_stale` compares with its first measurement.

Each takes the gradients that carry the autograd graph (``loss.backward(create_graph=True)``) and the factor
by which that graph's loss was scaled, and returns ``None`` when it computed no product.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from ._precision import dot
from .cycle_state import PriorScalars
from .estimator import Estimate
from .hvp import has_graph, hessian_vector_product

__all__ = ["Tracked", "relative_update", "step_ratio", "tracked_choice", "tracked_curvature"]


def _alone(value: Tensor) -> Tensor:
    """A single process's mean over the ranks: the value itself."""
    return value


Tracked = tuple[int, float | None, float]
"""The tracked direction: parameter index, reference curvature (None until the first check), prior noise."""


def step_ratio(groups: Sequence[dict[str, Any]], lrs: Sequence[float | None], originals: dict[Tensor, Tensor | None],
               graphs: Mapping[Tensor, Tensor], graph_scale: float, retain_graph: bool,
               mean: Callable[[Tensor], Tensor] = _alone) -> float | None:
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
            step = p.grad.reshape(-1) * lr
            objective = gradient.detach().reshape(-1) + group["weight_decay"] * p.detach().reshape(-1)
            params.append(p)
            grads.append(graph)
            steps.append(step)
            slopes.append(dot(objective, step))
            decay.append(group["weight_decay"] * dot(step, step))
    if not params:
        return None
    vectors = [s.view_as(p) for s, p in zip(steps, params, strict=True)]
    products = hessian_vector_product(params, grads, vectors, retain_graph=retain_graph)
    local = cast(Tensor, sum(dot(s, h.reshape(-1)) for s, h in zip(steps, products, strict=True)))
    curvature = mean(local) / graph_scale
    return float((curvature + sum(decay)) / sum(slopes))


def relative_update(params: Sequence[Tensor], lr: float) -> float:
    r"""The nominal update's size relative to the parameters, :math:`\eta \lVert P G \rVert / \lVert\theta\rVert`.

    ``p.grad`` holds :math:`P G` for each of ``params`` (a group). Parameters that are all zero (a model
    initialised at zero) give no scale to compare with: 0.0, no limit. The norms are taken per tensor in its
    own precision (at least float32) and combined in float64: the result is compared with a threshold, a
    relative error of 1e-7 does not matter, and this runs at every update (both norms with one host
    synchronisation).
    """
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    step, size = _norms_of([grads, [p.detach() for p in params]])
    return lr * step / size if size > 0.0 else 0.0


def _norms_of(groups: Sequence[Sequence[Tensor]]) -> list[float]:
    """The Euclidean norm of the concatenation of each group of tensors (one host synchronisation).

    Per tensor in its own precision (at least float32), combined in float64; where that underflows to zero or
    overflows (values beyond float32's range of squares, about 1e-19 to 1e19), again in float64.
    """
    totals = torch.stack([_combined(tensors, wide=False) for tensors in groups]).tolist()
    if all(0.0 < total < math.inf for total in totals):
        return totals
    return torch.stack([_combined(tensors, wide=True) for tensors in groups]).tolist()


def _combined(tensors: Sequence[Tensor], wide: bool) -> Tensor:
    """The norm of the concatenation, float64, from per-tensor norms (in float64 if ``wide``)."""
    if wide:
        norms = list(torch._foreach_norm(list(tensors), 2, dtype=torch.float64))
    else:
        narrow = [t for t in tensors if t.element_size() < 4]
        rest = [t for t in tensors if t.element_size() >= 4]
        norms = [*(torch._foreach_norm(narrow, 2, dtype=torch.float32) if narrow else ()),
                 *(torch._foreach_norm(rest, 2) if rest else ())]
    return torch.stack([n.double() for n in norms]).square().sum().sqrt()


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
