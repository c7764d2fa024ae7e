r"""When estimation cycles start: on request, when the estimate is stale, after a failure, after a back-off.

:class:`CycleSchedule` is the optimizer's control state. A cycle that fails (a non-finite loss or
product, no usable step size) is restarted at once; after ``FAILURES_BEFORE_BACKOFF`` consecutive
failures (a loss without usable curvature: linear, constant, or non-finite at every attempt) the
optimizer stops spending every minibatch on Hessian-vector products and retries after 2, 4, 8, ...
(at most ``MAX_BACKOFF``) updates. ``cycles_completed`` decides the first cycle's fixed learning rate.

**Adaptive restarts.** With ``adaptive_restarts`` the optimizer decides itself when its estimate is
stale, so that a training loop needs no ``start_estimate()``. At the safeguard's check steps
(:mod:`probprec.safeguard`) it also measures the minibatch curvature :math:`q = u^\top \tilde B_{pp} u`
of the *tracked* direction, the estimated top direction :math:`u` of the tensor :math:`p` most curved
relative to its group's prior level. The first check after an estimate gives the reference :math:`q_0`
(the estimated value itself is not comparable: it includes the noise of the Ritz step and the
cross-terms of the other tensors' directions). The likelihood's noise model (:mod:`probprec.prior`)
gives :math:`u^\top \Gamma u` a standard deviation of about :math:`\sqrt 2\, \lambda_0` for a unit
:math:`u`, so the estimate is stale when :math:`q` leaves :math:`[q_0/2, 2q_0]` *and* differs from
:math:`q_0` by more than ``STALE_Z`` such standard deviations (:func:`is_stale`): a curvature that changed
by a factor of two, beyond the noise. A new cycle starts then, and at the latest ``MAX_AGE`` updates
after the last estimate.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["FAILURES_BEFORE_BACKOFF", "MAX_AGE", "MAX_BACKOFF", "STALE_Z", "CycleSchedule", "is_stale"]

FAILURES_BEFORE_BACKOFF = 3
MAX_BACKOFF = 1024
MAX_AGE = 1024
"""With adaptive restarts, the most updates between two estimates."""
STALE_Z = 3.0
"""Standard deviations of the minibatch noise beyond which a changed curvature is believed."""


def is_stale(observed: float, predicted: float, noise: float) -> bool:
    """Whether the curvature ``observed`` along the tracked direction says the estimate (``predicted``) is stale.

    Example:
        >>> is_stale(10.0, 4.0, noise=0.5), is_stale(10.0, 4.0, noise=5.0), is_stale(5.0, 4.0, noise=0.01)
        (True, False, False)
    """
    changed = observed > 2.0 * predicted or observed < 0.5 * predicted
    return changed and abs(observed - predicted) > STALE_Z * math.sqrt(2.0) * noise


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
    tracked: tuple[int, float | None, float] | None = None
    """With adaptive restarts: the tracked direction's parameter index, its reference curvature (None until
    the first check measures it) and the noise level."""

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

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CycleSchedule:
        """Read :meth:`as_state`."""
        tracked = state.get("tracked")
        if tracked is not None:
            tracked = (int(tracked[0]), None if tracked[1] is None else float(tracked[1]), float(tracked[2]))
        return cls(**{**state, "tracked": tracked})
