"""What became of the runs of a sweep: one :class:`RunOutcome` per run, a :class:`SweepSummary` of them all.

:func:`execute` runs one run (in whatever process an executor chose) and describes what
became of it; it never raises for a failing run, so one failure never stops a sweep.
:func:`folder_of` finds a run's settings folder once per configuration, since finding it
builds the problem.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .locks import LockHeldError
from .runner import RunConfig, run, run_folder
from .sweeps import SweepRun
from .wording import counted

__all__ = ["STATUS_ORDER", "Report", "RunOutcome", "SweepSummary", "describe_setting", "execute", "folder_of",
           "outcome_of"]

STATUS_ORDER = ("skipped", "completed", "diverged", "collapsed", "failed", "interrupted", "not run", "submitted")
"""Every status of a :class:`RunOutcome`, in the order a summary counts them."""
_LEFT = ("interrupted", "not run")
"""Statuses of runs that a rerun of the same sweep finishes."""


@dataclass
class RunOutcome:
    """What became of one run of a sweep."""

    problem: str
    optimizer: str
    label: str
    seed: int
    setting: str
    """The run's settings folder name."""
    described: str
    """What sets the run apart from the others of its optimizer entry (:func:`describe_setting`)."""
    status: str
    """``completed``, ``diverged``, ``collapsed``, ``failed``, ``interrupted``, ``skipped`` (finished before),
    ``not run`` (the sweep was stopped first) or ``submitted`` (to Slurm, not waited for)."""
    reason: str | None = None
    path: str | None = None
    """The result file, where there is one."""

    def line(self) -> str:
        """One line: status, problem, optimizer entry, its setting, seed (and the reason of a failure)."""
        text = f"{self.status:<11} {self.problem} {self.label} ({self.described}) seed {self.seed}"
        return f"{text}: {self.reason}" if self.reason and self.status in ("failed", "interrupted") else text


Report = Callable[[RunOutcome], None]
"""Where an executor reports each outcome as soon as it is known."""


@dataclass
class SweepSummary:
    """The outcome of every run of a sweep."""

    output_dir: str
    outcomes: list[RunOutcome] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Number of runs."""
        return len(self.outcomes)

    @property
    def counts(self) -> dict[str, int]:
        """Runs per status, in a fixed order (statuses without runs left out)."""
        counts = Counter(o.status for o in self.outcomes)
        return {status: counts[status] for status in STATUS_ORDER if counts[status]}

    def count(self, status: str) -> int:
        """Number of runs with ``status``."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def failures(self) -> list[RunOutcome]:
        """The failed runs."""
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0: every run completed, diverged, collapsed or was finished before; 1: a run failed; 130: interrupted."""
        if any(self.count(status) for status in _LEFT):
            return 130
        return 1 if self.failures else 0

    @property
    def text(self) -> str:
        """A printable summary: counts, then every failure with its reason and result file."""
        counts = ", ".join(f"{n} {status}" for status, n in self.counts.items()) or "no runs"
        lines = [f"{counted(self.total, 'run')} in {self.output_dir}: {counts}"]
        if self.failures:
            lines.append(f"failed ({len(self.failures)}):")
            for outcome in self.failures:
                lines.append(f"  {outcome.problem} {outcome.label} ({outcome.described}) seed {outcome.seed} "
                             f"[{outcome.setting}]: {outcome.reason}")
                if outcome.path:
                    lines.append(f"    {outcome.path}")
        left = sum(self.count(status) for status in _LEFT)
        if left:
            lines.append(f"interrupted: {counted(left, 'run')} left; the same command finishes them (interrupted "
                         "runs resume from their last finished epoch)")
        if self.count("submitted"):
            lines.append("submitted to Slurm: the same command again collects the results once the jobs are done")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text


_FOLDERS: dict[str, Path] = {}
"""Settings folders found so far, by the ``repr`` of their configuration."""


def folder_of(config: RunConfig) -> Path:
    """The settings folder of a run (:func:`probprec.bench.runner.run_folder`), remembered per configuration.

    Finding it builds the problem (for its defaults), which can take a while.

    Raises:
        ConfigError: a configuration that names no valid run.
    """
    key = repr(config)
    if key not in _FOLDERS:
        _FOLDERS[key] = run_folder(config)
    return _FOLDERS[key]


def describe_setting(config: RunConfig) -> str:
    """The hyperparameters of a run and the budget it sets, as ``key=value`` (``defaults`` if none).

    Example:
        >>> describe_setting(RunConfig("p", "SGD", {"momentum": 0.9, "lr": 0.039810717055349734}, epochs=2))
        'epochs=2, lr=0.03981071706, momentum=0.9'
    """
    shown = {"epochs": config.epochs, "batch_size": config.batch_size, "l2": config.l2,
             "restart": None if config.restart == "default" else config.restart,
             "processes": config.processes if config.processes > 1 else None}
    items = [(k, v) for k, v in shown.items() if v is not None] + sorted(config.hyperparams.items())
    return ", ".join(f"{k}={format(v, '.10g') if isinstance(v, float) else v}" for k, v in items) or "defaults"


def outcome_of(sweep_run: SweepRun, status: str, reason: str | None = None, path: str | None = None) -> RunOutcome:
    """The outcome ``status`` of ``sweep_run`` (its setting ``?`` where the configuration names no valid run)."""
    config = sweep_run.config
    try:
        setting = folder_of(config).name
    except ConfigError:
        setting = "?"
    return RunOutcome(config.problem, config.optimizer, sweep_run.label, config.seed, setting,
                      describe_setting(config), status, reason, path)


def execute(sweep_run: SweepRun, threads: int | None = None) -> RunOutcome:
    """Run one run and describe what became of it; never raises for a failing run.

    Args:
        sweep_run: the run.
        threads: torch threads for the run (None: leave the setting alone).
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        result = run(sweep_run.config)
    except LockHeldError as error:
        return outcome_of(sweep_run, "failed", f"not run here: {error}")
    except ConfigError as error:
        return outcome_of(sweep_run, "failed", f"bad input: {error}")
    except Exception as error:  # a failing run never stops the sweep
        return outcome_of(sweep_run, "failed", f"{type(error).__name__}: {error}")
    explained = ("failed", "interrupted", "diverged", "collapsed")
    reason = result.record.get("status_reason") if result.status in explained else None
    return outcome_of(sweep_run, result.status, reason, str(result.path))
