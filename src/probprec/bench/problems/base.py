"""The test-problem contract: a model, its loss, its data and its defaults."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from ..data import Splits

__all__ = ["Problem"]


class Problem(ABC):
    r"""A DeepOBS-style test problem.

    The training loss of a minibatch is :meth:`loss` plus the L2 term
    :math:`\tfrac{1}{2}\,\text{l2} \sum \lVert W \rVert^2` over :meth:`regularized`
    parameters (DeepOBS puts the L2 term in the loss, and reports losses with it).

    Subclasses set the class attributes and implement :meth:`model` and
    :meth:`splits`; classification problems keep the default :meth:`loss` and
    :meth:`correct`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    metric: ClassVar[str] = "accuracy"
    """``"accuracy"`` (higher is better) or ``"loss"`` (lower is better): what settings are selected on."""
    dataset: ClassVar[str | None] = None
    """The data set on disk, or None when the data are generated or ship with a dependency."""
    batch_size: ClassVar[int]
    epochs: ClassVar[int]
    l2: float = 0.0
    restart_every: ClassVar[int] = 1
    """Epochs between fresh curvature estimates in the runner's default schedule."""

    def __init__(self, l2: float | None = None) -> None:
        if l2 is not None:
            if not (isinstance(l2, (int, float)) and l2 >= 0):
                raise ValueError(f"l2 must be a number >= 0, got {l2!r}")
            self.l2 = float(l2)

    @property
    def needs_files(self) -> bool:
        """Whether the problem reads a data set from ``--data-dir``."""
        return self.dataset is not None

    @abstractmethod
    def model(self) -> nn.Module:
        """A freshly initialised model (uses the global torch RNG, which the runner seeds)."""

    @abstractmethod
    def splits(self, data_dir: str | Path, download: bool = False) -> Splits:
        """The train, train_eval, valid and test sets."""

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean loss of a batch, without the L2 term (cross-entropy by default)."""
        return nn.functional.cross_entropy(outputs, targets)

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor | None:
        """Number of correct predictions in a batch, or None for problems without accuracy."""
        return (outputs.argmax(dim=1) == targets).sum()

    def regularized(self, model: nn.Module) -> list[Tensor]:
        """Parameters in the L2 term: the weights (tensors with more than one dimension)."""
        return [p for p in model.parameters() if p.dim() > 1]

    def penalty(self, model: nn.Module) -> Tensor | float:
        r"""The L2 term :math:`\tfrac{1}{2}\,\text{l2} \sum \lVert W \rVert^2`."""
        if not self.l2:
            return 0.0
        return 0.5 * self.l2 * sum((p * p).sum() for p in self.regularized(model))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """What the optimizer receives: one group with every parameter, unless the problem says otherwise."""
        return [{"params": list(model.parameters())}]

    def diagnostics(self, model: nn.Module, optimizer: Any) -> dict[str, Any]:
        """Quantities only this problem can compute at the end of a run (e.g. against its true Hessian)."""
        return {}

    def settings(self) -> dict[str, Any]:
        """The problem's defaults, for listings and result files."""
        return {"batch_size": self.batch_size, "epochs": self.epochs, "l2": self.l2, "metric": self.metric,
                "dataset": self.dataset, "restart_every": self.restart_every}

    @staticmethod
    def count_parameters(model: nn.Module) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

