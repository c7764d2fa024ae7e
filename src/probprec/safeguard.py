r"""The step-size safeguard: the update is checked against the curvature it meets, trust-region style.

Between estimates the optimizer updates :math:`\theta \leftarrow \theta - \Delta` with
:math:`\Delta = \eta\, P G`, where :math:`G = g + \text{wd}\,\theta` is the minibatch gradient of the
objective and :math:`\eta` the effective learning rate. Along :math:`\Delta` the quadratic model of the
minibatch loss is

.. math::

    f(\theta - t\Delta) \approx f(\theta) - t\, G^\top \Delta + \tfrac12 t^2\, \Delta^\top B \Delta ,

minimised at :math:`t^\ast = 1/r` with the *step ratio* :math:`r = \Delta^\top B \Delta / G^\top \Delta`. The
full step (:math:`t = 1`) decreases the model only if :math:`r < 2`, and overshoots its minimum if
:math:`r > 1`. The estimate sets :math:`\eta` from the curvature along the gradients it observed at the
start of the cycle; the landscape changes as the parameters move (a ReLU network that starts to learn,
a curved valley), and directions of higher curvature than observed are not rescaled. So at *check steps*
the optimizer asks the loop for the graph (:attr:`~probprec.Preconditioner.create_graph`), measures
:math:`\Delta^\top B \Delta` with one Hessian-vector product on that minibatch, and when :math:`r` exceeds
:data:`LIMIT` it cuts the cycle's step sizes by :math:`\text{TARGET}/r` (with :data:`TARGET` = 1: the
minimiser of the model along :math:`\Delta`), before the step is taken.

A check whose step ratio is below :data:`LIMIT` / :data:`GROWTH` finds room: the factors grow by
:data:`GROWTH` (at most back to the estimate, or to :attr:`Safeguard.cap` times it with ``max_factor``),
trust-region style, so that a cut is not forever. Since
:math:`r` is proportional to the step size, a check also tells how far the factor may go before the step
passes the model's minimiser: its *ceiling*, :math:`f\,\text{TARGET}/r` (at most 1).

The quadratic model cannot see the kinks of a ReLU network: a step it approves can still cross so many
of them that units die, and a network with dead units is flat, so its next estimate is larger still.
Every update is therefore also held to a *relative* limit: the nominal update of a group, :math:`\lVert \eta\,
P G \rVert` (exact for an SGD inner optimizer), may be at most :data:`RELATIVE_LIMIT` times the norm of the
group's parameters, and its part in any one tensor at most :data:`TENSOR_LIMIT` times that tensor's norm (or
its share of the group's norm, where that is larger: :class:`~probprec.check_step.RelativeUpdate`); a larger
one cuts the group's factor to fit. A cut by the relative limits asks for no check: while an update is within
half of both limits the factor grows back by :data:`GROWTH` per update, up to the last check's ceiling, so
that the factor follows the size of the gradients without extra passes. (Measured on a narrow ReLU CNN: the
update that killed it changed the weights by 40-60 %, tuned SGD's change them by 0.2-1.5 % per update. On a
deep ReLU MLP the group's update was 5 % of its norm while the output layer's bias changed by 300 % and the
last hidden layer's by 50 %: the small tensors at the end of the network moved most, and its units died within
twenty updates.)

With ``secant_check`` (off by default) the update after a check also measures the check's step by the gradient
where it ended (:func:`~probprec.check_step.secant_ratio`): the curvature averaged over the step, which sees a step
that went past the minimum into steeper ground, where the check at its start saw little curvature. The
geometric mean of the last two such ratios (:attr:`Safeguard.secants`) bounds the factor's growth and, above
:data:`LIMIT`, cuts it (:meth:`Safeguard.observe_secant`). Its ratio compares the gradients of two minibatches,
so minibatch noise pulls it towards 1 whatever the curvature; on the CNNs it was measured on it held the step
size down, so it is for problems whose gradients are (nearly) exact.

The checks are the first update after an estimate and then come at doubling intervals (1, 2, 4, ...
updates, at most :data:`MAX_INTERVAL`), back to every update after a check cuts: a cautious start and a
bounded number of extra passes per cycle (about :math:`\log_2` of the cycle's updates) while nothing is
cut. Between cycles, a new estimate's step size may grow by at most :data:`GROWTH` over the one last
used, and a cycle whose prior failed (negative or no curvature along the gradients) halves it
(:data:`FAILED`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FAILED", "GROWTH", "LIMIT", "MAX_INTERVAL", "RELATIVE_LIMIT", "TARGET", "TENSOR_LIMIT", "Safeguard"]

LIMIT = 1.5
"""A check cuts the step size when the step ratio exceeds this."""
TARGET = 1.0
"""...to this step ratio: the minimiser of the quadratic model along the update."""
GROWTH = 2.0
"""A new estimate's step size is at most this times the one last used."""
FAILED = 0.5
"""A cycle whose prior gave no usable step size steps with this times the one last used."""
MAX_INTERVAL = 128
"""The longest interval between two checks, in updates."""
RELATIVE_LIMIT = 0.2
"""An update may move a group's parameters by at most this fraction of their norm."""
TENSOR_LIMIT = 0.4
"""...and any one of its tensors by at most this fraction of the tensor's norm (or share of the group's)."""


