r"""The 2019 reference arithmetic (L. Bald's thesis class), quirk by quirk, as pure functions.

``Preconditioner(..., mode="thesis")`` reproduces the arithmetic of the thesis's
``Preconditioner`` (ludwigbald/probprec, ``code/probprec.py`` at commit 227a924).
Each of its departures from the default mode is a named *quirk*, and each quirk
has a named *fix*: ``fixes=(...)`` turns single fixes on, and ``fixes="all"``
gives exactly the default mode. The
functions here compute the quirky quantities; the optimizer shares every other
line with the default mode.

Notation as in :mod:`probprec.posterior` (rows :math:`s_i`, :math:`y_i`,
:math:`r_i = \lVert s_i \rVert^2`, :math:`D = \operatorname{diag}(r)`), and the
reference's unit columns :math:`\hat s_i = s_i/\sqrt{r_i}`, :math:`\hat y_i = y_i/\sqrt{r_i}`.

**Prior noise** (quirk ``probe_noise``): with each prior minibatch
probed along its own gradient,

.. math:: \lambda = \Bigl| \sum_t \lVert v_t \rVert^2 - \bigl\lVert \sum_t v_t \bigr\rVert^2 \Bigr| / P ,

which grows with the squared mean gradient rather than with the noise.

**Posterior** (quirks ``mixed_normalization``, ``inconsistent_prior_mean``,
``transposed_capacitance``). The reference solves
:math:`\hat X (w G + \lambda N) = \hat Y - b_\Delta \hat S` with
:math:`G_{ij} = w\, \hat s_i^\top \hat s_j` off the diagonal but :math:`G_{ii} = w\, r_i`,
:math:`N_{ii} = \lambda r_i`, and :math:`b_\Delta = \alpha` (the prior mean of
:math:`\hat B = I/\alpha + w^2 \hat X \hat S^\top` is :math:`1/\alpha`; its setup used
:math:`b_\Delta = 1`). Its active direction is

.. math:: s = \alpha g - \alpha^2 w^2 \hat X (I + \alpha w^2 \hat X^\top \hat S)^{-1} \hat S^\top g ,

the inversion lemma with the capacitance matrix transposed (exact: :math:`\hat S^\top \hat X`).

**Low rank** (quirk ``singular_values``): the top-k singular values
:math:`\sigma_j` and left singular vectors of the non-symmetric :math:`\hat B`
(ARPACK ``svds`` in the reference; here exact and deterministic, from the
low-rank structure, see :func:`singular_extraction`).

**Preconditioner** (quirk ``absolute_units``):
:math:`P_\text{ref} = I - U (I - \Sigma^{-1/2}) U^\top`, i.e. factors
:math:`f_j = \sigma_j^{-1/2} - 1`, in absolute units.

The other quirks change the cycle's schedule, its probes, what ``p.grad`` holds and the
inner optimizer's fate; :class:`probprec.arithmetic.ThesisArithmetic` implements every quirk
through its hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor

from ._precision import accumulation_dtype
from .lowrank import LowRank, _fix_signs, _span_basis, _top_k
from .posterior import DirectionCoefficients, Rows

__all__ = [
    "FIXES",
    "QUIRKS",
    "ThesisPosterior",
    "quirks_for",
    "reference_factors",
    "reference_noise",
    "singular_extraction",
    "thesis_direction_coefficients",
    "thesis_factors",
    "thesis_posterior",
]

QUIRKS: dict[str, tuple[str, str]] = {
    "probe_noise": (
        "paired_noise",
        "noise |sum ||v||^2 - ||sum v||^2| / P from the prior's own gradients; the fix probes the prior "
        "minibatches in pairs along one vector and measures the spread of their Hessian-vector products",
    ),
    "mixed_normalization": (
        "consistent_normalization",
        "raw squared norms on the diagonal of the Gram matrix, unit columns off it",
    ),
    "inconsistent_prior_mean": (
        "consistent_prior_mean",
        "residual Y - alpha S in the posterior, Y - S at the setup, I/alpha in the posterior mean",
    ),
    "transposed_capacitance": ("exact_capacitance", "the inversion lemma with X'S instead of S'X"),
    "singular_values": (
        "eigen_extraction",
        "top-k singular values and vectors of the non-symmetric posterior mean; the fix extracts signed "
        "curvatures (Rayleigh-Ritz by default)",
    ),
    "absolute_units": (
        "consistent_units",
        "P = I - U (I - Sigma^(-1/2)) U' in absolute units; the fix rescales by b0/sigma where sigma > b0",
    ),
    "unguarded_step_size": ("guarded_step_size", "a negative or non-finite step size is used as it is"),
    "polluted_gradient": (
        "true_gradient",
        "p.grad holds g + Hv after an estimation step and the preconditioned gradient after an update",
    ),
    "inner_rebuilt": ("persistent_inner", "the inner optimizer is rebuilt (momentum reset) at every cycle"),
    "unregularized_directions": (
        "regularized_directions",
        "posterior directions and the preconditioned gradient ignore weight decay; the inner optimizer adds it "
        "after preconditioning",
    ),
    "same_batch_observations": (
        "next_batch_observations",
        "each direction is observed on the minibatch it was built from",
    ),
    "unorthogonalized_directions": ("orthogonal_directions", "active directions are not orthogonalised"),
    "reference_schedule": (
        "prior_observation",
        "the first observation averages the prior's Hessian-vector products along different gradients, and an "
        "extra minibatch without a Hessian-vector product ends each cycle",
    ),
}
"""Quirk name -> (the name of its fix, what the quirk is)."""

FIXES: dict[str, str] = {fix: quirk for quirk, (fix, _) in QUIRKS.items()}
"""Fix name -> the quirk it removes."""


def quirks_for(fixes: str | Iterable[str]) -> frozenset[str]:
    """The quirks left in thesis mode after applying ``fixes`` (names, or ``"all"``).

    Raises:
        ValueError: for an unknown fix name (the message lists the known ones).
    """
    if fixes == "all":
        return frozenset()
    if isinstance(fixes, str):
        fixes = (fixes,)
    unknown = [f for f in fixes if f not in FIXES]
    if unknown:
        raise ValueError(f"fixes must be names from {', '.join(FIXES)} (or 'all'), got unknown {unknown}")
    return frozenset(QUIRKS) - {FIXES[f] for f in fixes}


def reference_noise(sum_sq_norms: Tensor, sq_norm_of_sum: Tensor, prior_iterations: int) -> Tensor:
    r""":math:`\lambda = |\sum_t \lVert v_t\rVert^2 - \lVert \sum_t v_t \rVert^2| / P` (module docstring).

    Example:
        >>> reference_noise(torch.tensor(5.0), torch.tensor(16.0), 2)
        tensor(5.5000)
    """
    return (sum_sq_norms - sq_norm_of_sum).abs() / prior_iterations


class ThesisPosterior(NamedTuple):
    r"""The reference's posterior of one or several tensors (batched), in raw-row form.

    :math:`\hat B = b_B I + w^2 X^\top S` with rows :math:`X = K (Y - b_\Delta S)`.
    """

    SS: Tensor
    SY: Tensor
    K: Tensor
    r""":math:`D^{-1/2} \hat M^{-1} D^{-1/2}` (``(..., m, m)``)."""
    Minv_unit: Tensor
    r""":math:`\hat M^{-1}` of the unit-column system."""
    mean: Tensor
    r""":math:`b_B = 1/\alpha`."""
    shift: Tensor
    r""":math:`b_\Delta` of the residual."""
    alpha: Tensor
    width: Tensor


def thesis_posterior(
    SS: Tensor, SY: Tensor, alpha: Tensor | float, width: Tensor | float, noise: Tensor | float, mixed: bool,
    shift: Tensor | float,
) -> ThesisPosterior:
    r"""The reference's posterior system (module docstring), batched over leading dimensions.

    Args:
        SS: :math:`S S^\top` of raw rows, ``(..., m, m)``.
        SY: :math:`S Y^\top`.
        alpha: the step size :math:`\alpha` (prior mean :math:`1/\alpha`).
        width: :math:`w`.
        noise: :math:`\lambda`.
        mixed: the reference's mixed normalization (raw diagonal, unit off-diagonal); False uses unit
            columns throughout, which equals the default mode's raw system.
        shift: :math:`b_\Delta` (``alpha`` in the reference, 1 at its setup, :math:`1/\alpha` when consistent).
    """
    dtype = accumulation_dtype(SS.device)
    SS, SY = SS.to(dtype), SY.to(dtype)
    alpha, width, noise, shift = (torch.as_tensor(x, dtype=dtype, device=SS.device) for x in
                                  (alpha, width, noise, shift))
    r = SS.diagonal(dim1=-2, dim2=-1)
    safe = torch.where(r > 0, r, torch.ones_like(r))
    inv_sqrt = safe.rsqrt()
    unit = SS * inv_sqrt[..., :, None] * inv_sqrt[..., None, :]
    eye = torch.eye(SS.shape[-1], dtype=dtype, device=SS.device)
    if mixed:
        M = width**2 * (unit * (1 - eye) + torch.diag_embed(safe)) + noise**2 * torch.diag_embed(safe)
    else:
        M = width**2 * (unit * (1 - eye) + eye) + noise**2 * eye
    Minv = torch.linalg.inv(M)
    K = inv_sqrt[..., :, None] * Minv * inv_sqrt[..., None, :]
    return ThesisPosterior(SS, SY, K, Minv, 1.0 / alpha, shift, alpha, width)


def thesis_direction_coefficients(post: ThesisPosterior, Sg: Tensor, transposed: bool) -> DirectionCoefficients:
    r"""Coefficients of the reference's next direction, :math:`s = -g/b_B + Y^\top a + S^\top c` (module docstring).

    Args:
        post: :func:`thesis_posterior`.
        Sg: :math:`S g`, ``(..., m)``.
        transposed: the reference's transposed capacitance matrix (False: exact).
    """
    alpha, w, shift = post.alpha, post.width, post.shift
    r = post.SS.diagonal(dim1=-2, dim2=-1)
    inv_sqrt = torch.where(r > 0, r, torch.ones_like(r)).rsqrt()
    residual = post.SY - shift * post.SS  # S (Y - b S)'
    A = inv_sqrt[..., :, None] * residual * inv_sqrt[..., None, :] @ post.Minv_unit  # S_hat' X_hat
    cap = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device) + alpha * w**2 * (A.mT if transposed else A)
    c = torch.linalg.solve(cap, inv_sqrt * Sg)
    q = inv_sqrt * (post.Minv_unit @ c[..., None])[..., 0]
    scale = alpha**2 * w**2
    return DirectionCoefficients(scale * q, -scale * shift * q, torch.zeros_like(Sg[..., 0]))


def thesis_factors(S: Rows, Y: Rows, post: ThesisPosterior) -> Tensor:
    r"""Rows of :math:`X = K (Y - b_\Delta S)` of one tensor (``(m, n)``, ``S``'s dtype)."""
    small = post.K.dtype
    D = torch.stack(list(Y)).to(small) - post.shift * torch.stack(list(S)).to(small)
    return (post.K @ D).to(S[0].dtype)


def singular_extraction(S: Rows, X: Tensor, mean: Tensor, width: Tensor, k: int) -> LowRank:
    r"""Top-k singular values and left singular vectors of :math:`\hat B = b_B I + w^2 X^\top S` (one tensor).

    :math:`\hat B \hat B^\top = b_B^2 I + b_B w^2 (X^\top S + S^\top X) + w^4 X^\top (S S^\top) X` leaves
    :math:`\operatorname{span}\{S, X\}` invariant and acts as :math:`b_B^2` on its complement, so the
    singular pairs come from one small eigenproblem on an orthonormal basis of the span; a singular value
    :math:`|b_B|` of the complement (where the reference's random ARPACK start vector chose an arbitrary
    vector) is represented deterministically by the normalised part of the all-ones vector outside the
    span. As the reference: ``k`` is capped at ``n - 1`` (but at least 1, where the reference crashed), the
    values are singular values (never negative), decreasing.
    """
    dtype = S[0].dtype
    small = accumulation_dtype(S[0].device)
    Sm = torch.stack(list(S)).to(small)  # the largest singular value can dwarf the others: work in float64
    X = X.to(small)
    n = Sm.shape[1]
    k = max(1, min(k, n - 1))
    W, keep = _span_basis(Sm, X, 1e-5)
    b, w = mean.to(small), width.to(small)
    SW, XW = Sm @ W, X @ W
    SS = (Sm @ Sm.mT).to(small)
    T = b**2 * torch.eye(W.shape[1], dtype=small, device=Sm.device) + b * w**2 * (XW.mT @ SW + SW.mT @ XW) \
        + w**4 * XW.mT @ SS @ XW
    evals, Z, valid = _top_k(T, keep, W.shape[1])
    values = torch.where(valid, evals.clamp_min(0).sqrt(), torch.full_like(evals, -1.0))
    vectors = (W @ Z.to(W.dtype)).mT  # rows
    # the complement: singular value |b| along a fixed vector outside the span
    rank = int(keep.sum())
    if rank < n:
        ones = torch.ones(n, dtype=Sm.dtype, device=Sm.device)
        basis = W[:, keep]
        rest = ones - basis @ (basis.mT @ ones)
        if float(rest.norm()) > 1e-6 * n**0.5:
            values = torch.cat((values, b.abs()[None]))
            vectors = torch.cat((vectors, (rest / rest.norm())[None]))
    order = torch.argsort(values, descending=True, stable=True)[:k]
    sigma = values[order]
    return LowRank(_fix_signs(vectors[order]).to(dtype), sigma, sigma >= 0)


def reference_factors(eigvals: Tensor, valid: Tensor) -> Tensor:
    r"""Factors :math:`f_j = \sigma_j^{-1/2} - 1` of :math:`P_\text{ref}` (zero where :math:`\sigma_j \le 0`).

    Example:
        >>> reference_factors(torch.tensor([4.0, 0.25, -1.0]), torch.tensor([True, True, True]))
        tensor([-0.5000,  1.0000,  0.0000])
    """
    active = valid & (eigvals > 0)
    safe = torch.where(active, eigvals, torch.ones_like(eigvals))
    return torch.where(active, safe.rsqrt() - 1.0, torch.zeros_like(eigvals))

