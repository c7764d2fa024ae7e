"""What the optimizer reports through ``get_log()``: events, the last prior per group, the estimate per tensor.

Nothing here steers the optimizer; it is kept so that a user (or the benchmark harness) can see what
happened, and saved with the state dict so that a resumed run reports the same.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .cycle_state import PriorScalars

__all__ = ["MAX_EVENTS", "OptimizerLog"]

MAX_EVENTS = 200
"""The log keeps the most recent events only."""


class OptimizerLog:
    """Events (a bounded deque), the last prior of each group, per tensor the estimated curvatures."""

    def __init__(self) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.priors: list[PriorScalars | None] = []
        self.tensors: dict[int, tuple[tuple[float, ...], int]] = {}
        """Per parameter index: the valid estimated curvatures, and how many directions are rescaled."""
        self.hvp_count = 0
        self.observations = 0
        """The posterior observations of the last estimate."""
        self._open = False
        self._undo: deque[dict[str, Any]] | None = None

    def event(self, kind: str, message: str, cycle: int, phase: str, group: int | None = None) -> None:
        """Record a fallback, a restart, a skipped request, ..."""
        if self._open and self._undo is None:
            self._undo = deque(self.events, maxlen=MAX_EVENTS)
        self.events.append({"cycle": cycle, "phase": phase, "kind": kind, "group": group, "message": message})

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The events and products recorded inside are taken back if it raises (the events copied at the first)."""
        hvp_count, self._open, self._undo = self.hvp_count, True, None
        try:
            yield
        except BaseException:
            self.hvp_count = hvp_count
            if self._undo is not None:
                self.events = self._undo
            raise
        finally:
            self._open, self._undo = False, None

    def report(self, num_params: int) -> dict[str, Any]:
        """The log's part of ``get_log()`` (plain Python values)."""
        tensors = [self.tensors.get(i, ((), 0)) for i in range(num_params)]
        priors = self.priors
        return {
            "eigenvalues": [list(values) for values, _ in tensors],
            "preconditioned": [count for _, count in tensors],
            "prior_mean": [None if pr is None else pr.mean for pr in priors],
            "prior_width": [None if pr is None else pr.width for pr in priors],
            "noise": [None if pr is None else pr.noise for pr in priors],
            "noise_measured": [None if pr is None else pr.noise_measured for pr in priors],
            "hvp_count": self.hvp_count,
            "observations": self.observations,
            "events": [dict(e) for e in self.events],
        }

    def as_state(self) -> dict[str, Any]:
        """Plain values for a state dict."""
        return {"events": [dict(e) for e in self.events],
                "priors": [None if pr is None else pr.as_dict() for pr in self.priors],
                "tensors": {i: {"eigenvalues": list(values), "preconditioned": count}
                            for i, (values, count) in self.tensors.items()},
                "hvp_count": self.hvp_count, "observations": self.observations}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> OptimizerLog:
        """Read :meth:`as_state`."""
        log = cls()
        log.events.extend(dict(e) for e in state["events"])
        log.priors = [PriorScalars.from_dict(pr) for pr in state["priors"]]
        log.tensors = {int(i): (tuple(entry["eigenvalues"]), int(entry["preconditioned"]))
                       for i, entry in state["tensors"].items()}
        log.hvp_count = int(state["hvp_count"])
        log.observations = int(state.get("observations", 0))
        return log
