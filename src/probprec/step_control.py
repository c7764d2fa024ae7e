r"""How far an update may go: the safeguard's policy applied to the update in progress.

:class:`StepControl` owns the :class:`~probprec.safeguard.Safeguard` (per group, the factor on the estimated
step size, and the schedule of the checks) and applies it to one update (:class:`Update`), in the order in
which the optimizer calls it:

1. :meth:`~StepControl.secant`, with ``secant_check``, at the update after a check: the last check's step
   measured by the gradient where it ended (:func:`~probprec.check_step.secant_ratio`);
2. :meth:`~StepControl.limit_relative`: each group's update held to the relative limits
   (:data:`~probprec.safeguard.RELATIVE_LIMIT`, :data:`~probprec.safeguard.TENSOR_LIMIT`);
3. :meth:`~StepControl.check`, at a check step: the step ratio along the update
   (:func:`~probprec.check_step.step_ratio`);
4. :meth:`~StepControl.keep`, once the update is taken: the check's step, for the next update's secant.

Every change of a factor gives the inner optimizer's groups their new rates (:meth:`Update.refresh`) and logs an
event. The optimizer keeps the order of an update, its rollback, and whether the estimate is stale; nothing
here touches the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .check_step import SECANT_STATE, StepCheck, relative_update, secant_ratio, step_ratio
from .safeguard import LIMIT, RELATIVE_LIMIT, TENSOR_LIMIT, Safeguard

__all__ = ["Curvature", "StepControl", "Update"]


@dataclass
class Update:
    """An update in progress, as the step control sees it."""

    groups: Sequence[dict[str, Any]]
    """The optimizer's parameter groups."""
    inner_groups: Sequence[dict[str, Any]]
    """The inner optimizer's groups, whose ``"lr"`` the step control sets."""
    lrs: list[float | None]
    """Per group, the rate it steps with (None: the group is held)."""
    originals: dict[Tensor, Tensor | None]
    """The true gradient of every tensor whose ``p.grad`` holds another (the preconditioned one)."""
    number: int
    """The update's number since the last estimate (1: the first)."""
    rate: Callable[[int], float | None]
    """Group ``i``'s effective rate from the current factors."""
    event: Callable[..., None]
    """Log an event: ``event(kind, message, group=None)``."""

    def refresh(self, index: int | None = None) -> None:
        """The factors changed: give group ``index`` (every adaptive group that steps, if None) its new rate."""
        indices = range(len(self.groups)) if index is None else (index,)
        for i in indices:
            if self.groups[i]["adaptive_lr"] and self.lrs[i] is not None:
                self.inner_groups[i]["lr"] = self.lrs[i] = self.rate(i)


@dataclass(frozen=True)
class Curvature:
    """What a check's Hessian-vector products need besides the gradients."""

    graphs: Mapping[Tensor, Tensor]
    """Data-parallel steps: each rank's own gradient with its graph (empty otherwise)."""
    scale: float
    """The factor by which the graph's loss was scaled (divided out of every product)."""
    mean: Callable[[Tensor], Tensor]
    """The mean of a scalar over the ranks (the scalar itself in a single process)."""


class StepControl:
    """The safeguard of one optimizer, applied update by update (see the module docstring)."""

    def __init__(self, cap: float = 1.0) -> None:
        self.safeguard = Safeguard(cap=cap)

    def secant(self, update: Update, state: Mapping[Tensor, dict[str, Any]]) -> None:
        """At the update after a check: cut the step sizes if the check's step went past the minimum."""
        slope = self.safeguard.pending
        if slope is None:
            return
        steps = [(p, state[p][SECANT_STATE], group["weight_decay"])
                 for group in update.groups for p in group["params"] if SECANT_STATE in state.get(p, {})]
        ratio = secant_ratio(steps, slope, update.originals)
        cut = self.safeguard.observe_secant(ratio, update.number)
        if cut < 1.0:
            update.event("cut", f"secant ratio {ratio:.3g} of the last check's step > {LIMIT}: step sizes cut by "
                                f"{cut:.3g}")
            update.refresh()

    def limit_relative(self, update: Update) -> None:
        """Hold each group's update to :data:`~probprec.safeguard.RELATIVE_LIMIT`, its tensors' to ``TENSOR_LIMIT``.

        A step size cut by them grows back while the updates have room, up to the last check's ceiling.
        """
        for index, group in enumerate(update.groups):
            lr = update.lrs[index]
            if lr is None or not group["adaptive_lr"]:
                continue
            relative = relative_update(group["params"], lr)
            cut = self.safeguard.limit_relative(index, relative, group["lr"])
            if cut != 1.0:
                update.refresh(index)
            if cut < 1.0:
                update.event("cut", f"update {relative.group:.3g} x the parameters' norm (limit {RELATIVE_LIMIT}), "
                                    f"{relative.tensor:.3g} x a tensor's (limit {TENSOR_LIMIT}): step size cut by "
                                    f"{cut:.3g}", index)

    def check(self, update: Update, curvature: Curvature, cut_allowed: bool, retain_graph: bool,
              keep_step: bool = False) -> StepCheck | None:
        """A check step: measure the step ratio and cut the step sizes if the update overshoots.

        Without ``cut_allowed`` (the safeguard is off; the check serves adaptive restarts) only the schedule of
        the checks advances. Returns the measurement, None if no product was computed; with ``keep_step`` (for
        the next update's secant ratio) that of the step as taken, after the cut.
        """
        measured = step_ratio(update.groups, update.lrs, update.originals, curvature.graphs, curvature.scale,
                              retain_graph=retain_graph, mean=curvature.mean)
        ratio = None if measured is None else measured.ratio
        cut = self.safeguard.observe(ratio, update.number, cut_allowed=cut_allowed)
        if cut < 1.0:
            update.event("cut", f"step ratio {ratio:.3g} > {LIMIT}: step sizes cut by {cut:.3g}")
            update.refresh()
        return measured.taken(cut) if measured is not None and keep_step else measured

    def keep(self, measured: StepCheck | None, state: dict[Tensor, dict[str, Any]], params: Sequence[Tensor]) -> None:
        """After an update with ``secant_check``: drop the last check's step; keep this one's if it was a check."""
        for p in params:
            state.get(p, {}).pop(SECANT_STATE, None)
        self.safeguard.pending = None
        if measured is not None and measured.steps:
            for p, step in measured.steps:
                state[p][SECANT_STATE] = step
            self.safeguard.pending = measured.slope
