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

It is never formed: everything is expressed through the small Gram matrices
:math:`S S^\top` and :math:`S Y^\top` (which the optimizer updates one row at a time)
and :math:`O(nm)` products; the :math:`m \times m` systems are solved in float64.
The exact matrix-inversion lemma gives, with :math:`D = Y - b_0 S`,

.. math::

    \hat B^{-1} g = \frac{1}{b_0}\bigl(g - D^\top z\bigr), \qquad
    z = \Bigl(\frac{b_0}{w_0^2} M + S D^\top\Bigr)^{-1} S g ,

(the 2019 reference transposed the capacitance matrix here). The active policy
(eq. 16) chooses the next direction :math:`s = -\hat B^{-1} g` for a fresh
minibatch gradient :math:`g`; with ``orthogonal=True`` only the part of it that is
new with respect to the (mutually orthogonal) observed directions is kept and
rescaled to the length of :math:`s`, as a Lanczos step would. That keeps :math:`S`
well conditioned under noise (spec/algorithm.md §2c); the projection
coefficients :math:`S s` follow from the small matrices, so the orthogonal
direction costs no extra pass over :math:`S`.
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
    SS: Tensor, SY: Tensor, mean: Tensor, width: Tensor, noise: Tensor
) -> PosteriorSystem:
    """Form the :math:`m \\times m` matrices of the posterior of eqs. (9), (11), (12).

    Args:
        SS: :math:`S S^\\top`; SY: :math:`S Y^\\top` (any floating dtype).
        mean: :math:`b_0`; width: :math:`w_0`; noise: :math:`\\lambda_0` (0-dim tensors).

    A zero direction (nothing new to observe, or a tensor whose gradient
    vanished) gets a unit diagonal in :math:`M`, so that it contributes nothing
    instead of making :math:`M` singular.
    """
    dtype = accumulation_dtype(SS.device)
    SS, SY = SS.to(dtype), SY.to(dtype)
    diag = SS.diagonal()
    noise_diag = torch.where(diag > 0, noise.to(dtype) ** 2 * diag, torch.ones_like(diag))
    M = width.to(dtype) ** 2 * SS + torch.diag_embed(noise_diag)
    return PosteriorSystem(SS, SY, M, mean.to(dtype), width.to(dtype))


def posterior_factors(S: Tensor, Y: Tensor, system: PosteriorSystem) -> Tensor:
    """Return the rows of :math:`X = M^{-1}(Y - b_0 S)`, shape ``(m, n)``, in ``S``'s dtype."""
    D = Y - system.mean.to(S.dtype) * S
    return (torch.linalg.inv(system.M).to(S.dtype)) @ D


def posterior_matvec(x: Tensor, S: Tensor, Y: Tensor, system: PosteriorSystem) -> Tensor:
    """Return :math:`\\hat B x = b_0 x + w_0^2 (Y - b_0 S)^\\top M^{-1} S x` for a flat ``x``."""
    b0 = system.mean
    coef = torch.linalg.solve(system.M, (S @ x).to(b0.dtype)) * system.width**2
    coef = coef.to(x.dtype)
    return b0.to(x.dtype) * x + Y.mT @ coef - b0.to(x.dtype) * (S.mT @ coef)


def _inverse_coefficients(system: PosteriorSystem, Sg: Tensor) -> Tensor:
    """:math:`z` of the inversion lemma (module docstring) for :math:`S g`."""
    b0 = system.mean
    Z = b0 / system.width**2 * system.M + system.SY - b0 * system.SS
    return torch.linalg.solve(Z, Sg)


def apply_inverse(g: Tensor, S: Tensor, Y: Tensor, system: PosteriorSystem) -> Tensor:
    """Return :math:`\\hat B^{-1} g` by the exact matrix-inversion lemma (module docstring).

    ``g`` is flat with ``n`` elements; with no observations (``m = 0``) this is
    :math:`g / b_0`.
    """
    b0 = system.mean.to(g.dtype)
    if S.shape[0] == 0:
        return g / b0
    z = _inverse_coefficients(system, (S @ g).to(system.M.dtype)).to(g.dtype)
    return (g - Y.mT @ z + b0 * (S.mT @ z)) / b0


def active_direction(
    g: Tensor,
    S: Tensor,
    Y: Tensor,
    system: PosteriorSystem,
    orthogonal: bool = True,
    tol: float = 1e-3,
    out: Tensor | None = None,
) -> Tensor:
    """The next direction to observe, :math:`s = -\\hat B^{-1} g` (paper eq. 16).

    With ``orthogonal=True`` (rows of ``S`` mutually orthogonal) the components
    along the rows of ``S`` are removed and the rest is rescaled to
    :math:`\\lVert s \\rVert`; if less than ``tol`` of :math:`s` is new, the
    direction is zero (there is nothing new to observe). Written into ``out`` if
    given; no host synchronisation.
    """
    b0 = system.mean
    m = S.shape[0]
    dtype = g.dtype
    out = torch.empty_like(g) if out is None else out
    torch.mul(g, (-1.0 / b0).to(dtype), out=out)  # -g / b0
    if m == 0:
        return out
    Sg = (S @ g).to(b0.dtype)
    z = _inverse_coefficients(system, Sg)
    s_coef = z  # s = -g/b0 + Y'z/b0 - S'z
    if orthogonal:
        # S s = (-S g + SY z - b0 SS z) / b0; the projection of s on the rows of S
        Ss = (-Sg + system.SY @ z - b0 * (system.SS @ z)) / b0
        diag = system.SS.diagonal()
        proj = torch.where(diag > 0, Ss / torch.where(diag > 0, diag, torch.ones_like(diag)), torch.zeros_like(Ss))
        s_coef = z + proj
    out.addmv_(Y.mT, (z / b0).to(dtype))
    out.addmv_(S.mT, (-s_coef).to(dtype))
    if orthogonal:
        new = torch.linalg.vector_norm(out).to(b0.dtype)
        total = torch.sqrt(new**2 + proj @ system.SS @ proj)
        keep = new > tol * total
        out.mul_(torch.where(keep, total / torch.where(keep, new, torch.ones_like(new)), torch.zeros_like(new))
                 .to(dtype))
    return out
