"""Test problems with known Hessians and a generic training loop."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def random_orthogonal(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


def spectrum(top: Sequence[float], n: int, generator: torch.Generator, bulk=(0.1, 1.0)) -> Tensor:
    low, high = bulk
    rest = low + (high - low) * torch.rand(n - len(top), generator=generator, dtype=torch.float64)
    return torch.cat((torch.tensor(top, dtype=torch.float64), rest.sort(descending=True).values))


class BlockQuadratic(nn.Module):
    """loss_t(theta) = 1/2 sum_p e_p' (H_p + Gamma_{p,t}) e_p with e_p = theta_p - x_p.

    The Hessian is block-diagonal over the parameter tensors; ``noise`` is the
    element scale of the random symmetric perturbation Gamma_{p,t}, drawn anew at
    every call of :meth:`resample` (off-diagonal standard deviation ``noise``).
    """

    def __init__(self, shapes, tops, *, top_error=1e-3, bulk_error=1.0, noise=0.0, seed=0,
                 dtype=torch.float32):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.noise = noise
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.hessians, self.eigvecs, self.eigvals, self.targets = [], [], [], []
        params = []
        for shape, top in zip(shapes, tops, strict=True):
            n = int(torch.Size(shape).numel())
            lam = spectrum(top, n, gen)
            Q = random_orthogonal(n, gen)
            H = (Q * lam) @ Q.T
            coef = torch.randn(n, generator=gen, dtype=torch.float64).sign()
            coef[: len(top)] *= top_error
            coef[len(top):] *= bulk_error
            x = torch.randn(n, generator=gen, dtype=torch.float64)
            params.append(nn.Parameter((x + Q @ coef).reshape(shape).to(dtype)))
            self.hessians.append(H)
            self.eigvecs.append(Q)
            self.eigvals.append(lam)
            self.targets.append(x)
        self.params = nn.ParameterList(params)
        self.gammas = [torch.zeros_like(H) for H in self.hessians]

    def resample(self) -> None:
        for i, H in enumerate(self.hessians):
            n = H.shape[0]
            A = torch.randn(n, n, generator=self.gen, dtype=torch.float64) * self.noise
            self.gammas[i] = (A + A.T) / 2**0.5

    def forward(self) -> Tensor:
        loss = 0.0
        for p, H, G, x in zip(self.params, self.hessians, self.gammas, self.targets, strict=True):
            e = p.reshape(-1) - x.to(p.dtype)
            loss = loss + 0.5 * e @ ((H + G).to(p.dtype) @ e)
        return loss


def train(opt, loss_fn: Callable[[], Tensor], steps: int, before_step: Callable[[int], None] | None = None,
          create_graph: bool | None = None) -> list[float]:
    """A standard loop with the one changed line; returns the losses."""
    losses = []
    for t in range(steps):
        if before_step is not None:
            before_step(t)
        opt.zero_grad()
        loss = loss_fn()
        loss.backward(create_graph=opt.create_graph if create_graph is None else create_graph)
        opt.step()
        losses.append(float(loss))
    return losses


def mlp(seed: int = 0, sizes=(6, 8, 3), dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).to(dtype)


def classification_batches(num: int, batch: int = 16, features: int = 6, classes: int = 3, seed: int = 0,
                           dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(features, classes, generator=gen)
    out = []
    for _ in range(num):
        x = torch.randn(batch, features, generator=gen)
        y = (x @ W + 0.5 * torch.randn(batch, classes, generator=gen)).argmax(1)
        out.append((x.to(dtype), y))
    return out


def assert_same_state(a, b, path="state_dict"):
    """Deep equality of two state dicts (tensors bit for bit, NaN equal to NaN)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"
        for key in a:
            assert_same_state(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a):
        same_kind = a.dtype == b.dtype and a.shape == b.shape
        assert same_kind, f"{path}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b) or bool(((a == b) | (a.isnan() & b.isnan())).all()), f"{path}: values differ"
    elif isinstance(a, float) and a != a:
        assert b != b, f"{path}: NaN != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def frozen_state(opt):
    """A deep copy of ``opt.state_dict()`` (which, as in torch, refers to the live state)."""
    import copy

    return copy.deepcopy(opt.state_dict())


def cycle_rows(opt, params):
    """Per parameter, the directions and observations of the cycle in progress (empty lists when none)."""
    estimator = opt._estimator
    rows = {}
    if estimator is not None:
        for ps, cycles in zip(estimator.params, estimator.tensors, strict=True):
            for p, tc in zip(ps, cycles, strict=True):
                rows[id(p)] = (list(tc.directions), list(tc.observations))
    return [rows.get(id(p), ([], [])) for p in params]
