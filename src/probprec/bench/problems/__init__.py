"""The test problems, by name.

>>> sorted(PROBLEMS)[:3]
['cifar100_3c3d', 'cifar100_allcnnc', 'cifar10_3c3d']
>>> get_problem("quadratic_deep").metric
'loss'
"""

from __future__ import annotations

from typing import Any

from .base import Problem
from .digits import DigitsCNN, DigitsMLP, DigitsMLPLayerwise
from .images import (
    Cifar10Roos,
    Cifar10ThreeCThreeD,
    Cifar100AllCNNC,
    Cifar100ThreeCThreeD,
    FmnistMLP,
    FmnistTwoCTwoD,
    Mnist35LogReg,
    MnistLogReg,
    MnistMLP,
    MnistTwoCTwoD,
    SvhnWRN164,
)
from .robustness import FAMILY, FAMILY_CLASSES
from .synthetic import Beale, Branin, IllConditionedRegression, QuadraticDeep, Rosenbrock

__all__ = ["EMBEDDED", "FAMILY", "PROBLEMS", "Problem", "UnknownProblemError", "get_problem"]

PROBLEMS: dict[str, type[Problem]] = {
    cls.name: cls
    for cls in (
        QuadraticDeep, Rosenbrock, Beale, Branin, IllConditionedRegression,
        MnistLogReg, MnistMLP, MnistTwoCTwoD, FmnistMLP, FmnistTwoCTwoD, Mnist35LogReg,
        Cifar10ThreeCThreeD, Cifar100ThreeCThreeD, Cifar100AllCNNC, Cifar10Roos, SvhnWRN164,
        DigitsMLP, DigitsCNN, DigitsMLPLayerwise,
    )
} | {cls.name: cls for cls in FAMILY_CLASSES}
"""Every problem, by name."""

EMBEDDED = [name for name, cls in PROBLEMS.items() if cls.dataset is None]
"""The problems that need no download (generated data, or data that ships with a dependency), the robustness
family (:data:`FAMILY`, :mod:`.robustness`) among them."""


class UnknownProblemError(KeyError):
    """No problem has this name."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_problem(name: str, **options: Any) -> Problem:
    """The problem called ``name``; ``options`` (e.g. ``l2=0.002``) override its defaults."""
    try:
        cls = PROBLEMS[name]
    except KeyError:
        raise UnknownProblemError(
            f"unknown problem {name!r}; known problems: {', '.join(sorted(PROBLEMS))}"
        ) from None
    return cls(**options)
