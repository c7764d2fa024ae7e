"""Running a sweep: skip what is finished, run the rest on this machine or on Slurm, and summarise.

:func:`run_sweep` expands a :class:`~probprec.bench.sweeps.SweepSpec` into runs, says
how many there are and how many already have a result, and runs the others with

* ``executor="local"``: a process pool (``forkserver``, or ``spawn`` where there is none) with
  one worker per core by default; or in this process with ``workers=1``;
* ``executor="slurm"``: `submitit <https://github.com/facebookincubator/submitit>`_ job
  arrays (``sbatch --array`` with a concurrency throttle), one task per run; a task that
  is preempted or about to time out is requeued and resumes from the run's checkpoint.

Every executor sets torch's thread count by the one policy of :mod:`probprec.bench.threads`:
the pool's workers share the cores (workers x threads <= cores), a sweep in this process
uses them all, a Slurm task uses its ``--cpus-per-task``.

A run is finished when a ``completed`` or ``diverged`` result exists for its settings
folder and seed and no checkpoint is left (:func:`probprec.bench.runner.is_finished`),
so rerunning a sweep retries only what did not complete, and an interrupted run resumes
from its last finished epoch. A failed run (an exception, or status ``failed``) never
stops the others; its reason is in the summary and, where the runner got that far, in
its result file. A lock keeps two sweeps from running into the same output folder at
once, and every run holds its own lock while it runs (:mod:`probprec.bench.locks`), so a
``probprec run`` of one of the sweep's runs and the sweep never both execute it (the one
that comes second reports the run as running elsewhere). The Slurm job arrays of a sweep
are remembered until they have left the queue, so a rerun never runs a run twice at the
same time.

:func:`emit_commands` writes the pending runs as ``probprec run`` command lines for
other schedulers instead.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .data import DataMissingError
from .hyperparams import hyperparameter_argument
from .locks import LockHeldError, holding, sweep_lock_path
from .problems import get_problem
from .results import existing_results
from .runner import ConfigError, RunConfig, _checkpoint_path, _interruptible, finished_result, run, run_folder
from .sweeps import SweepRun, SweepSpec, expand
from .threads import available_cores, threads_per_process, using_threads
from .wording import counted

try:  # the Slurm executor's requeue protocol; submitit is optional for everything else
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is part of the bench extra
    _Checkpointable = object  # type: ignore[assignment,misc]

__all__ = ["EXECUTORS", "RunOutcome", "SlurmOptions", "SlurmTask", "SweepSummary", "emit_commands", "folder_of",
           "pending_runs", "prepare_runs", "run_runs", "run_sweep"]

EXECUTORS = ("local", "slurm")
GENERATED_MARKER = ".generated"
SLURM_JOBS_NAME = ".slurm_jobs"

Echo = Callable[[str], Any]


@dataclass
class SlurmOptions:
    """How the runs of a sweep are submitted to Slurm (through submitit)."""

    partition: str | None = None
    """``--partition``; None: the cluster's default partition."""
    time_min: int = 60
    """Time limit of one run in minutes (``--time``); a run near it is checkpointed and requeued."""
    mem_gb: float | None = None
    """Memory per run (``--mem``); None: the cluster's default."""
    cpus_per_task: int = 1
    """CPUs per run (``--cpus-per-task``); also the number of torch threads of the run."""
    gpus_per_node: int = 0
    """GPUs per run (``--gpus-per-node``)."""
    array_parallelism: int = 64
    """At most this many runs of the array at once (``--array=0-N%K``)."""
    folder: str | None = None
    """submitit's folder (job scripts, pickles, logs); ``%j`` is the job id. Default: ``<output_dir>/.slurm/%j``."""
    max_requeue: int = 3
    """How many times a run that reaches its time limit is requeued (preemptions do not count)."""
    wait: bool = True
    """Wait for the array and summarise; False: submit and return (rerun the sweep later to collect)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before each task (``module load ...``, ``source venv/bin/activate``)."""
    additional: dict[str, Any] = field(default_factory=dict)
    """Other sbatch options, e.g. ``{"account": "mylab", "qos": "low"}``."""
    poll_s: float = 5.0
    """Seconds between looks at the queue while waiting."""


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
    """``completed``, ``diverged``, ``failed``, ``interrupted``, ``skipped`` (finished before),
    ``not run`` (the sweep was stopped first) or ``submitted`` (to Slurm, not waited for)."""
    reason: str | None = None
    path: str | None = None
    """The result file, where there is one."""

    def line(self) -> str:
        """One line: status, problem, optimizer entry, its setting, seed (and the reason of a failure)."""
        text = f"{self.status:<11} {self.problem} {self.label} ({self.described}) seed {self.seed}"
        return f"{text}: {self.reason}" if self.reason and self.status in ("failed", "interrupted") else text


