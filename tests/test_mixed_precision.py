"""Loss scaling (``torch.amp.GradScaler``) and precision: the estimate does not depend on the loss's scale.

With a loss scaler the autograd graph that the Hessian-vector products differentiate is the graph of the
*scaled* loss; the optimizer must divide the scale out, skip the steps the scaler skips (inf gradients),
follow scale changes, and accumulate its sums in float64 whatever the parameters' dtype.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from helpers import assert_same_state, frozen_state
from probprec import OnlyAdaptiveSGD, PreconditionedSGD

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

P, K = 4, 3
STEPS = 20  # one cycle of P + K - 1 = 6 estimation steps, then optimization steps


def failures(log):
    """The log's events but the safeguard's cuts (a cut is a decision about the update, not a failure)."""
    return [e for e in log["events"] if e["kind"] != "cut"]


def data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(STEPS + 2, 8, 6, generator=gen)
    Y = torch.randn(STEPS + 2, 8, 2, generator=gen)
    return X, Y


def model(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)


def loss_of(m, x, y):
    return ((m(x) - y) ** 2).mean()


def plain_run(batches, **kwargs):
    """Reference: no scaler, the given minibatches in order."""
    m = model()
    opt = PreconditionedSGD(m.parameters(), prior_iterations=P, num_observations=K, **kwargs)
    for x, y in batches:
        opt.zero_grad()
        loss_of(m, x, y).backward(create_graph=opt.create_graph)
        opt.step()
    return m, opt


def scaled_run(batches, scaler, poison=(), clip=False, **kwargs):
    """The GradScaler loop of the README; minibatch indices in ``poison`` give an infinite loss."""
    m = model()
    opt = PreconditionedSGD(m.parameters(), prior_iterations=P, num_observations=K, **kwargs)
    scales = []
    for t, (x, y) in enumerate(batches):
        opt.zero_grad()
        loss = loss_of(m, x, y) * (math.inf if t in poison else 1.0)
        scales.append(scaler.get_scale())
        scaler.scale(loss).backward(create_graph=opt.create_graph)
        if clip:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(m.parameters(), 1e6)
            scaler.step(opt, loss_scale=scaler.get_scale())
        else:
            scaler.step(opt)
        scaler.update()
    return m, opt, scales


def batches_of(n):
    X, Y = data()
    return list(zip(X[:n], Y[:n], strict=True))


def assert_same_training(a, b, rtol=2e-5):
    (ma, oa), (mb, ob) = a, b
    la, lb = oa.get_log(), ob.get_log()
    assert la["cycles_completed"] == lb["cycles_completed"] == 1
    assert la["step_sizes"][0] == pytest.approx(lb["step_sizes"][0], rel=rtol)
    assert la["prior_width"][0] == pytest.approx(lb["prior_width"][0], rel=rtol)
    assert la["noise"][0] == pytest.approx(lb["noise"][0], rel=1e-3)
    for ea, eb in zip(la["eigenvalues"], lb["eigenvalues"], strict=True):
        assert ea == pytest.approx(eb, rel=1e-3)
    for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


def test_grad_scaler_gives_the_unscaled_estimate():
    batches = batches_of(STEPS)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=10**6)
    m, opt, _ = scaled_run(batches, scaler)
    assert_same_training((m, opt), plain_run(batches))
    for p in m.parameters():  # after step(), p.grad is the true (unscaled) gradient
        assert p.grad.abs().max() < 100


def test_scale_changes_during_estimation_are_followed():
    batches = batches_of(STEPS)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_factor=4.0, growth_interval=1)
    m, opt, scales = scaled_run(batches, scaler)
    assert len(set(scales[: P + K])) == P + K, "the scale must change at every estimation step"
    assert_same_training((m, opt), plain_run(batches))


def test_a_step_the_scaler_skips_is_skipped_by_the_estimate():
    batches = batches_of(STEPS + 1)
    poisoned = 2  # an estimation step: inf gradients, the scaler backs off and skips it
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=10**6)
    m, opt, scales = scaled_run(batches, scaler, poison={poisoned})
    assert scales[poisoned + 1] == scales[poisoned] / 2
    kept = batches[:poisoned] + batches[poisoned + 1:]
    assert_same_training((m, opt), plain_run(kept))
    assert failures(opt.get_log()) == [], "a skipped step is not a failure of the estimate"


def test_a_skipped_optimization_step_does_not_move_the_parameters():
    batches = batches_of(STEPS + 1)
    poisoned = P + K + 2
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=10**6)
    m, opt, _ = scaled_run(batches, scaler, poison={poisoned})
    kept = batches[:poisoned] + batches[poisoned + 1:]
    assert_same_training((m, opt), plain_run(kept))


def test_unscaled_before_step_needs_the_loss_scale_and_then_agrees():
    batches = batches_of(STEPS)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    m, opt, _ = scaled_run(batches, scaler, clip=True)
    assert_same_training((m, opt), plain_run(batches))

    m = model()
    opt = PreconditionedSGD(m.parameters(), prior_iterations=P, num_observations=K)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    x, y = batches[0]
    scaler.scale(loss_of(m, x, y)).backward(create_graph=opt.create_graph)
    scaler.unscale_(opt)
    before = frozen_state(opt)
    with pytest.raises(RuntimeError, match=r"loss_scale=scaler\.get_scale\(\)"):
        scaler.step(opt)
    assert_same_state(before, opt.state_dict())


def test_loss_scale_argument_is_validated():
    m = model()
    opt = PreconditionedSGD(m.parameters(), prior_iterations=P, num_observations=K)
    x, y = batches_of(1)[0]
    loss_of(m, x, y).backward(create_graph=opt.create_graph)
    for bad in (0.0, -1.0, math.nan, math.inf, "2"):
        with pytest.raises(ValueError, match="loss_scale must be a finite number > 0"):
            opt.step(loss_scale=bad)
    assert opt.get_log()["hvp_count"] == 0


def test_manual_loss_scale_gives_the_unscaled_estimate():
    batches = batches_of(STEPS)
    m = model()
    opt = PreconditionedSGD(m.parameters(), prior_iterations=P, num_observations=K)
    scale = 1024.0
    for x, y in batches:
        opt.zero_grad()
        (scale * loss_of(m, x, y)).backward(create_graph=opt.create_graph)
        for p in m.parameters():
            p.grad.data.div_(scale)
        opt.step(loss_scale=scale)
    assert_same_training((m, opt), plain_run(batches))


# ------------------------------------------------------------------ precision of the sums


def quadratic(dtype, scale):
    torch.manual_seed(0)
    theta = nn.Parameter((3 * torch.randn(50)).to(dtype))
    weights = torch.linspace(1.0, 10.0, 50)

    def loss():
        return scale * 0.5 * ((theta.float() * weights) ** 2).sum()

    return theta, loss


def reference_step_size(scale):
    """alpha = v'Hv / ||Hv||^2 with v = the gradient, in float64 (noise-free: every minibatch is the same)."""
    torch.manual_seed(0)
    theta = (3 * torch.randn(50)).double()
    h = scale * torch.linspace(1.0, 10.0, 50, dtype=torch.float64) ** 2
    v = h * theta
    return float((v * h * v).sum() / ((h * v) ** 2).sum())


