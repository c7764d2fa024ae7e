"""The prior scalars of probprec.prior against their formulas."""

from __future__ import annotations

import pytest
import torch

from probprec.prior import curvature_sums, estimate_prior, noise_sums

DT = torch.float64


def test_prior_scalars_against_formulas():
    gen = torch.Generator().manual_seed(0)
    B = torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=DT))
    probes = [torch.randn(4, generator=gen, dtype=DT) for _ in range(6)]
    hvps = [B @ v for v in probes]
    sums = sum(curvature_sums([v[:2], v[2:]], [h[:2], h[2:]]) for v, h in zip(probes, hvps, strict=True))
    vhv = sum(float(v @ h) for v, h in zip(probes, hvps, strict=True))
    hh = sum(float(h @ h) for h in hvps)
    vv = sum(float(v @ v) for v in probes)
    est = estimate_prior(sums, None)
    assert float(est.step_size) == pytest.approx(vhv / hh, rel=1e-12)
    assert float(est.mean) == pytest.approx(hh / vhv, rel=1e-12)
    assert float(est.width) == pytest.approx(vhv / vv, rel=1e-12)
    assert float(est.noise) == pytest.approx(vhv / vv) and est.noise_measured is False


@pytest.mark.parametrize("sigma", [0.01, 0.3, 3.0])
def test_noise_from_pairs_recovers_the_element_scale(sigma):
    gen = torch.Generator().manual_seed(1)
    n = 80
    B = torch.diag(torch.linspace(0.1, 5.0, n, dtype=DT))
    total = torch.zeros(2, dtype=DT)
    for _ in range(5):
        v = torch.randn(n, generator=gen, dtype=DT)
        hs = []
        for _ in range(2):  # block-diagonal noise, one block per tensor (the model's assumption)
            A = sigma * torch.randn(n, n, generator=gen, dtype=DT)
            A[:30, 30:] = 0
            A[30:, :30] = 0
            hs.append((B + (A + A.T) / 2**0.5) @ v)
        total += noise_sums([v[:30], v[30:]], [(hs[1] - hs[0])[:30], (hs[1] - hs[0])[30:]])
    est = estimate_prior(torch.tensor([1.0, 1.0, 1.0], dtype=DT), total, noise_floor=1e-9)
    assert float(est.noise) == pytest.approx(sigma, rel=0.15)


def test_noise_floor():
    est = estimate_prior(torch.tensor([2.0, 4.0, 1.0], dtype=DT), torch.tensor([0.0, 3.0], dtype=DT), 1e-3)
    assert float(est.noise) == pytest.approx(2e-3)


def test_negative_curvature_gives_a_negative_step_and_the_caller_decides():
    est = estimate_prior(torch.tensor([-2.0, 4.0, 1.0], dtype=DT), None)
    assert float(est.step_size) == -0.5
