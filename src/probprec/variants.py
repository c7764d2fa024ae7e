r"""The variants of thesis Table 4.1, as thin subclasses of :class:`~probprec.Preconditioner`.

=========================  =========  ===============  =========  =========
class                      (1) prior  (2) adaptive lr  (3) build  (4) apply
=========================  =========  ===============  =========  =========
PreconditionedSGD          yes        yes              yes        yes
AdaptiveSGD                yes        yes              yes        no
OnlyAdaptiveSGD            yes        yes              no         no
PreconditionedTunedSGD     yes        no (user lr)     yes        yes
=========================  =========  ===============  =========  =========

(3) builds the preconditioner :math:`P`, (4) applies it.

``OnlyAdaptiveSGD`` stops each cycle after the prior: it computes no posterior,
no low-rank estimate and only ``prior_iterations`` Hessian-vector products.
``OnlyAdaptiveRMSprop`` does the same in RMSprop's coordinates (:mod:`probprec.metric`): its step is
:math:`\eta\, D G`, and its safeguard may grow the step size past the estimate; ``OnlyAdaptiveAdam`` steps
along Adam's average of the gradients instead, :math:`\eta\, D \hat m`.
Any other inner optimizer works through ``optim_class`` (``PreconditionedMomentum``
and ``PreconditionedAdam`` are provided for the thesis's experiments).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .optimizer import Preconditioner

__all__ = [
    "AdaptiveSGD",
    "OnlyAdaptiveAdam",
    "OnlyAdaptiveRMSprop",
    "OnlyAdaptiveSGD",
    "PreconditionedAdam",
    "PreconditionedMomentum",
    "PreconditionedSGD",
    "PreconditionedTunedMomentum",
    "PreconditionedTunedSGD",
]

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


class PreconditionedSGD(Preconditioner):
    """SGD with the estimated step size and the preconditioner (all four phases)."""

    def __init__(self, params: Params, **kwargs: Any) -> None:
        kwargs.setdefault("optim_class", torch.optim.SGD)
        super().__init__(params, **kwargs)


class AdaptiveSGD(PreconditionedSGD):
    """SGD with the estimated step size; the preconditioner is estimated (and logged) but not applied."""

    def __init__(self, params: Params, **kwargs: Any) -> None:
        kwargs.setdefault("apply_preconditioner", False)
        super().__init__(params, **kwargs)


class OnlyAdaptiveSGD(PreconditionedSGD):
    """SGD with the estimated step size only: each cycle ends after the prior."""

    def __init__(self, params: Params, **kwargs: Any) -> None:
        kwargs.setdefault("build_preconditioner", False)
        kwargs.setdefault("apply_preconditioner", False)
        super().__init__(params, **kwargs)


class OnlyAdaptiveRMSprop(OnlyAdaptiveSGD):
    r"""RMSprop's step (no momentum) with the step size estimated in its coordinates: :math:`\eta\, D G`.

    ``metric="rms"`` (:mod:`probprec.metric`) and ``max_factor=8``: the minimal-residual step in these
    coordinates is decided by the largest curvatures and is cautious, so the safeguard's checks may grow it up to
    8 times, as far as the quadratic model along the update allows.
    """

    def __init__(self, params: Params, **kwargs: Any) -> None:
        kwargs.setdefault("metric", "rms")
        kwargs.setdefault("max_factor", 8.0)
        super().__init__(params, **kwargs)


class OnlyAdaptiveAdam(OnlyAdaptiveRMSprop):
    r"""Adam's step :math:`\eta\, D \hat m`, the step size estimated in RMSprop's coordinates (``metric="adam"``)."""

    def __init__(self, params: Params, **kwargs: Any) -> None:
        kwargs.setdefault("metric", "adam")
        super().__init__(params, **kwargs)


class PreconditionedTunedSGD(PreconditionedSGD):
    """SGD at a fixed user learning rate ``lr``, preconditioned."""

    def __init__(self, params: Params, lr: float, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, **kwargs)


class PreconditionedMomentum(Preconditioner):
    """SGD with momentum (0.9 unless given) as the inner optimizer, adaptive step size, preconditioned."""

    def __init__(self, params: Params, momentum: float = 0.9, **kwargs: Any) -> None:
        kwargs.setdefault("optim_class", torch.optim.SGD)
        super().__init__(params, momentum=momentum, **kwargs)


class PreconditionedTunedMomentum(PreconditionedMomentum):
    """SGD with momentum at a fixed user learning rate ``lr``, preconditioned."""

    def __init__(self, params: Params, lr: float, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, **kwargs)


class PreconditionedAdam(Preconditioner):
    """Adam as the inner optimizer, with the estimated step size as its learning rate, preconditioned."""

    def __init__(self, params: Params, **kwargs: Any) -> None:
        kwargs.setdefault("optim_class", torch.optim.Adam)
        super().__init__(params, **kwargs)
