"""Hessian-vector products from the loop's graph against torch.func's dense Hessian."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, hessian

from helpers import mlp
from probprec.hvp import hessian_vector_product


def test_hvp_matches_dense_hessian_across_tensors():
    model = mlp(sizes=(3, 4, 2), dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 0, 1])
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())

    def loss_of(flat):
        chunks = torch.split(flat, [p.numel() for p in params])
        tensors = {n: c.view_as(p) for n, c, p in zip(names, chunks, params, strict=True)}
        return torch.nn.functional.cross_entropy(functional_call(model, tensors, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    H = hessian(loss_of)(flat)
    v = torch.randn(flat.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
    vs = [c.view_as(p) for c, p in zip(torch.split(v, [p.numel() for p in params]), params, strict=True)]
    hv = hessian_vector_product(params, [p.grad for p in params], vs)
    torch.testing.assert_close(torch.cat([h.reshape(-1) for h in hv]), H @ v)
    assert all(not h.requires_grad for h in hv)


def test_without_a_graph_it_says_what_to_do():
    w = torch.nn.Parameter(torch.ones(3))
    (w**2).sum().backward()
    with pytest.raises(RuntimeError, match="create_graph"):
        hessian_vector_product([w], [w.grad], [torch.ones(3)])


def test_unused_parameter_gets_zero():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    (a**3).sum().backward(create_graph=True)
    ha, hb = hessian_vector_product([a, b], [a.grad, b.grad], [torch.ones(2), torch.ones(3)])
    assert ha.tolist() == [6.0, 6.0] and hb.tolist() == [0.0, 0.0, 0.0]
