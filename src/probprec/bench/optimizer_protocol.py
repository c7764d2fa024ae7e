"""What the training loop asks of an optimizer besides ``step()``: the gradient's graph, and train/eval modes.

* :func:`needs_graph`: whether the next ``backward()`` must build the graph of the
  gradient (``create_graph=True``) so that the optimizer can take Hessian-vector
  products. Our optimizers say so themselves (their ``create_graph``); the
  curvature peers (AdaHessian, Sophia-H, :mod:`probprec.bench.peers`) need it on the
  steps where they estimate their Hessian diagonal: the first step and every
  ``update_period``-th after it. Every other optimizer: never.
* :func:`training_mode` and :func:`evaluation_mode`: an optimizer with ``train()``
  and ``eval()`` methods (Schedule-Free) keeps different parameters for taking
  gradients and for evaluating; the loop calls ``train()`` before training steps
  and ``eval()`` before every evaluation. Other optimizers are left alone.

>>> sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
>>> needs_graph(sgd), has_modes(sgd)
(False, False)
"""

from __future__ import annotations

import torch

from .peers import hutchinson_period

__all__ = ["evaluation_mode", "has_modes", "needs_graph", "training_mode"]


def needs_graph(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the coming step's ``backward()`` must use ``create_graph=True`` (see the module docstring)."""
    own = getattr(optimizer, "create_graph", None)
    if own is not None:
        return bool(own)
    period = hutchinson_period(optimizer)
    if period is None:
        return False
    steps_taken = int(optimizer.param_groups[0].get("step", 0))
    return steps_taken % period == 0


def has_modes(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer has ``train()`` and ``eval()`` modes (torch's optimizers have none)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def training_mode(optimizer: torch.optim.Optimizer) -> None:
    """Put the optimizer's parameters where gradients are taken (``train()``), if it has modes."""
    if has_modes(optimizer):
        optimizer.train()  # type: ignore[attr-defined]  # has_modes checked it


def evaluation_mode(optimizer: torch.optim.Optimizer) -> None:
    """Put the optimizer's parameters where the model is evaluated (``eval()``), if it has modes."""
    if has_modes(optimizer):
        optimizer.eval()  # type: ignore[attr-defined]  # has_modes checked it