STATUS_ORDER = ("skipped", "completed", "diverged", "failed", "interrupted", "not run", "submitted")


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
        """0: every run completed, diverged or was finished before; 1: a run failed; 130: interrupted."""
        if self.count("interrupted") or self.count("not run"):
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
                         f"[{outcome.setting}]: "
                             f"{outcome.reason}")
                if outcome.path:
                    lines.append(f"    {outcome.path}")
        left = self.count("interrupted") + self.count("not run")
        if left:
            lines.append(f"interrupted: {counted(left, 'run')} left; the same command finishes them (interrupted "
                         "runs resume from their last finished epoch)")
        if self.count("submitted"):
            lines.append("submitted to Slurm: the same command again collects the results once the jobs are done")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text


# ---------------------------------------------------------------------------------------------------------------
# Preparing the runs

_FOLDERS: dict[str, Path] = {}


def folder_of(config: RunConfig) -> Path:
    """The settings folder of a run (:func:`probprec.bench.runner.run_folder`), remembered per configuration.

    Finding it builds the problem (for its defaults), which can take a while.
    """
    key = repr(config)
    if key not in _FOLDERS:
        _FOLDERS[key] = run_folder(config)
    return _FOLDERS[key]


def prepare_runs(spec: SweepSpec, output_dir: str | Path, data_dir: str | Path = "data", device: str = "cpu",
                 progress: bool = False) -> list[SweepRun]:
    """The runs of ``spec``, each once (coinciding settings are merged); ``data = "generate"`` is honoured.

    With ``data = "generate"`` tiny files in the real formats are written once to ``<output_dir>/data``
    (for problems that read files) and used as the data directory.

    Raises:
        ConfigError: a run that cannot start (named), before anything runs.
    """
    if spec.data == "generate" and any(get_problem(p).needs_files for p in spec.problems):
        data_dir = _generated_data(Path(output_dir))
    unique: dict[tuple[Path, int], SweepRun] = {}
    for sweep_run in expand(spec, output_dir, data_dir=str(data_dir), device=device, progress=progress):
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


def describe_setting(config: RunConfig) -> str:
    """The hyperparameters of a run and the budget it sets, as ``key=value`` (``defaults`` if none).

    Example:
        >>> describe_setting(RunConfig("p", "SGD", {"momentum": 0.9, "lr": 0.039810717055349734}, epochs=2))
        'epochs=2, lr=0.03981071706, momentum=0.9'
    """
    shown = {"epochs": config.epochs, "batch_size": config.batch_size, "l2": config.l2,
             "restart": None if config.restart == "default" else config.restart}
    items = [(k, v) for k, v in shown.items() if v is not None] + sorted(config.hyperparams.items())
    return ", ".join(f"{k}={format(v, '.10g') if isinstance(v, float) else v}" for k, v in items) or "defaults"


def _outcome(sweep_run: SweepRun, status: str, reason: str | None = None, path: str | None = None) -> RunOutcome:
    config = sweep_run.config
    try:
        setting = folder_of(config).name
    except ConfigError:
        setting = "?"
    return RunOutcome(config.problem, config.optimizer, sweep_run.label, config.seed, setting,
                      describe_setting(config), status, reason, path)


# ---------------------------------------------------------------------------------------------------------------
# Running one run (in this process, a pool worker or a Slurm task)

_STOPPING = False
"""Set in a pool worker once it has been told to stop: later tasks are not started."""


