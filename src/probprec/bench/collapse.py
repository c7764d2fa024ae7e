"""When a run has collapsed: it learns nothing, stuck at its initial loss or at chance accuracy.

One criterion, used by the analysis to flag runs stuck at any point
(:func:`detect_collapse`) and by the runner to give a run that *ends* stuck the
status ``collapsed`` (:func:`ended_collapsed`: a run whose first epochs stay at the
initial loss while its step size warms up, and which then learns, is not one). A
run has collapsed at epoch ``e`` when, for
:attr:`CollapseCriterion.epochs` consecutive evaluations ``e, e+1, ...`` after
training began (epoch 0, before training, is the reference):

* its **training loss stays at or returns to its initial level**: every value is at
  least ``L0 - loss_tolerance * |L0|`` (default: within 1 % of the initial loss
  ``L0``, or above it), and the window shows no progress: its last value is no new
  low, not below every earlier value (``L0`` included) by more than
  ``progress_tolerance * |L0|`` (default 0.1 %); a loss that bounces around its
  initial level, or falls back from a spike, makes none; or
* its **accuracy stays at chance**: every value is at most ``chance +
  accuracy_margin`` (default 2 points), where chance is ``1 / classes`` when the
  caller knows the classes, else the accuracy before training (a classifier at
  initialisation is at chance), and the window gains no more than
  ``accuracy_margin / 2``.

A non-finite value is not evidence of a collapse (that is divergence). A run that
learns slowly is not flagged: its loss leaves the initial level, or keeps falling
within every window. With the defaults, DeepOBS's fmnist_2c2d runs at lr 1.58
(SGD), 0.158 (Momentum) and 1.0 (Adam) are flagged at epoch 1; SGD at lr 1e-5,
which falls by 0.6 % per epoch, is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_CRITERION", "Collapse", "CollapseCriterion", "detect_collapse", "ended_collapsed"]


@dataclass(frozen=True)
class CollapseCriterion:
    """The thresholds of :func:`detect_collapse` (see the module docstring)."""

    epochs: int = 3
    """Consecutive evaluations (after epoch 0) the condition must hold for."""
    loss_tolerance: float = 0.01
    """How far below the initial training loss still counts as the initial level, relative to its size."""
    progress_tolerance: float = 0.001
    """The most the training loss may fall within the window, relative to the initial loss."""
    accuracy_margin: float = 0.02
    """How far above chance an accuracy still counts as chance (absolute)."""

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        for name in ("loss_tolerance", "progress_tolerance", "accuracy_margin"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


DEFAULT_CRITERION = CollapseCriterion()


@dataclass(frozen=True)
class Collapse:
    """A collapse found by :func:`detect_collapse`."""

    epoch: int
    """The first epoch of the window in which the run learned nothing."""
    evidence: str
    """What was seen, in words (for the report and the result file)."""


def _finite(values: Sequence[float]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _loss_window(losses: Sequence[float], start: int, criterion: CollapseCriterion) -> str | None:
    initial, end = losses[0], start + criterion.epochs
    window = losses[start:end]
    level = initial - criterion.loss_tolerance * abs(initial)
    best_before = min(losses[:end - 1])  # falling back from a spike, or bouncing around a level, is no progress
    if all(v >= level for v in window) and window[-1] >= best_before - criterion.progress_tolerance * abs(initial):
        return (f"training loss {min(window):.4g}-{max(window):.4g} over epochs {start}-{start + len(window) - 1}, "
                f"initial {initial:.4g}")
    return None


def _accuracy_window(accuracies: Sequence[float], start: int, chance: float | None,
                     criterion: CollapseCriterion) -> str | None:
    level = chance if chance is not None else accuracies[0]
    window = accuracies[start:start + criterion.epochs]
    if max(window) <= level + criterion.accuracy_margin and max(window) - window[0] <= criterion.accuracy_margin / 2:
        what = "chance" if chance is not None else "the accuracy before training"
        return (f"training accuracy {min(window):.4g}-{max(window):.4g} over epochs {start}-"
                f"{start + len(window) - 1}, {what} {level:.4g}")
    return None


def detect_collapse(train_losses: Sequence[float], train_accuracies: Sequence[float] | None = None,
                    chance: float | None = None, criterion: CollapseCriterion = DEFAULT_CRITERION) -> Collapse | None:
    """The first window in which a run learned nothing (see the module docstring), or None.

    Args:
        train_losses: the training loss at epochs 0, 1, ... (epoch 0 before training).
        train_accuracies: the training accuracy at the same epochs (None: a problem without accuracy).
        chance: the accuracy of guessing (``1 / classes``) if known; None: the accuracy at epoch 0.
        criterion: the thresholds.

    Returns:
        The collapse (its first epoch and the evidence), or None if no window qualifies (also when the
        curves are shorter than ``criterion.epochs + 1`` evaluations).

    Example:
        >>> detect_collapse([2.3, 2.31, 2.31, 2.31]).epoch
        1
        >>> detect_collapse([2.3, 2.2, 2.1, 2.0]) is None
        True
    """
    accuracies = list(train_accuracies) if train_accuracies else []
    for start in range(1, len(train_losses) - criterion.epochs + 1):
        found = _window_at(train_losses, accuracies, start, chance, criterion)
        if found:
            return Collapse(start, found)
    return None


def _window_at(losses: Sequence[float], accuracies: Sequence[float], start: int, chance: float | None,
               criterion: CollapseCriterion) -> str | None:
    """The evidence that the window of ``criterion.epochs`` evaluations from ``start`` learned nothing, or None."""
    end = start + criterion.epochs
    if _finite(list(losses[:1]) + list(losses[start:end])):
        found = _loss_window(losses, start, criterion)
        if found:
            return found
    if len(accuracies) >= end and _finite(list(accuracies[:1]) + list(accuracies[start:end])):
        return _accuracy_window(accuracies, start, chance, criterion)
    return None


def ended_collapsed(train_losses: Sequence[float], train_accuracies: Sequence[float] | None = None,
                    chance: float | None = None, criterion: CollapseCriterion = DEFAULT_CRITERION) -> Collapse | None:
    """The collapse a run ends in, or None: its last ``criterion.epochs`` evaluations learned nothing.

    The runner's test (a run that warms up slowly and then learns is not flagged, whatever its first epochs
    did). The collapse's epoch is where the run's final stretch of collapsed windows began: every window from
    it to the last one learned nothing (see the module docstring).

    Example:
        >>> ended_collapsed([2.3, 1.0, 2.31, 2.31, 2.31, 2.31]).epoch
        2
        >>> ended_collapsed([2.3, 2.3, 2.3, 2.3, 1.0, 0.5]) is None  # slow start, then learning
        True
    """
    accuracies = list(train_accuracies) if train_accuracies else []
    last = len(train_losses) - criterion.epochs
    if last < 1 or _window_at(train_losses, accuracies, last, chance, criterion) is None:
        return None
    start = last
    while start > 1 and _window_at(train_losses, accuracies, start - 1, chance, criterion) is not None:
        start -= 1
    evidence = _window_at(train_losses, accuracies, start, chance, criterion)
    return Collapse(start, f"{evidence}; every window after it to epoch {len(train_losses) - 1} too")
