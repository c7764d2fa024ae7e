"""Problems on generated data: DeepOBS's quadratic_deep and 2-D functions, and the paper's regression."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Subset, TensorDataset

from ..data import Splits
from .base import Problem

__all__ = [
    "Beale",
    "Branin",
    "IllConditionedRegression",
    "QuadraticDeep",
    "Regression",
    "Rosenbrock",
    "ill_conditioned_regression",
]


class _PerSampleLoss(Problem):
    """Problems whose model returns the per-sample loss, and that have no accuracy."""

    metric = "loss"

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return outputs.mean()

    def correct(self, outputs: Tensor, targets: Tensor) -> None:
        return None


class _QuadraticModel(nn.Module):
    hessian: Tensor
    """A buffer (moves with the model, saved with its state dict)."""

    def __init__(self, hessian: Tensor):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(hessian.shape[0]))
        self.register_buffer("hessian", hessian)

    def forward(self, x: Tensor) -> Tensor:
        e = self.theta - x
        return 0.5 * ((e @ self.hessian) * e).sum(1)


class QuadraticDeep(_PerSampleLoss):
    r"""DeepOBS's quadratic_deep: a noisy 100-dimensional quadratic with a deep-learning-like spectrum.

    Per-sample loss :math:`\tfrac12 (\theta - x)^\top H (\theta - x)` with
    :math:`x \sim \mathcal N(0, 0.6^2 I)`; :math:`H = R^\top \operatorname{diag}(\lambda) R`,
    90 eigenvalues from U(0, 1) and 10 from U(30, 60), :math:`R` Haar-random, all
    from ``RandomState(42)`` (fixed, unlike the beta's module-level generator);
    :math:`\theta_0 = 1`. train 1000 draws (seed 42), valid 1000 (seed 44), test
    1000 (seed 43); train_eval is the training set. An epoch has 7 steps, so a
    fresh estimate (14 steps) is started every 10 epochs.
    """

    name = "quadratic_deep"
    description = "noisy 100-d quadratic with 10 large and 90 small eigenvalues (DeepOBS)"
    batch_size = 128
    epochs = 100
    restart_every = 10

    def __init__(self, l2: float | None = None) -> None:
        super().__init__(l2)
        rng = np.random.RandomState(42)
        eig = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
        q, r = np.linalg.qr(rng.normal(size=(100, 100)))
        rotation = q * np.sign(np.diag(r))  # Haar-distributed
        self.hessian = torch.tensor(rotation.T @ np.diag(eig) @ rotation, dtype=torch.float32)

    def model(self) -> nn.Module:
        return _QuadraticModel(self.hessian.clone())

    def diagnostics(self, model: nn.Module, optimizer: Any) -> dict[str, Any]:
        """The true spectrum, and the condition number of the preconditioned Hessian :math:`P^{1/2} H P^{1/2}`."""
        H = self.hessian.double()
        eig = torch.linalg.eigvalsh(H)
        out: dict[str, Any] = {"true_top_eigenvalues": eig.flip(0)[:4].tolist(),
                               "condition_number": float(eig.max() / eig.min())}
        if hasattr(optimizer, "precondition"):
            basis = torch.eye(H.shape[0], dtype=torch.float32)
            P = torch.stack([optimizer.precondition([b])[0] for b in basis], dim=1).double()
            evals, evecs = torch.linalg.eigh(0.5 * (P + P.T))
            root = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
            pre = torch.linalg.eigvalsh(root @ H @ root)
            out["preconditioned_condition_number"] = float(pre.max() / pre.min()) if pre.min() > 0 else None
        return out

    def splits(self, data_dir: str | Path = "", download: bool = False) -> Splits:
        def draws(seed: int) -> TensorDataset:
            x = torch.tensor(np.random.RandomState(seed).normal(0.0, 0.6, size=(1000, 100)), dtype=torch.float32)
            return TensorDataset(x, torch.zeros(1000))

        train = draws(42)
        return Splits(train=train, train_eval=train, valid=draws(44), test=draws(43))


class _TwoDModel(nn.Module):
    def __init__(self, function: Callable[[Tensor, Tensor], Tensor], start: tuple[float, float]):
        super().__init__()
        self.function = function
        self.u = nn.Parameter(torch.tensor([start[0]]))
        self.v = nn.Parameter(torch.tensor([start[1]]))

    def forward(self, noise: Tensor) -> Tensor:
        return self.function(self.u, self.v) + self.u * noise[:, 0] + self.v * noise[:, 1]


class _TwoD(_PerSampleLoss):
    r"""A 2-D test function with additive gradient noise: :math:`f(u, v) + u x + v y`, :math:`(x, y) \sim N(0, I)`.

    As DeepOBS's TensorFlow version: 10,000 training draws (seed 42), validation
    draws with seed 44, and a test set of zeros (the noise-free function). The
    parameters are two 1-element tensors.
    """

    batch_size = 128
    epochs = 20
    start: tuple[float, float]

    @staticmethod
    def function(u: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError

    def model(self) -> nn.Module:
        return _TwoDModel(self.function, self.start)

    def splits(self, data_dir: str | Path = "", download: bool = False) -> Splits:
        def draws(seed: int, n: int) -> TensorDataset:
            x = torch.tensor(np.random.RandomState(seed).normal(size=(n, 2)), dtype=torch.float32)
            return TensorDataset(x, torch.zeros(n))

        train = draws(42, 10_000)
        test = TensorDataset(torch.zeros(1000, 2), torch.zeros(1000))
        return Splits(train=train, train_eval=Subset(train, range(1000)), valid=draws(44, 1000), test=test)


class Rosenbrock(_TwoD):
    """:math:`f = (1 - u)^2 + 100 (v - u^2)^2` from (-0.5, 1.5)."""

    name = "two_d_rosenbrock"
    description = "noisy Rosenbrock function, 2 parameters (DeepOBS, TF only there)"
    start = (-0.5, 1.5)

    @staticmethod
    def function(u: Tensor, v: Tensor) -> Tensor:
        return (1 - u) ** 2 + 100 * (v - u**2) ** 2


class Beale(_TwoD):
    """:math:`f = (1.5 - u + uv)^2 + (2.25 - u + uv^2)^2 + (2.625 - u + uv^3)^2` from (-4.5, 4.5)."""

    name = "two_d_beale"
    description = "noisy Beale function, 2 parameters (DeepOBS, TF only there)"
    start = (-4.5, 4.5)

    @staticmethod
    def function(u: Tensor, v: Tensor) -> Tensor:
        return (1.5 - u + u * v) ** 2 + (2.25 - u + u * v**2) ** 2 + (2.625 - u + u * v**3) ** 2


class Branin(_TwoD):
    r"""The Branin function from (2.5, 12.5).

    :math:`f = (v - \tfrac{5.1}{4\pi^2} u^2 + \tfrac{5}{\pi} u - 6)^2 + 10 (1 - \tfrac{1}{8\pi}) \cos u + 10`.
    """

    name = "two_d_branin"
    description = "noisy Branin function, 2 parameters (DeepOBS, TF only there)"
    start = (2.5, 12.5)

    @staticmethod
    def function(u: Tensor, v: Tensor) -> Tensor:
        a = v - 5.1 / (4 * math.pi**2) * u**2 + 5 / math.pi * u - 6
        return a**2 + 10 * (1 - 1 / (8 * math.pi)) * torch.cos(u) + 10


TOP_EIGENVALUES = (100.0, 70.0, 50.0, 35.0)


class Regression(NamedTuple):
    """Data of :func:`ill_conditioned_regression`."""

    features: Tensor
    r""":math:`\Phi`, ``N x n``; its sample covariance has exactly the prescribed spectrum."""
    targets: Tensor
    hessian: Tensor
    r""":math:`\Phi^\top \Phi / N`."""
    solution: Tensor
    r"""The exact minimiser :math:`w^*` of :math:`\tfrac12 \operatorname{mean}(\phi^\top w - y)^2`."""
    eigenvalues: Tensor
    extra_features: Tensor
    """Further draws from the same feature distribution (not whitened), ``extra x n``."""
    extra_targets: Tensor


@functools.lru_cache(maxsize=4)
def ill_conditioned_regression(
    n: int = 253, num_data: int = 20_000, seed: int = 0, noise: float = 0.5, extra: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Regression:
    r"""Least-squares data with a prescribed spectrum, a stand-in for the paper's SARCOS features (§3.1).

    The features' sample covariance :math:`\Phi^\top\Phi / N` (the Hessian of
    :math:`\tfrac12 \operatorname{mean}(\phi^\top w - y)^2`) has exactly the eigenvalues
    100, 70, 50, 35 over a log-spaced bulk from 10 down to 0.01 (condition number
    :math:`10^4`), in a random orthonormal basis; targets are :math:`\phi^\top w + \epsilon`
    with fixed random :math:`w` and noise of standard deviation ``noise``.
    """
    gen = torch.Generator().manual_seed(seed)
    eig = torch.cat((torch.tensor(TOP_EIGENVALUES, dtype=torch.float64),
                     torch.logspace(1, -2, n - len(TOP_EIGENVALUES), dtype=torch.float64)))
    Z = torch.randn(num_data, n, generator=gen, dtype=torch.float64)
    Z = Z - Z.mean(0)
    evals, evecs = torch.linalg.eigh(Z.T @ Z / num_data)  # whiten the sample exactly
    Z = Z @ evecs / evals.sqrt()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    Phi = (Z * eig.sqrt()) @ Q.T
    w_true = torch.randn(n, generator=gen, dtype=torch.float64)
    y = Phi @ w_true + noise * torch.randn(num_data, generator=gen, dtype=torch.float64)
    H = Phi.T @ Phi / num_data
    w_star = torch.linalg.solve(H, Phi.T @ y / num_data)
    X = (torch.randn(extra, n, generator=gen, dtype=torch.float64) * eig.sqrt()) @ Q.T
    t = X @ w_true + noise * torch.randn(extra, generator=gen, dtype=torch.float64)
    return Regression(*(v.to(dtype) for v in (Phi, y, H, w_star, eig, X, t)))


class _Linear(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight


class IllConditionedRegression(Problem):
    """The paper's §3.1 regression: least squares in 253 dimensions with condition number :math:`10^4`.

    Training features from :func:`ill_conditioned_regression` (20,000 points);
    validation and test sets (2,000 each) are fresh draws from the same feature
    distribution and the same true weights. :math:`w_0 = 0`, no L2 term.
    """

    name = "paper_regression"
    description = "ill-conditioned least squares, 253 features (paper §3.1, synthetic SARCOS stand-in)"
    metric = "loss"
    batch_size = 32
    epochs = 10

    def model(self) -> nn.Module:
        return _Linear(253)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return 0.5 * ((outputs - targets) ** 2).mean()

    def correct(self, outputs: Tensor, targets: Tensor) -> None:
        return None

    def splits(self, data_dir: str | Path = "", download: bool = False) -> Splits:
        data = ill_conditioned_regression(extra=4000, dtype=torch.float32)
        train = TensorDataset(data.features, data.targets)
        rng = np.random.default_rng(42)
        train_eval = Subset(train, np.sort(rng.choice(len(data.targets), 2000, replace=False)).tolist())
        valid = TensorDataset(data.extra_features[:2000], data.extra_targets[:2000])
        test = TensorDataset(data.extra_features[2000:], data.extra_targets[2000:])
        return Splits(train=train, train_eval=train_eval, valid=valid, test=test)
