"""The posterior of probprec.posterior against dense closed forms (float64)."""

from __future__ import annotations

import pytest
import torch

from probprec.posterior import (
    active_direction,
    apply_inverse,
    direction_coefficients,
    posterior_factors,
    posterior_matvec,
    posterior_system,
)

DT = torch.float64


def random_problem(n=12, m=4, seed=0, noise=0.3):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=gen, dtype=DT)
    B = A @ A.T / n + torch.eye(n, dtype=DT)
    S = torch.randn(m, n, generator=gen, dtype=DT)
    Y = S @ B + noise * torch.randn(m, n, generator=gen, dtype=DT)
    b0, w0, lam = (torch.tensor(v, dtype=DT) for v in (1.7, 0.9, 0.2))
    return S, Y, B, b0, w0, lam


def dense_posterior(S, Y, b0, w0, lam):
    """Paper eqs. (8), (11), (12) in vectorised form with explicit Kronecker products."""
    n, m = S.shape[1], S.shape[0]
    Sc, Yc = S.T, Y.T  # columns
    G = w0**2 * torch.kron(torch.eye(n, dtype=DT), Sc.T @ Sc)
    R = lam**2 * torch.kron(torch.eye(n, dtype=DT), torch.diag(torch.diag(Sc.T @ Sc)))
    delta = (Yc - b0 * Sc).reshape(-1)  # row-major vec: entry (a, b) at a*m + b
    X = torch.linalg.solve(G + R, delta).reshape(n, m)
    return b0 * torch.eye(n, dtype=DT) + w0**2 * X @ Sc.T


def system(S, Y, b0, w0, lam):
    return posterior_system(S @ S.T, S @ Y.T, b0, w0, lam)


def test_posterior_mean_matches_dense_kronecker_solve():
    S, Y, _, b0, w0, lam = random_problem()
    dense = dense_posterior(S, Y, b0, w0, lam)
    sys = system(S, Y, b0, w0, lam)
    x = torch.randn(S.shape[1], dtype=DT, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(posterior_matvec(x, S, Y, sys), dense @ x)
    X = posterior_factors(S, Y, sys)
    torch.testing.assert_close(b0 * torch.eye(S.shape[1], dtype=DT) + w0**2 * X.T @ S, dense)


def test_noise_free_posterior_reproduces_the_observations():
    S, Y, _B, b0, w0, _ = random_problem(noise=0.0)
    sys = system(S, Y, b0, w0, torch.tensor(1e-9, dtype=DT))
    for s, y in zip(S, Y, strict=True):
        torch.testing.assert_close(posterior_matvec(s, S, Y, sys), y, rtol=1e-6, atol=1e-6)


def test_inverse_is_the_exact_woodbury_inverse():
    S, Y, _, b0, w0, lam = random_problem()
    dense = dense_posterior(S, Y, b0, w0, lam)
    g = torch.randn(S.shape[1], dtype=DT, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(apply_inverse(g, S, Y, system(S, Y, b0, w0, lam)), torch.linalg.solve(dense, g))


def test_active_direction_without_orthogonalisation_is_minus_the_inverse():
    S, Y, _, b0, w0, lam = random_problem()
    g = torch.randn(S.shape[1], dtype=DT, generator=torch.Generator().manual_seed(3))
    sys = system(S, Y, b0, w0, lam)
    torch.testing.assert_close(active_direction(g, S, Y, sys, orthogonal=False), -apply_inverse(g, S, Y, sys))


def test_orthogonal_direction_is_orthogonal_and_keeps_the_length():
    n = 15
    gen = torch.Generator().manual_seed(4)
    S = torch.linalg.qr(torch.randn(n, 3, generator=gen, dtype=DT))[0].T * torch.tensor([[2.0], [0.5], [1.0]], dtype=DT)
    Y = torch.randn(3, n, generator=gen, dtype=DT)
    g = torch.randn(n, generator=gen, dtype=DT)
    b0, w0, lam = (torch.tensor(v, dtype=DT) for v in (1.3, 0.8, 0.1))
    sys = system(S, Y, b0, w0, lam)
    plain = -apply_inverse(g, S, Y, sys)
    s = active_direction(g, S, Y, sys, orthogonal=True)
    torch.testing.assert_close(S @ s, torch.zeros(3, dtype=DT), atol=1e-10, rtol=0)
    assert float(s.norm()) == pytest.approx(float(plain.norm()))
    expected = plain - S.T @ ((S @ plain) / (S * S).sum(1))
    torch.testing.assert_close(s / s.norm(), expected / expected.norm())


def test_direction_with_nothing_new_is_zero():
    S = torch.eye(3, dtype=DT)  # spans everything
    Y = 2.0 * S
    sys = system(S, Y, *(torch.tensor(v, dtype=DT) for v in (1.0, 1.0, 0.1)))
    s = active_direction(torch.tensor([1.0, -2.0, 0.5], dtype=DT), S, Y, sys, orthogonal=True)
    assert torch.equal(s, torch.zeros(3, dtype=DT))


def test_zero_rows_contribute_nothing():
    S, Y, _, b0, w0, lam = random_problem()
    S0 = torch.cat((S, torch.zeros(1, S.shape[1], dtype=DT)))
    Y0 = torch.cat((Y, torch.zeros(1, S.shape[1], dtype=DT)))
    x = torch.randn(S.shape[1], dtype=DT, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(posterior_matvec(x, S0, Y0, system(S0, Y0, b0, w0, lam)),
                               posterior_matvec(x, S, Y, system(S, Y, b0, w0, lam)))
    torch.testing.assert_close(apply_inverse(x, S0, Y0, system(S0, Y0, b0, w0, lam)),
                               apply_inverse(x, S, Y, system(S, Y, b0, w0, lam)))


def test_batched_coefficients_match_one_at_a_time():
    problems = [random_problem(seed=s) for s in range(3)]
    b0, w0, lam = problems[0][3:]
    SS = torch.stack([S @ S.T for S, *_ in problems])
    SY = torch.stack([S @ Y.T for S, Y, *_ in problems])
    gen = torch.Generator().manual_seed(6)
    Sg = torch.randn(3, 4, generator=gen, dtype=DT)
    batched = direction_coefficients(posterior_system(SS, SY, b0, w0, lam), Sg)
    for t in range(3):
        one = direction_coefficients(posterior_system(SS[t], SY[t], b0, w0, lam), Sg[t])
        for a, b in zip(batched, one, strict=True):
            torch.testing.assert_close(a[t], b)
