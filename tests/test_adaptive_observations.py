"""Adaptive observations: the posterior ends when its top curvatures stop moving; noise keeps them moving."""

from __future__ import annotations

import warnings

import pytest
import torch

from helpers import BlockQuadratic, train
from probprec import Preconditioner

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

SHAPES = [(8, 8), (36,)]
TOPS = [(100.0, 40.0), (80.0, 30.0)]
P, K = 4, 8


def observations(noise, seed, **kwargs):
    problem = BlockQuadratic(SHAPES, TOPS, noise=noise, seed=seed, dtype=torch.float64)
    opt = Preconditioner(problem.parameters(), prior_iterations=P, num_observations=K, **kwargs)

    def loss():
        problem.resample()
        return problem()

    steps = 0
    while opt.get_log()["cycles_completed"] == 0:
        train(opt, loss, 1)
        steps += 1
    return opt.get_log()["observations"], steps


@pytest.mark.parametrize("seed", range(3))
def test_fewer_observations_without_noise_than_with(seed):
    quiet, quiet_steps = observations(0.0, seed)
    noisy, _ = observations(0.5, seed)
    assert quiet < noisy <= K
    assert quiet_steps == P + quiet - 1  # the cycle ended early: fewer minibatches spent
    assert quiet >= 2  # enough for the rank-2 estimate


def test_without_adaptive_observations_every_cycle_observes_K():
    assert observations(0.0, 0, adaptive_observations=False)[0] == K
