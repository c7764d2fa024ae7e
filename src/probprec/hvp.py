r"""Hessian-vector products from the training loop's own autograd graph.

The training loop computes the minibatch gradient with
``loss.backward(create_graph=True)``; each ``p.grad`` then carries the graph of
:math:`g(\theta) = \nabla_\theta L_B(\theta)`. One more reverse pass through that
graph gives the product of the batch Hessian with any vector :math:`v`
(Pearlmutter 1994; de Roos & Hennig 2019, §2.4):

.. math::

    H_B v = \nabla_\theta \langle g(\theta), v \rangle .

Reusing the loop's graph costs no extra forward pass, so BatchNorm running
statistics and dropout masks are exactly those of the training step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["has_graph", "hessian_vector_product"]


def has_graph(grad: Tensor | None) -> bool:
    """Whether ``grad`` carries an autograd graph that can be differentiated again."""
    return grad is not None and grad.requires_grad


def hessian_vector_product(
    params: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    vectors: Sequence[Tensor],
    retain_graph: bool = False,
) -> list[Tensor]:
    """Return :math:`H v` for the Hessian of the loss whose gradient graph is ``grads``.

    Args:
        params: leaf tensors with respect to which the gradients were taken.
        grads: ``p.grad`` of each parameter, produced with ``create_graph=True``.
            Entries without a graph (``None`` or constant gradients) contribute no
            curvature: their Hessian rows are zero.
        vectors: one vector per parameter, same shapes; the full vector
            :math:`v` is their concatenation.
        retain_graph: keep the graph for another product (default: release it).

    Returns:
        One tensor per parameter: the corresponding block of :math:`H v`
        (which includes the cross-terms :math:`H_{pq} v_q` of other tensors).
        The graph is released unless ``retain_graph``.

    Raises:
        RuntimeError: if no gradient carries a graph.

    Example:
        >>> theta = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> loss = 1.5 * theta[0] ** 2 + theta[0] * theta[1] + theta[1] ** 2
        >>> loss.backward(create_graph=True)
        >>> hessian_vector_product([theta], [theta.grad], [torch.tensor([1.0, 0.0])])
        [tensor([3., 1.])]
    """
    outputs = [g for g in grads if g is not None and has_graph(g)]
    if not outputs:
        raise RuntimeError(
            "a Hessian-vector product needs gradients that carry their autograd graph; "
            "call loss.backward(create_graph=optimizer.create_graph) (or create_graph=True) "
            "before optimizer.step()"
        )
    grad_outputs = [v for g, v in zip(grads, vectors, strict=True) if has_graph(g)]
    products = torch.autograd.grad(
        outputs, list(params), grad_outputs=grad_outputs, allow_unused=True, retain_graph=retain_graph
    )
    return [
        torch.zeros_like(p) if hv is None else hv.detach()
        for p, hv in zip(params, products, strict=True)
    ]
