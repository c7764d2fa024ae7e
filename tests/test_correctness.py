"""Acceptance 1: the estimate against closed forms on quadratics with known block-diagonal Hessians."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import BlockQuadratic, train
from probprec import Preconditioner

SHAPES = [(8, 8), (36,)]
TOPS = [(100.0, 40.0), (80.0, 30.0)]


def one_cycle(dtype, num_observations=5, prior_iterations=4, noise=0.0, **kwargs):
    problem = BlockQuadratic(SHAPES, TOPS, noise=noise, dtype=dtype)
    kwargs.setdefault("adaptive_observations", False)  # the tolerances below assume all K observations
    opt = Preconditioner(problem.parameters(), est_rank=2, num_observations=num_observations,
                         prior_iterations=prior_iterations, **kwargs)

    def loss():
        problem.resample()
        return problem()

    train(opt, loss, prior_iterations + num_observations)
    assert opt.phase == "optimize"
    return problem, opt


# Tolerances from the arithmetic. The estimate is Rayleigh-Ritz on the K directions the posterior chose
# (a Krylov-like space grown from the gradient). Its eigenvalue error falls like tan^2 of the angle between
# the top eigenvectors and that space, and each further direction shrinks tan by the Chebyshev factor
# gamma + sqrt(gamma^2 - 1) ~ 175 (gamma = 1 + 2 (40 - 1) / (1 - 0.1), the gap between the second top
# eigenvalue and the bulk): measured in float64 6e-5 at K = 4, 3e-9 at K = 5, 1e-15 at K = 8. Directions
# stored in float32 limit any result to about 16 eps_32 = 2e-6 (the Gram matrices are formed in float64).
EIGENVALUE_TOLERANCE = {4: 2e-4, 5: 1e-8, 8: 1e-12}
FLOAT32_FLOOR = 2e-6


def tolerance(dtype, num_observations):
    krylov = EIGENVALUE_TOLERANCE[num_observations]
    return max(krylov, FLOAT32_FLOOR) if dtype == torch.float32 else krylov


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_observations", [4, 5, 8])
def test_recovers_top_eigenpairs_of_each_tensor(dtype, num_observations):
    problem, opt = one_cycle(dtype, num_observations)
    log = opt.get_log()
    b0 = log["prior_mean"][0]
    assert b0 < 30.0, "the setting must put the top curvatures above the prior level"
    tol = tolerance(dtype, num_observations)
    for estimate, lam, Q, eigenvalues in zip(opt.curvature_estimate(), problem.eigvals, problem.eigvecs,
                                             log["eigenvalues"], strict=True):
        assert estimate is not None
        sigma, U = estimate
        assert sigma.tolist() == pytest.approx(eigenvalues, rel=1e-6)  # the log rounds to the dtype
        assert sigma.tolist() == pytest.approx(lam[:2].tolist(), rel=tol)
        U = U.reshape(2, -1).double()
        cosines = (U @ Q[:, :2]).diagonal().abs()
        assert (1 - cosines).max() <= tol  # 1 - cos ~ tan^2 / 2, like the eigenvalue error
        orthonormal = 1e-12 if dtype == torch.float64 else FLOAT32_FLOOR
        assert torch.allclose(U @ U.T, torch.eye(2, dtype=torch.float64), atol=orthonormal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_estimated_curvatures_are_rayleigh_quotients(dtype):
    """A Ritz value is the Rayleigh quotient of its Ritz vector exactly (here: up to rounding)."""
    problem, opt = one_cycle(dtype)
    b0 = opt.get_log()["prior_mean"][0]
    rounding = 1e-12 if dtype == torch.float64 else FLOAT32_FLOOR  # measured 5e-16 and 2.6e-7
    checked = 0
    for (sigma, U), H in zip(opt.curvature_estimate(), problem.hessians, strict=True):
        U = U.reshape(U.shape[0], -1).double()
        for s, u in zip(sigma.tolist(), U, strict=True):
            if s > b0:
                assert s == pytest.approx(float(u @ H @ u), rel=rounding)
                checked += 1
    assert checked == 4


def test_prior_scalars_match_their_formulas():
    dtype = torch.float64
    problem = BlockQuadratic(SHAPES, TOPS, dtype=dtype)
    # noise-free: every prior minibatch has the same gradient g = H e
    g = [H @ (p.detach().reshape(-1) - x) for p, H, x in zip(problem.params, problem.hessians,
                                                             problem.targets, strict=True)]
    h = [H @ gi for H, gi in zip(problem.hessians, g, strict=True)]
    vhv = sum(float(a @ b) for a, b in zip(g, h, strict=True))
    hh = sum(float(b @ b) for b in h)
    vv = sum(float(a @ a) for a in g)
    opt = Preconditioner(problem.parameters(), prior_iterations=4, noise_floor=1e-3)
    train(opt, problem, 4)
    log = opt.get_log()
    assert log["phase"] == "posterior"
    assert log["step_sizes"][0] == pytest.approx(vhv / hh, rel=1e-12)
    assert log["prior_mean"][0] == pytest.approx(hh / vhv, rel=1e-12)
    assert log["prior_width"][0] == pytest.approx(vhv / vv, rel=1e-12)
    # no noise at all: the estimate sits at its floor
    assert log["noise"][0] == pytest.approx(1e-3 * vhv / vv, rel=1e-9)
    assert log["noise_measured"][0] is True


@pytest.mark.parametrize("noise", [0.05, 0.5, 5.0])
def test_noise_estimate_within_factor_two(noise):
    _problem, opt = one_cycle(torch.float64, prior_iterations=10, noise=noise)
    estimate = opt.get_log()["noise"][0]
    assert noise / 2 <= estimate <= 2 * noise, (estimate, noise)


def test_noise_free_estimate_is_deterministic():
    runs = [one_cycle(torch.float32)[1].get_log()["eigenvalues"] for _ in range(2)]
    assert runs[0] == runs[1]
    assert all(math.isfinite(e) for tensor in runs[0] for e in tensor)
