"""Low-rank extraction against dense eigendecompositions."""

from __future__ import annotations

import pytest
import torch

from probprec.lowrank import posterior_eigen, rayleigh_ritz, ritz_coefficients
from probprec.posterior import posterior_system

DT = torch.float64


def spd(n, top, seed=0):
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))[0]
    lam = torch.cat((torch.tensor(top, dtype=DT), torch.linspace(1.0, 0.1, n - len(top), dtype=DT)))
    return (Q * lam) @ Q.T, Q, lam


def test_ritz_on_an_invariant_subspace_is_exact():
    B, Q, _lam = spd(20, [50.0, 20.0, 7.0])
    S = (Q[:, :3] @ torch.randn(3, 3, dtype=DT, generator=torch.Generator().manual_seed(1))).T  # spans top-3
    low = rayleigh_ritz(S, S @ S.T, S @ (S @ B).T, k=2)
    assert low.eigvals.tolist() == pytest.approx([50.0, 20.0], rel=1e-10)
    assert low.valid.all()
    torch.testing.assert_close((low.eigvecs @ Q[:, :2]).abs(), torch.eye(2, dtype=DT), atol=1e-8, rtol=0)


def test_ritz_values_are_rayleigh_quotients_on_any_subspace():
    B, _, _ = spd(30, [40.0, 9.0], seed=2)
    S = torch.randn(5, 30, dtype=DT, generator=torch.Generator().manual_seed(3))
    low = rayleigh_ritz(S, S @ S.T, S @ (S @ B).T, k=3)
    for sigma, u in zip(low.eigvals, low.eigvecs, strict=True):
        assert float(sigma) == pytest.approx(float(u @ B @ u), rel=1e-9)
    torch.testing.assert_close(low.eigvecs @ low.eigvecs.T, torch.eye(3, dtype=DT))
    # Ritz values are the eigenvalues of the projection, dense
    W = torch.linalg.qr(S.T)[0]
    assert low.eigvals.tolist() == pytest.approx(torch.linalg.eigvalsh(W.T @ B @ W).flip(0)[:3].tolist(), rel=1e-9)


def test_negative_curvature_is_not_mistaken_for_large():
    B = torch.diag(torch.tensor([-30.0, 5.0, 1.0, 0.5], dtype=DT))
    S = torch.eye(4, dtype=DT)
    low = rayleigh_ritz(S, S @ S.T, S @ (S @ B).T, k=2)
    assert low.eigvals.tolist() == pytest.approx([5.0, 1.0])


def test_rank_deficient_subspace_masks_the_missing_directions():
    B, _, _ = spd(6, [10.0], seed=4)
    s = torch.randn(6, dtype=DT, generator=torch.Generator().manual_seed(5))
    S = torch.stack((s, 2 * s, torch.zeros(6, dtype=DT)))
    low = rayleigh_ritz(S, S @ S.T, S @ (S @ B).T, k=2)
    assert low.valid.tolist() == [True, False]
    assert float(low.eigvals[0]) == pytest.approx(float(s @ B @ s / (s @ s)))


def test_one_element_tensor():
    S = torch.tensor([[0.5], [-0.25], [0.0]], dtype=DT)
    low = rayleigh_ritz(S, S @ S.T, S @ (3.0 * S).T, k=2)
    assert low.eigvals.shape == (2,) and low.valid.tolist() == [True, False]
    assert float(low.eigvals[0]) == pytest.approx(3.0) and low.eigvecs[0].tolist() == [1.0]


def test_signs_are_deterministic():
    B, _, _ = spd(10, [8.0, 4.0], seed=6)
    S = torch.randn(4, 10, dtype=DT, generator=torch.Generator().manual_seed(7))
    a = rayleigh_ritz(S, S @ S.T, S @ (S @ B).T, k=2)
    b = rayleigh_ritz(-S, S @ S.T, S @ (S @ B).T, k=2)  # same subspace, flipped basis
    for u in a.eigvecs:
        assert u[u.abs().argmax()] > 0
    torch.testing.assert_close(a.eigvecs, b.eigvecs)


def test_posterior_eigen_matches_dense_symmetric_part():
    B, _, _ = spd(12, [30.0, 12.0], seed=8)
    gen = torch.Generator().manual_seed(9)
    S = torch.randn(4, 12, generator=gen, dtype=DT)
    Y = S @ B + 0.1 * torch.randn(4, 12, generator=gen, dtype=DT)
    b0, w0, lam = (torch.tensor(v, dtype=DT) for v in (2.0, 3.0, 0.5))
    system = posterior_system(S @ S.T, S @ Y.T, b0, w0, lam)
    low = posterior_eigen(S, Y, system, k=2)
    X = torch.linalg.solve(system.M, Y - b0 * S)
    mean = b0 * torch.eye(12, dtype=DT) + w0**2 * X.T @ S
    dense = torch.linalg.eigvalsh(0.5 * (mean + mean.T)).flip(0)[:2]
    assert low.eigvals.tolist() == pytest.approx(dense.tolist(), rel=1e-9)


def test_batched_ritz_matches_one_at_a_time():
    mats = [spd(9, [5.0 + s], seed=s)[0] for s in range(3)]
    Ss = [torch.randn(4, 9, dtype=DT, generator=torch.Generator().manual_seed(10 + s)) for s in range(3)]
    SS = torch.stack([S @ S.T for S in Ss])
    SY = torch.stack([S @ (S @ B).T for S, B in zip(Ss, mats, strict=True)])
    batched = ritz_coefficients(SS, SY, 2)
    for t in range(3):
        one = ritz_coefficients(SS[t], SY[t], 2)
        torch.testing.assert_close(batched.eigvals[t], one.eigvals)
        torch.testing.assert_close(batched.coefficients[t], one.coefficients)
