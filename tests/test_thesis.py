"""Thesis mode: the 2019 reference arithmetic against an independent transcription, and each fix alone.

The transcription (class ``Reference``) restates the 2019 class (ludwigbald/probprec at 227a924) step by
step in float64, with dense matrices and unit columns as the 2019 class kept them; the optimizer runs in
float32 on the same minibatches (a quadratic with exact block-diagonal Hessian and a least-squares problem with a
noisy batch Hessian).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from helpers import classification_batches, cycle_rows, mlp, random_orthogonal
from probprec import Preconditioner
from probprec._checkpoint import FORMAT_0_BEHAVIOUR
from probprec.thesis import FIXES, QUIRKS, quirks_for, thesis_factors, thesis_posterior

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
DT = torch.float64
P, K, RANK = 4, 3, 2


# ----------------------------------------------------------------------------- problems


class Quadratic:
    """Two tensors (8x8 and 36), loss 1/2 sum_p (theta_p - xbar_p)' H_p (theta_p - xbar_p); exact Hessian."""

    def __init__(self, seed=0, wd=0.0):
        gen = torch.Generator().manual_seed(seed)
        self.shapes = [(8, 8), (36,)]
        self.H = []
        for shape in self.shapes:
            n = torch.Size(shape).numel()
            Q = random_orthogonal(n, gen)
            lam = torch.cat((torch.tensor([40.0, 12.0], dtype=DT), torch.rand(n - 2, generator=gen, dtype=DT)))
            self.H.append((Q * lam) @ Q.T)
        self.start = [0.3 * torch.randn(torch.Size(s).numel(), generator=gen, dtype=DT) for s in self.shapes]
        self.batches = [[0.05 * torch.randn(torch.Size(s).numel(), generator=gen, dtype=DT) for s in self.shapes]
                        for _ in range(40)]
        self.wd = wd

    def params(self):
        return [nn.Parameter(x.clone().float().reshape(s)) for x, s in zip(self.start, self.shapes, strict=True)]

    def loss(self, params, t):
        total = 0.0
        for p, H, x in zip(params, self.H, self.batches[t], strict=True):
            e = p.reshape(-1) - x.float()
            total = total + 0.5 * e @ (H.float() @ e)
        return total

    def grad(self, theta, t):
        return [H @ (th - x) for th, H, x in zip(theta, self.H, self.batches[t], strict=True)]

    def hvp(self, v, t):
        return [H @ vi for H, vi in zip(self.H, v, strict=True)]


class LeastSquares:
    """One tensor of 20 weights (no bias), a design with spectrum logspace(2, -2); noisy batch Hessians."""

    dtype = torch.float64  # the reference's posterior inflates sigma_1 to 1e5: float32 resolves sigma_2 poorly

    def __init__(self, seed=1, wd=0.0):
        gen = torch.Generator().manual_seed(seed)
        n, N = 20, 400
        Q = random_orthogonal(n, gen)
        Z = torch.randn(N, n, generator=gen, dtype=DT)
        self.X = (Z * torch.logspace(1, -1, n, dtype=DT)) @ Q.T
        w_true = torch.randn(n, generator=gen, dtype=DT)
        self.y = self.X @ w_true + 0.01 * torch.randn(N, generator=gen, dtype=DT)
        self.start = [w_true + 0.05 * torch.randn(n, generator=gen, dtype=DT)]
        self.index = [torch.randint(0, N, (16,), generator=gen) for _ in range(40)]
        self.shapes = [(n,)]
        self.wd = wd

    def params(self):
        return [nn.Parameter(self.start[0].clone().to(self.dtype))]

    def loss(self, params, t):
        idx = self.index[t]
        r = self.X[idx].to(self.dtype) @ params[0] - self.y[idx].to(self.dtype)
        return 0.5 * (r * r).mean()

    def grad(self, theta, t):
        idx = self.index[t]
        Xb = self.X[idx]
        return [Xb.T @ (Xb @ theta[0] - self.y[idx]) / len(idx)]

    def hvp(self, v, t):
        Xb = self.X[self.index[t]]
        return [Xb.T @ (Xb @ v[0]) / len(Xb)]


