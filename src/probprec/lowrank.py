r"""Low-rank extraction: the top-k curvature directions from the observed subspace.

Both extractions are exact, deterministic and run on the parameters' device; no
:math:`n \times n` matrix is formed and nothing of size :math:`n` leaves the device.
They replace the 2019 reference's ARPACK ``svds`` (host round trip, random start
vector, a crash on 1-element tensors, negative curvature mistaken for large
curvature).

**Rayleigh-Ritz on span(S)** (:func:`rayleigh_ritz`, the default). With the thin
decomposition :math:`S^\top = W \Sigma V^\top` (:math:`W` orthonormal), the
observations give the curvature operator on the subspace, :math:`B W = Y^\top V
\Sigma^{-1}`, hence the projected matrix (computed from :math:`S S^\top` and
:math:`S Y^\top` alone) and its eigenpairs

.. math::

    T = \operatorname{sym}\bigl(W^\top Y^\top V \Sigma^{-1}\bigr)
      = Z \operatorname{diag}(\sigma) Z^\top, \qquad U = W Z_{:, 1:k}.

In the noise-free case :math:`\sigma_j = u_j^\top B u_j` exactly (Ritz values), and
with directions chosen as in :mod:`probprec.posterior` the subspace is a Krylov
space, so the top Ritz pairs converge to the top eigenpairs.

**Eigen-decomposition of the posterior mean** (:func:`posterior_eigen`, the paper's
§2.3.2 reading). :math:`\hat B - b_0 I = w_0^2 X^\top S` has rank :math:`\le 2m` and
lives in :math:`\operatorname{span}\{S, X\}`. With an orthonormal basis :math:`W` of
that span, the closest symmetric matrix (Higham 1988) projects to

.. math::

    T = \tfrac{w_0^2}{2}\bigl((XW)^\top (SW) + (SW)^\top (XW)\bigr), \qquad
    \sigma_j = b_0 + \mu_j(T),

so it sees only curvature that differs from the prior level :math:`b_0`.

Directions beyond the numerical rank of the subspace are masked out (marked
invalid), eigenvalues are sorted in decreasing order (largest *algebraic*, so
negative curvature is never mistaken for large curvature), and each eigenvector's
sign is fixed so that its entry of largest magnitude is positive.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._precision import accumulation_dtype
from .posterior import PosteriorSystem, Rows, add_rows, posterior_factors

__all__ = [
    "LowRank",
    "RitzCoefficients",
    "eigen_from_factors",
    "orthonormalize_rows",
    "posterior_eigen",
    "rayleigh_ritz",
    "ritz_coefficients",
    "ritz_vectors",
]


class LowRank(NamedTuple):
    r"""Top-k curvature estimate :math:`B \approx U^\top \operatorname{diag}(\sigma) U` of one tensor."""

    eigvecs: Tensor
    """Rows :math:`u_j`, shape ``(k, n)``, orthonormal, in the parameters' dtype."""
    eigvals: Tensor
    r""":math:`\sigma_j`, shape ``(k,)``, decreasing, float64."""
    valid: Tensor
    """Bool ``(k,)``: False for slots beyond the numerical rank of the subspace."""


