"""The diagonal metric (probprec.metric): RMSprop's coordinates for the estimate and the update."""

from __future__ import annotations

import io
import warnings
from collections import defaultdict

import pytest
import torch
from torch import nn

from helpers import assert_same_state, classification_batches, frozen_state, mlp, train
from probprec import OnlyAdaptiveAdam, OnlyAdaptiveRMSprop, OnlyAdaptiveSGD, Preconditioner
from probprec.metric import BETA1, BETA2, METRIC_STATE, MOMENTUM_STATE, RELATIVE_EPS, RMSMetric, rms_scale
from probprec.safeguard import Safeguard

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

A = torch.tensor([1.0, 4.0, 0.5, 9.0], dtype=torch.float64)  # a diagonal quadratic's curvatures
MINIMUM = torch.full((4,), 1000.0, dtype=torch.float64)  # far from 0: no relative limit binds
THETA0 = MINIMUM + torch.tensor([30.0, -20.0, 50.0, 10.0], dtype=torch.float64)


def test_the_scale_against_its_closed_form():
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    r = (v / (1 - BETA2**7)).sqrt()
    assert torch.allclose(rms_scale(v, 7), 1 / (r + RELATIVE_EPS * r.mean()), rtol=1e-15)
    # a tensor without gradients: D is finite, so D g = 0
    assert torch.isfinite(rms_scale(torch.zeros(4), 3)).all()


def test_the_averages_follow_adams_recursions_and_undo_restores_them():
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    state: defaultdict = defaultdict(dict)
    metric = RMSMetric(BETA1)
    grads = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([3.0, 0.0, -1.0])]
    for g in grads:
        p.grad = g.double()
        metric.observe(state, [p])
    v = (1 - BETA2) * (BETA2 * grads[0] ** 2 + grads[1] ** 2)
    m = (1 - BETA1) * (BETA1 * grads[0] + grads[1])
    assert torch.allclose(state[p][METRIC_STATE], v.double())
    assert torch.allclose(metric.direction(state, p), m.double() / (1 - BETA1**2))
    before = {k: t.clone() for k, t in state[p].items()}
    p.grad = torch.ones(3, dtype=torch.float64)
    undo = metric.observe(state, [p])
    metric.undo(state, undo)
    assert metric.steps == 2 and all(torch.equal(state[p][k], before[k]) for k in before)


def quadratic_loss(theta):
    return 0.5 * (A * (theta - MINIMUM) ** 2).sum()


def test_the_prior_estimates_the_minimal_residual_step_along_rmsprops_direction():
    """Noise-free: every prior minibatch has g = A theta0, so v_hat = g^2 and D = 1/(|g| + eps mean|g|)."""
    theta = nn.Parameter(THETA0.clone())
    opt = OnlyAdaptiveRMSprop([theta], prior_iterations=4)
    train(opt, lambda: quadratic_loss(theta), 3)  # the prior: the parameters stay
    assert torch.equal(theta.detach(), THETA0)
    train(opt, lambda: quadratic_loss(theta), 1)  # its last minibatch is the first update
    g = A * (THETA0 - MINIMUM)
    D = 1 / (g.abs() + RELATIVE_EPS * g.abs().mean())
    u = D * g  # RMSprop's direction; in phi: alpha = u'Au / (Au)'D(Au)
    alpha = float(u @ (A * u) / ((A * u) @ (D * (A * u))))
    assert opt.param_groups[0]["step_size"] == pytest.approx(alpha, rel=1e-10)
    assert not [e for e in opt.get_log()["events"] if e["kind"] == "cut"]
    assert torch.allclose(theta.detach(), THETA0 - alpha * D * g, rtol=1e-12)  # RMSprop's step at the rate


def test_the_identity_metric_steps_along_the_gradient_and_holds_no_average():
    theta = nn.Parameter(THETA0.clone())
    opt = OnlyAdaptiveSGD([theta], prior_iterations=4)
    train(opt, lambda: quadratic_loss(theta), 4)
    alpha = opt.param_groups[0]["step_size"]
    assert torch.allclose(theta.detach(), THETA0 - alpha * A * (THETA0 - MINIMUM), rtol=1e-12)
    assert METRIC_STATE not in opt.state.get(theta, {})