@dataclass
class Safeguard:
    """Per group, the factor on the estimated step size, and when the next check happens."""

    factors: list[float] = field(default_factory=list)
    """Per group: the estimated step size times this is the step size used (at most 1 after a cut)."""
    ceilings: list[float] = field(default_factory=list)
    """Per group: the largest factor the last check allows (the model's minimiser along the update, at most 1);
    a factor cut by the relative limits grows back to it without a check."""
    secants: list[float | None] = field(default_factory=list)
    """Per group: the factor at which the secant ratio of the last checks' steps is :data:`TARGET` (the geometric
    mean of the last two measurements), or None (none since the estimate, or the slope grew along the step). The
    factor grows at most to :data:`LIMIT` / :data:`TARGET` times it (:meth:`bound`)."""
    last: list[float | None] = field(default_factory=list)
    """Per group: the step size last used (estimate times factor), or None before the first."""
    next_check: int = 1
    """The update (counted from the last estimate) that checks."""
    interval: int = 1
    checks: int = 0
    cuts: int = 0
    pending: float | None = None
    r"""The slope :math:`G^\top \Delta` of the last check's update, until the update after it measures the
    secant ratio (:meth:`observe_secant`); None otherwise."""
    cap: float = 1.0
    """The largest factor (``max_factor``): 1, at most the estimate; above 1 a check with room lets the step size
    grow past the estimate, up to ``cap`` times it (for an estimate known to be cautious, :mod:`probprec.metric`)."""

    def add_group(self) -> None:
        """A parameter group was added."""
        self.factors.append(1.0)
        self.ceilings.append(1.0)
        self.secants.append(None)
        self.last.append(None)

    def remove_groups(self, first: int) -> None:
        """Forget the groups from ``first`` on (an ``add_param_group`` that failed)."""
        del self.factors[first:], self.ceilings[first:], self.secants[first:], self.last[first:]

    def new_estimate(self, index: int, step_size: float | None, failed: bool) -> None:
        """A new estimate of group ``index``'s step size: bound its growth over the one last used."""
        last = self.last[index]
        if step_size is None or last is None or not step_size > 0:
            self.factors[index] = 1.0
        elif failed:
            self.factors[index] = min(1.0, FAILED * last / step_size)
        else:
            self.factors[index] = min(1.0, GROWTH * last / step_size)
        self.ceilings[index] = self.factors[index]
        self.secants[index] = None

    def restart(self) -> None:
        """A new cycle's updates begin: check at once, then at doubling intervals."""
        self.next_check, self.interval, self.pending = 1, 1, None

    def check_due(self, updates: int) -> bool:
        """Whether update number ``updates`` (1 is the first after the estimate's own) checks."""
        return updates >= self.next_check

    def observe(self, ratio: float | None, updates: int, cut_allowed: bool = True) -> float:
        """Record the step ratio measured at a check; return the factor to apply to every step size (<= 1).

        Without ``cut_allowed`` (the safeguard is off, the check serves adaptive restarts) only the
        schedule of the checks advances.
        """
        self.checks += 1
        cut = 1.0
        r = ratio if cut_allowed and ratio is not None and math.isfinite(ratio) else None
        if r is not None and r > LIMIT:
            cut = self._cut(r)
        else:
            if r is not None and r > 0:
                self.ceilings = [max(f, min(self.cap, f * TARGET / r, self.bound(i)))
                                 for i, f in enumerate(self.factors)]
            if r is not None and 0 <= r < LIMIT / GROWTH:  # room to grow, as far as the secant allows
                self.factors = [min(self.cap, f * GROWTH, max(f, self.bound(i))) for i, f in enumerate(self.factors)]
                self.ceilings = [max(c, f) for c, f in zip(self.ceilings, self.factors, strict=True)]
            self.interval = min(2 * self.interval, MAX_INTERVAL)
        self.next_check = updates + self.interval
        return cut

    def observe_secant(self, ratio: float | None, updates: int) -> float:
        """Record the secant ratio of the last check's step; return the factor to apply to every step size (<= 1).

        The ratio (:func:`~probprec.check_step.secant_ratio`, measured at update ``updates``) gives the factor at
        which the step's secant ratio would be :data:`TARGET`; the geometric mean with the previous one is kept
        (:attr:`secants`). The ceiling and the growth at checks stop at :meth:`bound`; where the factor is
        beyond it (the averaged secant ratio above :data:`LIMIT`), every factor is cut as a check cuts, and the
        next update checks. Two measurements are averaged because each compares the gradients of two minibatches.
        """
        self.pending = None
        if ratio is None or not math.isfinite(ratio):
            return 1.0
        if not ratio > 0:  # the slope grew along the step: no overshoot to bound
            self.secants = [None] * len(self.factors)
            return 1.0
        fresh = [f * TARGET / ratio for f in self.factors]
        secants = [n if m is None else math.sqrt(m * n) for m, n in zip(self.secants, fresh, strict=True)]
        self.secants = list(secants)
        self.ceilings = [min(c, max(f, self.bound(i))) for i, (c, f) in
                         enumerate(zip(self.ceilings, self.factors, strict=True))]
        averaged = max(f * TARGET / m for f, m in zip(self.factors, secants, strict=True))
        if averaged <= LIMIT:
            return 1.0
        cut = self._cut(averaged)
        self.next_check = updates + 1
        return cut

    def bound(self, index: int) -> float:
        """The largest factor of group ``index`` whose averaged secant ratio stays within :data:`LIMIT` (or the cap)."""
        secant = self.secants[index]
        return self.cap if secant is None else min(self.cap, secant * LIMIT / TARGET)

    def _cut(self, ratio: float) -> float:
        """Cut every factor by :data:`TARGET` / ``ratio``; the ceilings follow, the checks come at every update."""
        cut = TARGET / ratio
        self.factors = [f * cut for f in self.factors]
        self.ceilings = list(self.factors)
        self.cuts += 1
        self.interval = 1
        return cut

    def limit_relative(self, index: int, relative: tuple[float, float], multiplier: float = 1.0) -> float:
        """Group ``index``'s update has the relative sizes ``(group, tensor)``: cut its factor to fit, or grow it.

        ``group`` is the update's size relative to the group's parameters, ``tensor`` the largest relative to one
        tensor (:class:`~probprec.check_step.RelativeUpdate`). Beyond :data:`RELATIVE_LIMIT` or
        :data:`TENSOR_LIMIT`, the factor is cut to fit; within 1 / :data:`GROWTH` of both, it grows by
        :data:`GROWTH`, at most to the last check's ceiling. The update was taken at the user's learning-rate
        ``multiplier``; the room to grow is judged at 1, so that a multiplier below 1 scales the updates and
        does not let the factor grow in its place.

        Returns:
            The factor by which the step size changed (1.0: unchanged).
        """
        group, tensor = relative
        excess = max(group / RELATIVE_LIMIT, tensor / TENSOR_LIMIT)
        factor = self.factors[index]
        if not (math.isfinite(excess) and factor > 0):
            return 1.0
        if excess > 1.0:
            self.factors[index] = factor / excess
            self.cuts += 1
        elif multiplier > 0 and excess / multiplier * GROWTH <= 1.0 and factor < self.ceilings[index]:
            self.factors[index] = min(self.ceilings[index], factor * GROWTH)
        return self.factors[index] / factor

    def used(self, index: int, step_size: float | None) -> None:
        """Group ``index`` stepped with ``step_size`` (estimate times factor)."""
        if step_size is not None:
            self.last[index] = step_size

    def as_state(self) -> dict[str, Any]:
        """Plain values for a state dict."""
        return {"factors": list(self.factors), "ceilings": list(self.ceilings), "last": list(self.last),
                "next_check": self.next_check, "interval": self.interval, "checks": self.checks, "cuts": self.cuts,
                "pending": self.pending, "secants": list(self.secants), "cap": self.cap}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Safeguard:
        """Read :meth:`as_state`."""
        factors = [float(f) for f in state["factors"]]
        ceilings = [float(c) for c in state.get("ceilings", factors)]  # state dicts before ceilings: no regrowth
        pending = state.get("pending")  # state dicts before the secant ratio: none pending, none measured
        secants = [None if m is None else float(m) for m in state.get("secants", [None] * len(factors))]
        return cls(factors, ceilings, secants, [None if v is None else float(v) for v in state["last"]],
                   int(state["next_check"]), int(state["interval"]), int(state["checks"]), int(state["cuts"]),
                   None if pending is None else float(pending), float(state.get("cap", 1.0)))