def _orthonormal_basis(A: Tensor, rtol: float = 1e-5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Thin SVD :math:`A = W \Sigma V^\top` of an ``n x r`` matrix via Householder QR.

    With :math:`A = QR`, the eigen-decomposition :math:`R^\top R = V \Sigma^2 V^\top`
    (float64, ``r x r``) gives :math:`W = Q R V \Sigma^{-1}`. (LAPACK's ``gesdd`` can
    fail to converge on the nearly diagonal ``R`` that orthogonal directions give;
    the symmetric eigensolver does not.) Returns ``W`` (``n x r``), the singular
    values (decreasing), ``V`` and the mask of singular values above ``rtol`` times
    the largest; columns of ``W`` outside the mask are zero.
    """
    Q, R = torch.linalg.qr(A)
    small = accumulation_dtype(A.device)
    R = R.to(small)
    evals, V = torch.linalg.eigh(R.mT @ R)
    evals, V = evals.flip(0), V.flip(1)
    sv = evals.clamp_min(0).sqrt()
    keep = sv > rtol * sv[:1].clamp_min(torch.finfo(small).tiny)
    inv = torch.where(keep, 1.0 / torch.where(keep, sv, torch.ones_like(sv)), torch.zeros_like(sv))
    W = Q @ (R @ (V * inv)).to(A.dtype)
    return W, sv, V, keep


def _top_k(T: Tensor, keep: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k eigenpairs of the symmetric part of ``T`` restricted to the rows and columns in ``keep``.

    Batched over leading dimensions.
    """
    mask = keep[..., :, None] & keep[..., None, :]
    T = torch.where(mask, 0.5 * (T + T.mT), torch.zeros_like(T))
    floor = -2.0 * (torch.linalg.matrix_norm(T) + 1.0)
    T = T + torch.diag_embed(torch.where(keep, torch.zeros_like(T[..., 0]), floor[..., None]))
    evals, evecs = torch.linalg.eigh(T)
    evals, evecs = evals.flip(-1)[..., :k], evecs.flip(-1)[..., :k]
    return evals, evecs, evals > 0.5 * floor[..., None]


def _span_basis(S: Tensor, X: Tensor, rtol: float) -> tuple[Tensor, Tensor]:
    """Orthonormal basis of the span of the rows of ``S`` and ``X``, and the mask of its valid columns.

    The rows are normalised first, so that the rank decision does not depend on their scales.
    """
    rows = torch.cat((S, X))
    norms = rows.norm(dim=1, keepdim=True)
    rows = rows / torch.where(norms > 0, norms, torch.ones_like(norms))
    W, _, _, keep = _orthonormal_basis(rows.mT, rtol)
    return W, keep


def _fix_signs(U: Tensor) -> Tensor:
    """Flip each row so that its entry of largest magnitude is positive (deterministic)."""
    low, high = torch.aminmax(U, dim=1)
    return U * torch.where(high >= -low, 1.0, -1.0).to(U.dtype)[:, None]


def orthonormalize_rows(U: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric (Löwdin) orthonormalisation of nearly orthonormal rows; zero rows stay zero.

    Removes the rounding that a float32 Gram matrix leaves in the Ritz vectors,
    with the smallest possible change to each of them. Also returns whether the
    rows were finite.
    """
    small = accumulation_dtype(U.device)
    G = (U @ U.mT).to(small)
    finite = G.isfinite().all()
    G = torch.where(finite, G, torch.zeros_like(G))
    evals, Q = torch.linalg.eigh(G)
    good = evals > 1e-3 * evals.amax().clamp_min(torch.finfo(small).tiny)
    inv_sqrt = torch.where(good, torch.where(good, evals, torch.ones_like(evals)).rsqrt(), torch.zeros_like(evals))
    return ((Q * inv_sqrt) @ Q.mT).to(U.dtype) @ U, finite


class RitzCoefficients(NamedTuple):
    """Ritz values and the combinations of the directions that give the Ritz vectors (float64)."""

    eigvals: Tensor
    r""":math:`\sigma_j`, shape ``(..., k)``, decreasing."""
    coefficients: Tensor
    r""":math:`C = Z^\top \Sigma^{-1} V^\top`, shape ``(..., k, m)``: :math:`U = C S`."""
    valid: Tensor
    """Bool ``(..., k)``."""


def ritz_coefficients(SS: Tensor, SY: Tensor, k: int, rtol: float = 1e-3) -> RitzCoefficients:
    r"""Rayleigh-Ritz on span(S) from the Gram matrices alone; batched over leading dimensions.

    The thin SVD of :math:`S^\top` comes from :math:`S S^\top = V \Sigma^2 V^\top`, so
    :math:`W = S^\top V \Sigma^{-1}` and the projected matrix
    :math:`T = \Sigma^{-1} V^\top (S Y^\top) V \Sigma^{-1} = Z \operatorname{diag}(\sigma) Z^\top`
    need no pass over the :math:`n`-dimensional data; the Ritz vectors are
    :math:`U = Z^\top \Sigma^{-1} V^\top S` (:func:`rayleigh_ritz`).

    Args:
        SS: :math:`S S^\top`, ``(..., m, m)``.
        SY: :math:`S Y^\top` with :math:`y_i` the noisy curvature products along :math:`s_i`.
        k: number of pairs; ``min(k, m)`` are returned.
        rtol: directions with singular value below ``rtol`` times the largest are
            dropped (a float32 Gram matrix resolves about ``sqrt(eps)``).
    """
    small = accumulation_dtype(SS.device)
    SS, SY = SS.to(small), SY.to(small)
    evals, V = torch.linalg.eigh(SS)
    evals, V = evals.flip(-1), V.flip(-1)
    sv = evals.clamp_min(0).sqrt()
    keep = sv > rtol * sv[..., :1].clamp_min(torch.finfo(small).tiny)
    inv = torch.where(keep, 1.0 / torch.where(keep, sv, torch.ones_like(sv)), torch.zeros_like(sv))
    Vs = V * inv[..., None, :]
    eigvals, Z, valid = _top_k(Vs.mT @ SY @ Vs, keep, min(k, SS.shape[-1]))
    return RitzCoefficients(eigvals, Z.mT @ Vs.mT, valid)


def ritz_vectors(coefficients: Tensor, S: Rows) -> tuple[Tensor, Tensor]:
    """Ritz vectors :math:`U = C S` of one tensor (``(k, n)``), orthonormalised and sign-fixed; and whether finite."""
    U = S[0].new_zeros((coefficients.shape[0], S[0].numel()))
    for j in range(coefficients.shape[0]):
        add_rows(U[j], S, coefficients[j])
    U, finite = orthonormalize_rows(U)
    return _fix_signs(U), finite


def rayleigh_ritz(S: Rows, SS: Tensor, SY: Tensor, k: int, rtol: float = 1e-3) -> LowRank:
    r"""Top-k Ritz pairs of the curvature on span(S) of one tensor (module docstring).

    Args:
        S: directions, ``m`` flat rows (or an ``(m, n)`` tensor).
        SS: :math:`S S^\top`.
        SY: :math:`S Y^\top`.
        k: number of pairs; the result has ``min(k, m)`` rows.
        rtol: see :func:`ritz_coefficients`.
    """
    ritz = ritz_coefficients(SS, SY, k, rtol)
    U, finite = ritz_vectors(ritz.coefficients, S)
    return LowRank(U, ritz.eigvals, ritz.valid & finite)


def eigen_from_factors(S: Rows, X: Tensor, mean: Tensor, width: Tensor, k: int, rtol: float = 1e-5) -> LowRank:
    r"""Top-k eigenpairs of the symmetric part of :math:`b I + w^2 X^\top S` (module docstring)."""
    Sm = torch.stack(list(S))
    W, keep = _span_basis(Sm, X.to(Sm.dtype), rtol)
    small = accumulation_dtype(Sm.device)
    SW, XW = (Sm @ W).to(small), (X.to(Sm.dtype) @ W).to(small)
    T = width.to(small) ** 2 * (XW.mT @ SW)
    mu, Z, valid = _top_k(T, keep, min(k, W.shape[1]))
    U = (W @ Z.to(W.dtype)).mT
    return LowRank(_fix_signs(U), mean.to(small) + mu, valid & U.isfinite().all())


def posterior_eigen(S: Rows, Y: Rows, system: PosteriorSystem, k: int, rtol: float = 1e-5) -> LowRank:
    r"""Top-k eigenpairs of the symmetric part of the posterior mean :math:`\hat B` (module docstring)."""
    return eigen_from_factors(S, posterior_factors(S, Y, system), system.mean, system.width, k, rtol)
