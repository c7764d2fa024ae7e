"""Acceptance 4: bad input and non-finite numbers."""

from __future__ import annotations

import fractions
import math
import warnings
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from torch import nn

from helpers import train
from probprec import AdaptiveSGD, OnlyAdaptiveSGD, PreconditionedSGD, PreconditionedTunedSGD, Preconditioner

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

P, K = 3, 2


def params():
    return [nn.Parameter(torch.randn(4))]


@pytest.mark.parametrize(
    "kwargs,name,accepted",
    [
        (dict(est_rank=0), "est_rank", ">= 1"),
        (dict(est_rank=-2), "est_rank", ">= 1"),
        (dict(est_rank=1.5), "est_rank", ">= 1"),
        (dict(est_rank=True), "est_rank", ">= 1"),
        (dict(est_rank=6, num_observations=5), "est_rank", "<= num_observations"),
        (dict(num_observations=0), "num_observations", ">= 1"),
        (dict(prior_iterations=0), "prior_iterations", ">= 1"),
        (dict(prior_iterations=None), "prior_iterations", ">= 1"),
        (dict(weight_decay=-0.1), "weight_decay", ">= 0"),
        (dict(weight_decay=float("nan")), "weight_decay", ">= 0"),
        (dict(weight_decay=float("inf")), "weight_decay", ">= 0"),
        (dict(lr=0.0), "lr", "> 0"),
        (dict(lr=-1e-3), "lr", "> 0"),
        (dict(lr=float("nan")), "lr", "> 0"),
        (dict(lr="0.1"), "lr", "> 0"),
        (dict(step_rule="bogus"), "step_rule", "'newton', 'paper'"),
        (dict(step_rule="paper"), "lr", "> 0"),
        (dict(extraction="svds"), "extraction", "'ritz', 'posterior'"),
        (dict(observe="previous"), "observe", "'next', 'same'"),
        (dict(noise_floor=0.0), "noise_floor", "> 0"),
        (dict(beta=-1.0), "beta", "> 0"),
        (dict(restart_interval=0), "restart_interval", ">= 1"),
        (dict(first_cycle_lr=0.0), "first_cycle_lr", "> 0"),
        (dict(build_preconditioner=False), "apply_preconditioner", "build_preconditioner=True"),
    ],
)
def test_invalid_hyperparameters_raise_value_error(kwargs, name, accepted):
    with pytest.raises(ValueError) as info:
        Preconditioner(params(), **kwargs)
    message = str(info.value)
    assert message.startswith(name) and accepted in message, message


@pytest.mark.parametrize("optim_class", ["SGD", nn.Linear, torch.optim.SGD([nn.Parameter(torch.ones(1))]), None])
def test_optim_class_must_be_an_optimizer_class(optim_class):
    with pytest.raises(TypeError, match=r"optim_class must be a torch\.optim\.Optimizer subclass"):
        Preconditioner(params(), optim_class=optim_class)


def test_an_unknown_keyword_is_refused_naming_it():
    """A misspelt inner hyperparameter is not silently dropped."""
    with pytest.raises(ValueError, match=r"momentun=0\.9 rejected by SGD: .*momentun"):
        Preconditioner(params(), momentun=0.9)


def test_inner_optimizer_validates_its_own_hyperparameters():
    with pytest.raises(ValueError, match="momentum"):
        Preconditioner(params(), momentum=-0.5)


def test_group_values_are_validated():
    a, b = params(), params()
    with pytest.raises(ValueError, match="weight_decay"):
        Preconditioner([{"params": a}, {"params": b, "weight_decay": -1.0}])
    with pytest.raises(ValueError, match="lr"):
        PreconditionedTunedSGD([{"params": a}, {"params": b, "lr": 0.0}], lr=0.1)


@pytest.mark.parametrize("cls", [PreconditionedSGD, AdaptiveSGD, OnlyAdaptiveSGD])
def test_variants_validate_too(cls):
    with pytest.raises(ValueError, match="prior_iterations"):
        cls(params(), prior_iterations=0)


# ------------------------------------------------------------ non-finite numbers


