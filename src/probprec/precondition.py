r"""The preconditioner built from a low-rank curvature estimate, and how it is applied.

Given orthonormal directions :math:`u_1..u_k` (rows of :math:`U`) with estimated
curvatures :math:`\sigma_j`, every rule here is of the form

.. math::

    P g = g + U^\top \operatorname{diag}(f)\, U g, \qquad f_j = c_j - 1,

so :math:`P` scales the component of :math:`g` along :math:`u_j` by :math:`c_j` and leaves
the orthogonal complement alone. Applying it costs two passes over :math:`U` per
tensor and no host synchronisation.

**Default rule** (paper eq. 17, in consistent units). The
optimizer steps with the prior step :math:`\alpha = 1/b_0`; along :math:`u_j` the step
becomes the Newton step :math:`1/\sigma_j` wherever that is shorter:

.. math::

    c_j = \begin{cases} b_0 / \sigma_j & \sigma_j > b_0 \\ 1 & \text{otherwise,} \end{cases}

so :math:`0 < c_j \le 1`: the preconditioner never lengthens a step along any
direction, and directions with curvature below the prior level or negative are
left alone.

**Paper rule** (paper §2.3.2, for low-dimensional problems). With a user step size
:math:`\eta`, :math:`w \leftarrow w - \eta\, a^2 P_1^2 \nabla L` where
:math:`P_1 = I + U^\top(\beta \Sigma^{-1/2} - I)U`, hence :math:`c_j = \beta^2/\sigma_j`,
and :math:`a^2 = \sigma_1/\sigma_k` is the estimated improvement of the condition
number (:func:`condition_gain`). Directions with non-positive curvature are left alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["condition_gain", "newton_factors", "paper_factors", "precondition"]


def newton_factors(eigvals: Tensor, valid: Tensor, mean: Tensor) -> Tensor:
    r"""Return :math:`f_j = c_j - 1` of the default rule, :math:`c_j = b_0/\sigma_j` if :math:`\sigma_j > b_0` else 1.

    Example:
        >>> newton_factors(torch.tensor([4.0, 0.5]), torch.tensor([True, True]), torch.tensor(2.0))
        tensor([-0.5000,  0.0000])
    """
    active = valid & (eigvals > mean)
    safe = torch.where(active, eigvals, torch.ones_like(eigvals))
    return torch.where(active, mean / safe - 1.0, torch.zeros_like(eigvals))


def paper_factors(eigvals: Tensor, valid: Tensor, beta: float = 1.0) -> Tensor:
    r"""Return :math:`f_j = \beta^2/\sigma_j - 1` of the paper rule (zero where :math:`\sigma_j \le 0`)."""
    active = valid & (eigvals > 0)
    safe = torch.where(active, eigvals, torch.ones_like(eigvals))
    return torch.where(active, beta**2 / safe - 1.0, torch.zeros_like(eigvals))


def condition_gain(eigvals: Tensor, valid: Tensor) -> Tensor:
    r"""Return :math:`a^2 = \sigma_1/\sigma_k` over the valid positive estimates (1 if fewer than two)."""
    active = valid & (eigvals > 0)
    if int(active.sum()) < 2:
        return torch.ones((), dtype=eigvals.dtype, device=eigvals.device)
    values = eigvals[active]
    return values.max() / values.min()


def precondition(grad: Tensor, eigvecs: Tensor, factors: Tensor) -> Tensor:
    r"""Return :math:`g + U^\top(f \odot U g)` for a flat gradient ``grad`` (a new tensor).

    Args:
        grad: flat gradient, ``n`` elements.
        eigvecs: :math:`U`, shape ``(k, n)``, same dtype and device as ``grad``.
        factors: :math:`f`, shape ``(k,)``, same dtype as ``grad``.

    Example:
        >>> U = torch.tensor([[1.0, 0.0, 0.0]])
        >>> precondition(torch.tensor([2.0, 2.0, 2.0]), U, torch.tensor([-0.75]))
        tensor([0.5000, 2.0000, 2.0000])
    """
    return torch.addmv(grad, eigvecs.mT, torch.mv(eigvecs, grad) * factors)
