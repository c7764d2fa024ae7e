"""When estimation cycles start: on request, after a failure, and after the back-off of repeated failures.

:class:`CycleSchedule` is the optimizer's control state. A cycle that fails (a non-finite loss or
product, no usable step size) is restarted at once; after ``FAILURES_BEFORE_BACKOFF`` consecutive
failures (a loss without usable curvature: linear, constant, or non-finite at every attempt) the
optimizer stops spending every minibatch on Hessian-vector products and retries after 2, 4, 8, ...
(at most ``MAX_BACKOFF``) updates. ``cycles_completed`` decides the first cycle's fixed learning rate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["FAILURES_BEFORE_BACKOFF", "MAX_BACKOFF", "CycleSchedule"]

FAILURES_BEFORE_BACKOFF = 3
MAX_BACKOFF = 1024


@dataclass
class CycleSchedule:
    """The cycle counters (plain integers, saved in the state dict)."""

    cycle: int = -1
    """Index of the current cycle."""
    optimize_steps: int = 0
    """Updates since the last estimate (or since the back-off began)."""
    failures: int = 0
    """Consecutive cycles that failed."""
    retry_after: int | None = None
    """During a back-off: the number of updates after which the next cycle starts."""
    cycles_completed: int = 0

    def begin(self) -> None:
        """A new cycle starts."""
        self.cycle += 1
        self.optimize_steps, self.retry_after = 0, None

    def complete(self) -> None:
        """The cycle's estimate is adopted."""
        self.cycles_completed += 1
        self.optimize_steps = self.failures = 0

    def fail(self) -> int | None:
        """The cycle failed (a new one has begun): return the back-off's wait, or None to retry at once."""
        self.failures += 1
        if self.failures < FAILURES_BEFORE_BACKOFF:
            return None
        self.retry_after = min(2 ** (self.failures - FAILURES_BEFORE_BACKOFF + 1), MAX_BACKOFF)
        return self.retry_after

    def update(self) -> bool:
        """An update was taken; return whether the back-off's wait is over (a cycle should begin)."""
        self.optimize_steps += 1
        return self.retry_after is not None and self.optimize_steps >= self.retry_after

    def interval_reached(self, interval: int | None) -> bool:
        """Whether ``interval`` updates have passed since the last estimate."""
        return interval is not None and self.optimize_steps >= interval

    def as_state(self) -> dict[str, Any]:
        """Plain values for a state dict."""
        return dataclasses.asdict(self)

    def copy(self) -> CycleSchedule:
        """An independent copy."""
        return dataclasses.replace(self)
