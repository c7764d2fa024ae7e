"""The inner optimizer's hyperparameters: given globally or per group, they reach it and schedulers see them."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from helpers import classification_batches, mlp
from probprec import PreconditionedAdam, PreconditionedMomentum, PreconditionedTunedSGD, Preconditioner

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

KW = dict(prior_iterations=3, num_observations=2, est_rank=1)


def train(model, opt, steps, seed=0, scheduler=None):
    for x, y in classification_batches(steps, seed=seed):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
        opt.step()
        if scheduler is not None:
            scheduler.step()


def two_groups(model, **second):
    return [{"params": model[0].parameters()}, {"params": model[2].parameters(), **second}]


def test_a_per_group_momentum_reaches_the_inner_optimizer():
    model = mlp()
    opt = Preconditioner(two_groups(model, momentum=0.9), lr=0.01, **KW)
    assert [g["momentum"] for g in opt.param_groups] == [0, 0.9]
    train(model, opt, 12)
    inner = opt.state_dict()["inner"]
    assert [g["momentum"] for g in inner["param_groups"]] == [0, 0.9]
    has_buffer = [inner["state"].get(i, {}).get("momentum_buffer") is not None for i in range(4)]
    assert has_buffer == [False, False, True, True]


def test_per_group_momentum_trains_like_torch_sgd_with_the_same_groups():
    """With the preconditioner off and a fixed lr the inner step is plain SGD: the trajectories agree."""
    batches = 10
    ours = mlp()
    opt = Preconditioner(two_groups(ours, momentum=0.9, lr=0.05), lr=0.02, build_preconditioner=False,
                         apply_preconditioner=False, prior_iterations=1, num_observations=1, est_rank=1)
    theirs = mlp()
    ref = torch.optim.SGD(two_groups(theirs, momentum=0.9, lr=0.05), lr=0.02)
    data = classification_batches(batches, seed=4)
    for x, y in data:
        for m, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward(create_graph=o is opt and opt.create_graph)
            o.step()
    # the first minibatch is the (one-step) estimate and also the first update: the same number of updates
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_cycle_lr_cycles_the_inner_betas_and_momentum():
    model = mlp()
    adam = PreconditionedAdam(model.parameters(), **KW)
    assert adam.param_groups[0]["betas"] == (0.9, 0.999)
    schedule = torch.optim.lr_scheduler.OneCycleLR(adam, max_lr=1.0, total_steps=20)
    train(model, adam, 12, scheduler=schedule)
    train(model, adam, 1)  # the next step hands the scheduled values to the inner optimizer
    beta1 = adam.param_groups[0]["betas"][0]
    assert beta1 != 0.9 and adam.state_dict()["inner"]["param_groups"][0]["betas"][0] == beta1

    model = mlp()
    sgd = PreconditionedMomentum(model.parameters(), **KW)
    schedule = torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=1.0, total_steps=20)
    train(model, sgd, 12, scheduler=schedule)
    train(model, sgd, 1)
    momentum = sgd.param_groups[0]["momentum"]
    assert momentum != 0.9 and sgd.state_dict()["inner"]["param_groups"][0]["momentum"] == momentum


def test_inner_defaults_are_visible_in_param_groups_and_defaults():
    model = mlp()
    opt = Preconditioner(model.parameters(), optim_class=torch.optim.RMSprop, alpha=0.9, **KW)
    for key, value in (("alpha", 0.9), ("eps", 1e-8), ("centered", False), ("momentum", 0)):
        assert opt.defaults[key] == value
        assert all(g[key] == value for g in opt.param_groups)


def test_the_inner_optimizers_own_weight_decay_is_zero_unless_given():
    """weight_decay is the objective's L2 term; the inner optimizer's own decay is inner_weight_decay."""
    model = mlp()
    opt = Preconditioner(model.parameters(), optim_class=torch.optim.AdamW, **KW)
    assert opt.param_groups[0]["inner_weight_decay"] == 0.0
    assert opt.state_dict()["inner"]["param_groups"][0]["weight_decay"] == 0.0

    decayed, plain = mlp(), mlp()
    a = Preconditioner(decayed.parameters(), optim_class=torch.optim.AdamW, inner_weight_decay=0.5, **KW)
    b = Preconditioner(plain.parameters(), optim_class=torch.optim.AdamW, **KW)
    assert a.state_dict()["inner"]["param_groups"][0]["weight_decay"] == 0.5
    train(decayed, a, 10)
    train(plain, b, 10)
    shrink = [float(p.norm() / q.norm()) for p, q in zip(decayed.parameters(), plain.parameters(), strict=True)]
    assert max(shrink) < 1.0, "decoupled decay shrinks the weights"


def test_inner_weight_decay_per_group_and_validated():
    model = mlp()
    opt = Preconditioner(two_groups(model, inner_weight_decay=0.1), optim_class=torch.optim.AdamW, **KW)
    assert [g["weight_decay"] for g in opt.state_dict()["inner"]["param_groups"]] == [0.0, 0.1]
    with pytest.raises(ValueError, match=r"^inner_weight_decay must be a finite number >= 0"):
        Preconditioner(mlp().parameters(), inner_weight_decay=-1.0)


def test_a_per_group_value_the_inner_optimizer_rejects_is_refused_up_front():
    with pytest.raises(ValueError, match="momentum"):
        Preconditioner(two_groups(mlp(), momentum=-0.5), **KW)
    with pytest.raises(ValueError, match="betas"):
        PreconditionedAdam(two_groups(mlp(), betas=(1.5, 0.9)), **KW)


def test_fixed_lr_groups_still_work():
    model = mlp()
    opt = PreconditionedTunedSGD(two_groups(model, lr=0.2), lr=0.1, momentum=0.5, **KW)
    train(model, opt, 8)
    assert opt.get_log()["learning_rates"] == [0.1, 0.2]
    assert [g["momentum"] for g in opt.state_dict()["inner"]["param_groups"]] == [0.5, 0.5]
