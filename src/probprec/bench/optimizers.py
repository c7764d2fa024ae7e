"""Optimizers by name, with their default hyperparameters and the tuned learning rates that are known.

Names: the baselines ``SGD``, ``Momentum`` (SGD with momentum 0.9, as in the
thesis) and ``Adam``; the variants of :mod:`probprec`; the thesis's tuned
variants; the learning-rate-free and curvature peers at their packages' defaults
(:mod:`.peers`, the ``peers`` extra); and any ``torch.optim`` class by its dotted path
(``torch.optim.RMSprop``), which then needs its hyperparameters (``--hp lr=0.01``).

Learning rates: where DeepOBS tuned one for a problem (the TensorFlow baselines
of DeepOBS 1.1: the best of a 36-point log grid by the final test metric of seed
42, since its data sets had no validation split) or the thesis used one (Table
4.1), it is the default for that problem; on the embedded
problems, SGD's and Adam's were tuned on validation by
``benchmarks/tune_embedded.py``; elsewhere a generic default is used. Every
default can be overridden.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

import probprec

from .hyperparams import check_hyperparameters, parse_hyperparameters
from .peers import PEERS, peer_factory

__all__ = ["OPTIMIZERS", "OptimizerSpec", "UnknownOptimizerError", "get_optimizer", "parse_hyperparameters"]


class UnknownOptimizerError(KeyError):
    """No optimizer has this name."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class OptimizerSpec:
    """How to build an optimizer by name."""

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    defaults: dict[str, Any] = field(default_factory=dict)
    tuned_lr: dict[str, float] = field(default_factory=dict)
    """Learning rates known to be good per problem (used unless ``lr`` is given)."""
    second_order: bool = False
    description: str = ""

    def hyperparameters(self, problem: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, the problem's tuned learning rate, then the user's overrides."""
        hp = dict(self.defaults)
        if problem in self.tuned_lr:
            hp["lr"] = self.tuned_lr[problem]
        hp.update(overrides or {})
        return hp

    def build(self, params: Iterable[Any], hyperparameters: dict[str, Any]) -> torch.optim.Optimizer:
        """Construct the optimizer; a bad hyperparameter raises ValueError naming it."""
        check_hyperparameters(self.factory, hyperparameters)
        try:
            return self.factory(params, **hyperparameters)
        except TypeError as error:
            raise ValueError(f"optimizer {self.name}: {error}") from None


# DeepOBS v1.1 baselines (TensorFlow, 10 seeds, best final test metric of a 36-point grid).
_DEEPOBS_SGD = {"quadratic_deep": 1.585e-2, "fmnist_2c2d": 1.585e-1, "cifar10_3c3d": 6.310e-2,
                "cifar100_allcnnc": 1.585e-1, "svhn_wrn164": 2.512e-2}
_DEEPOBS_ADAM = {"quadratic_deep": 3.981e-2, "fmnist_2c2d": 2.512e-4, "cifar10_3c3d": 3.981e-4,
                 "cifar100_allcnnc": 1.0e-3, "svhn_wrn164": 1.585e-4}
# The embedded problems, tuned by benchmarks/tune_embedded.py: a half-decade grid from 1e-4 to 1, seed 42,
# the best final validation metric (on two_d_beale, SGD diverges at every point of the grid).
_EMBEDDED_SGD = {"two_d_rosenbrock": 1e-3, "two_d_branin": 3.162e-2, "paper_regression": 1e-2, "digits_mlp": 1.0,
                 "digits_cnn": 3.162e-1, "digits_mlp_layerwise": 1.0}
_EMBEDDED_ADAM = {"two_d_rosenbrock": 3.162e-1, "two_d_beale": 1e-1, "two_d_branin": 1e-1, "paper_regression": 1e-2,
                  "digits_mlp": 1e-2, "digits_cnn": 1e-2, "digits_mlp_layerwise": 1e-2}
# The thesis's tuned learning rates (thesis Table 4.1; the DeepOBS PyTorch grid search it used).
_THESIS_SGD = {"fmnist_2c2d": 0.11288378916846883, "cifar10_3c3d": 0.04832930238571752}
_THESIS_MOMENTUM = {"fmnist_2c2d": 0.02069138081114788, "cifar10_3c3d": 0.00379269019073225}


_DEFAULT_MODE_ONLY = {"OnlyAdaptiveRMSprop", "OnlyAdaptiveAdam"}
"""Variants the 2019 class had no counterpart of (their metric works in the default mode only): no thesis twin."""


def _specs() -> dict[str, OptimizerSpec]:
    sgd = {**_EMBEDDED_SGD, **_DEEPOBS_SGD, **_THESIS_SGD}
    adam = {**_EMBEDDED_ADAM, **_DEEPOBS_ADAM}
    specs = [
        OptimizerSpec("SGD", torch.optim.SGD, {"lr": 0.01}, sgd, description="plain SGD"),
        OptimizerSpec("Momentum", torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}, _THESIS_MOMENTUM,
                      description="SGD with momentum 0.9"),
        OptimizerSpec("Adam", torch.optim.Adam, {"lr": 1e-3}, adam, description="Adam"),
        OptimizerSpec("PreconditionedSGD", probprec.PreconditionedSGD, second_order=True,
                      description="estimated step size and preconditioner (thesis (1)-(4))"),
        OptimizerSpec("AdaptiveSGD", probprec.AdaptiveSGD, second_order=True,
                      description="estimated step size; preconditioner built, not applied ((1)-(3))"),
        OptimizerSpec("OnlyAdaptiveSGD", probprec.OnlyAdaptiveSGD, second_order=True,
                      description="estimated step size only ((1)-(2))"),
        OptimizerSpec("OnlyAdaptiveRMSprop", probprec.OnlyAdaptiveRMSprop, second_order=True,
                      description="RMSprop's step, step size estimated in its coordinates ((1)-(2), metric='rms')"),
        OptimizerSpec("OnlyAdaptiveAdam", probprec.OnlyAdaptiveAdam, second_order=True,
                      description="Adam's step, step size estimated in RMSprop's coordinates (metric='adam')"),
        OptimizerSpec("PreconditionedMomentum", probprec.PreconditionedMomentum, second_order=True,
                      description="momentum 0.9 inside, estimated step size, preconditioned"),
        OptimizerSpec("PreconditionedAdam", probprec.PreconditionedAdam, second_order=True,
                      description="Adam inside, estimated step size, preconditioned"),
        OptimizerSpec("PreconditionedTunedSGD", probprec.PreconditionedTunedSGD, {}, _THESIS_SGD,
                      second_order=True, description="fixed tuned lr, preconditioned (thesis (1),(3),(4))"),
        OptimizerSpec("PreconditionedTunedMomentum", probprec.PreconditionedTunedMomentum, {}, _THESIS_MOMENTUM,
                      second_order=True, description="momentum 0.9, fixed tuned lr, preconditioned"),
    ]
    thesis = {"mode": "thesis"}
    specs += [
        OptimizerSpec(f"Thesis{spec.name}", spec.factory, {**spec.defaults, **thesis}, spec.tuned_lr,
                      second_order=True, description=f"{spec.name} with the 2019 arithmetic (mode='thesis')")
        for spec in list(specs) if spec.second_order and spec.name not in _DEFAULT_MODE_ONLY
    ]
    specs += [OptimizerSpec(peer.name, peer_factory(peer), description=peer.description) for peer in PEERS]
    return {spec.name: spec for spec in specs}


OPTIMIZERS: dict[str, OptimizerSpec] = _specs()
"""Every optimizer known by name: the baselines, the variants of :mod:`probprec`, each of them again in thesis
mode (``Thesis...``), and the peers (:mod:`.peers`)."""


def get_optimizer(name: str) -> OptimizerSpec:
    """The optimizer called ``name``, or a ``torch.optim`` (or any) Optimizer class by its dotted path."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    if "." in name:
        module_name, _, attribute = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
            second = issubclass(cls, probprec.Preconditioner)
            return OptimizerSpec(name, cls, second_order=second, description=f"{name} by path")
    raise UnknownOptimizerError(
        f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}, "
        "or a torch.optim class by its path (e.g. torch.optim.RMSprop)"
    )