# ----------------------------------------------------------------------------- the transcription


class Reference:
    """The 2019 class, one cycle, one parameter group, dense and in float64.

    ``fixes`` applies named fixes of :mod:`probprec.thesis` to the transcription, each restated here from
    its definition (the quirk table), independently of the library's code paths.
    """

    def __init__(self, problem, theta, first_batch=0, wd=0.0, fixes=(), noise_floor=1e-3):
        self.pb, self.theta, self.t0, self.wd = problem, theta, first_batch, wd
        self.fixes, self.noise_floor = set(fixes), noise_floor

    def fixed(self, name):
        return name in self.fixes

    def B(self, v, t):
        return [h + self.wd * vi for h, vi in zip(self.pb.hvp(v, t), v, strict=True)]

    def gradient(self, t, regularized=True):
        g = self.pb.grad(self.theta, self.t0 + t)
        wd = self.wd if regularized else 0.0
        return [gi + wd * th for gi, th in zip(g, self.theta, strict=True)]

    def run(self):
        self.prior()
        self.setup()
        self.snapshots = []
        for m in range(1, K):
            self.posterior_column(m)
        self.switch()
        return self

    # a.3 prior: probes, their products, the scalars
    def final_start(self):
        if not self.fixed("prior_observation"):
            return P  # the reference schedule: no final group
        if not self.fixed("paired_noise"):
            return P - 1
        return P - 2 if P % 2 == 0 else P - 1

    def prior(self):
        paired, final = self.fixed("paired_noise"), self.final_start()
        vs, probes, hs = [], [], []
        for t in range(P):
            v = self.gradient(t)
            vs.append(v)
            if t == final:  # the final group probes along the mean of the earlier gradients
                probe = [sum(u[i] for u in vs[:final]) / final for i in range(len(v))]
            elif t % 2 == 0 or not paired:
                probe = v
            else:  # the second minibatch of a pair: the pair's probe
                probe = probes[-1]
            probes.append(probe)
            hs.append(self.B(probe, self.t0 + t))
        vhv = sum(float(a @ b) for v, h in zip(probes, hs, strict=True) for a, b in zip(v, h, strict=True))
        hh = sum(float(b @ b) for h in hs for b in h)
        vv = sum(float(a @ a) for v in probes for a in v)
        self.alpha, self.w = vhv / hh, vhv / vv
        if paired:  # the spread of the products of each pair along its shared probe
            pairs = range(1, P, 2)  # the second minibatch of each pair
            num = sum(float((a - b) @ (a - b)) for t in pairs for a, b in zip(hs[t - 1], hs[t], strict=True))
            den = sum(a.numel() * float(a @ a) for t in pairs for a in probes[t])
            self.lam = max((num / (2 * den)) ** 0.5, self.noise_floor * abs(self.w))
        else:
            sum_v = [sum(v[i] for v in probes) for i in range(len(self.theta))]
            self.lam = abs(vv - sum(float(s @ s) for s in sum_v)) / P
        self.first = self.first_observation(vs, probes, hs, final)

    def first_observation(self, vs, probes, hs, final):
        """s_0 and y_0 per tensor, before scaling by -alpha."""
        n = len(self.theta)
        if final == P:  # the reference: means of the prior's gradients and of its products along them
            return [(sum(v[i] for v in vs) / P, sum(h[i] for h in hs) / P) for i in range(n)]
        last = list(range(final, P))  # the final group: one step, or a pair (its products averaged)
        return [(probes[final][i], sum(hs[t][i] for t in last) / len(last)) for i in range(n)]

    # a.4 setup, a.5 posterior
    def shift(self, m):
        if self.fixed("consistent_prior_mean"):
            return 1.0 / self.alpha
        return 1.0 if m == 1 else self.alpha

    def factors_x(self, tensor):
        """X of unit columns: (Y - b S) (w G + lambda N)^-1, with the reference's or consistent normalization."""
        Sh, Yh = torch.stack(tensor["S"], 1), torch.stack(tensor["Y"], 1)
        m, w, lam = Sh.shape[1], self.w, self.lam
        rr = torch.tensor(tensor["r"], dtype=DT)
        G = w * (Sh.T @ Sh)
        if self.fixed("consistent_normalization"):
            G.diagonal().fill_(w)
            N = lam * torch.eye(m, dtype=DT)
        else:
            G.diagonal().copy_(w * rr)
            N = torch.diag(lam * rr)
        tensor["G"], tensor["N"] = G, N
        tensor["X"] = (Yh - self.shift(m) * Sh) @ torch.linalg.inv(w * G + lam * N)

    def append(self, tensor, s, y):
        r = float(s @ s)
        tensor["S"].append(s / r**0.5)
        tensor["Y"].append(y / r**0.5)
        tensor["r"].append(r)
        tensor["raw_s"].append(s)
        tensor["raw_y"].append(y)
        self.factors_x(tensor)

    def setup(self):
        self.tensors = []
        for vb, hb in self.first:
            tensor = {"S": [], "Y": [], "r": [], "raw_s": [], "raw_y": []}
            self.append(tensor, -self.alpha * vb, -self.alpha * hb)
            self.tensors.append(tensor)

    def direction(self, tensor, g, m):
        alpha, w = self.alpha, self.w
        Sh, X = torch.stack(tensor["S"], 1), tensor["X"]
        C = alpha * w**2 * (Sh.T @ X if self.fixed("exact_capacitance") else X.T @ Sh)
        s = alpha * g - alpha**2 * w**2 * X @ torch.linalg.solve(torch.eye(m, dtype=DT) + C, Sh.T @ g)
        if self.fixed("orthogonal_directions"):  # keep the part orthogonal to the observed directions
            before = s.norm()
            for r in tensor["raw_s"]:
                s = s - (r @ s) / (r @ r) * r
            s = s * (before / s.norm()) if s.norm() > 1e-3 * before else torch.zeros_like(s)
        return s

    def posterior_column(self, m):
        t = P + m - 1  # observed on this minibatch; built from it, or from the one before (next-batch fix)
        built = t - 1 if self.fixed("next_batch_observations") else t
        g = self.gradient(built, regularized=self.fixed("regularized_directions"))
        directions = [self.direction(tensor, gi, m) for tensor, gi in zip(self.tensors, g, strict=True)]
        ys = self.B(directions, self.t0 + t)
        for tensor, s, y in zip(self.tensors, directions, ys, strict=True):
            self.append(tensor, s, y)
        self.snapshots.append([dict(raw_s=list(t["raw_s"]), raw_y=list(t["raw_y"]), G=t["G"].clone(),
                                    N=t["N"].clone(), X=t["X"].clone(), r=list(t["r"]),
                                    mean=self.posterior_mean(t)) for t in self.tensors])

    # a.7 switch: the low-rank extraction, a.8 the preconditioned gradient
    def switch(self):
        self.switch_step = P + K - 2 if self.fixed("prior_observation") else P + K - 1
        g = self.gradient(self.switch_step, regularized=self.fixed("regularized_directions"))
        self.sigma, self.pgrad = [], []
        for tensor, gi in zip(self.tensors, g, strict=True):
            U, sv = self.eigen_ritz(tensor) if self.fixed("eigen_extraction") else self.singular(tensor)
            if self.fixed("consistent_units"):
                factors = torch.where(sv > 1 / self.alpha, (1 / self.alpha) / sv - 1, torch.zeros_like(sv))
            else:
                factors = torch.where(sv > 0, 1 / sv.clamp_min(1e-300).sqrt() - 1, torch.zeros_like(sv))
            self.sigma.append(sv)
            self.pgrad.append(gi + U @ (factors * (U.T @ gi)))

    def singular(self, tensor):
        """Top singular pairs of the (non-symmetric) posterior mean, k capped at n - 1."""
        Bm = self.posterior_mean(tensor)
        U, sv, _ = torch.linalg.svd(Bm)
        k = min(RANK, Bm.shape[0] - 1)
        return U[:, :k], sv[:k]

    def eigen_ritz(self, tensor):
        """Rayleigh-Ritz on span(S) with the observations: Q'BQ from Y, symmetrised, top RANK."""
        S, Y = torch.stack(tensor["raw_s"], 1), torch.stack(tensor["raw_y"], 1)
        Q, R = torch.linalg.qr(S)
        C = torch.linalg.inv(R)
        T = C.T @ (S.T @ Y) @ C
        values, Z = torch.linalg.eigh(0.5 * (T + T.T))
        values, Z = values.flip(0)[:RANK], Z.flip(1)[:, :RANK]
        return Q @ Z, values

    def posterior_mean(self, tensor):
        Sh = torch.stack(tensor["S"], 1)
        return torch.eye(Sh.shape[0], dtype=DT) / self.alpha + self.w**2 * tensor["X"] @ Sh.T


