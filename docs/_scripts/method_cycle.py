"""The figure of the method page: one estimation cycle on a least-squares problem whose Hessian is known.

Drawn by matplotlib's plot directive when the site is built (docs/method.md).
"""

import warnings

import matplotlib.pyplot as plt
import torch

from probprec import PreconditionedSGD
from probprec.bench.problems.synthetic import ill_conditioned_regression

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
data = ill_conditioned_regression(n=50, num_data=4000, seed=0)
H = data.hessian
eigenvalues = torch.linalg.eigvalsh(H).flip(0)
w = torch.nn.Parameter(torch.zeros(50, dtype=torch.float64))
opt = PreconditionedSGD([w], adaptive_restarts=False, keep_moving=False, adaptive_observations=False)
generator = torch.Generator().manual_seed(1)
phases, losses, estimate = [], [], None
for _ in range(40):
    index = torch.randint(len(data.targets), (32,), generator=generator)
    phases.append(opt.phase)
    opt.zero_grad()
    loss = 0.5 * ((data.features[index] @ w - data.targets[index]) ** 2).mean()
    loss.backward(create_graph=opt.create_graph)
    opt.step()
    losses.append(loss.item())
    if estimate is None and opt.curvature_estimate()[0] is not None:
        estimate = opt.curvature_estimate()[0]
        prior_level = 1 / opt.get_log()["step_sizes"][0]

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
colors = {"prior": "tab:orange", "posterior": "tab:green"}
for step, phase in enumerate(phases):
    if phase in colors:
        left.axvspan(step - 0.5, step + 0.5, color=colors[phase], alpha=0.25, lw=0)
left.plot(losses, color="black", lw=1)
left.set(yscale="log", xlabel="step", ylabel="minibatch loss",
         title="prior (orange), posterior (green), then updates")
ranks = torch.arange(1, 21)
right.semilogy(ranks, eigenvalues[:20], "o", color="gray", ms=4, label="eigenvalues of the Hessian")
sigma, U = estimate
ritz = [float(u @ H @ u) for u in U]
right.semilogy(range(1, len(sigma) + 1), sigma, "x", color="tab:green", ms=9, mew=2,
               label=r"estimated curvatures $\sigma_j$")
right.semilogy(range(1, len(sigma) + 1), ritz, "+", color="tab:blue", ms=11, mew=1.5,
               label=r"true curvature $u_j^\top H u_j$ along them")
right.axhline(prior_level, color="tab:orange", ls="--", label=r"prior level $b_0 = 1/\alpha$")
right.set(xlabel="rank", ylabel="curvature", title="the estimate (rank 2) after the cycle",
          xticks=[1, 5, 10, 15, 20])
right.legend(fontsize="small", loc="upper right", bbox_to_anchor=(1.0, 0.86))