def test_the_safeguard_grows_past_the_estimate_only_up_to_its_cap():
    capped, default = Safeguard(cap=8.0), Safeguard()
    for safeguard in (capped, default):
        safeguard.add_group()
        for update in range(1, 7):
            safeguard.observe(0.1, update)  # room at every check: the factor doubles
    assert capped.factors == [8.0] and default.factors == [1.0]
    assert Safeguard.from_state(capped.as_state()).cap == 8.0


def trained(make, steps, seed=0):
    model = mlp(seed)
    opt = make(model.parameters())
    batches = classification_batches(steps, seed=seed)
    it = iter(batches)

    def loss():
        x, y = next(it)
        return nn.functional.cross_entropy(model(x), y)

    train(opt, loss, steps)
    return model, opt


@pytest.mark.parametrize("make", [OnlyAdaptiveRMSprop, OnlyAdaptiveAdam])
def test_a_run_resumed_from_its_state_dict_continues_bit_for_bit(make):
    steps, split = 40, 17
    model, opt = trained(lambda p: make(p, prior_iterations=4), steps)
    half_model, half_opt = trained(lambda p: make(p, prior_iterations=4), split)
    buffer = io.BytesIO()
    torch.save({"model": half_model.state_dict(), "opt": half_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = mlp(0)
    resumed.load_state_dict(saved["model"])
    resumed_opt = make(resumed.parameters(), prior_iterations=4)
    resumed_opt.load_state_dict(saved["opt"])
    batches = classification_batches(steps)[split:]
    it = iter(batches)

    def loss():
        x, y = next(it)
        return nn.functional.cross_entropy(resumed(x), y)

    train(resumed_opt, loss, steps - split)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(METRIC_STATE in s for s in opt.state.values())
    assert (MOMENTUM_STATE in next(iter(opt.state.values()))) == (make is OnlyAdaptiveAdam)


def test_a_state_dict_is_refused_by_an_optimizer_in_another_metric():
    _, opt = trained(lambda p: OnlyAdaptiveRMSprop(p, prior_iterations=4), 6)
    other = OnlyAdaptiveSGD(mlp(0).parameters(), prior_iterations=4)
    with pytest.raises(ValueError, match="metric='rms'"):
        other.load_state_dict(opt.state_dict())


def test_a_failing_step_leaves_the_averages_as_they_were(monkeypatch):
    model, opt = trained(lambda p: OnlyAdaptiveAdam(p, prior_iterations=4), 2)  # inside the prior
    before = frozen_state(opt)
    import probprec.optimizer as module

    def fail(*args, **kwargs):
        raise MemoryError("injected")

    monkeypatch.setattr(module, "hessian_vector_product", fail)
    x, y = classification_batches(1, seed=5)[0]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
    with pytest.raises(MemoryError):
        opt.step()
    assert_same_state(before, opt.state_dict())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"metric": "diagonal"}, "metric must be one of 'identity', 'rms', 'adam', got 'diagonal'"),
    ({"metric": "rms"}, "metric='rms' works with build_preconditioner=False"),
    ({"metric": "rms", "build_preconditioner": False, "apply_preconditioner": False, "mode": "thesis"},
     "mode='thesis'"),
    ({"max_factor": 0.5}, "max_factor must be a finite number >= 1, got 0.5"),
    ({"max_factor": float("nan")}, "max_factor must be a finite number >= 1, got nan"),
    ({"max_factor": 2.0, "safeguard": False}, "max_factor > 1 needs the safeguard"),
    ({"metric": "rms", "build_preconditioner": False, "apply_preconditioner": False, "weight_decay": 0.1},
     r"param_groups\[0\]\['weight_decay'\] must be 0 with metric='rms'"),
])
def test_bad_metric_options_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Preconditioner(mlp(0).parameters(), **kwargs)


def test_an_l2_term_set_later_is_refused_at_the_step_and_changes_nothing():
    model, opt = trained(lambda p: OnlyAdaptiveRMSprop(p, prior_iterations=4), 6)
    opt.param_groups[0]["weight_decay"] = 1e-4
    before = frozen_state(opt)
    x, y = classification_batches(1, seed=3)[0]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
    with pytest.raises(ValueError, match="weight_decay'\\] must be 0 with metric='rms'"):
        opt.step()
    assert_same_state(before, opt.state_dict())
    with pytest.raises(ValueError, match="weight_decay'\\] must be 0"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "weight_decay": 0.5})
    assert len(opt.param_groups) == 1
