r"""The diagonal metric of ``metric="rms"``: the optimizer works in RMSprop's coordinates.

With the identity metric (the default) the step size is estimated along the gradients and the update is
:math:`\Delta = \eta\, G`. The ``"rms"`` metric changes coordinates, :math:`\theta = D^{1/2} \varphi`, with the
diagonal scale of RMSprop and Adam,

.. math::

    D = \operatorname{diag}\Bigl(\frac{1}{r + \epsilon\, \bar r}\Bigr), \qquad
    r = \sqrt{\hat v}, \qquad \hat v_t = \frac{v_t}{1 - \beta_2^t}, \qquad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\, g_t^2 ,

per parameter tensor, with :math:`\bar r` the mean of :math:`r` over the tensor (:func:`rms_scale`). In
:math:`\varphi` the gradient is :math:`D^{1/2} g` and the Hessian :math:`D^{1/2} B D^{1/2}`, and everything the
optimizer does with the identity metric is done there: the prior's probes are :math:`u = D^{1/2} g`, its
Hessian-vector products :math:`D^{1/2} B (D^{1/2} u)`, so that the estimated step size is the minimal-residual
step along RMSprop's direction (:mod:`probprec.prior`),

.. math::

    \alpha = \frac{\sum_t (D g_t)^\top B\, (D g_t)}{\sum_t (B D g_t)^\top D\, (B D g_t)},

and the update, SGD in :math:`\varphi`, is :math:`\Delta\theta = \eta\, D G`: RMSprop's step without momentum. With
``metric="adam"`` the update follows Adam's bias-corrected average of the gradients instead,
:math:`\Delta\theta = \eta\, D \hat m`, :math:`m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t`. The checks and the
relative limits of the safeguard measure the update as it is.

The floor :math:`\epsilon\, \bar r` (:data:`RELATIVE_EPS` of the tensor's mean) replaces Adam's absolute
:math:`10^{-8}`: with it, a coordinate whose gradients were (nearly) zero would weigh :math:`10^8` times more
than the others in :math:`D^{1/2} B D^{1/2}`, and the minimal-residual step, which the largest curvatures decide,
came out 16-100 times smaller than a useful one (measured on the contest's CNNs).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["BETA1", "BETA2", "METRIC_STATE", "MOMENTUM_STATE", "RELATIVE_EPS", "RMSMetric", "rms_scale"]

BETA2 = 0.999
r""":math:`\beta_2`, the decay of the squared gradients' average (Adam's default)."""
RELATIVE_EPS = 0.1
r""":math:`\epsilon`: the floor of :math:`r` relative to its mean over the tensor."""
METRIC_STATE = "metric_sq"
"""The key of the per-parameter state that holds :math:`v`, the average of the squared gradients."""
MOMENTUM_STATE = "metric_avg"
"""The key of the per-parameter state that holds :math:`m`, the average of the gradients (``metric="adam"``)."""
BETA1 = 0.9
r""":math:`\beta_1`, the decay of the gradients' average with ``metric="adam"`` (Adam's default)."""


def rms_scale(second_moment: Tensor, steps: int, beta2: float = BETA2, relative_eps: float = RELATIVE_EPS) -> Tensor:
    r""":math:`D` of one tensor from :math:`v` after ``steps`` averaged gradients (the module's equation).

    A tensor whose gradients were all zero has :math:`D` large but finite, so that :math:`D g = 0`.

    Example:
        >>> rms_scale(torch.tensor([4.0, 0.0]), steps=1, beta2=0.0, relative_eps=1.0)
        tensor([0.3333, 1.0000])
    """
    r = second_moment.div(1.0 - beta2**steps).sqrt_()  # one new tensor, the rest in place
    floor = relative_eps * r.mean()
    return r.add_(floor).clamp_min_(torch.finfo(r.dtype).tiny).reciprocal_()


class RMSMetric:
    """The squared gradients' average per tensor (in the optimizer's state) and the scale :math:`D` it gives."""

    def __init__(self, beta1: float = 0.0) -> None:
        self.beta1 = beta1
        """The decay of the gradients' average that the update follows (0: the gradient itself)."""
        self.steps = 0
        """How many gradients the averages hold (Adam's :math:`t`)."""

    def observe(self, state: MutableMapping[Tensor, dict[str, Any]], params: Iterable[Tensor]) -> list[Any]:
        """Average in this step's gradients; return what :meth:`undo` needs to take them out again.

        New tensors replace the averages (no update in place), so that undoing is putting the old ones back.
        """
        undo: list[Any] = [self.steps]
        for p in params:
            if p.grad is None:
                continue
            g = p.grad.detach()
            entry = state[p]
            old = entry.get(METRIC_STATE)
            undo.append((p, METRIC_STATE, old))
            new = torch.zeros_like(p, memory_format=torch.preserve_format) if old is None else old * BETA2
            entry[METRIC_STATE] = new.addcmul_(g, g, value=1.0 - BETA2)
            if self.beta1:
                old = entry.get(MOMENTUM_STATE)
                undo.append((p, MOMENTUM_STATE, old))
                new = torch.zeros_like(p, memory_format=torch.preserve_format) if old is None else old * self.beta1
                entry[MOMENTUM_STATE] = new.add_(g, alpha=1.0 - self.beta1)
        self.steps += 1
        return undo

    def undo(self, state: MutableMapping[Tensor, dict[str, Any]], undo: list[Any]) -> None:
        """Put back the averages :meth:`observe` replaced."""
        self.steps = undo[0]
        for p, key, old in undo[1:]:
            if old is None:
                state[p].pop(key, None)
            else:
                state[p][key] = old

    def scale(self, state: MutableMapping[Tensor, dict[str, Any]], p: Tensor) -> Tensor | None:
        """:math:`D` of ``p`` (None before its first gradient)."""
        v = state.get(p, {}).get(METRIC_STATE)
        return None if v is None or self.steps == 0 else rms_scale(v, self.steps)

    def direction(self, state: MutableMapping[Tensor, dict[str, Any]], p: Tensor) -> Tensor | None:
        """What the update scales by D: the gradients' bias-corrected average, or None for the gradient itself."""
        m = state.get(p, {}).get(MOMENTUM_STATE) if self.beta1 else None
        return None if m is None else m / (1.0 - self.beta1**self.steps)

    def to_phi(self, state: MutableMapping[Tensor, dict[str, Any]], params: Sequence[Tensor],
               graphs: dict[Tensor, Tensor]) -> tuple[dict[Tensor, Tensor], list[tuple[Tensor, Tensor]]]:
        r""":math:`D^{1/2} g` into each ``p.grad``; return :math:`D^{1/2}` per tensor and the true gradients.

        Each ``p.grad`` becomes its gradient in :math:`\varphi`. The true gradient keeps its graph in ``graphs``
        (unless one is there already), for the products.
        """
        halves: dict[Tensor, Tensor] = {}
        swapped: list[tuple[Tensor, Tensor]] = []
        for p in params:
            g = p.grad
            scale = None if g is None else self.scale(state, p)
            if g is not None and scale is not None:
                half = halves[p] = scale.sqrt()
                graphs.setdefault(p, g)
                swapped.append((p, g))
                p.grad = g.detach() * half
        return halves, swapped

    def rescale(self, state: MutableMapping[Tensor, dict[str, Any]], params: Sequence[Tensor],
                swapped: list[tuple[Tensor, Tensor | None]]) -> None:
        r"""Make each ``p.grad`` the update's step, :math:`D g` (or :math:`D \hat m`).

        The true gradient joins ``swapped`` where it is not there yet.
        """
        replaced = {p for p, _ in swapped}
        for p in params:
            g = p.grad
            scale = None if g is None else self.scale(state, p)
            if g is None or scale is None:
                continue
            if p not in replaced:
                swapped.append((p, g))
            m = self.direction(state, p)
            p.grad = (g if m is None else m) * scale
