r"""The posterior mean of the Hessian given noisy Hessian-vector products, and its inverse.

de Roos & Hennig (2019), §2.1-2.2, eqs. (8)-(14) and (16), specialised to the
scalar prior and noise of :mod:`probprec.prior`: prior mean :math:`B_0 = b_0 I`,
prior covariance :math:`W \otimes W` with :math:`W = w_0 I`, noise
:math:`\Lambda = \lambda_0 I`. For one parameter tensor with :math:`n` elements, the
optimizer has observed :math:`m` directions and noisy products

.. math::

    S = [s_1, \dots, s_m]^\top \in \mathbb R^{m \times n}, \qquad
    Y = [y_1, \dots, y_m]^\top, \quad y_i = \tilde B_{t_i} s_i,

stored as rows, raw (unnormalised) throughout. The Gram matrix of eq. (9) plus
the noise term of eq. (11), :math:`G + R`, reduces to the :math:`m \times m` matrix

.. math::

    M = w_0^2\, S S^\top + \lambda_0^2 \operatorname{diag}(S S^\top),

and the posterior mean (eq. 8) is

.. math::

    \hat B = b_0 I + w_0^2 X^\top S, \qquad X = M^{-1} (Y - b_0 S).

It is never formed: every product costs :math:`O(nm)` and the :math:`m \times m`
systems are solved in float64. The exact matrix-inversion lemma gives, with
:math:`D = Y - b_0 S`,

.. math::

    \hat B^{-1} g = \frac{1}{b_0}\bigl(g - D^\top z\bigr), \qquad
    z = \Bigl(\frac{b_0}{w_0^2} M + S D^\top\Bigr)^{-1} S g ,

(the 2019 reference transposed the capacitance matrix here). The active policy
(eq. 16) chooses the next direction :math:`s = -\hat B^{-1} g` for a fresh
minibatch gradient :math:`g`; :func:`orthogonalize` then keeps only its part that is
new with respect to the directions already observed, as a Lanczos step would,
which keeps :math:`S` well conditioned under noise (spec/algorithm.md §2c).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._precision import accumulation_dtype

__all__ = [
    "PosteriorSystem",
    "active_direction",
    "apply_inverse",
    "orthogonalize",
    "posterior_factors",
    "posterior_matvec",
    "posterior_system",
]


class PosteriorSystem(NamedTuple):
    """The small matrices of one tensor's posterior (float64, :math:`m \\times m`)."""

    SS: Tensor
    """:math:`S S^\\top`."""
    SY: Tensor
    """:math:`S Y^\\top`, entries :math:`s_i^\\top y_j`."""
    M: Tensor
    """:math:`w_0^2 S S^\\top + \\lambda_0^2 \\operatorname{diag}(S S^\\top)`, regularised for zero rows."""
    mean: Tensor
    """:math:`b_0`."""
    width: Tensor
    """:math:`w_0`."""


def posterior_system(
    S: Tensor, Y: Tensor, mean: Tensor, width: Tensor, noise: Tensor
) -> PosteriorSystem:
    """Form the :math:`m \\times m` matrices of the posterior of eqs. (9), (11), (12).

    Args:
        S: directions, shape ``(m, n)``.
        Y: observations :math:`y_i = \\tilde B s_i`, shape ``(m, n)``.
        mean: :math:`b_0`; width: :math:`w_0`; noise: :math:`\\lambda_0` (0-dim tensors).

    A zero direction (a tensor whose gradient vanished) gets a unit diagonal in
    :math:`M`, so that it contributes nothing instead of making :math:`M` singular.
    """
    dtype = accumulation_dtype(S.device)
    SS = (S @ S.T).to(dtype)
    SY = (S @ Y.T).to(dtype)
    diag = SS.diagonal()
    noise_diag = torch.where(diag > 0, noise.to(dtype) ** 2 * diag, torch.ones_like(diag))
    M = width.to(dtype) ** 2 * SS + torch.diag_embed(noise_diag)
    return PosteriorSystem(SS, SY, M, mean.to(dtype), width.to(dtype))


def posterior_factors(S: Tensor, Y: Tensor, system: PosteriorSystem) -> Tensor:
    """Return the rows of :math:`X = M^{-1}(Y - b_0 S)`, shape ``(m, n)``, in ``S``'s dtype."""
    D = Y - system.mean.to(S.dtype) * S
    return torch.linalg.solve(system.M, D.to(system.M.dtype)).to(S.dtype)


def posterior_matvec(x: Tensor, S: Tensor, Y: Tensor, system: PosteriorSystem) -> Tensor:
    """Return :math:`\\hat B x = b_0 x + w_0^2 (Y - b_0 S)^\\top M^{-1} S x` for a flat ``x``."""
    b0 = system.mean
    coef = torch.linalg.solve(system.M, (S @ x).to(b0.dtype)) * system.width**2
    coef = coef.to(x.dtype)
    return b0.to(x.dtype) * x + Y.T @ coef - b0.to(x.dtype) * (S.T @ coef)


def apply_inverse(g: Tensor, S: Tensor, Y: Tensor, system: PosteriorSystem) -> Tensor:
    """Return :math:`\\hat B^{-1} g` by the exact matrix-inversion lemma (module docstring).

    ``g`` is flat with ``n`` elements; with no observations (``m = 0``) this is
    :math:`g / b_0`.
    """
    b0 = system.mean
    if S.shape[0] == 0:
        return g / b0.to(g.dtype)
    Z = b0 / system.width**2 * system.M + system.SY - b0 * system.SS
    z = torch.linalg.solve(Z, (S @ g).to(b0.dtype)).to(g.dtype)
    b0g = b0.to(g.dtype)
    return (g - Y.T @ z + b0g * (S.T @ z)) / b0g


def orthogonalize(s: Tensor, S: Tensor, tol: float = 1e-3) -> Tensor:
    """Remove from ``s`` its components along the rows of ``S`` and restore its length.

    Classical Gram-Schmidt applied twice (numerically as good as modified
    Gram-Schmidt for one vector). The rows of ``S`` are assumed mutually
    orthogonal (as the directions this module produces are); zero rows are
    ignored. If less than ``tol`` of ``s`` is new, ``s`` is returned unchanged:
    the posterior's noise term keeps the system regular in that case. No host
    synchronisation.
    """
    if S.shape[0] == 0:
        return s
    sq = (S * S).sum(1)
    inv = torch.where(sq > 0, 1.0 / sq, torch.zeros_like(sq))
    r = s
    for _ in range(2):
        r = r - S.T @ ((S @ r) * inv)
    n0, n1 = s.norm(), r.norm()
    keep = n1 > tol * n0
    return torch.where(keep, r * (n0 / torch.where(keep, n1, torch.ones_like(n1))), s)


def active_direction(
    g: Tensor, S: Tensor, Y: Tensor, system: PosteriorSystem, orthogonal: bool = True
) -> Tensor:
    """The next direction to observe, :math:`s = -\\hat B^{-1} g` (paper eq. 16), optionally orthogonalised."""
    s = -apply_inverse(g, S, Y, system)
    return orthogonalize(s, S) if orthogonal else s
