"""Issue 10, item 2: the robustness family, plain ReLU networks without normalisation on embedded data.

Every member builds, is registered as an embedded problem, and trains a step; the shifted digits are the digits
moved by one pixel; the generated spirals are the same every time.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from probprec.bench.problems import EMBEDDED, FAMILY, PROBLEMS, get_problem
from probprec.bench.problems.digits import DigitsMLP
from probprec.bench.problems.robustness import FAMILY_CLASSES, RobustCNN, RobustMLP


def test_the_family_has_at_least_eight_embedded_members_of_several_kinds():
    assert len(FAMILY) >= 8 and len(set(FAMILY)) == len(FAMILY)
    assert set(FAMILY) <= set(EMBEDDED) and all(PROBLEMS[name] is cls for name, cls in zip(FAMILY, FAMILY_CLASSES,
                                                                                             strict=True))
    cnns = [cls for cls in FAMILY_CLASSES if issubclass(cls, RobustCNN)]
    mlps = [cls for cls in FAMILY_CLASSES if issubclass(cls, RobustMLP)]
    assert len({cls.strides for cls in cnns}) >= 2 and len({cls.channels for cls in cnns}) >= 2
    assert len({len(cls.hidden) for cls in mlps}) >= 3 and len({cls.hidden[0] for cls in mlps}) >= 3
    assert len({cls.init_scale for cls in FAMILY_CLASSES if hasattr(cls, "init_scale")}) >= 3
    for cls in FAMILY_CLASSES:
        model = cls().model()
        assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)) for m in model.modules())
        assert any(isinstance(m, torch.nn.ReLU) for m in model.modules())


@pytest.mark.parametrize("name", FAMILY)
def test_each_member_builds_and_trains_a_step(name):
    problem = get_problem(name)
    assert problem.batch_size == 64 and problem.metric == "accuracy" and not problem.needs_files
    splits = problem.splits()
    sizes = [len(part) for part in (splits.train, splits.train_eval, splits.valid, splits.test)]
    assert min(sizes) >= 300 and sizes[0] >= 5_000
    torch.manual_seed(0)
    model = problem.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = next(iter(DataLoader(splits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))))
    before = [p.detach().clone() for p in model.parameters()]
    loss = problem.loss(model(x), y)
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "every tensor moves"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_training_digits_are_shifted_by_one_pixel():
    digits, member = DigitsMLP().splits(), get_problem("robust_mlp_narrow").splits()
    original = digits.train.tensors[0].reshape(-1, 8, 8)
    shifted = member.train.tensors[0].reshape(5, -1, 8, 8)
    assert torch.equal(shifted[0], original)
    assert torch.equal(shifted[1][:, 1:], original[:, :-1]) and not shifted[1][:, 0].any()  # down
    assert torch.equal(shifted[2][:, :-1], original[:, 1:]) and not shifted[2][:, -1].any()  # up
    assert torch.equal(shifted[3][:, :, 1:], original[:, :, :-1])  # right
    assert torch.equal(shifted[4][:, :, :-1], original[:, :, 1:])  # left
    assert torch.equal(member.test.tensors[0], digits.test.tensors[0]), "validation and test images unchanged"


def test_initialisation_scale_multiplies_the_weights():
    torch.manual_seed(0)
    plain = get_problem("robust_mlp_small_init").model()
    torch.manual_seed(0)
    large = get_problem("robust_mlp_large_init").model()
    weights = [(p, q) for p, q in zip(plain.parameters(), large.parameters(), strict=True) if p.dim() > 1]
    biases = [(p, q) for p, q in zip(plain.parameters(), large.parameters(), strict=True) if p.dim() == 1]
    assert all(torch.allclose(q, p * 10) for p, q in weights) and all(torch.equal(p, q) for p, q in biases)


def test_the_spirals_are_generated_the_same_every_time():
    first, second = get_problem("robust_spirals_mlp").splits(), get_problem("robust_spirals_mlp").splits()
    assert torch.equal(first.train.tensors[0], second.train.tensors[0])
    assert set(first.train.tensors[1].tolist()) == {0, 1}
    assert not torch.equal(first.valid.tensors[0], first.test.tensors[0])
