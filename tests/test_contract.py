"""Acceptance 3: the torch.optim contract."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from helpers import classification_batches, mlp
from probprec import (
    AdaptiveSGD,
    OnlyAdaptiveSGD,
    PreconditionedAdam,
    PreconditionedMomentum,
    PreconditionedSGD,
    PreconditionedTunedSGD,
    Preconditioner,
)

P, K = 4, 3
KW = dict(prior_iterations=P, num_observations=K, est_rank=2)

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")


def run_steps(model, opt, batches, start=0, restart_every=None, create_graph=None):
    for t, (x, y) in enumerate(batches[start:], start):
        if restart_every and t > 0 and t % restart_every == 0:
            opt.start_estimate()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward(create_graph=opt.create_graph if create_graph is None else create_graph)
        opt.step()


def fresh(make_opt, dtype=torch.float32):
    model = mlp(dtype=dtype)
    return model, make_opt(model)


OPTIMIZERS = {
    "precond": lambda m: Preconditioner(m.parameters(), **KW),
    "momentum": lambda m: PreconditionedMomentum(m.parameters(), momentum=0.5, **KW),
    "adam": lambda m: PreconditionedAdam(m.parameters(), lr=0.01, **KW),
    "adaptive": lambda m: AdaptiveSGD(m.parameters(), **KW),
    "only_adaptive": lambda m: OnlyAdaptiveSGD(m.parameters(), **KW),
    "tuned": lambda m: PreconditionedTunedSGD(m.parameters(), lr=0.05, **KW),
    "paper": lambda m: Preconditioner(m.parameters(), lr=0.05, step_rule="paper", **KW),
    "posterior_extraction": lambda m: Preconditioner(m.parameters(), extraction="posterior",
                                                     observe="same", weight_decay=0.01, **KW),
    "groups": lambda m: Preconditioner(
        [{"params": m[0].parameters(), "weight_decay": 0.01}, {"params": m[2].parameters(), "lr": 0.5}],
        momentum=0.5, **KW),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_is_an_optimizer_and_trains(name):
    model, opt = fresh(OPTIMIZERS[name])
    assert isinstance(opt, torch.optim.Optimizer)
    batches = classification_batches(60, seed=1)
    x, y = batches[0]
    before = float(nn.functional.cross_entropy(model(x), y))
    run_steps(model, opt, batches, restart_every=20)
    after = float(nn.functional.cross_entropy(model(x), y))
    assert after < before
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --------------------------------------------------------------- state dict


@pytest.mark.parametrize("name", ["precond", "momentum", "adam", "groups", "posterior_extraction", "paper"])
@pytest.mark.parametrize("save_at", [2, P + 1, P + K + 3, 21, 22])  # prior, posterior, optimize, new cycle
def test_state_dict_round_trip_is_bit_identical(name, save_at):
    batches = classification_batches(40, seed=2)
    make = OPTIMIZERS[name]
    ref_model, ref_opt = fresh(make)
    run_steps(ref_model, ref_opt, batches, restart_every=20)

    model, opt = fresh(make)
    run_steps(model, opt, batches[:save_at], restart_every=20)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    phase_at_save = opt.phase
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2, opt2 = fresh(make)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    assert opt2.phase == phase_at_save
    run_steps(model2, opt2, batches, start=save_at, restart_every=20)
    for a, b in zip(ref_model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert opt2.get_log() == ref_opt.get_log()


def test_state_dict_holds_inner_state():
    model, opt = fresh(OPTIMIZERS["momentum"])
    run_steps(model, opt, classification_batches(12))
    sd = opt.state_dict()
    assert any("momentum_buffer" in s for s in sd["inner"]["state"].values())
    assert "optim_class" not in sd["param_groups"][0]


def test_deepcopy_continues_identically():
    batches = classification_batches(20, seed=3)
    model, opt = fresh(OPTIMIZERS["momentum"])
    run_steps(model, opt, batches[:9])
    model2 = copy.deepcopy(model)
    opt2 = OPTIMIZERS["momentum"](model2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    run_steps(model, opt, batches, start=9)
    run_steps(model2, opt2, batches, start=9)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------------ param groups


def test_groups_get_their_own_step_sizes():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5))
    b = nn.Parameter(torch.randn(7))
    opt = Preconditioner([{"params": [a]}, {"params": [b]}], **KW)

    def loss():
        return 0.5 * (a**2).sum() * 10.0 + 0.5 * (b**2).sum() * 0.1

    for _ in range(P + K + 1):
        opt.zero_grad()
        loss().backward(create_graph=opt.create_graph)
        opt.step()
    sizes = opt.get_log()["step_sizes"]
    assert sizes[0] == pytest.approx(0.1, rel=1e-5)
    assert sizes[1] == pytest.approx(10.0, rel=1e-5)


def test_add_param_group_joins_at_the_next_cycle():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5))
    b = nn.Parameter(torch.randn(3))
    opt = Preconditioner([a], **KW)

    def step():
        opt.zero_grad()
        (0.5 * (a**2).sum() + 2.0 * (b**2).sum()).backward(create_graph=opt.create_graph)
        opt.step()

    for _ in range(P + K):
        step()
    opt.add_param_group({"params": [b]})
    held = b.detach().clone()
    step()
    assert torch.equal(b, held), "the new group is held until its first estimate"
    assert opt.get_log()["step_sizes"] == [pytest.approx(1.0), None]
    opt.start_estimate()
    for _ in range(P + K):
        step()
    assert opt.get_log()["step_sizes"] == [pytest.approx(1.0), pytest.approx(0.25)]
    assert not torch.equal(b, held)


# -------------------------------------------------------------- schedulers


def scheduled_runs(make_scheduler, steps=30, restart_every=10, scheduler_arg=None):
    """Run AdaptiveSGD (plain SGD inside, nothing rescaled) under the scheduler.

    Returns, per update: the multiplier the scheduler had set, the estimated step size, and the
    learning rate *measured* from the update itself, -<delta theta, g> / <g, g>.
    """
    model = mlp(dtype=torch.float64)  # float64: the measured rate resolves even the smallest updates
    # without the safeguard, whose cuts would scale the step too (tests/test_safeguard.py checks those)
    opt = AdaptiveSGD(model.parameters(), safeguard=False, **KW)
    scheduler = make_scheduler(opt)
    batches = classification_batches(steps, seed=4, dtype=torch.float64)
    records = []
    for t, (x, y) in enumerate(batches):
        if t and t % restart_every == 0:
            opt.start_estimate()
        multiplier = opt.param_groups[0]["lr"]
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward(create_graph=opt.create_graph)
        opt.step()
        scheduler.step(float(loss)) if scheduler_arg else scheduler.step()
        delta = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before, strict=True)])
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        if delta.abs().max() > 0:
            measured = float(-(delta @ grad) / (grad @ grad))
            records.append((multiplier, opt.get_log()["step_sizes"][0], measured))
    return records


@pytest.mark.parametrize(
    "make,arg",
    [
        (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5), False),
        (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9), False),
        (lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=40, cycle_momentum=False),
         False),
        (lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0), True),
    ],
    ids=["StepLR", "ExponentialLR", "OneCycleLR", "ReduceLROnPlateau"],
)
def test_schedulers_scale_the_effective_step(make, arg):
    records = scheduled_runs(make, scheduler_arg=arg)
    assert len({round(m, 12) for m, _, _ in records}) > 1, "the scheduler must have changed the multiplier"
    assert len({s for _, s, _ in records}) >= 2, "re-estimation must have produced new step sizes"
    for multiplier, step_size, measured in records:
        # the parameters moved by exactly multiplier x step size along -g (float64 rounding of theta)
        assert measured == pytest.approx(multiplier * step_size, rel=1e-8)


def test_multiplier_scales_the_update_exactly():
    """With plain SGD the update is linear in the effective learning rate."""
    deltas = []
    for multiplier in (1.0, 0.25):
        model = mlp()
        opt = PreconditionedSGD(model.parameters(), **KW)
        batches = classification_batches(P + K + 2, seed=5)
        run_steps(model, opt, batches[:-1])
        opt.param_groups[0]["lr"] = multiplier
        before = [p.detach().clone() for p in model.parameters()]
        run_steps(model, opt, batches[-1:])
        deltas.append([p.detach() - b for p, b in zip(model.parameters(), before, strict=True)])
    for full, quarter in zip(*deltas, strict=True):
        torch.testing.assert_close(quarter, 0.25 * full, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------- dtypes and grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype):
    model, opt = fresh(OPTIMIZERS["precond"], dtype=dtype)
    batches = classification_batches(P + K + 3, dtype=dtype)
    run_steps(model, opt, batches)
    for p in model.parameters():
        assert p.dtype == dtype
        for value in opt.state[p].values():
            if torch.is_tensor(value) and value.is_floating_point():
                assert value.dtype == dtype
    assert all(e is None or e[1].dtype == dtype for e in opt.curvature_estimate())


@pytest.mark.parametrize("always_create_graph", [False, True])
def test_grad_is_the_true_gradient_after_every_step(always_create_graph):
    model, opt = fresh(OPTIMIZERS["precond"])
    for t, (x, y) in enumerate(classification_batches(P + K + 4, seed=6)):
        probe = copy.deepcopy(model)
        nn.functional.cross_entropy(probe(x), y).backward()
        true = [p.grad for p in probe.parameters()]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=always_create_graph or opt.create_graph)
        opt.step()
        for p, g in zip(model.parameters(), true, strict=True):
            assert p.grad is not None and not p.grad.requires_grad, t
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_always_create_graph_gives_the_same_trajectory():
    batches = classification_batches(20, seed=7)
    runs = []
    for always in (False, True):
        model, opt = fresh(OPTIMIZERS["momentum"])
        run_steps(model, opt, batches, create_graph=True if always else None)
        runs.append(list(model.parameters()))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_missing_graph_raises_and_says_what_to_change():
    model, opt = fresh(OPTIMIZERS["precond"])
    x, y = classification_batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"create_graph=optimizer\.create_graph"):
        opt.step()


def test_closure():
    model, opt = fresh(OPTIMIZERS["precond"])
    losses = []
    for x, y in classification_batches(P + K + 3):
        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward(create_graph=opt.create_graph)
            return loss
        losses.append(float(opt.step(closure)))
    assert len(losses) == P + K + 3 and opt.phase == "optimize"


class Odd(nn.Module):
    """A model with a 1-element tensor, an unused parameter and a frozen one."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 1)  # its bias has one element
        self.scale = nn.Parameter(torch.ones(1))
        self.unused = nn.Parameter(torch.randn(4))
        self.frozen = nn.Parameter(torch.randn(6), requires_grad=False)

    def forward(self, x):
        return (self.scale * self.lin(x + self.frozen)).squeeze(-1)