def execute(sweep_run: SweepRun, threads: int | None = None) -> RunOutcome:
    """Run one run and describe what became of it; never raises for a failing run.

    Args:
        sweep_run: the run.
        threads: torch threads for the run (None: leave the setting alone).
    """
    if _STOPPING:
        return _outcome(sweep_run, "not run")
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        result = run(sweep_run.config)
    except LockHeldError as error:
        return _outcome(sweep_run, "failed", f"not run here: {error}")
    except ConfigError as error:
        return _outcome(sweep_run, "failed", f"bad input: {error}")
    except Exception as error:  # a failing run never stops the sweep
        return _outcome(sweep_run, "failed", f"{type(error).__name__}: {error}")
    reason = result.record.get("status_reason") if result.status in ("failed", "interrupted", "diverged") else None
    return _outcome(sweep_run, result.status, reason, str(result.path))


# ---------------------------------------------------------------------------------------------------------------
# The local executor


def _context():
    """The start method of worker processes: ``forkserver`` where there is one, else ``spawn``.

    Workers fork from a server that has imported torch once (fast starts). Both methods need only importable,
    picklable tasks, and neither forks a process that runs torch threads.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["probprec.bench.executors"])
        return context
    return multiprocessing.get_context("spawn")  # pragma: no cover - Windows


def _init_worker(threads: int | None) -> None:
    """Pool worker start: Ctrl-C is the sweep's business, one torch thread, stop when the sweep is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threads:
        import torch

        torch.set_num_threads(threads)
    parent = os.getppid()  # the sweep (spawn) or the fork server, which exits with the sweep
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="probprec-parent-watch").start()


def _watch_parent(parent: int) -> None:
    """Stop like on SIGTERM once the sweep process is gone (killed with SIGKILL, say).

    The run records ``interrupted`` and keeps its checkpoint, and no orphan keeps writing results while the
    sweep is started again.
    """
    global _STOPPING
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            _STOPPING = True
            os.kill(os.getpid(), signal.SIGTERM)


def _run_in_worker(sweep_run: SweepRun) -> RunOutcome:
    """The pool's task: one run; after an interruption the worker starts nothing else."""
    global _STOPPING
    outcome = execute(sweep_run)
    if outcome.status == "interrupted":
        _STOPPING = True
    return outcome


def _isolated(sweep_run: SweepRun, connection, threads: int) -> None:
    """Target of a process that runs one suspect run alone (after a worker died), with the pool's threads."""
    _init_worker(threads)
    connection.send(execute(sweep_run))
    connection.close()


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"


