"""probprec: probabilistic preconditioning for stochastic optimization in PyTorch.

de Roos & Hennig, "Active Probabilistic Inference on Matrices for Pre-Conditioning
in Stochastic Optimization", AISTATS 2019; L. Bald, BSc thesis, Tübingen 2019.
"""

from .optimizer import Preconditioner
from .variants import (
    AdaptiveSGD,
    OnlyAdaptiveAdam,
    OnlyAdaptiveRMSprop,
    OnlyAdaptiveSGD,
    PreconditionedAdam,
    PreconditionedMomentum,
    PreconditionedSGD,
    PreconditionedTunedMomentum,
    PreconditionedTunedSGD,
)

__version__ = "0.1.0"

__all__ = [
    # variants (thesis Table 4.1)
    "AdaptiveSGD",
    "OnlyAdaptiveAdam",
    "OnlyAdaptiveRMSprop",
    "OnlyAdaptiveSGD",
    "PreconditionedAdam",
    "PreconditionedMomentum",
    "PreconditionedSGD",
    "PreconditionedTunedMomentum",
    "PreconditionedTunedSGD",
    # the optimizer
    "Preconditioner",
]