def test_one_element_unused_and_frozen_parameters():
    model = Odd()
    opt = PreconditionedSGD(model.parameters(), **KW)
    unused, frozen = model.unused.detach().clone(), model.frozen.detach().clone()
    gen = torch.Generator().manual_seed(0)
    for _ in range(2 * (P + K) + 3):
        x = torch.randn(16, 6, generator=gen)
        y = x.sum(1)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward(create_graph=opt.create_graph)
        opt.step()
        if opt.phase == "optimize" and opt.get_log()["cycles_completed"] == 1:
            opt.start_estimate()
    assert torch.equal(model.unused, unused) and torch.equal(model.frozen, frozen)
    log = opt.get_log()
    assert log["cycles_completed"] == 2
    sizes = dict(zip([name for name, _ in model.named_parameters()], map(len, log["eigenvalues"]), strict=True))
    assert sizes == {"scale": 1, "unused": 0, "frozen": 0, "lin.weight": 2, "lin.bias": 1}
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sparse_gradients_raise():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = Preconditioner(emb.parameters(), **KW)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("inner", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
                                   torch.optim.Adagrad, torch.optim.NAdam])
def test_any_torch_optimizer_can_be_inner(inner):
    model = mlp()
    opt = Preconditioner(model.parameters(), optim_class=inner, lr=0.01, **KW)
    run_steps(model, opt, classification_batches(P + K + 5))
    assert opt.get_log()["cycles_completed"] == 1
    assert len(opt._inner.state) > 0  # the inner optimizer stepped


