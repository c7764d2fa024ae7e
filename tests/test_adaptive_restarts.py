"""Adaptive restarts (probprec.schedule): a new estimate when the curvature changed, not while it stays."""

from __future__ import annotations

import warnings

import torch

from helpers import BlockQuadratic, train
from probprec import PreconditionedSGD
from probprec.schedule import MAX_AGE

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

SHAPES = [(8, 8), (36,)]
TOPS = [(100.0, 40.0), (80.0, 30.0)]
P, K = 4, 3


def stale_restarts(opt):
    return [e for e in opt.get_log()["events"] if e["kind"] == "restart" and "stale" in e["message"]]


def run(noise, seed, steps, scale_at=None, factor=1.0):
    """PreconditionedSGD on a (noisy) block quadratic, no start_estimate(); from ``scale_at`` on the Hessian
    is ``factor`` times larger."""
    problem = BlockQuadratic(SHAPES, TOPS, noise=noise, seed=seed, dtype=torch.float64)
    opt = PreconditionedSGD(problem.parameters(), prior_iterations=P, num_observations=K)
    state = {"t": 0}

    def loss():
        problem.resample()
        state["t"] += 1
        scale = factor if scale_at is not None and state["t"] > scale_at else 1.0
        return scale * problem()

    train(opt, loss, steps)
    return opt


def test_no_restart_while_the_curvature_stays():
    """Noisy stationary quadratics, five seeds: the false-alarm rate of the staleness check."""
    alarms, checks = 0, 0
    for seed in range(5):
        opt = run(noise=0.5, seed=seed, steps=400)
        alarms += len(stale_restarts(opt))
        checks += opt.state_dict()["probprec"]["safeguard"]["checks"]
    assert checks >= 5 * 7
    assert alarms == 0, f"{alarms} false alarms in {checks} checks"


def test_a_restart_follows_an_abrupt_change():
    for seed in range(3):
        opt = run(noise=0.5, seed=seed, steps=120, scale_at=40, factor=4.0)
        restarts = stale_restarts(opt)
        assert len(restarts) >= 1, seed
        assert opt.get_log()["cycles_completed"] >= 2


def test_an_old_estimate_is_renewed_after_max_age_updates():
    problem = BlockQuadratic(SHAPES, TOPS, dtype=torch.float64)
    opt = PreconditionedSGD(problem.parameters(), prior_iterations=P, num_observations=K)
    train(opt, problem, P + K - 1 + MAX_AGE + P + K)  # an estimate, MAX_AGE updates, the next estimate
    ages = [e for e in opt.get_log()["events"] if e["kind"] == "restart" and str(MAX_AGE) in e["message"]]
    assert len(ages) == 1 and opt.get_log()["cycles_completed"] == 2


def test_adaptive_restarts_can_be_turned_off():
    problem = BlockQuadratic(SHAPES, TOPS, dtype=torch.float64)
    opt = PreconditionedSGD(problem.parameters(), prior_iterations=P, num_observations=K, adaptive_restarts=False)
    train(opt, problem, P + K - 1 + MAX_AGE + P + K)
    assert opt.get_log()["cycles_completed"] == 1