class Quadratic(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        torch.manual_seed(0)
        self.theta = nn.Parameter(torch.randn(6))
        self.scale = scale
        self.poison_at: set[int] = set()
        self.calls = 0

    def forward(self):
        loss = 0.5 * self.scale * (self.theta**2 * torch.arange(1.0, 7.0)).sum()
        if self.calls in self.poison_at:
            loss = loss * float("nan")
        self.calls += 1
        return loss


@pytest.mark.parametrize("poison_step", [1, P])  # prior, posterior
def test_non_finite_loss_during_estimation_restarts_the_cycle(poison_step):
    model = Quadratic()
    model.poison_at = {poison_step}
    start = model.theta.detach().clone()
    opt = PreconditionedSGD(model.parameters(), prior_iterations=P, num_observations=K)
    train(opt, model, poison_step + 1)
    assert torch.equal(model.theta, start), "nothing non-finite may reach the parameters"
    assert opt.phase == "prior"
    event = opt.get_log()["events"][-1]
    assert event["kind"] == "restart" and "non-finite" in event["message"]
    train(opt, model, P + K)
    log = opt.get_log()
    assert log["cycles_completed"] == 1
    assert all(math.isfinite(v) for v in log["step_sizes"] + [e for t in log["eigenvalues"] for e in t])
    assert torch.isfinite(model.theta).all()


class _NanSecondDerivative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class _Square(torch.autograd.Function):
    """0.5 * sum(x^2) with a finite gradient whose own derivative is NaN."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return 0.5 * (x**2).sum()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * _NanSecondDerivative.apply(x)


def test_non_finite_hvp_never_reaches_the_estimate():
    theta = nn.Parameter(torch.randn(5))
    start = theta.detach().clone()
    opt = PreconditionedSGD([theta], prior_iterations=P, num_observations=K)
    for t in range(3):
        opt.zero_grad()
        _Square.apply(theta).backward(create_graph=opt.create_graph)
        with pytest.warns(RuntimeWarning, match="3 consecutive cycles failed") if t == 2 else nullcontext():
            opt.step()
        torch.testing.assert_close(theta.grad, theta.detach())  # the gradient itself is fine
    assert torch.equal(theta, start)
    log = opt.get_log()
    # three failed cycles: the optimizer backs off (it holds the parameters and retries later)
    assert log["step_sizes"] == [None] and log["phase"] == "optimize"
    assert [e["kind"] for e in log["events"]] == ["restart"] * 3 + ["fallback"]
    assert all("non-finite" in e["message"] for e in log["events"])


def test_negative_curvature_step_size_is_never_used():
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = PreconditionedSGD([theta], prior_iterations=P, num_observations=K)
    train(opt, lambda: -0.5 * (theta**2).sum() * 4.0, P + 1)  # concave: alpha = -1/4
    log = opt.get_log()
    assert log["step_sizes"][0] == pytest.approx(0.25)
    assert log["learning_rates"][0] > 0
    event = [e for e in log["events"] if e["kind"] != "cut"][-1]  # the safeguard may cut the update after it
    assert event["kind"] == "fallback" and "-0.25" in event["message"]
    assert log["eigenvalues"] == [[]], "no preconditioner is built on a failed prior"


def test_previous_step_size_is_the_first_fallback():
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = PreconditionedSGD([theta], prior_iterations=P, num_observations=K)
    train(opt, lambda: 0.5 * (theta**2).sum() * 2.0, P + K)
    assert opt.get_log()["step_sizes"] == [pytest.approx(0.5)]
    opt.start_estimate()
    train(opt, lambda: -0.5 * (theta**2).sum(), P)
    log = opt.get_log()
    assert log["step_sizes"] == [pytest.approx(0.5)]
    assert "previous cycle" in log["events"][-1]["message"]


def test_zero_curvature_holds_the_parameters_and_says_why():
    theta = nn.Parameter(torch.tensor([1.0, -2.0]))
    start = theta.detach().clone()
    opt = PreconditionedSGD([theta], prior_iterations=P, num_observations=K)
    # zero Hessian, but a gradient that carries a graph
    train(opt, lambda: (theta * torch.tensor([1.0, 3.0])).sum() + 0.0 * (theta**2).sum(), 2 * P)
    assert torch.equal(theta, start)
    messages = [e["message"] for e in opt.get_log()["events"]]
    assert any("no usable step size" in m for m in messages)
    assert opt.get_log()["step_sizes"] == [None]


def test_tuned_step_size_survives_a_failed_prior():
    start = torch.tensor([1.0, -2.0, 0.5])
    theta = nn.Parameter(start.clone())
    opt = PreconditionedTunedSGD([theta], lr=0.1, prior_iterations=P, num_observations=K)
    train(opt, lambda: -0.5 * (theta**2).sum(), P + 1)  # concave: the estimated step size is negative
    log = opt.get_log()
    assert log["learning_rates"] == [0.1]
    # no restart: the cycle ends after the prior (no posterior on a failed prior) and optimizes at lr 0.1
    assert opt.phase == "optimize" and log["cycles_completed"] == 1
    assert [e["kind"] for e in log["events"]] == ["fallback"]
    assert log["eigenvalues"] == [[]]
    # two updates (the last prior minibatch is also the first), each theta <- theta - 0.1 * (-theta)
    torch.testing.assert_close(theta.detach(), start * 1.1**2)


# ------------------------------------------------------------ numbers, types and devices


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_observations=np.int64(5)), dict(est_rank=np.int32(1)), dict(prior_iterations=np.uint8(3)),
     dict(weight_decay=np.float32(0.01)), dict(lr=np.float64(0.1)), dict(noise_floor=np.float16(1e-3)),
     dict(beta=fractions.Fraction(1, 2)), dict(restart_interval=np.int64(10)), dict(fixes=None)],
    ids=lambda kw: f"{next(iter(kw))}={type(next(iter(kw.values()))).__name__}",
)
def test_numbers_that_are_numbers_are_accepted(kwargs):
    opt = Preconditioner(params(), **kwargs)
    (key, value), = kwargs.items()
    if key in ("lr", "weight_decay"):
        assert opt.param_groups[0][key] == pytest.approx(float(value)) and type(opt.param_groups[0][key]) is float
    elif key != "fixes":
        stored = getattr(opt.config, key)
        assert stored == value and type(stored) in (int, float)


@pytest.mark.parametrize(
    "kwargs,name,accepted",
    [
        (dict(num_observations=np.float64(5.0)), "num_observations", ">= 1"),
        (dict(lr=torch.tensor(0.1)), "lr", "> 0"),
        (dict(weight_decay=np.bool_(True)), "weight_decay", ">= 0"),
        (dict(fixes=3), "fixes", "'all'"),
        (dict(num_observations=10**6), "num_observations", "memory"),
        (dict(optim_class=torch.optim.LBFGS), "optim_class", "closure"),
        (dict(optim_class=PreconditionedSGD), "optim_class", "Preconditioner"),
        (dict(lr=0.1, first_cycle_lr=0.2), "first_cycle_lr", "lr=None"),
        (dict(inner_weight_decay=-0.5), "inner_weight_decay", ">= 0"),
    ],
)
def test_more_invalid_arguments_raise_naming_them(kwargs, name, accepted):
    with pytest.raises((ValueError, TypeError)) as info:
        Preconditioner(params(), **kwargs)
    message = str(info.value)
    assert message.startswith(name) and accepted in message, message


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_parameters_are_refused(dtype):
    with pytest.raises(TypeError, match=r"parameter 1 .*complex.*real"):
        Preconditioner([nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, dtype=dtype))])


def test_meta_device_parameters_are_refused():
    with torch.device("meta"):
        model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"parameter 0 is on the meta device.*to_empty"):
        Preconditioner(model.parameters())


# ------------------------------------------------------------ failures that used to stall silently


@pytest.mark.parametrize(
    "loss,reason",
    [(lambda th: (th * torch.tensor([1.0, 3.0])).sum() + 0.0 * (th**2).sum(), "no usable step size"),
     (lambda th: 0.0 * (th**2).sum(), "no usable step size"),
     (lambda th: (th**2).sum() * math.nan, "non-finite")],
    ids=["linear", "zero-gradient", "nan-loss"],
)
def test_repeated_failed_cycles_warn_once_and_stop_spending_minibatches(loss, reason):
    theta = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = PreconditionedSGD([theta], prior_iterations=P, num_observations=K)
    steps = 200
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(opt, lambda: loss(theta), steps)
    relevant = [w for w in caught if issubclass(w.category, RuntimeWarning) and "consecutive" in str(w.message)]
    assert len(relevant) == 1, [str(w.message) for w in caught]
    assert reason in str(relevant[0].message) and "lr=" in str(relevant[0].message)
    log = opt.get_log()
    # after 3 failed cycles it waits 2, 4, 8, ... minibatches between attempts: far fewer than one per P steps
    assert log["hvp_count"] < steps / 4, log["hvp_count"]
    assert any(e["kind"] == "fallback" and "consecutive" in e["message"] for e in log["events"])


def test_a_later_success_resets_the_failure_count():
    theta = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = PreconditionedSGD([theta], prior_iterations=P, num_observations=K)
    curvature = {"on": False}

    def loss():
        quadratic = 0.5 * (theta**2).sum() * (2.0 if curvature["on"] else 0.0)
        return quadratic + (theta * torch.tensor([1.0, 3.0])).sum() * (0.0 if curvature["on"] else 1.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(opt, loss, 40)
        curvature["on"] = True
        train(opt, loss, 200)
    log = opt.get_log()
    assert log["cycles_completed"] >= 1 and log["step_sizes"] == [pytest.approx(0.5)]
    assert float(theta.abs().max()) < 1e-3, "once the curvature is there it trains"