@pytest.mark.parametrize("safeguard", [False, True])
def test_create_graph_property_follows_the_phase(safeguard):
    model = mlp()
    opt = OnlyAdaptiveSGD(model.parameters(), safeguard=safeguard, adaptive_restarts=safeguard, **KW)
    flags = []
    for x, y in classification_batches(P + 4):
        flags.append(opt.create_graph)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
        opt.step()
    # the prior's P steps; with the safeguard, the first update after the estimate's own is a check step
    # (its step ratio is small here, so the next check is two updates later)
    checks = [True, False, True, False] if safeguard else [False] * 4
    assert flags == [True] * P + checks
    assert opt.get_log()["hvp_count"] == P + sum(checks)
    assert opt.get_log()["eigenvalues"] == [[] for _ in model.parameters()]


def test_restart_interval():
    model = mlp()
    opt = PreconditionedSGD(model.parameters(), restart_interval=5, **KW)
    restarts = 0
    for x, y in classification_batches(40):
        restarts += opt.maybe_start_estimate()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
        opt.step()
    # a cycle is P + K - 1 held steps and 5 optimization steps (the first on the last posterior
    # minibatch): 11 steps, so restarts happen before steps 11, 22 and 33
    assert restarts == 3
    assert opt.get_log()["events"][-1]["kind"] == "restart"


def test_first_cycle_lr_holds_for_the_first_cycle_only():
    model = mlp()
    opt = PreconditionedSGD(model.parameters(), first_cycle_lr=0.05, **KW)
    seen = []
    for t, (x, y) in enumerate(classification_batches(2 * (P + K) + 2, seed=8)):
        if t == P + K + 1:
            opt.start_estimate()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
        opt.step()
        seen.append(opt.get_log()["learning_rates"][0])
    assert seen[P + K - 2] == 0.05 and seen[P + K] == 0.05
    assert seen[-1] == pytest.approx(opt.get_log()["step_sizes"][0]) and seen[-1] != 0.05