class _LocalPool:
    """At most ``workers`` runs at a time in worker processes; a dead worker costs only its own run."""

    def __init__(self, workers: int, report: Callable[[RunOutcome], None]):
        self.workers = workers
        self.threads = threads_per_process(workers)
        self.report = report
        self.context = _context()
        self.queue: deque[SweepRun] = deque()
        self.in_flight: dict[Future, SweepRun] = {}
        self.suspects: list[SweepRun] = []
        self.pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_init_worker,
                                   initargs=(self.threads,))

    def run(self, runs: list[SweepRun]) -> None:
        """Run ``runs``; on KeyboardInterrupt stop the workers (each run records ``interrupted``)."""
        self.queue.extend(runs)
        self.pool = self._new_pool()
        try:
            while self.queue or self.in_flight:
                while self.queue and len(self.in_flight) < self.workers:
                    sweep_run = self.queue.popleft()
                    self.in_flight[self.pool.submit(_run_in_worker, sweep_run)] = sweep_run
                done, _ = wait(list(self.in_flight), return_when=FIRST_COMPLETED)
                if self._collect(done):
                    self._recover()
        except KeyboardInterrupt:
            self._stop()
            raise
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _collect(self, done: Iterable[Future]) -> bool:
        """Report finished futures; True if the pool broke (a worker died)."""
        broken = False
        for future in done:
            sweep_run = self.in_flight.pop(future)
            try:
                self.report(future.result())
            except BrokenProcessPool:
                broken = True
                self.suspects.append(sweep_run)
            except Exception as error:  # e.g. a result that cannot be sent back
                self.report(_outcome(sweep_run, "failed", f"{type(error).__name__}: {error}"))
        return broken

    def _recover(self) -> None:
        """A worker died: run each run that was in flight alone, to find the one that kills its process."""
        self.suspects += list(self.in_flight.values())
        self.in_flight.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
        while self.suspects:
            sweep_run = self.suspects[0]
            self.report(self._run_alone(sweep_run))
            self.suspects.pop(0)
        self.pool = self._new_pool()

    def _run_alone(self, sweep_run: SweepRun) -> RunOutcome:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_isolated, args=(sweep_run, send, self.threads), daemon=True)
        process.start()
        send.close()
        try:
            outcome = receive.recv()
        except EOFError:
            outcome = None
        except KeyboardInterrupt:
            process.terminate()
            process.join(60)
            raise
        process.join()
        if outcome is None:
            return _outcome(sweep_run, "failed", f"its process died ({_describe_exit(process.exitcode)})")
        return outcome

    def _stop(self) -> None:
        """SIGTERM to every worker (a run in progress records ``interrupted``), then wait for them."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values())  # no public API before 3.14
        deadline = time.monotonic() + 60
        while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join(timeout=0.5)

    def left(self) -> list[SweepRun]:
        """Runs that were in flight or not started when the pool stopped."""
        return [*self.suspects, *self.in_flight.values(), *self.queue]


def _run_local(runs: list[SweepRun], workers: int, report: Callable[[RunOutcome], None]) -> list[SweepRun]:
    """Run ``runs`` on this machine; returns the runs left when interrupted (empty otherwise)."""
    if workers == 1:
        with using_threads(threads_per_process(1)):
            return _run_here(runs, report)
    pool = _LocalPool(workers, report)
    try:
        pool.run(runs)
    except KeyboardInterrupt:
        return pool.left()
    return []


def _run_here(runs: list[SweepRun], report: Callable[[RunOutcome], None]) -> list[SweepRun]:
    """Run ``runs`` one after the other in this process; returns the runs left when interrupted."""
    for i, sweep_run in enumerate(runs):
        try:
            outcome = execute(sweep_run)
        except KeyboardInterrupt:
            return runs[i:]
        report(outcome)
        if outcome.status == "interrupted":
            return runs[i + 1:]
    return []


# ---------------------------------------------------------------------------------------------------------------
# The Slurm executor


class SlurmTask(_Checkpointable):
    """One run as a Slurm task (submitit's ``Checkpointable``).

    On preemption or near the time limit, submitit calls :meth:`checkpoint`, requeues the task and stops
    it; the requeued task calls this again and the runner resumes from the run's last checkpoint (the end
    of its last finished epoch).
    """

    def __init__(self, threads: int = 1):
        self.threads = threads

    def __call__(self, sweep_run: SweepRun) -> RunOutcome:
        """Run (or resume, or skip) the run."""
        return execute(sweep_run, threads=self.threads)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """The same task with the same run: the run's own checkpoint file holds its state."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _squeue_live(job_ids: list[str]) -> set[str] | None:
    """Job ids (array tasks as ``123_4``) still queued or running; None if squeue cannot tell."""
    if not job_ids or shutil.which("squeue") is None:
        return None
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i", "--jobs", ",".join(arrays)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return set() if "Invalid job id" in out.stderr else None
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def _check_no_active_jobs(output_dir: Path) -> None:
    """Refuse to start while Slurm jobs of an earlier invocation may still write into ``output_dir``."""
    path = output_dir / SLURM_JOBS_NAME
    if not path.exists():
        return
    arrays = path.read_text().split()
    live = _squeue_live(arrays)
    if live:
        listed = ", ".join(sorted({j.split("_")[0] for j in live}))
        raise ConfigError(f"Slurm jobs of an earlier run of this sweep are still queued or running ({listed}) and "
                          f"write into {output_dir}: wait for them (squeue -j {listed}) or cancel them "
                          f"(scancel {listed}), then run the sweep again")
    if live is not None:
        path.unlink(missing_ok=True)


def _slurm_executor(output_dir: Path, options: SlurmOptions, name: str):
    try:
        import submitit
    except ImportError:
        raise ConfigError("the slurm executor needs submitit: pip install 'submitit>=1.5'") from None
    if shutil.which("sbatch") is None:
        raise ConfigError("the slurm executor needs Slurm's sbatch on PATH (run the sweep on the cluster's login "
                          "node, or use --executor local or --emit-commands)")
    folder = options.folder or str(output_dir / ".slurm" / "%j")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=options.max_requeue)
    parameters: dict[str, Any] = {"name": name, "timeout_min": options.time_min, "cpus_per_task": options.cpus_per_task,
                                  "slurm_array_parallelism": options.array_parallelism}
    if options.mem_gb is not None:
        parameters["mem_gb"] = options.mem_gb
    if options.gpus_per_node:
        parameters["gpus_per_node"] = options.gpus_per_node
    if options.partition:
        parameters["slurm_partition"] = options.partition
    if options.setup:
        parameters["slurm_setup"] = list(options.setup)
    if options.additional:
        parameters["slurm_additional_parameters"] = dict(options.additional)
    executor.update_parameters(**parameters)
    return executor, folder


