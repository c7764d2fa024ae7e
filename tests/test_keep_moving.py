"""No idle minibatches: from the second cycle on the parameters keep moving while the next estimate is gathered."""

from __future__ import annotations

import warnings

import pytest
import torch

from helpers import BlockQuadratic, train
from probprec import AdaptiveSGD, Preconditioner

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

P, K = 4, 3
SHAPES = [(8, 8), (36,)]
TOPS = [(100.0, 40.0), (80.0, 30.0)]


def snapshot(problem):
    return [p.detach().clone() for p in problem.parameters()]


def moved(before, problem):
    return any(not torch.equal(a, b) for a, b in zip(before, problem.parameters(), strict=True))


@pytest.mark.parametrize("keep_moving", [True, False])
def test_the_first_cycle_holds_and_later_ones_move_only_when_asked(keep_moving):
    problem = BlockQuadratic(SHAPES, TOPS, dtype=torch.float64)
    opt = Preconditioner(problem.parameters(), prior_iterations=P, num_observations=K, keep_moving=keep_moving)
    start = snapshot(problem)
    train(opt, problem, P + K - 2)  # the first cycle, up to its last minibatch: nothing to move with yet
    assert not moved(start, problem) and opt.phase == "posterior"
    train(opt, problem, 3)
    opt.start_estimate()
    before = snapshot(problem)
    train(opt, problem, P + K - 2)  # the second cycle's estimation
    assert opt.phase == "posterior"
    assert moved(before, problem) == keep_moving


def test_an_estimation_step_is_an_update_with_the_previous_estimate():
    """AdaptiveSGD (plain SGD inside, nothing rescaled): theta <- theta - eta g with the previous eta."""
    problem = BlockQuadratic(SHAPES, TOPS, dtype=torch.float64)
    opt = AdaptiveSGD(problem.parameters(), prior_iterations=P, num_observations=K)
    train(opt, problem, P + K + 2)
    opt.start_estimate()
    estimate = opt.get_log()["step_sizes"]
    before = snapshot(problem)
    grads = []

    def loss():
        value = problem()
        grads.append(torch.autograd.grad(value, list(problem.parameters()), retain_graph=True))
        return value

    train(opt, loss, 1)
    eta = opt.get_log()["learning_rates"][0]  # the previous estimate times the safeguard's factor, as used
    assert opt.get_log()["step_sizes"] == estimate, "the previous estimate"
    for a, b, g in zip(before, problem.parameters(), grads[0], strict=True):
        torch.testing.assert_close(b.detach(), a - eta * g, rtol=1e-12, atol=1e-12)
    assert opt.phase == "prior"


def test_an_estimate_gathered_while_moving_is_still_exact_on_a_quadratic():
    """The Hessian of a quadratic is the same at every point: the moving estimate recovers it as well."""
    problem = BlockQuadratic(SHAPES, TOPS, dtype=torch.float64)
    opt = Preconditioner(problem.parameters(), prior_iterations=P, num_observations=K + 2)
    cycle = P + K + 1
    train(opt, problem, cycle + 3)
    opt.start_estimate()
    before = snapshot(problem)
    train(opt, problem, cycle)
    assert moved(before, problem) and opt.get_log()["cycles_completed"] == 2
    for (sigma, U), H in zip(opt.curvature_estimate(), problem.hessians, strict=True):
        U = U.reshape(U.shape[0], -1).double()
        for s, u in zip(sigma.tolist(), U, strict=True):
            assert s == pytest.approx(float(u @ H @ u), rel=1e-9)  # Ritz values stay Rayleigh quotients
