"""Acceptance 1 of the harness: every problem builds, has the architecture's parameter count, trains a step."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from probprec.bench.optimizer_protocol import needs_graph, training_mode
from probprec.bench.optimizers import OPTIMIZERS, get_optimizer
from probprec.bench.peers import PEERS
from probprec.bench.problems import EMBEDDED, PROBLEMS, get_problem
from probprec.bench.problems.layers import same_padding


def dense(a, b, bias=True):
    return a * b + (b if bias else 0)


def conv(k, a, b, bias=True):
    return k * k * a * b + (b if bias else 0)


def bn(c):
    return 2 * c


def wrn164():
    def block(a, b, projection):
        return bn(a) + conv(3, a, b, False) + bn(b) + conv(3, b, b, False) + (conv(1, a, b, False) if projection else 0)

    total = conv(3, 3, 16, False)
    for a, b in ((16, 64), (64, 128), (128, 256)):
        total += block(a, b, True) + block(b, b, False)
    return total + bn(256) + dense(256, 10)


THREE_C_THREE_D = conv(5, 3, 64) + conv(3, 64, 96) + conv(3, 96, 128) + dense(3 * 3 * 128, 512) + dense(512, 256)
EXPECTED = {
    "quadratic_deep": 100,
    "two_d_rosenbrock": 2, "two_d_beale": 2, "two_d_branin": 2,
    "paper_regression": 253,
    "mnist_logreg": dense(784, 10),
    "mnist_mlp": dense(784, 1000) + dense(1000, 500) + dense(500, 100) + dense(100, 10),
    "fmnist_mlp": dense(784, 1000) + dense(1000, 500) + dense(500, 100) + dense(100, 10),
    "mnist_2c2d": conv(5, 1, 32) + conv(5, 32, 64) + dense(7 * 7 * 64, 1024) + dense(1024, 10),
    "fmnist_2c2d": conv(5, 1, 32) + conv(5, 32, 64) + dense(7 * 7 * 64, 1024) + dense(1024, 10),
    "mnist35_logreg": dense(784, 1),
    "cifar10_3c3d": THREE_C_THREE_D + dense(256, 10),
    "cifar100_3c3d": THREE_C_THREE_D + dense(256, 100),
    "cifar10_roos": THREE_C_THREE_D + dense(256, 10),
    "cifar100_allcnnc": conv(3, 3, 96) + 2 * conv(3, 96, 96) + conv(3, 96, 192) + 3 * conv(3, 192, 192)
    + conv(1, 192, 192) + conv(1, 192, 100),
    "svhn_wrn164": wrn164(),
    "digits_mlp": dense(64, 128) + dense(128, 10),
    "digits_mlp_layerwise": dense(64, 128) + dense(128, 10),
    "digits_cnn": conv(3, 1, 16) + conv(3, 16, 32) + dense(2 * 2 * 32, 10),
    "robust_mlp_narrow": dense(64, 32) + dense(32, 32) + dense(32, 10),
    "robust_mlp_wide": dense(64, 512) + dense(512, 10),
    "robust_mlp_deep": dense(64, 64) * 6 + dense(64, 10),
    "robust_mlp_large_init": dense(64, 100) + dense(100, 100) + dense(100, 10),
    "robust_mlp_small_init": dense(64, 100) + dense(100, 100) + dense(100, 10),
    "robust_cnn_plain": conv(3, 1, 16) + conv(3, 16, 32) + conv(3, 32, 64) + dense(8 * 8 * 64, 10),
    "robust_cnn_strided": conv(3, 1, 16) + conv(3, 16, 32) + conv(3, 32, 64) + dense(2 * 2 * 64, 10),
    "robust_cnn_pooled": conv(3, 1, 16) + conv(3, 16, 32) + conv(3, 32, 64) + dense(2 * 2 * 64, 10),
    "robust_cnn_narrow": conv(3, 1, 4) + conv(3, 4, 8) + conv(3, 8, 16) + dense(2 * 2 * 16, 10),
    "robust_cnn_large_init": conv(3, 1, 16) + conv(3, 16, 32) + conv(3, 32, 64) + dense(2 * 2 * 64, 10),
    "robust_spirals_mlp": dense(2, 64) + dense(64, 64) * 2 + dense(64, 2),
}


def test_every_problem_is_covered():
    assert set(EXPECTED) == set(PROBLEMS)
    assert set(EMBEDDED) == {n for n, c in PROBLEMS.items() if c.dataset is None}
    assert {"digits_mlp", "digits_cnn", "quadratic_deep"} <= set(EMBEDDED)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_parameter_count_matches_the_architecture(name):
    torch.manual_seed(0)
    problem = get_problem(name)
    assert problem.count_parameters(problem.model()) == EXPECTED[name]


def test_same_padding_like_tensorflow():
    assert same_padding(28, 5, 1) == (2, 2)
    assert same_padding(14, 3, 2) == (0, 1)
    assert same_padding(32, 2, 2) == (0, 0)


PEER_NAMES = {peer.name for peer in PEERS}
SECOND_ORDER_FAST = {"prior_iterations": 1, "num_observations": 1, "est_rank": 1}


def one_step_hyperparameters(name: str) -> dict:
    spec = OPTIMIZERS[name]
    hp = dict(SECOND_ORDER_FAST) if spec.second_order else {}
    if "Tuned" in name:
        hp["lr"] = 1e-3
    return hp


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_each_problem_trains_a_step_with_every_optimizer(name, data_dir):
    problem = get_problem(name)
    splits = problem.splits(data_dir)
    for part in (splits.train, splits.train_eval, splits.valid, splits.test):
        assert len(part) > 0
    x, y = next(iter(DataLoader(splits.train, batch_size=4, shuffle=False)))
    # the peers (test_peers.py) train on small problems: on every problem they would double this test's time
    names = [*(name for name in OPTIMIZERS if name not in PEER_NAMES), "torch.optim.RMSprop"]
    for optimizer in names:
        torch.manual_seed(0)
        model = problem.model()
        spec = get_optimizer(optimizer)
        hp = one_step_hyperparameters(optimizer) if optimizer in OPTIMIZERS else {"lr": 1e-3}
        opt = spec.build(problem.param_groups(model), spec.hyperparameters(name, hp))
        before = [p.detach().clone() for p in model.parameters()]
        model.train()
        training_mode(opt)
        # the thesis mode's schedule ends each cycle with an extra minibatch: two steps to the first update
        for _ in range(2 if optimizer.startswith("Thesis") else 1):
            opt.zero_grad()
            loss = problem.loss(model(x), y) + problem.penalty(model)
            assert math.isfinite(float(loss.detach()))
            loss.backward(create_graph=needs_graph(opt))
            opt.step()
        moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert moved, f"{name} with {optimizer} did not move"


def test_problem_metadata():
    for cls in PROBLEMS.values():
        problem = cls()
        assert problem.metric in ("accuracy", "loss")
        assert problem.needs_files == (cls.dataset is not None)
        assert problem.batch_size >= 1 and problem.epochs >= 1 and problem.l2 >= 0
    assert get_problem("cifar10_roos").l2 == 0.01 and get_problem("cifar10_roos", l2=0.002).l2 == 0.002
    assert len(get_problem("digits_mlp_layerwise").param_groups(get_problem("digits_mlp").model())) == 2
