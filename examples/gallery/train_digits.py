"""
PreconditionedSGD against SGD on the digits
===========================================

A small MLP on scikit-learn's 8x8 digits (the data ship with scikit-learn: nothing is downloaded),
trained for 200 steps by :class:`~probprec.PreconditionedSGD`, which estimates its own step size, and
by SGD with a learning rate of 0.1. The loop differs from a plain PyTorch loop in one line, the
``backward`` call, which builds the graph that the curvature estimate differentiates again, but only
while the optimizer needs it.
"""

# %%
# The data and the model
# ----------------------
import warnings

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits

from probprec import PreconditionedSGD

# PyTorch warns once that backward(create_graph=True) makes a reference cycle;
# step() breaks it (it detaches every gradient): the warning does not apply.
warnings.filterwarnings(
    "ignore", message="Using backward\\(\\) with create_graph=True"
)

features, labels = load_digits(return_X_y=True)
x = torch.tensor(features[:512] / 16.0, dtype=torch.float32)
y = torch.tensor(labels[:512])


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
    )


# %%
# The training loop
# -----------------
# ``opt.create_graph`` is true exactly while the next ``step()`` needs curvature (the estimation
# steps at the start of a cycle, and the safeguard's check steps); every other step is as cheap as
# SGD's. The optimizer decides itself when to estimate again: the loop never calls
# ``start_estimate()``.


def train(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    steps: int = 200,
    batch: int = 32,
) -> list[float]:
    """Train for ``steps`` minibatches; returns the loss of each."""
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        index = torch.randint(len(x), (batch,), generator=generator)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
        # the one changed line (SGD, trained below too, has no create_graph: False)
        loss.backward(create_graph=getattr(opt, "create_graph", False))
        opt.step()
        losses.append(loss.item())
    return losses


model = make_model()
opt = PreconditionedSGD(model.parameters())  # no learning rate to tune
preconditioned = train(model, opt)

sgd_model = make_model()
sgd = train(sgd_model, torch.optim.SGD(sgd_model.parameters(), lr=0.1))
log = opt.get_log()
print(f"step sizes {log['step_sizes']}, {log['cycles_completed']} cycles completed")
print(f"Hessian-vector products: {log['hvp_count']}")

# %%
# The result
# ----------
# The first steps of PreconditionedSGD are spent at the initial parameters, estimating (the flat
# start of its curve); from then on it steps with its own estimate.


def smooth(values: list[float], width: int = 10) -> list[float]:
    return [
        sum(values[max(0, i - width + 1) : i + 1])
        / len(values[max(0, i - width + 1) : i + 1])
        for i in range(len(values))
    ]


fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
ax.plot(smooth(preconditioned), label="PreconditionedSGD (step size estimated)")
ax.plot(smooth(sgd), label="SGD, lr 0.1")
ax.set(xlabel="step", ylabel="training loss (mean of 10 minibatches)", yscale="log")
ax.legend()

early, late = sum(preconditioned[:10]) / 10, sum(preconditioned[-10:]) / 10
print(
    f"PreconditionedSGD: loss {early:.3f} over the first 10 steps, {late:.3f} last"
)
assert late < 0.5 * early, "the loss of PreconditionedSGD went down"
