"""Acceptance 5 (memory): the optimizer's own state in floats per parameter, by phase."""

from __future__ import annotations

import warnings

import pytest
import torch

from helpers import classification_batches, mlp
from probprec import AdaptiveSGD, OnlyAdaptiveSGD, PreconditionedMomentum, PreconditionedSGD

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")


def floats_in(state_dict) -> int:
    """Floats in the optimizer's own part of a state dict (the inner optimizer's part excluded)."""
    own = {"state": state_dict["state"], "probprec": state_dict["probprec"]}
    total, stack, seen = 0, [own], set()
    while stack:
        item = stack.pop()
        if torch.is_tensor(item):
            total += 0 if item.data_ptr() in seen else item.numel()  # a tensor saved twice is stored once
            seen.add(item.data_ptr())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


@pytest.mark.parametrize("cls", [PreconditionedSGD, AdaptiveSGD, OnlyAdaptiveSGD, PreconditionedMomentum])
@pytest.mark.parametrize("rank,observations,prior", [(2, 5, 10), (1, 3, 2), (3, 4, 3)])
def test_state_stays_within_budget(cls, rank, observations, prior):
    model = mlp(sizes=(20, 30, 10))
    opt = cls(model.parameters(), est_rank=rank, num_observations=observations, prior_iterations=prior)
    n = sum(p.numel() for p in model.parameters())
    worst = {"estimating": 0.0, "optimizing": 0.0}
    for t, (x, y) in enumerate(classification_batches(2 * (prior + observations) + 6, features=20)):
        if t == prior + observations + 3:
            opt.start_estimate()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
        opt.step()
        floats = floats_in(opt.state_dict())
        assert floats == opt.state_floats()
        phase = "optimizing" if opt.phase == "optimize" else "estimating"
        worst[phase] = max(worst[phase], floats / n)
    assert worst["estimating"] <= 2 * observations + rank + 4
    assert worst["optimizing"] <= rank + 2
