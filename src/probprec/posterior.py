r"""The posterior mean of the Hessian given noisy Hessian-vector products, and its inverse.

de Roos & Hennig (2019), §2.1-2.2, eqs. (8)-(14) and (16), specialised to the
scalar prior and noise of :mod:`probprec.prior`: prior mean :math:`B_0 = b_0 I`,
prior covariance :math:`W \otimes W` with :math:`W = w_0 I`, noise
:math:`\Lambda = \lambda_0 I`. For one parameter tensor with :math:`n` elements, the
optimizer has observed :math:`m` directions and noisy products

.. math::

    S = [s_1, \dots, s_m]^\top \in \mathbb R^{m \times n}, \qquad
    Y = [y_1, \dots, y_m]^\top, \quad y_i = \tilde B_{t_i} s_i,

stored as rows, raw (unnormalised) throughout. The functions take ``S`` and ``Y``
as sequences of flat rows (a list, or an ``(m, n)`` tensor): the optimizer keeps
one tensor per row, so that an observation is stored without a copy and no
large block is allocated per cycle. The Gram matrix of eq. (9) plus
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
well conditioned under noise; the projection
coefficients :math:`S s` follow from the small matrices, so the orthogonal
direction costs no extra pass over :math:`S`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._precision import accumulation_dtype, dot, widened

Rows = Sequence[Tensor]

__all__ = [
    "DirectionCoefficients",
    "PosteriorSystem",
    "Rows",
    "active_direction",
    "add_rows",
    "apply_inverse",
    "combine_direction",
    "direction_coefficients",
    "direction_scale",
    "posterior_factors",
    "posterior_matvec",
    "posterior_system",
    "row_dots",
]


class PosteriorSystem(NamedTuple):
    r"""The small matrices of one tensor's posterior (float64, :math:`m \times m`)."""

    SS: Tensor
    r""":math:`S S^\top`."""
    SY: Tensor
    r""":math:`S Y^\top`, entries :math:`s_i^\top y_j`."""
    M: Tensor
    r""":math:`w_0^2 S S^\top + \lambda_0^2 \operatorname{diag}(S S^\top)`, regularised for zero rows."""
    mean: Tensor
    """:math:`b_0`."""
    width: Tensor
    """:math:`w_0`."""


def posterior_system(
    SS: Tensor, SY: Tensor, mean: Tensor, width: Tensor, noise: Tensor
) -> PosteriorSystem:
    r"""Form the :math:`m \times m` matrices of the posterior of eqs. (9), (11), (12).

    Args:
        SS: :math:`S S^\top` (any floating dtype), shape ``(..., m, m)``: leading
            dimensions batch several tensors.
        SY: :math:`S Y^\top`, same shape.
        mean: :math:`b_0`, shape ``(...)`` or broadcastable.
        width: :math:`w_0`.
        noise: :math:`\lambda_0`.

    A zero direction (nothing new to observe, or a tensor whose gradient
    vanished) gets a unit diagonal in :math:`M`, so that it contributes nothing
    instead of making :math:`M` singular.
    """
    dtype = accumulation_dtype(SS.device)
    SS, SY = SS.to(dtype), SY.to(dtype)
    mean, width, noise = (x.to(dtype) for x in (mean, width, noise))
    diag = SS.diagonal(dim1=-2, dim2=-1)
    noise_diag = torch.where(diag > 0, noise[..., None] ** 2 * diag, torch.ones_like(diag))
    M = width[..., None, None] ** 2 * SS + torch.diag_embed(noise_diag)
    return PosteriorSystem(SS, SY, M, mean, width)


def row_dots(rows: Rows, x: Tensor) -> Tensor:
    r""":math:`S x` for rows :math:`s_i`: the vector of :math:`s_i^\top x`, formed in the accumulation dtype."""
    if len(rows) == 0:
        return x.new_zeros(0, dtype=accumulation_dtype(x.device))
    x = widened(x)  # converted once for all rows
    return torch.stack([dot(r, x) for r in rows])


def add_rows(out: Tensor, rows: Rows, coefficients: Tensor) -> Tensor:
    r"""``out += S^T c``: add :math:`\sum_i c_i s_i` in place, one pass per row, no temporaries."""
    coefficients = coefficients.to(out.dtype)
    for i, r in enumerate(rows):
        out.addcmul_(r, coefficients[i])
    return out


def posterior_factors(S: Rows, Y: Rows, system: PosteriorSystem) -> Tensor:
    """Return the rows of :math:`X = M^{-1}(Y - b_0 S)` as an ``(m, n)`` tensor in ``S``'s dtype."""
    Sm, Ym = torch.stack(list(S)), torch.stack(list(Y))
    D = Ym - system.mean.to(Sm.dtype) * Sm
    return (torch.linalg.inv(system.M).to(Sm.dtype)) @ D


def posterior_matvec(x: Tensor, S: Rows, Y: Rows, system: PosteriorSystem) -> Tensor:
    r"""Return :math:`\hat B x = b_0 x + w_0^2 (Y - b_0 S)^\top M^{-1} S x` for a flat ``x``."""
    b0 = system.mean
    coef = torch.linalg.solve(system.M, row_dots(S, x).to(b0.dtype)) * system.width**2
    out = b0.to(x.dtype) * x
    add_rows(out, Y, coef)
    return add_rows(out, S, -b0 * coef)