# ----------------------------------------------------------------------------- runs


def run_cycle(problem, steps, wd=0.0, first_batch=0, snapshot=None, **kwargs):
    params = problem.params()
    opt = Preconditioner(params, est_rank=RANK, num_observations=K, prior_iterations=P, weight_decay=wd,
                         mode="thesis", momentum=0.9, **kwargs)
    for t in range(first_batch, first_batch + steps):
        opt.zero_grad()
        problem.loss(params, t).backward(create_graph=opt.create_graph)
        opt.step()
        if snapshot is not None:
            snapshot(t - first_batch, opt, params)
    return opt, params


def same_up_to_sign(a, b, rtol=2e-4):
    a, b = a.double(), b.double()
    sign = 1.0 if float(a @ b) >= 0 else -1.0
    torch.testing.assert_close(a, sign * b, rtol=rtol, atol=rtol * float(b.abs().max()))


@pytest.mark.parametrize("problem_cls,wd", [(Quadratic, 0.0), (Quadratic, 0.05), (LeastSquares, 0.0)])
def test_one_cycle_matches_the_transcription(problem_cls, wd):
    problem = problem_cls()
    ref = Reference(problem, [x.clone() for x in problem.start], wd=wd).run()
    records = {}

    def snapshot(step, opt, params):
        rows = cycle_rows(opt, params)
        records[step] = dict(log=opt.get_log(), grads=[p.grad.detach().clone() for p in params],
                             S=[S for S, _ in rows], Y=[Y for _, Y in rows],
                             gs=None if opt._estimator is None else opt._estimator.groups[0],
                             inner_state=dict(opt._inner.state))

    run_cycle(problem, P + K, wd=wd, snapshot=snapshot)
    # the prior scalars by the reference's formulas
    prior = records[P - 1]["log"]
    assert prior["step_sizes"][0] == pytest.approx(ref.alpha, rel=1e-5)
    assert prior["prior_width"][0] == pytest.approx(ref.w, rel=1e-5)
    assert prior["noise"][0] == pytest.approx(ref.lam, rel=1e-4)
    # the columns and the posterior after each posterior step
    for m in range(1, K):
        rec, snap = records[P - 1 + m], ref.snapshots[m - 1]
        gs = rec["gs"]
        for i, (S_rows, Y_rows, want) in enumerate(zip(rec["S"], rec["Y"], snap, strict=True)):
            assert len(S_rows) == m + 1
            for s, y, s_ref, y_ref in zip(S_rows, Y_rows, want["raw_s"], want["raw_y"], strict=True):
                same_up_to_sign(s, s_ref)
                sign = 1.0 if float(s.double() @ s_ref) >= 0 else -1.0
                same_up_to_sign(sign * y.double(), sign * y_ref)
            # the posterior, through the library's own functions, against G, N and X of the transcription
            post = thesis_posterior(gs.gram_ss[i, :m + 1, :m + 1], gs.gram_sy[i, :m + 1, :m + 1],
                                    ref.alpha, ref.w, ref.lam, True, ref.alpha)
            X = thesis_factors(S_rows, Y_rows, post).double()
            S = torch.stack(S_rows).double()
            signs = torch.tensor([1.0 if float(s.double() @ s_ref) >= 0 else -1.0
                                  for s, s_ref in zip(S_rows, want["raw_s"], strict=True)], dtype=DT)
            system = torch.linalg.inv(post.Minv_unit)  # w G + lambda N, unit columns off the diagonal
            expected = signs[:, None] * (ref.w * want["G"] + ref.lam * want["N"]) * signs[None, :]
            torch.testing.assert_close(system, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
            unit_x = X.T * torch.tensor(want["r"], dtype=DT).sqrt() * signs  # raw rows -> the reference's columns
            torch.testing.assert_close(unit_x, want["X"], rtol=1e-3, atol=1e-3 * float(want["X"].abs().max()))
            z = torch.randn(S.shape[1], dtype=DT, generator=torch.Generator().manual_seed(m))
            mine = z / ref.alpha + ref.w**2 * X.T @ (S @ z)
            torch.testing.assert_close(mine, want["mean"] @ z, rtol=5e-4, atol=5e-4 * float(mine.abs().max()))
    # the switch step: top singular values, the preconditioned gradient, lr = alpha, a fresh momentum buffer
    last = records[P + K - 1]
    for sigma, want in zip(last["log"]["eigenvalues"], ref.sigma, strict=True):
        # float32 columns against float64: singular values move by up to (relative error) x sigma_1
        assert sigma == pytest.approx(want.tolist(), rel=1e-3, abs=1e-4 * float(want.max()))
    for grad, want in zip(last["grads"], ref.pgrad, strict=True):
        torch.testing.assert_close(grad.reshape(-1).double(), want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))
    assert last["log"]["learning_rates"][0] == pytest.approx(ref.alpha, rel=1e-5)
    assert records[P + K - 2]["inner_state"] == {}  # no inner step before the switch