@pytest.mark.parametrize(
    "dtype,scale",
    [(torch.float32, 1e10), (torch.float32, 1e-15), (torch.float16, 1.0), (torch.bfloat16, 1e12),
     (torch.float32, 1e-19)],
    ids=["f32-1e10", "f32-1e-15", "f16-mse", "bf16-1e12", "f32-1e-19"],
)
def test_sums_are_formed_in_float64_whatever_the_scale_and_dtype(dtype, scale):
    theta, loss = quadratic(dtype, scale)
    start = theta.detach().clone()
    opt = OnlyAdaptiveSGD([theta], prior_iterations=P)
    for _ in range(P + 1):
        opt.zero_grad()
        loss().backward(create_graph=opt.create_graph)
        opt.step()
    log = opt.get_log()
    assert failures(log) == [], log["events"]
    # the input itself is rounded to dtype: the step size agrees to its precision (f16: 1e-3, bf16: 8e-3)
    rel = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert log["step_sizes"][0] == pytest.approx(reference_step_size(scale), rel=rel)
    assert not torch.equal(theta, start), "the parameters must move"


@pytest.mark.parametrize("scale", [1e10, 1e-15, 1e-19], ids=["1e10", "1e-15", "1e-19"])
def test_a_whole_cycle_is_independent_of_the_loss_scale(scale):
    """Prior, posterior and extraction: the curvatures scale with the loss, the step size inversely."""
    logs = {}
    for factor in (1.0, scale):
        theta, loss = quadratic(torch.float32, factor)
        opt = PreconditionedSGD([theta], prior_iterations=P, num_observations=K)
        for _ in range(P + K + 1):
            opt.zero_grad()
            loss().backward(create_graph=opt.create_graph)
            opt.step()
        logs[factor] = opt.get_log()
    plain, scaled = logs[1.0], logs[scale]
    assert failures(scaled) == [] and scaled["cycles_completed"] == 1
    assert scaled["step_sizes"][0] * scale == pytest.approx(plain["step_sizes"][0], rel=1e-4)
    assert [e / scale for e in scaled["eigenvalues"][0]] == pytest.approx(plain["eigenvalues"][0], rel=1e-3)
