"""Running a sweep: skip what is finished, run the rest with an executor, and summarise.

:func:`run_sweep` expands a :class:`~probprec.bench.sweeps.SweepSpec` into runs
(:func:`prepare_runs`), says how many there are and how many already have a result, and
runs the others with an executor (:mod:`probprec.bench.executor`):

* ``executor="local"``: a process pool with one worker per core by default, or this
  process with ``workers=1`` (:mod:`probprec.bench.local_executor`);
* ``executor="slurm"``: Slurm job arrays, one task per run; a task that is preempted or
  about to time out is requeued and resumes from the run's checkpoint
  (:mod:`probprec.bench.slurm_executor`). With ``tasks_per_node`` N > 1 in the Slurm options
  every run is data-parallel with N tasks (:func:`run_processes`; its configurations have
  ``processes = N``, which their settings folders name).

Every executor sets torch's thread count by the one policy of :mod:`probprec.bench.threads`:
the pool's workers share the cores (workers x threads <= cores), a sweep in this process
uses them all, a Slurm task uses its ``--cpus-per-task``.

A run is finished when a ``completed``, ``diverged`` or ``collapsed`` result exists for its settings
folder and seed and no checkpoint is left (:func:`probprec.bench.runner.finished_result`),
so rerunning a sweep retries only what did not complete (:func:`pending_runs`), and an
interrupted run resumes from its last finished epoch. A failed run (an exception, or
status ``failed``) never stops the others; its reason is in the summary and, where the
runner got that far, in its result file. A lock keeps two sweeps from running into the
same output folder at once, and every run holds its own lock while it runs
(:mod:`probprec.bench.locks`), so a ``probprec run`` of one of the sweep's runs and the
sweep never both execute it (the one that comes second reports the run as running
elsewhere). The Slurm job arrays of a sweep are remembered until they have left the
queue, so a rerun never runs a run twice at the same time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

from .data import DataMissingError
from .errors import ConfigError
from .executor import EXECUTORS, LOCAL, SLURM, Executor
from .local_executor import LocalExecutor
from .locks import holding, sweep_lock_path
from .outcomes import Report, RunOutcome, SweepSummary, folder_of, outcome_of
from .problems import get_problem
from .results import existing_results
from .runner import checkpoint_path, finished_result, interruptible
from .slurm_executor import SlurmExecutor, SlurmOptions, check_no_active_jobs
from .sweeps import SweepRun, SweepSpec, expand
from .wording import counted

__all__ = ["GENERATED_MARKER", "Echo", "pending_runs", "prepare_runs", "run_processes", "run_runs", "run_sweep"]

GENERATED_MARKER = ".generated"
"""The file that marks ``<output_dir>/data`` as written by a sweep with ``data = "generate"``."""

Echo = Callable[[str], Any]
"""Where progress lines go."""


# ---------------------------------------------------------------------------------------------------------------
# Preparing the runs


def run_processes(executor: str, slurm: SlurmOptions | None) -> int:
    """The processes of every run of a sweep: the Slurm options' ``tasks_per_node`` with ``executor="slurm"``, else 1.

    Raises:
        ConfigError: ``tasks_per_node`` > 1 with another executor.
    """
    tasks = slurm.tasks_per_node if slurm is not None else 1
    if executor == SLURM:
        return tasks
    if tasks > 1:
        raise ConfigError(f"--tasks-per-node {tasks} needs --executor slurm (data-parallel runs on this machine: "
                          "probprec run --nproc-per-node)")
    return 1


def prepare_runs(spec: SweepSpec, output_dir: str | Path, data_dir: str | Path = "data", device: str = "cpu",
                 progress: bool = False, processes: int = 1) -> list[SweepRun]:
    """The runs of ``spec``, each once (coinciding settings are merged); ``data = "generate"`` is honoured.

    With ``data = "generate"`` tiny files in the real formats are written once to ``<output_dir>/data``
    (for problems that read files) and used as the data directory. ``processes`` > 1 makes every run
    data-parallel (:func:`run_processes`).

    Raises:
        ConfigError: a run that cannot start (named), before anything runs.
    """
    if spec.data == "generate" and any(get_problem(p).needs_files for p in spec.problems):
        data_dir = _generated_data(Path(output_dir))
    unique: dict[tuple[Path, int], SweepRun] = {}
    for sweep_run in expand(spec, output_dir, data_dir=str(data_dir), device=device, progress=progress):
        if processes != 1:
            sweep_run = replace(sweep_run, config=replace(sweep_run.config, processes=processes))
        key = (folder_of(sweep_run.config), sweep_run.config.seed)
        unique.setdefault(key, sweep_run)
    return list(unique.values())


def _generated_data(output_dir: Path) -> Path:
    from .synthetic_files import make_all

    root = output_dir / "data"
    if not (root / GENERATED_MARKER).exists():
        make_all(root)
        (root / GENERATED_MARKER).write_text("tiny random files in the real formats (probprec.bench.synthetic_files)\n")
    return root


def pending_runs(runs: Iterable[SweepRun]) -> list[SweepRun]:
    """The runs without a finished result (or with a checkpoint left by an interruption)."""
    return [r for r in runs if finished_result(r.config, folder_of(r.config)) is None]


def _check_data(runs: list[SweepRun]) -> None:
    """Every data set that the runs read is there (one look per problem and data directory)."""
    seen = set()
    for sweep_run in runs:
        config = sweep_run.config
        key = (config.problem, config.data_dir)
        if key in seen:
            continue
        seen.add(key)
        problem = get_problem(config.problem)
        if problem.needs_files:
            try:
                problem.splits(config.data_dir)
            except DataMissingError as error:
                raise ConfigError(str(error)) from None


# ---------------------------------------------------------------------------------------------------------------
# The sweep


def _sweep_lock(output_dir: Path) -> AbstractContextManager[None]:
    """One sweep at a time per output folder (:mod:`probprec.bench.locks`)."""
    return holding(sweep_lock_path(output_dir), f"another sweep ({{holder}}) is running into {output_dir}; wait for "
                                                "it to finish")


def _check_options(executor: str, workers: int | None) -> None:
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")


def _executor(name: str, output_dir: Path, workers: int | None, slurm: SlurmOptions | None, echo: Echo) -> Executor:
    if name == LOCAL:
        return LocalExecutor(workers)
    return SlurmExecutor(output_dir, slurm or SlurmOptions(), echo)


def run_runs(runs: list[SweepRun], output_dir: str | Path, *, executor: str = LOCAL, workers: int | None = None,
             slurm: SlurmOptions | None = None, echo: Echo = print) -> SweepSummary:
    """Run every run of ``runs`` that has no finished result; see the module docstring.

    Raises:
        ConfigError: bad input (an unknown executor, a run that cannot start, missing data), before anything runs.
    """
    _check_options(executor, workers)
    processes = run_processes(executor, slurm)
    mismatched = [r for r in runs if r.config.processes != processes]
    if mismatched:
        raise ConfigError(f"{counted(len(mismatched), 'run')} of {mismatched[0].config.processes} processes, but the "
                          f"{executor} executor runs {processes} per run (prepare_runs(..., processes=...))")
    output_dir = Path(output_dir)
    summary = SweepSummary(str(output_dir))
    pending = pending_runs(runs)
    echo(f"{counted(len(runs), 'run')} ({len(runs) - len(pending)} already finished, {len(pending)} to run) -> "
         f"{output_dir}")
    waiting = {id(r) for r in pending}
    summary.outcomes += [outcome_of(r, "skipped", path=str(finished_result(r.config, folder_of(r.config))))
                         for r in runs if id(r) not in waiting]
    with _sweep_lock(output_dir):
        check_no_active_jobs(output_dir)
        if not pending:
            have = "the run has its result" if len(runs) == 1 else f"all {len(runs)} runs have results"
            echo(f"nothing to do: {have} in {output_dir}")
            return summary
        _check_data(pending)
        chosen = _executor(executor, output_dir, workers, slurm, echo)
        with interruptible():
            left = chosen.run(pending, _reporter(summary, len(pending), echo))
    summary.outcomes += [_left_outcome(r) for r in left]
    echo(summary.text)
    return summary


def _reporter(summary: SweepSummary, total: int, echo: Echo) -> Report:
    """Adds each outcome to ``summary`` and echoes it with its place among the ``total`` pending runs."""
    counter = itertools.count(1)

    def report(outcome: RunOutcome) -> None:
        summary.outcomes.append(outcome)
        echo(f"[{next(counter)}/{total}] {outcome.line()}")

    return report


def _left_outcome(sweep_run: SweepRun) -> RunOutcome:
    """A run that was in flight or queued when the sweep stopped: what its files say now."""
    folder, seed = folder_of(sweep_run.config), sweep_run.config.seed
    done = finished_result(sweep_run.config, folder)
    if done is not None:
        return outcome_of(sweep_run, "completed", path=str(done))
    started = checkpoint_path(folder, seed).exists() or any(
        record.get("status") == "interrupted" for _, record in existing_results(folder, seed))
    return outcome_of(sweep_run, "interrupted" if started else "not run")


def run_sweep(spec: SweepSpec, output_dir: str | Path, *, executor: str = LOCAL, workers: int | None = None,
              data_dir: str | Path = "data", device: str = "cpu", slurm: SlurmOptions | None = None,
              echo: Echo = print, progress: bool = False) -> SweepSummary:
    """Expand ``spec`` and run every run without a finished result.

    Args:
        spec: a loaded sweep (:func:`probprec.bench.sweeps.load_sweep`).
        output_dir: where results go (DeepOBS's layout).
        executor: ``local`` or ``slurm``.
        workers: local processes (default: one per core, at most one per pending run; 1 runs in this process).
        data_dir: where data sets are (unless the sweep generates its data).
        device: ``cpu``, ``cuda`` or ``auto``.
        slurm: submission options for ``executor="slurm"``.
        echo: where progress lines go.
        progress: progress bars (only with ``workers=1``).

    Returns:
        The summary; ``summary.exit_code`` is 0, 1 (a run failed) or 130 (interrupted).

    Raises:
        ConfigError: bad input, before anything runs.
    """
    runs = prepare_runs(spec, output_dir, data_dir, device, progress=progress and workers == 1,
                        processes=run_processes(executor, slurm))
    return run_runs(runs, output_dir, executor=executor, workers=workers, slurm=slurm, echo=echo)
