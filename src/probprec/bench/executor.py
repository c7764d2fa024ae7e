"""The executor protocol: what runs the pending runs of a sweep, and the names to choose one by.

An executor takes the runs that have no finished result, reports the outcome of each as
soon as it is known, and returns the runs it left unfinished when it was interrupted
(``KeyboardInterrupt``, which it catches). :mod:`probprec.bench.local_executor` runs them on this
machine, :mod:`probprec.bench.slurm_executor` as Slurm job arrays; :mod:`probprec.bench.orchestration`
chooses one by its name (:data:`EXECUTORS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the protocol is read by the command line, which loads neither
    from .outcomes import Report
    from .sweeps import SweepRun

__all__ = ["EXECUTORS", "LOCAL", "SLURM", "Executor"]

LOCAL = "local"
"""A process pool on this machine (or this process, with one worker)."""
SLURM = "slurm"
"""Slurm job arrays through submitit."""
EXECUTORS = (LOCAL, SLURM)
"""The names of the executors, as the command line and :func:`probprec.bench.orchestration.run_runs` take them."""


class Executor(Protocol):
    """Runs the pending runs of a sweep."""

    def run(self, pending: list[SweepRun], report: Report) -> list[SweepRun]:
        """Run ``pending``, calling ``report`` with each run's outcome as soon as it is known.

        Args:
            pending: runs without a finished result.
            report: called once per run that the executor finished with.

        Returns:
            The runs left unfinished when the executor was interrupted (empty when it was not).
        """
        ...