def _absolute(sweep_run: SweepRun) -> SweepRun:
    config = sweep_run.config
    return replace(sweep_run, config=replace(config, output_dir=str(Path(config.output_dir).absolute()),
                                             data_dir=str(Path(config.data_dir).absolute()), progress=False))


def _run_slurm(runs: list[SweepRun], output_dir: Path, options: SlurmOptions, report: Callable[[RunOutcome], None],
               echo: Echo) -> list[SweepRun]:
    """Submit ``runs`` as one job array and (unless told not to) wait; returns the runs left when interrupted."""
    executor, folder = _slurm_executor(output_dir, options, f"probprec-{output_dir.name}")
    runs = [_absolute(r) for r in runs]
    jobs = executor.map_array(SlurmTask(threads_per_process(1, cores=options.cpus_per_task)), runs)
    array = jobs[0].job_id.split("_")[0]
    with open(output_dir / SLURM_JOBS_NAME, "a") as handle:
        handle.write(f"{array}\n")
    echo(f"submitted {counted(len(runs), 'run')} as Slurm job array {array} (at most {options.array_parallelism} "
         f"at a time); logs in {folder.replace('%j', array + '_*')}")
    if not options.wait:
        for sweep_run in runs:
            report(_outcome(sweep_run, "submitted", f"Slurm job array {array}"))
        return []
    try:
        _wait_slurm(list(zip(jobs, runs, strict=True)), options.poll_s, report)
    except KeyboardInterrupt:
        subprocess.run(["scancel", array], capture_output=True, check=False)
        echo(f"cancelled Slurm job array {array}: runs in progress record 'interrupted' and keep their checkpoint")
        return [r for job, r in zip(jobs, runs, strict=True) if not job.paths.result_pickle.exists()]
    (output_dir / SLURM_JOBS_NAME).unlink(missing_ok=True)
    return []


def _wait_slurm(pairs: list[tuple[Any, SweepRun]], poll_s: float, report: Callable[[RunOutcome], None]) -> None:
    """Report each task when its result arrives; a task that left the queue without one failed.

    Queue states come from ``squeue`` (``sacct`` needs accounting, which small clusters often lack).
    """
    gone: Counter[str] = Counter()
    while pairs:
        live = _squeue_live([job.job_id for job, _ in pairs])
        waiting = []
        for job, sweep_run in pairs:
            outcome = _slurm_outcome(job, sweep_run) if job.paths.result_pickle.exists() else None
            if outcome is not None and not (outcome.status == "interrupted" and live and job.job_id in live):
                report(outcome)  # (an interrupted task that is still queued was requeued: it will resume)
            elif outcome is not None:
                waiting.append((job, sweep_run))
            elif live is not None and job.job_id not in live:
                gone[job.job_id] += 1
                if gone[job.job_id] >= 3:  # the result file lags the end of the job a little
                    report(_outcome(sweep_run, "failed", f"Slurm job {job.job_id} ended without a result; see "
                                                         f"{job.paths.stderr}"))
                else:
                    waiting.append((job, sweep_run))
            else:
                waiting.append((job, sweep_run))
        pairs = waiting
        if pairs:
            time.sleep(poll_s)


def _slurm_outcome(job, sweep_run: SweepRun) -> RunOutcome:
    try:
        return job.result()
    except Exception as error:  # submitit's errors carry the remote traceback
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return _outcome(sweep_run, "failed", f"Slurm job {job.job_id}: {last} (log: {job.paths.stderr})")


# ---------------------------------------------------------------------------------------------------------------
# The sweep


def _sweep_lock(output_dir: Path):
    """One sweep at a time per output folder (:mod:`probprec.bench.locks`)."""
    return holding(sweep_lock_path(output_dir), f"another sweep ({{holder}}) is running into {output_dir}; wait for "
                                                "it to finish")


