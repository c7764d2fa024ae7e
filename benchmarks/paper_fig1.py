"""The paper's headline experiment (de Roos & Hennig 2019, §3.1, Fig. 1) on a synthetic stand-in for SARCOS.

Least squares with 253 features whose covariance has a prescribed spectrum (top
eigenvalues 100, 70, 50, 35 over a log-spaced bulk down to 1e-2: condition number
1e4), batch sizes 4, 16, 64, 256, and the same budget of data points for every
method (the estimation minibatches count). Compared, per batch size:

* ``sgd``: SGD at its best step size eta from a log grid (chosen on the final
  relative error, median over seeds);
* ``paper``: preconditioned SGD at that same eta with the paper's low-dimensional
  step rule (``step_rule="paper"``), preconditioner built once;
* ``newton-eta``: the default rule at that same eta (``lr=eta``);
* ``newton-adaptive``: the default rule with its own step size (``lr=None``).

It prints the final relative error ||w - w*|| / ||w*|| against the exact solution
and the relative excess loss (L(w) - L(w*)) / (L(w0) - L(w*)), medians over seeds,
and for the preconditioned runs the estimated top curvatures against the true top
eigenvalues and the true Rayleigh quotients u'Hu along the estimated directions.

    python benchmarks/paper_fig1.py            # full run (a few minutes on 2 cores)
    python benchmarks/paper_fig1.py --quick    # smaller budget and grid
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch

from probprec import Preconditioner
from probprec.bench.problems.synthetic import ill_conditioned_regression


def make_problem():
    """The harness's ``paper_regression`` data in float64: Phi, y, H, w*, eigenvalues."""
    data = ill_conditioned_regression()
    return data.features, data.targets, data.hessian, data.solution, data.eigenvalues


def full_loss(w, Phi, y):
    return 0.5 * float(((Phi @ w - y) ** 2).mean())


def run(method, eta, batch, budget, problem, seed, rank, num_obs, prior_iters):
    Phi, y, _H, w_star, _ = problem
    w = torch.zeros(Phi.shape[1], dtype=torch.float64, requires_grad=True)
    if method == "sgd":
        opt = torch.optim.SGD([w], lr=eta)
    else:
        kwargs = dict(est_rank=rank, num_observations=num_obs, prior_iterations=prior_iters)
        if method == "paper":
            opt = Preconditioner([w], lr=eta, step_rule="paper", **kwargs)
        elif method == "newton-eta":
            opt = Preconditioner([w], lr=eta, **kwargs)
        else:
            opt = Preconditioner([w], lr=None, **kwargs)
    gen = torch.Generator().manual_seed(1000 + seed)
    steps = budget // batch
    create = getattr(opt, "create_graph", False)
    for _ in range(steps):
        idx = torch.randint(0, Phi.shape[0], (batch,), generator=gen)
        opt.zero_grad()
        loss = 0.5 * ((Phi[idx] @ w - y[idx]) ** 2).mean()
        if create:
            create = opt.create_graph
        loss.backward(create_graph=create)
        opt.step()
        if not torch.isfinite(w).all():
            return math.inf, math.inf, opt
    with torch.no_grad():
        rel = float((w - w_star).norm() / w_star.norm())
        l_star = full_loss(w_star, Phi, y)
        excess = (full_loss(w, Phi, y) - l_star) / (full_loss(torch.zeros_like(w), Phi, y) - l_star)
    return rel, excess, opt


def median(values):
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller budget, grid and seeds")
    parser.add_argument("--budget", type=int, default=200_000, help="data points per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--observations", type=int, default=16)
    parser.add_argument("--prior", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 64, 256])
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    torch.set_num_threads(1)
    grid = [10 ** (e / 2) for e in range(-8, -1)]  # 1e-4 .. 3.2e-2
    if args.quick:
        args.budget, args.seeds = 40_000, 2
        grid = grid[2::2]
    problem = make_problem()
    _, _, H, _, eig = problem
    print(f"problem: n={H.shape[0]}, condition number {float(eig.max() / eig.min()):.0f}, "
          f"budget {args.budget} data points, seeds {args.seeds}, rank {args.rank}, "
          f"{args.prior} prior + {args.observations} posterior minibatches")
    print(f"true top eigenvalues: {[round(float(e), 1) for e in eig[:4]]}\n")
    header = f"{'batch':>5} {'method':>16} {'eta':>9} {'rel. error':>11} {'excess loss':>12}"
    rows = []
    start = time.perf_counter()
    for batch in args.batches:
        print(header)
        sgd = {}
        for eta in grid:
            res = [run("sgd", eta, batch, args.budget, problem, s, 0, 0, 0)[:2] for s in range(args.seeds)]
            sgd[eta] = (median([r[0] for r in res]), median([r[1] for r in res]))
        eta = min(grid, key=lambda e: sgd[e][0])
        print(f"{batch:>5} {'sgd (best eta)':>16} {eta:>9.2e} {sgd[eta][0]:>11.4f} {sgd[eta][1]:>12.3e}")
        for method in ("paper", "newton-eta", "newton-adaptive"):
            res, estimates = [], []
            for s in range(args.seeds):
                rel, excess, opt = run(method, eta, batch, args.budget, problem, s, args.rank,
                                       args.observations, args.prior)
                res.append((rel, excess))
                est = opt.curvature_estimate()[0]
                if est is not None:
                    sigma, U = est
                    rq = [float(u @ H @ u) for u in U.reshape(U.shape[0], -1)]
                    estimates.append(([round(float(v), 1) for v in sigma], [round(v, 1) for v in rq],
                                      opt.get_log()["step_sizes"][0]))
            rel_m, exc_m = median([r[0] for r in res]), median([r[1] for r in res])
            shown = "adaptive" if method == "newton-adaptive" else f"{eta:.2e}"
            print(f"{batch:>5} {method:>16} {shown:>9} {rel_m:>11.4f} {exc_m:>12.3e}")
            rows.append((batch, method, rel_m, sgd[eta][0]))
            if estimates and method != "newton-eta":
                sigma, rq, alpha = estimates[0]
                print(f"{'':>23}seed 0: estimated {sigma}, true u'Hu {rq}, alpha {alpha:.3g}")
        print()
    print(f"elapsed {time.perf_counter() - start:.0f} s")
    print("\nsummary (final relative error, median over seeds; < 1 means preconditioned SGD is ahead):")
    for batch, method, rel, rel_sgd in rows:
        print(f"  batch {batch:>3} {method:>16}: {rel:.4f} vs sgd {rel_sgd:.4f} (ratio {rel / rel_sgd:.2f})")


if __name__ == "__main__":
    main()