def test_the_momentum_buffer_restarts_every_cycle():
    problem = Quadratic()
    buffers = {}

    def snapshot(step, opt, params):
        if opt.get_log()["cycles_completed"] == 2 and "second" not in buffers:
            p = params[0]
            buffers["second"] = opt._inner.state[p]["momentum_buffer"].clone()
            buffers["grad"] = p.grad.detach().clone()  # the reference leaves the preconditioned gradient here
        if step == P + K + 2:
            opt.start_estimate()

    run_cycle(problem, 2 * (P + K) + 3, snapshot=snapshot)
    # a fresh SGD momentum buffer starts as the first gradient it sees
    torch.testing.assert_close(buffers["second"], buffers["grad"])


# ----------------------------------------------------------------------------- every fix


def test_fix_names_and_validation():
    assert set(FIXES.values()) == set(QUIRKS)
    assert quirks_for("all") == frozenset() and quirks_for(()) == frozenset(QUIRKS)
    with pytest.raises(ValueError, match="fixes must be names from"):
        Preconditioner([nn.Parameter(torch.ones(2))], mode="thesis", fixes=("no_such_fix",))
    with pytest.raises(ValueError, match="mode='thesis' only"):
        Preconditioner([nn.Parameter(torch.ones(2))], fixes=("exact_capacitance",))
    with pytest.raises(ValueError, match="mode must be one of"):
        Preconditioner([nn.Parameter(torch.ones(2))], mode="2019")