def _default_workers(pending: int, device: str) -> int:
    if device != "cpu":
        return 1  # one accelerator: runs take turns on it
    return max(1, min(available_cores(), pending))


def run_runs(runs: list[SweepRun], output_dir: str | Path, *, executor: str = "local", workers: int | None = None,
             slurm: SlurmOptions | None = None, echo: Echo = print) -> SweepSummary:
    """Run every run of ``runs`` that has no finished result; see the module docstring.

    Raises:
        ConfigError: bad input (an unknown executor, a run that cannot start, missing data), before anything runs.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    output_dir = Path(output_dir)
    summary = SweepSummary(str(output_dir))
    pending = pending_runs(runs)
    finished = len(runs) - len(pending)
    echo(f"{counted(len(runs), 'run')} ({finished} already finished, {len(pending)} to run) -> {output_dir}")
    waiting = {id(r) for r in pending}
    summary.outcomes += [_outcome(r, "skipped", path=str(finished_result(r.config, folder_of(r.config))))
                         for r in runs if id(r) not in waiting]
    with _sweep_lock(output_dir):
        _check_no_active_jobs(output_dir)
        if not pending:
            have = "the run has its result" if len(runs) == 1 else f"all {len(runs)} runs have results"
            echo(f"nothing to do: {have} in {output_dir}")
            return summary
        _check_data(pending)
        count = [0]

        def report(outcome: RunOutcome) -> None:
            count[0] += 1
            summary.outcomes.append(outcome)
            echo(f"[{count[0]}/{len(pending)}] {outcome.line()}")

        with _interruptible():
            if executor == "local":
                workers = workers or _default_workers(len(pending), pending[0].config.device)
                left = _run_local(pending, min(workers, len(pending)), report)
            else:
                left = _run_slurm(pending, output_dir, slurm or SlurmOptions(), report, echo)
    summary.outcomes += [_left_outcome(r) for r in left]
    echo(summary.text)
    return summary


def _left_outcome(sweep_run: SweepRun) -> RunOutcome:
    """A run that was in flight or queued when the sweep stopped: what its files say now."""
    folder, seed = folder_of(sweep_run.config), sweep_run.config.seed
    done = finished_result(sweep_run.config, folder)
    if done is not None:
        return _outcome(sweep_run, "completed", path=str(done))
    started = _checkpoint_path(folder, seed).exists() or any(
        record.get("status") == "interrupted" for _, record in existing_results(folder, seed))
    return _outcome(sweep_run, "interrupted" if started else "not run")


def run_sweep(spec: SweepSpec, output_dir: str | Path, *, executor: str = "local", workers: int | None = None,
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
    runs = prepare_runs(spec, output_dir, data_dir, device, progress=progress and workers == 1)
    return run_runs(runs, output_dir, executor=executor, workers=workers, slurm=slurm, echo=echo)


# ---------------------------------------------------------------------------------------------------------------
# Commands for other schedulers


def run_command(config: RunConfig, program: str = "probprec") -> str:
    """The ``probprec run`` command line of one run (shell-quoted)."""
    argv = [program, "run", config.problem, "--optimizer", config.optimizer, "--seed", str(config.seed)]
    if config.epochs is not None:
        argv += ["--epochs", str(config.epochs)]
    if config.batch_size is not None:
        argv += ["--batch-size", str(config.batch_size)]
    if config.l2 is not None:
        argv += ["--l2", repr(float(config.l2))]
    if config.restart != "default":
        argv += ["--restart", str(config.restart)]
    if config.hyperparams:
        argv += ["--hp", *(hyperparameter_argument(k, v) for k, v in sorted(config.hyperparams.items()))]
    argv += ["--data-dir", str(config.data_dir), "--output-dir", str(config.output_dir)]
    if config.device != "cpu":
        argv += ["--device", config.device]
    if config.download:
        argv.append("--download")
    if config.force:
        argv.append("--force")
    return shlex.join(argv)


def emit_commands(spec: SweepSpec, output_dir: str | Path, data_dir: str | Path = "data",
                  device: str = "cpu") -> list[str]:
    """``probprec run ...`` for every pending run of ``spec`` (for schedulers of your own).

    Raises:
        ConfigError: bad input, before anything is written.
    """
    runs = prepare_runs(spec, output_dir, data_dir, device)
    return [run_command(r.config) for r in pending_runs(runs)]
