r"""The prior of the Hessian model: step size, prior mean, prior width and noise level.

de Roos & Hennig (2019), §2.3.1 and §2.4. Before the active inference starts, the
optimizer spends :math:`P` minibatches at the same point :math:`\theta_0`, probing the
batch curvature :math:`B_t = H_t + \text{wd}\, I` along probe vectors :math:`v_t` (the
regularised batch gradients) with one Hessian-vector product
:math:`h_t = B_t v_t` each. All sums run over the minibatches and over the
parameter tensors of one parameter group:

.. math::

    \alpha = \frac{\sum_t v_t^\top h_t}{\sum_t \lVert h_t \rVert^2}, \qquad
    b_0 = 1 / \alpha, \qquad
    w_0 = \frac{\sum_t v_t^\top h_t}{\sum_t \lVert v_t \rVert^2}.

:math:`\alpha` is the minimal-residual step along the gradient that the paper's
§2.4 found to work better for deep nets than eq. (15)'s square root; the prior
mean :math:`B_0 = b_0 I` uses the same number everywhere. :math:`w_0` is the
Rayleigh quotient of eq. (15), the prior width :math:`W = w_0 I`.

**Noise.** The likelihood (paper eq. 11 with :math:`\Lambda = \lambda_0 I`) says that an
observation :math:`y = \tilde B s` of a batch Hessian
:math:`\tilde B = B + \Gamma`, :math:`\Gamma \sim \mathcal N(0, \Lambda \otimes \Lambda)`,
has independent coordinates with variance :math:`\lambda_0^2 \lVert s \rVert^2`. Two
minibatches probed along the *same* vector :math:`v` therefore differ by
:math:`h_b - h_a = (\Gamma_b - \Gamma_a) v`, whose :math:`n` coordinates each have
variance :math:`2 \lambda_0^2 \lVert v \rVert^2`. The optimizer probes the prior
minibatches in pairs that share a probe, and pools the pairs (block-diagonal
model: one block per tensor :math:`p` with :math:`n_p` elements):

.. math::

    \hat\lambda_0^2 = \frac{\sum_{\text{pairs}} \sum_p \lVert h_{b,p} - h_{a,p} \rVert^2}
                           {2 \sum_{\text{pairs}} \sum_p n_p \lVert v_p \rVert^2}.

This measures the batch-to-batch variability of the curvature itself. (The 2019
reference used :math:`|\sum_t \lVert v_t\rVert^2 - \lVert \sum_t v_t \rVert^2| / P`,
which grows with the squared *mean* gradient, not with the noise.) The estimate is
floored at ``noise_floor * w0`` so that the posterior system stays regular on
noise-free problems; without a pair (``P = 1``) the noise is set to :math:`w_0`,
which weighs each observation like the prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._precision import accumulation_dtype, widened

__all__ = ["PriorEstimate", "curvature_sums", "estimate_prior", "noise_sums"]


class PriorEstimate(NamedTuple):
    """Scalars of the prior of one parameter group (0-dim tensors, float64)."""

    step_size: Tensor
    r""":math:`\alpha`, the minimal-residual step along the gradient."""
    mean: Tensor
    r""":math:`b_0 = 1/\alpha`, the prior mean :math:`B_0 = b_0 I`."""
    width: Tensor
    """:math:`w_0`, the prior width :math:`W = w_0 I`."""
    noise: Tensor
    r""":math:`\lambda_0`, the noise level :math:`\Lambda = \lambda_0 I`."""
    noise_measured: bool
    """False when no pair of minibatches shared a probe (the noise defaulted to :math:`w_0`)."""


def curvature_sums(probes: Sequence[Tensor], hvps: Sequence[Tensor]) -> Tensor:
    r"""Return :math:`[\sum_p v_p^\top h_p,\ \sum_p \lVert h_p\rVert^2,\ \sum_p \lVert v_p\rVert^2]`.

    Args:
        probes: the probe :math:`v_p` of each parameter tensor.
        hvps: :math:`h_p = (B v)_p` of each tensor.

    Returns:
        A 3-vector in the accumulation dtype (float64), on the probes' device; every product is formed
        in that dtype (:func:`probprec._precision.dot`), so no scale of the loss overflows it.

    Example:
        >>> v = [torch.tensor([1.0, 2.0])]
        >>> curvature_sums(v, [torch.tensor([2.0, 2.0])])
        tensor([6., 8., 5.], dtype=torch.float64)
    """
    rows = []
    for v, h in zip(probes, hvps, strict=True):
        v, h = widened(v.reshape(-1)), widened(h.reshape(-1))  # one conversion each, three products
        rows.append(torch.stack((torch.dot(v, h), torch.dot(h, h), torch.dot(v, v))))
    return _sum_rows(rows)


def _sum_rows(rows: list[Tensor]) -> Tensor:
    """Sum per-tensor rows (already in the accumulation dtype) on the first row's device."""
    device = rows[0].device
    return torch.stack([r.to(device, accumulation_dtype(device)) for r in rows]).sum(0)


def noise_sums(probes: Sequence[Tensor], differences: Sequence[Tensor]) -> Tensor:
    r"""Return :math:`[\sum_p \lVert h_{b,p} - h_{a,p}\rVert^2,\ \sum_p n_p \lVert v_p\rVert^2]`.

    ``differences`` are :math:`h_{b,p} - h_{a,p}`, the differences of the HVPs of two
    minibatches along the same probes; see the module docstring for how they give
    :math:`\lambda_0`.

    Example:
        >>> noise_sums([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])])
        tensor([1., 2.], dtype=torch.float64)
    """
    rows = []
    for v, d in zip(probes, differences, strict=True):
        d, v = widened(d.reshape(-1)), widened(v.reshape(-1))
        rows.append(torch.stack((torch.dot(d, d), v.numel() * torch.dot(v, v))))
    return _sum_rows(rows)


def estimate_prior(
    curvature: Tensor, noise: Tensor | None, noise_floor: float = 1e-3
) -> PriorEstimate:
    r"""Turn accumulated sums into the prior scalars (module docstring, paper eq. 15 and §2.4).

    Args:
        curvature: accumulated :func:`curvature_sums` over the prior minibatches.
        noise: accumulated :func:`noise_sums` over the probe pairs, or None if no
            pair was observed.
        noise_floor: lower bound of :math:`\lambda_0` relative to :math:`|w_0|`.

    Returns:
        The :class:`PriorEstimate`. Nothing is checked here: a non-positive or
        non-finite ``step_size`` is returned as is, and the caller decides.

    Example:
        >>> est = estimate_prior(torch.tensor([6.0, 8.0, 5.0], dtype=torch.float64), None)
        >>> float(est.step_size), float(est.mean), float(est.width), float(est.noise)
        (0.75, 1.3333333333333333, 1.2, 1.2)
    """
    vhv, hh, vv = curvature.unbind()
    step_size = vhv / hh
    width = vhv / vv
    if noise is None:
        lam = width.abs()
        measured = False
    else:
        lam = torch.sqrt(noise[0] / (2.0 * noise[1]))
        measured = True
    lam = torch.maximum(lam, noise_floor * width.abs())
    return PriorEstimate(step_size, 1.0 / step_size, width, lam, measured)
