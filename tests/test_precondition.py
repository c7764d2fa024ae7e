"""The preconditioner rules of probprec.precondition."""

from __future__ import annotations

import pytest
import torch

from probprec.precondition import condition_gain, newton_factors, paper_factors, precondition

DT = torch.float64


def test_newton_rule_gives_newton_steps_along_high_curvature():
    eig = torch.tensor([50.0, 8.0, 1.0, -3.0], dtype=DT)
    valid = torch.tensor([True, True, True, False])
    f = newton_factors(eig, valid, torch.tensor(4.0, dtype=DT))
    # alpha * c_j = (1/4) * (4/sigma) = 1/sigma above the prior level, 1 elsewhere
    assert (1 + f).tolist() == pytest.approx([4 / 50, 4 / 8, 1.0, 1.0])


def test_applied_operator_matches_dense():
    n = 7
    gen = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(n, 2, generator=gen, dtype=DT))[0].T
    f = torch.tensor([-0.9, -0.25], dtype=DT)
    P = torch.eye(n, dtype=DT) + U.T @ torch.diag(f) @ U
    g = torch.randn(n, generator=gen, dtype=DT)
    torch.testing.assert_close(precondition(g, U, f), P @ g)
    eig = torch.linalg.eigvalsh(P)
    assert eig.min() == pytest.approx(0.1) and eig.max() == pytest.approx(1.0)


def test_paper_rule_and_gain():
    eig = torch.tensor([100.0, 25.0], dtype=DT)
    valid = torch.tensor([True, True])
    assert (1 + paper_factors(eig, valid)).tolist() == pytest.approx([0.01, 0.04])
    assert float(condition_gain(eig, valid)) == pytest.approx(4.0)
    assert float(condition_gain(eig[:1], valid[:1])) == 1.0
