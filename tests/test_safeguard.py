"""The step-size safeguard (probprec.safeguard) on quadratics whose curvature is known at every step."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from probprec import AdaptiveSGD, PreconditionedSGD
from probprec.check_step import RelativeUpdate, relative_update, secant_ratio
from probprec.safeguard import GROWTH, LIMIT, MAX_INTERVAL, RELATIVE_LIMIT, TENSOR_LIMIT, Safeguard

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

P, K = 2, 2  # a cycle: P + K - 1 = 3 minibatches, the last one also the first update
WEIGHTS = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)


class Quadratic:
    """loss = c/2 sum_i w_i (theta_i - m)^2 with a curvature scale c the test sets at every step.

    The minimum m is far from the origin (``offset``), so that the relative limit on an update's size
    (RELATIVE_LIMIT of the parameters' norm) does not bind unless a test asks for it (offset 0).
    """

    def __init__(self, scale=1.0, offset=100.0):
        self.offset = offset
        self.theta = nn.Parameter(torch.ones(5, dtype=torch.float64) + offset)
        self.scale = scale

    def loss(self):
        return 0.5 * self.scale * (WEIGHTS * (self.theta - self.offset) ** 2).sum()

    def error(self):
        return float((self.theta.detach() - self.offset).norm())


def train(opt, problem, steps, scales=None):
    """Steps of the documented loop; ``scales[t]`` sets the curvature before step t. Returns |theta - m|."""
    norms = []
    for t in range(steps):
        if scales is not None and t in scales:
            problem.scale = scales[t]
        opt.zero_grad()
        problem.loss().backward(create_graph=opt.create_graph)
        opt.step()
        norms.append(problem.error())
    return norms


def cuts(opt):
    return [e for e in opt.get_log()["events"] if e["kind"] == "cut"]


def test_a_curvature_jump_is_cut_at_the_next_check():
    problem = Quadratic()
    opt = AdaptiveSGD([problem.theta], prior_iterations=P, num_observations=K, est_rank=1)
    train(opt, problem, P + K)  # the estimate (curvature ~ 1-5), then one checked update
    assert cuts(opt) == [], "nothing to cut on the quadratic the estimate measured"
    lr_before = opt.get_log()["learning_rates"][0]
    error = problem.error()
    # the curvature jumps tenfold: lr * 50 > 2 along the stiffest direction; the next check (interval 2) cuts
    norms = train(opt, problem, 6, scales={0: 10.0})
    events = cuts(opt)
    assert len(events) >= 1
    lr_after = opt.get_log()["learning_rates"][0]
    assert lr_after < lr_before / 5
    # after the cut the step is the minimiser of the model along it: every later update decreases |theta|
    assert norms[-1] < norms[-2] < error * 10
    assert all(math.isfinite(n) for n in norms)


def test_without_the_safeguard_the_same_jump_diverges():
    problem = Quadratic()
    opt = AdaptiveSGD([problem.theta], prior_iterations=P, num_observations=K, est_rank=1, safeguard=False)
    train(opt, problem, P + K)
    norms = train(opt, problem, 6, scales={0: 10.0})
    assert norms[-1] > 100 * norms[0]


def test_a_stationary_quadratic_is_never_cut_and_checked_at_doubling_intervals():
    problem = Quadratic()
    opt = PreconditionedSGD([problem.theta], prior_iterations=P, num_observations=K, est_rank=1)
    updates = 300
    train(opt, problem, P + K - 1 + updates)
    assert cuts(opt) == []
    checks = opt.state_dict()["probprec"]["safeguard"]["checks"]
    # checks at updates 2, 4, 8, ..., 128, then every MAX_INTERVAL: a logarithmic count
    expected = len([u for u in (2, 4, 8, 16, 32, 64, 128, 256) if u <= updates])
    assert checks == expected, checks
    assert MAX_INTERVAL == 128


def test_the_step_ratio_of_a_cut_step_is_the_target():
    """A cut at ratio r multiplies the step sizes by 1/r: the model's minimiser along the step."""
    problem = Quadratic()
    opt = AdaptiveSGD([problem.theta], prior_iterations=P, num_observations=K, est_rank=1)
    train(opt, problem, P + K)  # update 2 was checked; the next check is update 4
    lr = opt.get_log()["learning_rates"][0]
    problem.scale = 10.0
    train(opt, problem, 1)  # update 3: not checked
    assert cuts(opt) == []
    g = problem.scale * WEIGHTS * (problem.theta.detach() - problem.offset)  # the gradient of update 4
    ratio = float(lr * (g * problem.scale * WEIGHTS * g).sum() / (g * g).sum())  # (eta g)' H (eta g) / g' (eta g)
    assert ratio > LIMIT
    train(opt, problem, 1)  # update 4: checked and cut
    assert len(cuts(opt)) == 1
    assert opt.get_log()["learning_rates"][0] == pytest.approx(lr / ratio, rel=1e-9)


def test_a_new_estimate_grows_at_most_by_the_growth_factor():
    problem = Quadratic(scale=100.0)
    opt = AdaptiveSGD([problem.theta], prior_iterations=P, num_observations=K, est_rank=1)
    train(opt, problem, P + K + 2)
    first = opt.get_log()["learning_rates"][0]
    problem.scale = 0.01  # 10,000 times flatter: the next estimate is 10,000 times larger
    opt.start_estimate()
    train(opt, problem, P + K - 1)
    log = opt.get_log()
    assert log["step_sizes"][0] > 100 * first  # the estimate of the flat quadratic
    assert log["learning_rates"][0] == pytest.approx(GROWTH * first, rel=1e-9)


def test_a_failed_prior_halves_the_step_size():
    problem = Quadratic()
    opt = AdaptiveSGD([problem.theta], prior_iterations=P, num_observations=K, est_rank=1)
    train(opt, problem, P + K + 2)
    first = opt.get_log()["learning_rates"][0]
    problem.scale = -1.0  # concave: the estimate is negative and falls back
    opt.start_estimate()
    train(opt, problem, P)
    log = opt.get_log()
    assert any(e["kind"] == "fallback" for e in log["events"])
    assert log["learning_rates"][0] == pytest.approx(0.5 * first, rel=1e-9)


def test_the_safeguard_is_off_in_thesis_mode_and_can_be_turned_off():
    theta = nn.Parameter(torch.ones(3))
    assert PreconditionedSGD([theta]).config.safeguard is True
    assert PreconditionedSGD([theta], mode="thesis").config.safeguard is False
    assert PreconditionedSGD([theta], safeguard=False).config.safeguard is False


def test_an_update_is_held_to_the_relative_limit():
    """At the origin's quadratic the estimated (Newton) step would move theta onto the minimum at 0, an update
    as long as theta itself: each update is cut to RELATIVE_LIMIT of |theta| and theta still converges."""
    problem = Quadratic(offset=0.0)
    opt = AdaptiveSGD([problem.theta], prior_iterations=P, num_observations=K, est_rank=1)
    train(opt, problem, P + K - 2)  # the estimate is taken, no update yet
    sizes = []
    for _ in range(20):
        before = problem.theta.detach().clone()
        train(opt, problem, 1)
        sizes.append(float((problem.theta.detach() - before).norm() / before.norm()))
    assert max(sizes) <= RELATIVE_LIMIT * (1 + 1e-9)
    assert any("the parameters' norm" in e["message"] for e in cuts(opt))
    assert problem.error() < 0.05 * math.sqrt(5.0), "still converging"


def test_a_cut_step_size_grows_back_when_a_check_finds_room():
    """After a curvature jump cuts the step, the curvature falls back: the checks that follow find the step
    ratio below LIMIT / GROWTH and grow the factor again, at most back to the estimate."""
    problem = Quadratic()
    opt = AdaptiveSGD([problem.theta], prior_iterations=P, num_observations=K, est_rank=1)
    train(opt, problem, P + K)
    lr_before = opt.get_log()["learning_rates"][0]
    train(opt, problem, 6, scales={0: 10.0})
    assert opt.get_log()["learning_rates"][0] < lr_before / 5
    problem.scale = 1.0
    problem.theta.data += 1.0  # something left to minimise
    train(opt, problem, 200)
    assert opt.get_log()["learning_rates"][0] == pytest.approx(lr_before, rel=1e-9)


def test_growth_and_the_relative_limit_in_the_schedule():
    schedule = Safeguard()
    schedule.add_group()
    schedule.factors[0] = 0.25
    assert schedule.observe(LIMIT / GROWTH * 0.99, updates=1) == 1.0 and schedule.factors == [0.5]
    assert schedule.observe(LIMIT / GROWTH * 1.01, updates=3) == 1.0 and schedule.factors == [0.5], "no room"
    assert schedule.observe(None, updates=7) == 1.0 and schedule.factors == [0.5], "nothing measured"
    assert schedule.observe(0.1, updates=15, cut_allowed=False) == 1.0 and schedule.factors == [0.5]
    for updates in (31, 63):
        schedule.observe(0.1, updates=updates)
    assert schedule.factors == [1.0], "never beyond the estimate"
    assert schedule.limit_relative(0, (RELATIVE_LIMIT, TENSOR_LIMIT)) == 1.0
    assert schedule.limit_relative(0, (4 * RELATIVE_LIMIT, TENSOR_LIMIT)) == pytest.approx(0.25)
    assert schedule.factors == [pytest.approx(0.25)] and not schedule.check_due(100), "no check asked for"
    assert schedule.limit_relative(0, (RELATIVE_LIMIT / 4, 2 * TENSOR_LIMIT)) == pytest.approx(0.5)
    assert schedule.limit_relative(0, (5 * RELATIVE_LIMIT, 2 * TENSOR_LIMIT)) == pytest.approx(0.2)
    assert schedule.limit_relative(0, (math.inf, math.nan)) == 1.0, "nothing to compare with"
    assert schedule.factors == [pytest.approx(0.025)]


def test_a_factor_cut_by_the_relative_limits_grows_back_to_the_last_checks_ceiling():
    """The step ratio is proportional to the step size: a check at factor f measuring r allows f TARGET / r.
    Updates within half of both relative limits grow the factor by GROWTH per update up to that ceiling, with
    no check; a check that cuts sets the ceiling to the cut factor."""
    schedule = Safeguard()
    schedule.add_group()
    schedule.factors[0] = 0.4
    schedule.observe(1.0, updates=1)  # no cut, no room: the ceiling is the factor itself
    assert schedule.ceilings == [pytest.approx(0.4)]
    schedule.observe(0.8, updates=2)  # the minimiser is at 0.4 / 0.8
    assert schedule.factors == [pytest.approx(0.4)] and schedule.ceilings == [pytest.approx(0.5)]
    assert schedule.limit_relative(0, (RELATIVE_LIMIT * 2, 0.0)) == pytest.approx(0.5)  # 0.2
    small = (RELATIVE_LIMIT / GROWTH, TENSOR_LIMIT / GROWTH)
    assert schedule.limit_relative(0, small) == pytest.approx(GROWTH)  # 0.4
    assert schedule.limit_relative(0, small) == pytest.approx(1.25)  # 0.5, the ceiling
    assert schedule.limit_relative(0, small) == 1.0
    schedule.limit_relative(0, (RELATIVE_LIMIT * 4, 0.0))  # 0.125
    assert schedule.limit_relative(0, (RELATIVE_LIMIT / GROWTH * 1.01, 0.0)) == 1.0, "no room: no growth"
    checks = schedule.checks
    schedule.observe(3.0, updates=4)  # a cut by 1/3: the new ceiling is the cut factor
    assert schedule.factors == schedule.ceilings == [pytest.approx(0.125 / 3)] and schedule.checks == checks + 1
    assert schedule.limit_relative(0, small) == 1.0
    schedule.observe(0.25, updates=5)  # room: x GROWTH, and the minimiser at 4 x is the ceiling
    assert schedule.factors == [pytest.approx(0.25 / 3)] and schedule.ceilings == [pytest.approx(0.5 / 3)]
    schedule.observe(0.05, updates=6)
    assert schedule.ceilings == [1.0], "never beyond the estimate"


def test_parameters_at_zero_are_not_held_by_the_relative_limit():
    """A linear model initialised at zero has no norm to compare an update with; it trains."""
    torch.manual_seed(0)
    x, w = torch.randn(64, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    y = x @ w
    model = nn.Linear(5, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    opt = PreconditionedSGD(model.parameters(), prior_iterations=P, num_observations=K)
    for _ in range(30):
        opt.zero_grad()
        loss = ((model(x).squeeze(1) - y) ** 2).mean()
        loss.backward(create_graph=opt.create_graph)
        opt.step()
    assert float(((model(x).squeeze(1) - y) ** 2).mean()) < 0.01 * float((y**2).mean())


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e25])
def test_the_relative_size_of_an_update_at_any_scale(scale):
    """The norms fall back to float64 where float32's squares underflow or overflow."""
    p = torch.full((1000,), 3.0 * scale, dtype=torch.float32)
    p.grad = torch.full((1000,), 4.0 * scale, dtype=torch.float32)
    assert relative_update([p], lr=0.5) == pytest.approx(RelativeUpdate(0.5 * 4.0 / 3.0, 0.5 * 4.0 / 3.0), rel=1e-6)


def test_the_relative_size_of_a_mixed_precision_group():
    """Tensors of several dtypes (a bfloat16 weight, a float16 bias, a float32 scale): the norms per dtype."""
    weight = torch.full((64,), 0.5, dtype=torch.bfloat16)  # norm 4
    weight.grad = torch.full((64,), 0.125, dtype=torch.bfloat16)  # norm 1
    bias = torch.full((4,), 1.5, dtype=torch.float16)  # norm 3
    bias.grad = torch.full((4,), 0.25, dtype=torch.float16)  # norm 0.5
    scale = torch.full((16,), 1.0)  # norm 4
    scale.grad = torch.full((16,), 0.5)  # norm 2
    expected = RelativeUpdate(0.1 * math.sqrt(1.0 + 0.25 + 4.0) / math.sqrt(16.0 + 9.0 + 16.0),
                              0.1 * max(1.0 / 4.0, 0.5 / 3.0, 2.0 / 4.0))
    assert relative_update([weight, bias, scale], lr=0.1) == pytest.approx(expected, rel=1e-6)


def test_the_relative_size_per_tensor_against_its_norm_or_its_share_of_the_group():
    """|Delta_t| / max(|theta_t|, |theta| sqrt(n_t / n)), the largest over the tensors; a tensor without a
    gradient counts in the group's norm only."""
    weight = torch.full((100,), 0.5, dtype=torch.float64)  # norm 5
    weight.grad = torch.full((100,), 0.05, dtype=torch.float64)  # norm 0.5
    bias = torch.full((4,), 2.0, dtype=torch.float64)  # norm 4
    bias.grad = torch.full((4,), 1.0, dtype=torch.float64)  # norm 2
    frozen = torch.full((96,), 0.0, dtype=torch.float64)
    size = math.sqrt(25.0 + 16.0)
    expected = RelativeUpdate(0.1 * math.sqrt(0.25 + 4.0) / size, 0.1 * max(0.5 / 5.0, 2.0 / 4.0))
    assert relative_update([weight, bias, frozen], lr=0.1) == pytest.approx(expected, rel=1e-12)
    bias.zero_()  # a bias at zero is compared with its share of the group's norm, 5 sqrt(4 / 200)
    share = 5.0 * math.sqrt(4 / 200)
    expected = RelativeUpdate(0.1 * math.sqrt(0.25 + 4.0) / 5.0, 0.1 * max(0.5 / 5.0, 2.0 / share))
    assert relative_update([weight, bias, frozen], lr=0.1) == pytest.approx(expected, rel=1e-12)
    weight.zero_()
    assert relative_update([weight, bias, frozen], lr=0.1) == (0.0, 0.0), "all zero: no scale, no limit"
    assert relative_update([frozen], lr=0.1) == (0.0, 0.0), "no gradient: no update"


def test_a_small_tensor_is_held_to_the_tensor_limit_when_the_group_is_not():
    """A group of a large tensor at its minimum and a small one far from it (the output layer of a deep ReLU
    MLP, measured: the group's update 5 % of its norm, the output bias's 300 %): the estimated (Newton) step
    would move the small tensor by its own norm; every update is cut to TENSOR_LIMIT of its scale (its norm,
    or its share of the group's once it is smaller), and it converges."""
    large = nn.Parameter(torch.full((1000,), 0.2, dtype=torch.float64))
    small = nn.Parameter(torch.ones(2, dtype=torch.float64))
    weights = torch.tensor([1.0, 2.0], dtype=torch.float64)
    opt = AdaptiveSGD([large, small], prior_iterations=P, num_observations=K, est_rank=1)
    sizes, groups = [], []
    for _ in range(40):
        before, whole = small.detach().clone(), torch.cat([large.detach(), small.detach()])
        opt.zero_grad()
        (0.5 * ((large - 0.2) ** 2).sum() + 0.5 * (weights * small**2).sum()).backward(create_graph=opt.create_graph)
        opt.step()
        scale = max(float(before.norm()), float(whole.norm()) * math.sqrt(2 / 1002))
        sizes.append(float((small.detach() - before).norm()) / scale)
        groups.append(float((torch.cat([large.detach(), small.detach()]) - whole).norm() / whole.norm()))
    assert max(groups) < RELATIVE_LIMIT / 2, "the group's limit does not bind"
    assert max(sizes) <= TENSOR_LIMIT * (1 + 1e-9) and max(sizes) > TENSOR_LIMIT / 2
    assert any("a tensor's" in e["message"] for e in cuts(opt))
    assert float(small.detach().norm()) < 1e-3, "still converging"


def test_a_bias_initialised_at_zero_trains():
    """A bias at zero is measured against its share of the group's norm, not held at zero."""
    torch.manual_seed(0)
    x, w = torch.randn(64, 5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    y = x @ w + 3.0
    model = nn.Linear(5, 1).double()
    nn.init.zeros_(model.bias)
    opt = PreconditionedSGD(model.parameters(), prior_iterations=P, num_observations=K)
    for _ in range(200):
        opt.zero_grad()
        ((model(x).squeeze(1) - y) ** 2).mean().backward(create_graph=opt.create_graph)
        opt.step()
    assert float(model.bias) == pytest.approx(3.0, abs=0.05)


def _pseudo_huber(theta):
    """sum_i w_i sqrt(1 + (theta_i - 100)^2): its curvature falls off away from the minimum, so a Newton step from
    there lands far on the other side, where the curvature at the start of the step did not warn of it."""
    return (WEIGHTS * torch.sqrt(1 + (theta - 100.0) ** 2)).sum()


def _train_pseudo_huber(opt, theta, steps=200):
    for _ in range(steps):
        opt.zero_grad()
        _pseudo_huber(theta).backward(create_graph=opt.create_graph)
        opt.step()
    return float((theta.detach() - 100.0).norm())


@pytest.mark.parametrize("cls", [AdaptiveSGD, PreconditionedSGD])
def test_a_step_across_the_minimum_is_caught_by_the_secant_ratio(cls):
    """The check's step ratio is measured where the step starts (flat: no cut) and grows the step; the secant
    ratio, from the gradient where the step ended (pointing back), sees the overshoot and cuts, and bounds the
    growth. Without it (the default) the iterate bounces between the flanks (error ~20 after 200 updates)."""
    theta = nn.Parameter(torch.full((5,), 103.0, dtype=torch.float64))
    opt = cls([theta], prior_iterations=P, num_observations=K, est_rank=1, secant_check=True)
    assert _train_pseudo_huber(opt, theta) < 1e-6
    assert any("secant ratio" in e["message"] for e in cuts(opt))
    assert opt.state_dict()["probprec"]["safeguard"]["checks"] < 40, "a bounded number of checks"
    theta = nn.Parameter(torch.full((5,), 103.0, dtype=torch.float64))
    assert _train_pseudo_huber(cls([theta], prior_iterations=P, num_observations=K, est_rank=1), theta) > 10


def test_the_secant_check_needs_the_safeguard_and_resumes_exactly():
    theta = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="secant_check=True needs the safeguard"):
        AdaptiveSGD([theta], secant_check=True, safeguard=False)
    with pytest.raises(ValueError, match="secant_check=True needs the safeguard"):
        AdaptiveSGD([theta], secant_check=True, mode="thesis")
    theta = nn.Parameter(torch.full((5,), 103.0, dtype=torch.float64))
    opt = AdaptiveSGD([theta], prior_iterations=P, num_observations=K, est_rank=1, secant_check=True)
    while True:  # up to the first check: its step is kept for the next update
        check = opt.create_graph and opt.phase == "optimize"
        _train_pseudo_huber(opt, theta, 1)
        if check:
            break
    saved, theta_saved = opt.state_dict(), theta.detach().clone()
    assert saved["probprec"]["safeguard"]["pending"] is not None
    assert saved["state"][0]["secant"].shape == (5,)
    twin_theta = nn.Parameter(theta_saved.clone())
    twin = AdaptiveSGD([twin_theta], prior_iterations=P, num_observations=K, est_rank=1, secant_check=True)
    twin.load_state_dict(saved)
    assert _train_pseudo_huber(opt, theta, 30) == _train_pseudo_huber(twin, twin_theta, 30)
    assert torch.equal(theta.detach(), twin_theta.detach())
    with pytest.raises(ValueError, match="secant_check"):
        AdaptiveSGD([nn.Parameter(theta_saved.clone())], prior_iterations=P, num_observations=K,
                    est_rank=1).load_state_dict(saved)


def test_the_secant_ratio_against_its_closed_form():
    """r_sec = 1 - G1'D / G0'D with G1 = g1 + wd theta; on a quadratic it is the step ratio D'(H + wd I)D / G0'D."""
    torch.manual_seed(0)
    A = torch.randn(4, 4, dtype=torch.float64)
    H, wd = A @ A.T + torch.eye(4, dtype=torch.float64), 0.3
    theta0 = torch.randn(4, dtype=torch.float64)
    G0 = H @ theta0 + wd * theta0
    step = 0.05 * G0
    theta1 = nn.Parameter(theta0 - step)
    theta1.grad = H @ theta1.detach()  # the loss's own gradient; the decay is the secant's to add
    ratio = secant_ratio([(theta1, step, wd)], float(G0 @ step), {})
    assert ratio == pytest.approx(float(step @ (H + wd * torch.eye(4, dtype=torch.float64)) @ step / (G0 @ step)))
    other = torch.randn(4, dtype=torch.float64)  # a gradient held elsewhere (p.grad preconditioned)
    assert secant_ratio([(theta1, step, 0.0)], 2.0, {theta1: other}) == pytest.approx(1 - float(other @ step) / 2.0)
    assert secant_ratio([(theta1, step, 0.0)], 0.0, {}) is None, "no slope, nothing to compare"
    assert secant_ratio([(theta1, step, 0.0)], 2.0, {theta1: None}) is None


def test_the_secant_bound_averages_two_measurements_caps_growth_and_cuts():
    """A secant ratio r measured at factor f says the factor f TARGET / r meets TARGET; the geometric mean of the
    last two such factors, times LIMIT / TARGET, bounds the growth; a factor beyond it is cut to TARGET."""
    schedule = Safeguard()
    schedule.add_group()
    schedule.factors[0] = 0.5
    assert schedule.observe_secant(1.25, updates=3) == 1.0, "within LIMIT: no cut"
    assert schedule.secants == [pytest.approx(0.4)] and schedule.bound(0) == pytest.approx(0.4 * LIMIT)
    assert schedule.ceilings == [pytest.approx(0.4 * LIMIT)]
    assert schedule.observe(0.1, updates=4) == 1.0, "a check with room"
    assert schedule.factors == [pytest.approx(0.4 * LIMIT)], "grown, but only to the secant's bound"
    secant = math.sqrt(0.4 * 0.6 / 2.5)  # the geometric mean of 0.5 / 1.25 and 0.6 / 2.5
    assert schedule.observe_secant(2.5, updates=5) == pytest.approx(secant / 0.6), "averaged ratio > LIMIT: cut"
    assert schedule.factors == schedule.ceilings == [pytest.approx(secant)] and schedule.check_due(6)
    assert schedule.observe_secant(-0.5, updates=6) == 1.0 and schedule.secants == [None], "the slope grew"
    assert schedule.bound(0) == 1.0 and schedule.pending is None