def _inverse_coefficients(system: PosteriorSystem, Sg: Tensor) -> Tensor:
    """:math:`z` of the inversion lemma (module docstring) for :math:`S g`; batched over leading dims."""
    b0 = system.mean[..., None, None]
    Z = b0 / system.width[..., None, None] ** 2 * system.M + system.SY - b0 * system.SS
    return torch.linalg.solve(Z, Sg)


def apply_inverse(g: Tensor, S: Rows, Y: Rows, system: PosteriorSystem) -> Tensor:
    r"""Return :math:`\hat B^{-1} g` by the exact matrix-inversion lemma (module docstring).

    ``g`` is flat with ``n`` elements; with no observations (``m = 0``) this is
    :math:`g / b_0`.
    """
    b0 = system.mean
    out = g / b0.to(g.dtype)
    if len(S) == 0:
        return out
    z = _inverse_coefficients(system, row_dots(S, g).to(system.M.dtype))
    add_rows(out, Y, -z / b0)
    return add_rows(out, S, z)


class DirectionCoefficients(NamedTuple):
    r"""The next direction as a combination :math:`s = -g/b_0 + Y^\top a + S^\top c` (float64)."""

    observations: Tensor
    """:math:`a`, shape ``(..., m)``."""
    directions: Tensor
    """:math:`c`, shape ``(..., m)``."""
    projected_sqnorm: Tensor
    r""":math:`\lVert s_\parallel \rVert^2` of the removed part (zero without orthogonalisation), ``(...)``."""


def direction_coefficients(system: PosteriorSystem, Sg: Tensor, orthogonal: bool = True) -> DirectionCoefficients:
    r"""Coefficients of :math:`s = -\hat B^{-1} g` (paper eq. 16), optionally minus its projection on span(S).

    From the inversion lemma, :math:`s = -g/b_0 + Y^\top z / b_0 - S^\top z`. Its
    components along the (mutually orthogonal) rows of :math:`S` are
    :math:`S s = (-Sg + SY\,z)/b_0 - SS\,z`, known from the small matrices, so the
    projection costs no pass over the data. Batched over leading dimensions.

    Args:
        system: the posterior (:func:`posterior_system`).
        Sg: :math:`S g`, shape ``(..., m)``, float64.
        orthogonal: remove the components along the rows of :math:`S`.
    """
    b0 = system.mean[..., None]
    z = _inverse_coefficients(system, Sg)
    if not orthogonal:
        return DirectionCoefficients(z / b0, -z, torch.zeros_like(Sg[..., 0]))
    Ss = (-Sg + (system.SY @ z[..., None])[..., 0]) / b0 - (system.SS @ z[..., None])[..., 0]
    diag = system.SS.diagonal(dim1=-2, dim2=-1)
    nonzero = diag > 0
    proj = torch.where(nonzero, Ss / torch.where(nonzero, diag, torch.ones_like(diag)), torch.zeros_like(Ss))
    sqnorm = (proj * (system.SS @ proj[..., None])[..., 0]).sum(-1)
    return DirectionCoefficients(z / b0, -(z + proj), sqnorm)


def combine_direction(
    g: Tensor, S: Rows, Y: Rows, mean: Tensor, coefficients: tuple[Tensor, Tensor], out: Tensor | None = None
) -> Tensor:
    r"""Return :math:`-g/b_0 + Y^\top a + S^\top c` (one tensor; one pass over each row), in ``out`` if given."""
    a, c = coefficients
    scale = (-1.0 / mean).to(g.dtype)
    out = torch.mul(g, scale) if out is None else torch.mul(g, scale, out=out)
    add_rows(out, Y, a)
    return add_rows(out, S, c)


def direction_scale(new_norm: Tensor, projected_sqnorm: Tensor, tol: float = 1e-3) -> Tensor:
    """Factor that restores the length of the direction after its projection was removed.

    Zero when less than ``tol`` of the direction was new (nothing new to observe).
    """
    total = torch.sqrt(new_norm**2 + projected_sqnorm)
    keep = new_norm > tol * total
    return torch.where(keep, total / torch.where(keep, new_norm, torch.ones_like(new_norm)), torch.zeros_like(total))


def active_direction(
    g: Tensor,
    S: Rows,
    Y: Rows,
    system: PosteriorSystem,
    orthogonal: bool = True,
    tol: float = 1e-3,
) -> Tensor:
    r"""The next direction to observe for one tensor, :math:`s = -\hat B^{-1} g` (paper eq. 16).

    With ``orthogonal=True`` (rows of ``S`` mutually orthogonal) the components
    along the rows of ``S`` are removed and the rest is rescaled to
    :math:`\lVert s \rVert`; if less than ``tol`` of :math:`s` is new, the
    direction is zero. Returns a new tensor; no host synchronisation.
    """
    if len(S) == 0:
        return g * (-1.0 / system.mean).to(g.dtype)
    coef = direction_coefficients(system, row_dots(S, g).to(system.M.dtype), orthogonal)
    out = combine_direction(g, S, Y, system.mean, (coef.observations, coef.directions))
    if orthogonal:
        norm = torch.linalg.vector_norm(out).to(coef.projected_sqnorm.dtype)
        out.mul_(direction_scale(norm, coef.projected_sqnorm, tol).to(g.dtype))
    return out
