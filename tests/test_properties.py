"""Acceptance 6: property tests over random shapes, group layouts and hyperparameters."""

from __future__ import annotations

import math
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from probprec import Preconditioner

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
layouts = st.lists(st.lists(shapes, min_size=1, max_size=3), min_size=1, max_size=3)
INNER = {
    "sgd": (torch.optim.SGD, {}),
    "momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, {}),
}


@st.composite
def configurations(draw):
    est_rank = draw(st.integers(1, 3))
    return {
        "layout": draw(layouts),
        "est_rank": est_rank,
        "num_observations": draw(st.integers(est_rank, 4)),
        "prior_iterations": draw(st.integers(1, 3)),
        "weight_decay": draw(st.sampled_from([0.0, 0.05])),
        "lr": draw(st.sampled_from([None, 0.05])),
        "extraction": draw(st.sampled_from(["ritz", "posterior"])),
        "observe": draw(st.sampled_from(["next", "same"])),
        "orthogonalize": draw(st.booleans()),
        "inner": draw(st.sampled_from(sorted(INNER))),
        "seed": draw(st.integers(0, 2**16)),
        "scale": draw(st.sampled_from([1e-3, 1.0, 1e3])),
    }


def build(config):
    gen = torch.Generator().manual_seed(config["seed"])
    groups = [
        [nn.Parameter(torch.randn(shape, generator=gen)) for shape in group] for group in config["layout"]
    ]
    cls, inner_kwargs = INNER[config["inner"]]
    opt = Preconditioner(
        [{"params": g} for g in groups],
        est_rank=config["est_rank"], num_observations=config["num_observations"],
        prior_iterations=config["prior_iterations"], weight_decay=config["weight_decay"], lr=config["lr"],
        extraction=config["extraction"], observe=config["observe"], orthogonalize=config["orthogonalize"],
        optim_class=cls, **inner_kwargs,
    )
    params = [p for g in groups for p in g]
    return params, opt, gen


def loss_fn(params, gen, scale):
    """A coupled, non-convex, noisy loss: a random positive quadratic plus a tanh coupling term."""
    flat = torch.cat([p.reshape(-1) for p in params])
    a = torch.rand(flat.numel(), generator=gen) + 0.1
    b = torch.randn(flat.numel(), generator=gen)
    return scale * (0.5 * (a * flat**2).sum() + 0.3 * (b * torch.tanh(flat)).sum() ** 2)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(configurations())
def test_random_configurations(config):
    params, opt, gen = build(config)
    cycle = config["prior_iterations"] + config["num_observations"]
    for t in range(2 * cycle + 4):
        if t == cycle + 2:
            opt.start_estimate()
        opt.zero_grad()
        loss_fn(params, gen, config["scale"]).backward(create_graph=opt.create_graph)
        opt.step()
        assert all(torch.isfinite(p).all() for p in params)
    log = opt.get_log()
    assert log["cycles_completed"] == 2
    for value in log["step_sizes"] + log["learning_rates"]:
        assert value is not None and math.isfinite(value) and value > 0
    assert all(math.isfinite(e) for tensor in log["eigenvalues"] for e in tensor)
    assert len(log["eigenvalues"]) == len(params)
    # The preconditioner never lengthens a step along any direction: P is symmetric
    # with eigenvalues in (0, 1].
    for j, (p, estimate) in enumerate(zip(params, opt.curvature_estimate(), strict=True)):
        n = p.numel()
        basis = torch.eye(n)
        columns = [
            opt.precondition([basis[i].view_as(p) if k == j else torch.zeros_like(q) for k, q in enumerate(params)])
            for i in range(n)
        ]
        P = torch.stack([c[j].reshape(-1) for c in columns], dim=1).double()
        torch.testing.assert_close(P, P.T, atol=1e-5, rtol=0)
        eig = torch.linalg.eigvalsh(0.5 * (P + P.T))
        assert eig.min() > 0 and eig.max() <= 1 + 1e-5
        if estimate is not None:
            sigma, U = estimate
            assert sigma.shape[0] == U.shape[0] <= config["est_rank"]
            gram = U.reshape(U.shape[0], -1).double() @ U.reshape(U.shape[0], -1).double().T
            torch.testing.assert_close(gram, torch.eye(U.shape[0], dtype=torch.float64), atol=1e-4, rtol=0)