def train_mlp(steps=40, wd=0.01, **kwargs):
    model = mlp(sizes=(6, 8, 3))
    opt = Preconditioner(model.parameters(), prior_iterations=P, num_observations=K, weight_decay=wd,
                         momentum=0.5, **kwargs)
    logs, grads = [], []
    for t, (x, y) in enumerate(classification_batches(steps, seed=3)):
        if t and t % 15 == 0:
            opt.start_estimate()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
        opt.step()
        logs.append(opt.get_log())
        grads.append([p.grad.detach().clone() for p in model.parameters()])
    return [p.detach().clone() for p in model.parameters()], logs, grads, opt


@pytest.mark.parametrize("new", [False, True])  # mechanisms the 2019 class had not: off by default in thesis mode
def test_every_fix_on_is_the_default_mode(new):
    new_mechanisms = dict.fromkeys(FORMAT_0_BEHAVIOUR, new)
    default, logs_d, grads_d, _ = train_mlp(**new_mechanisms)
    thesis, logs_t, grads_t, opt = train_mlp(mode="thesis", fixes="all", **new_mechanisms)
    assert opt.config.fixes == tuple(sorted(FIXES))
    for a, b in zip(default, thesis, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(grads_d, grads_t, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    for a, b in zip(logs_d, logs_t, strict=True):
        assert a == b


def cycle_records(problem, fixes, wd=0.0, steps=P + K + 1):
    records = {}

    def snapshot(step, opt, params):
        records[step] = dict(log=opt.get_log(), grads=[p.grad.detach().clone() for p in params],
                             S=[[r.clone() for r in S] for S, _ in cycle_rows(opt, params)],
                             params=[p.detach().clone() for p in params])

    run_cycle(problem, steps, wd=wd, fixes=fixes, snapshot=snapshot)
    return records


def prior_of(records):
    log = records[P - 1]["log"]
    return log["step_sizes"], log["prior_width"], log["noise"]


def directions(records, step):
    return [torch.cat([r.reshape(-1) for r in rows]) if rows else torch.zeros(0) for rows in records[step]["S"]]


def differ(a, b):
    return any(not torch.allclose(x, y, rtol=1e-6, atol=1e-9) for x, y in zip(a, b, strict=True))


def test_paired_noise_changes_the_noise_and_pairs_the_probes():
    problem = LeastSquares()
    quirky, fixed = cycle_records(problem, ()), cycle_records(problem, ("paired_noise",))
    assert prior_of(quirky)[2] != prior_of(fixed)[2]
    assert fixed[P - 1]["log"]["noise_measured"] == [True]


@pytest.mark.parametrize("fix", ["consistent_normalization", "consistent_prior_mean", "exact_capacitance"])
def test_posterior_fixes_change_the_directions_not_the_prior(fix):
    problem = Quadratic()
    quirky, fixed = cycle_records(problem, ()), cycle_records(problem, (fix,))
    assert prior_of(quirky) == prior_of(fixed)
    step = P + 1  # column 0 is the same; column 2 comes from a posterior over two columns
    a, b = quirky[step]["S"], fixed[step]["S"]
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert any(not torch.allclose(x[2], y[2], rtol=1e-5) for x, y in zip(a, b, strict=True))


def test_eigen_extraction_changes_the_values_not_the_directions():
    problem = Quadratic()
    quirky, fixed = cycle_records(problem, ()), cycle_records(problem, ("eigen_extraction",))
    step = P + K - 2
    assert not differ(directions(quirky, step), directions(fixed, step))
    assert quirky[P + K - 1]["log"]["eigenvalues"] != fixed[P + K - 1]["log"]["eigenvalues"]


def test_consistent_units_change_the_preconditioned_gradient_not_the_values():
    problem = Quadratic()
    quirky, fixed = cycle_records(problem, ()), cycle_records(problem, ("consistent_units",))
    switch = P + K - 1
    assert quirky[switch]["log"]["eigenvalues"] == fixed[switch]["log"]["eigenvalues"]
    assert differ(quirky[switch]["grads"], fixed[switch]["grads"])


def test_guarded_step_size_on_negative_curvature():
    theta = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    sizes = {}
    for fixes in ((), ("guarded_step_size",)):
        opt = Preconditioner([theta], prior_iterations=P, num_observations=K, mode="thesis", fixes=fixes)
        for _ in range(P):
            opt.zero_grad()
            (-0.5 * (theta**2).sum()).backward(create_graph=opt.create_graph)
            opt.step()
        sizes[fixes] = opt.get_log()["step_sizes"][0]
    assert sizes[()] == pytest.approx(-1.0) and sizes[("guarded_step_size",)] == pytest.approx(1.0)


def test_true_gradient_changes_only_p_grad():
    problem = Quadratic()
    quirky, fixed = cycle_records(problem, ()), cycle_records(problem, ("true_gradient",))
    step = 1  # an estimation step: the reference leaves g + Hv
    g = problem.grad([x.clone() for x in problem.start], step)
    hv = problem.hvp(g, step)
    for got, want, hvi in zip(quirky[step]["grads"], g, hv, strict=True):
        torch.testing.assert_close(got.reshape(-1).double(), want + hvi, rtol=1e-4, atol=1e-5)
    for got, want in zip(fixed[step]["grads"], g, strict=True):
        torch.testing.assert_close(got.reshape(-1).double(), want, rtol=1e-4, atol=1e-6)
    last = P + K
    assert not differ(quirky[last]["params"], fixed[last]["params"])


def test_persistent_inner_keeps_momentum_across_cycles():
    """At the second switch SGD's buffer is mu * (its last value) + P g with the fix, and P g without it."""
    for fixes, keeps in (((), False), (("persistent_inner",), True)):
        problem = Quadratic()
        params = problem.params()
        opt = Preconditioner(params, prior_iterations=P, num_observations=K, mode="thesis", fixes=fixes,
                             momentum=0.9)
        p = params[0]
        last_buffer = switched = None
        for t in range(2 * (P + K) + 2):
            if t == P + K + 1:
                opt.start_estimate()
            completed = opt.get_log()["cycles_completed"]
            opt.zero_grad()
            problem.loss(params, t).backward(create_graph=opt.create_graph)
            opt.step()
            if completed == 1 and opt.get_log()["cycles_completed"] == 2:
                # the reference (and fix true_gradient off) leaves the preconditioned gradient in p.grad
                switched = (opt._inner.state[p]["momentum_buffer"].clone(), p.grad.detach().clone())
            if opt.get_log()["cycles_completed"] == 1 and opt.phase == "optimize":
                last_buffer = opt._inner.state[p]["momentum_buffer"].clone()
        buffer, pgrad = switched
        expected = 0.9 * last_buffer + pgrad if keeps else pgrad
        torch.testing.assert_close(buffer, expected, rtol=1e-5, atol=1e-7)


def test_regularized_directions_matter_only_with_weight_decay():
    problem = Quadratic()
    for wd, expect in ((0.0, False), (0.05, True)):
        quirky = cycle_records(problem, (), wd=wd)
        fixed = cycle_records(problem, ("regularized_directions",), wd=wd)
        assert differ(directions(quirky, P), directions(fixed, P)) == expect


@pytest.mark.parametrize("fix", ["next_batch_observations", "orthogonal_directions"])
def test_direction_policy_fixes_change_the_directions_not_the_prior(fix):
    problem = LeastSquares()
    quirky, fixed = cycle_records(problem, ()), cycle_records(problem, (fix,))
    assert prior_of(quirky) == prior_of(fixed)
    step = P + K - 2
    assert differ(directions(quirky, step), directions(fixed, step))
    if fix == "orthogonal_directions":
        S = torch.stack(fixed[step]["S"][0]).double()
        gram = S @ S.T
        assert (gram - torch.diag(gram.diagonal())).abs().max() < 1e-4 * gram.diagonal().max()


def test_prior_observation_changes_the_first_column_and_saves_a_step():
    problem = Quadratic()
    quirky, fixed = cycle_records(problem, ()), cycle_records(problem, ("prior_observation",))
    # the final prior minibatch probes along the mean of the earlier gradients (its HVP is the first observation)
    assert prior_of(quirky)[0] != prior_of(fixed)[0]
    assert differ([quirky[P][ "S"][0][0]], [fixed[P]["S"][0][0]])
    assert quirky[P + K - 2]["log"]["phase"] == "posterior" and fixed[P + K - 2]["log"]["phase"] == "optimize"


# ----------------------------------------------------------------------------- each fix, against the transcription

SINGLE_FIXES = [f for f in FIXES if f != "persistent_inner"]  # the inner optimizer's state: its own test below


@pytest.mark.parametrize("problem_cls,wd", [(Quadratic, 0.05), (LeastSquares, 0.0)], ids=["quadratic", "lsq"])
@pytest.mark.parametrize("fix", SINGLE_FIXES)
def test_each_fix_gives_the_transcription_with_that_fix(fix, problem_cls, wd):
    """What a fix changes equals the transcription with the fix restated: prior, columns, values, update."""
    problem = problem_cls()
    ref = Reference(problem, [x.clone() for x in problem.start], wd=wd, fixes=(fix,)).run()
    records = {}

    def snapshot(step, opt, params):
        rows = cycle_rows(opt, params)
        records[step] = dict(log=opt.get_log(), grads=[p.grad.detach().clone() for p in params],
                             S=[S for S, _ in rows], Y=[Y for _, Y in rows],
                             params=[p.detach().clone().reshape(-1) for p in params])

    run_cycle(problem, ref.switch_step + 1, wd=wd, fixes=(fix,), snapshot=snapshot)
    prior = records[P - 1]["log"]
    assert prior["step_sizes"][0] == pytest.approx(ref.alpha, rel=1e-5)
    assert prior["prior_width"][0] == pytest.approx(ref.w, rel=1e-5)
    assert prior["noise"][0] == pytest.approx(ref.lam, rel=1e-4)
    for m in range(1, K):
        rec, snap = records[P - 1 + m], ref.snapshots[m - 1]
        if ref.switch_step == P - 1 + m:
            break  # the cycle has ended: its buffers are gone
        for S_rows, Y_rows, want in zip(rec["S"], rec["Y"], snap, strict=True):
            assert len(Y_rows) == m + 1
            for s, y, s_ref, y_ref in zip(S_rows, Y_rows, want["raw_s"], want["raw_y"], strict=False):
                sign = 1.0 if float(s.double() @ s_ref) >= 0 else -1.0
                same_up_to_sign(s, s_ref)
                same_up_to_sign(sign * y.double(), sign * y_ref)
    last = records[ref.switch_step]
    for sigma, want in zip(last["log"]["eigenvalues"], ref.sigma, strict=True):
        assert sigma == pytest.approx(want.tolist(), rel=1e-3, abs=1e-4 * float(want.abs().max()))
    assert last["log"]["learning_rates"][0] == pytest.approx(ref.alpha, rel=1e-5)
    # the first update: a fresh momentum buffer is what the inner SGD sees, the preconditioned gradient (plus
    # its own weight decay where the quirk leaves the decay to it), so theta moves by -alpha times that
    inner_wd = 0.0 if fix == "regularized_directions" else wd
    for before, after, pgrad in zip(problem.start, last["params"], ref.pgrad, strict=True):
        step = after.double() - before
        want = -ref.alpha * (pgrad + inner_wd * before)
        torch.testing.assert_close(step, want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))
