"""The learning-rate-free and curvature peers, built from their own packages (the ``peers`` extra).

Each peer is the class its authors publish on PyPI, at the defaults it ships with:

==================  ===================  ===============================================================
name                package              what it adapts
==================  ===================  ===============================================================
Prodigy             prodigyopt           D-Adaptation with a faster-growing distance estimate, Adam-like
DAdaptSGD           dadaptation          a lower bound on the distance to the solution (SGD)
DAdaptAdam          dadaptation          the same bound, Adam-like
DoG, LDoG           dog-optimizer        max distance from the start / root of the summed squared
                                         gradient norms; LDoG per layer (no iterate averaging here)
SGDScheduleFree,    schedulefree         iterate averaging interpolated with momentum, no schedule;
AdamWScheduleFree                        evaluated at the average (its ``eval()`` mode)
AdaHessian          pytorch-optimizer    Hutchinson diagonal of the Hessian, Adam-like (a learning rate)
SophiaH             pytorch-optimizer    clipped Newton step with a Hutchinson diagonal every 10 steps
==================  ===================  ===============================================================

The packages are imported when a peer is built, never at import time; a missing
one is a :class:`PeerMissingError` that names the extra to install. The
training loop's side of a peer (Schedule-Free's modes, the curvature peers'
``create_graph``) is in :mod:`probprec.bench.optimizer_protocol`.

>>> [peer.name for peer in PEERS][:3]
['Prodigy', 'DAdaptSGD', 'DAdaptAdam']
>>> sorted(PEER_PACKAGES)
['dadaptation', 'dog-optimizer', 'prodigyopt', 'pytorch-optimizer', 'schedulefree']
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .errors import UserError
from .hyperparams import check_hyperparameters

__all__ = ["INSTALL_HINT", "PEERS", "PEER_PACKAGES", "Peer", "PeerMissingError", "hutchinson_period", "peer_class",
           "peer_factory"]

INSTALL_HINT = 'pip install "probprec[peers]"'


class PeerMissingError(UserError, ImportError):
    """A peer's package is not installed; the message names it and the extra that installs it."""


@dataclass(frozen=True)
class Peer:
    """A peer optimizer: its name in the harness and where its class lives."""

    name: str
    package: str
    """The distribution on PyPI (its version goes into each result's environment)."""
    module: str
    attribute: str
    description: str
    hutchinson: bool = False
    """Whether it estimates a Hessian diagonal from the gradient's graph (``create_graph`` on its update steps)."""


PEERS: tuple[Peer, ...] = (
    Peer("Prodigy", "prodigyopt", "prodigyopt", "Prodigy", "Prodigy (Mishchenko & Defazio 2023), lr 1"),
    Peer("DAdaptSGD", "dadaptation", "dadaptation", "DAdaptSGD", "D-Adaptation SGD (Defazio & Mishchenko 2023)"),
    Peer("DAdaptAdam", "dadaptation", "dadaptation", "DAdaptAdam", "D-Adaptation Adam (Defazio & Mishchenko 2023)"),
    Peer("DoG", "dog-optimizer", "dog", "DoG", "DoG (Ivgi, Hinder & Carmon 2023), no iterate averaging"),
    Peer("LDoG", "dog-optimizer", "dog", "LDoG", "layer-wise DoG, no iterate averaging"),
    Peer("SGDScheduleFree", "schedulefree", "schedulefree", "SGDScheduleFree",
         "Schedule-Free SGD (Defazio et al. 2024), evaluated in its eval mode"),
    Peer("AdamWScheduleFree", "schedulefree", "schedulefree", "AdamWScheduleFree",
         "Schedule-Free AdamW (Defazio et al. 2024), evaluated in its eval mode"),
    Peer("AdaHessian", "pytorch-optimizer", "pytorch_optimizer", "AdaHessian",
         "AdaHessian (Yao et al. 2021), Hutchinson diagonal every step", hutchinson=True),
    Peer("SophiaH", "pytorch-optimizer", "pytorch_optimizer", "SophiaH",
         "Sophia-H (Liu et al. 2023), Hutchinson diagonal every 10 steps", hutchinson=True),
)
"""Every peer, in the order reports list them."""

PEER_PACKAGES: tuple[str, ...] = tuple(dict.fromkeys(peer.package for peer in PEERS))
"""The distributions of the peers (the ``peers`` extra)."""


def peer_class(peer: Peer) -> type[torch.optim.Optimizer]:
    """The peer's optimizer class, imported now.

    Raises:
        PeerMissingError: its package is not installed.
    """
    try:
        module = importlib.import_module(peer.module)
    except ImportError:
        raise PeerMissingError(f"optimizer {peer.name} needs the package {peer.package}, which is not installed: "
                               f"{INSTALL_HINT}") from None
    cls: type[torch.optim.Optimizer] = getattr(module, peer.attribute)
    return cls


def peer_factory(peer: Peer) -> Callable[..., torch.optim.Optimizer]:
    """A constructor ``(params, **hyperparameters)`` that imports the peer's package when it is called."""

    def build(params: Iterable[Any], **hyperparameters: Any) -> torch.optim.Optimizer:
        cls = peer_class(peer)
        check_hyperparameters(cls, hyperparameters)
        return cls(params, **hyperparameters)

    build.__name__ = build.__qualname__ = peer.name
    build.__doc__ = f"{peer.description} ({peer.package}: {peer.module}.{peer.attribute})."
    return build


def hutchinson_period(optimizer: torch.optim.Optimizer) -> int | None:
    """Every how many steps a curvature peer estimates its Hessian diagonal; None for any other optimizer.

    Only classes already imported are checked (an optimizer of a package never imported is not a peer).
    """
    for peer in PEERS:
        module = sys.modules.get(peer.module)
        if peer.hutchinson and module is not None and isinstance(optimizer, getattr(module, peer.attribute)):
            return int(getattr(optimizer, "update_period", 1))
    return None
