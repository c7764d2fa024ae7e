"""The Slurm executor: the runs of a sweep as `submitit <https://github.com/facebookincubator/submitit>`_ job arrays.

:class:`SlurmExecutor` submits the pending runs as one job array (``sbatch --array`` with
a concurrency throttle), one task per run, and (unless told not to) waits for them,
watching the queue with ``squeue``. A task that is preempted or about to time out is
requeued and resumes from the run's checkpoint (:class:`SlurmTask`). The job arrays of a
sweep are remembered in its output folder until they have left the queue, so that a
rerun never runs a run twice at the same time (:func:`check_no_active_jobs`).

With :attr:`SlurmOptions.tasks_per_node` N > 1 every run trains data-parallel with N Slurm
tasks on one node (``--ntasks-per-node``): each task exports the ``torch.distributed``
variables with submitit's ``TorchDistributedEnvironment`` and joins the group as under torchrun
(:mod:`probprec.bench.data_parallel`); task 0 is rank 0, which writes the run's files, and its
outcome is the run's. The sweep's batch size is then the batch of one task, and the runs'
settings folders name the processes (:func:`probprec.bench.orchestration.run_processes`).

This is the only module that imports submitit, and only when a sweep is submitted: the
options and the queue check work without it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .outcomes import Report, RunOutcome, execute, outcome_of
from .sweeps import SweepRun
from .threads import threads_per_process
from .wording import counted

if TYPE_CHECKING:
    from collections.abc import Callable

    from submitit import AutoExecutor, Job
    from submitit.helpers import DelayedSubmission

__all__ = ["SLURM_JOBS_NAME", "SlurmExecutor", "SlurmOptions", "SlurmTask", "check_no_active_jobs"]

SLURM_JOBS_NAME = ".slurm_jobs"
"""The file in a sweep's output folder that lists its job arrays that may still be queued or running."""
_GONE_LOOKS = 3
"""A task that is out of the queue this many looks in a row without a result failed (the result lags a little)."""


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
    """GPUs per run (``--gpus-per-node``); a data-parallel run on GPUs needs one per task."""
    tasks_per_node: int = 1
    """Processes per run (``--ntasks-per-node``, one node): more than 1 trains each run data-parallel, one task per
    process, each with ``cpus_per_task`` CPUs (see the module docstring)."""
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

    def parameters(self, name: str) -> dict[str, Any]:
        """Submitit's ``update_parameters`` arguments for a job array called ``name``."""
        parameters: dict[str, Any] = {"name": name, "timeout_min": self.time_min, "cpus_per_task": self.cpus_per_task,
                                      "slurm_array_parallelism": self.array_parallelism}
        if self.mem_gb is not None:
            parameters["mem_gb"] = self.mem_gb
        if self.gpus_per_node:
            parameters["gpus_per_node"] = self.gpus_per_node
        if self.tasks_per_node > 1:
            parameters["tasks_per_node"] = self.tasks_per_node
        if self.partition:
            parameters["slurm_partition"] = self.partition
        if self.setup:
            parameters["slurm_setup"] = list(self.setup)
        if self.additional:
            parameters["slurm_additional_parameters"] = dict(self.additional)
        return parameters


class SlurmTask:
    """One run as a Slurm task (or one process of a data-parallel run), requeued where it stops.

    On preemption or near the time limit, submitit calls :meth:`checkpoint` (in task 0), requeues the job and
    stops it; the requeued job calls this again and the runner resumes from the run's last checkpoint (the end
    of its last finished epoch).

    Args:
        threads: torch threads of the task.
        data_parallel: the run has several tasks: join their ``torch.distributed`` group first.
    """

    def __init__(self, threads: int = 1, data_parallel: bool = False):
        self.threads = threads
        self.data_parallel = data_parallel

    def __call__(self, sweep_run: SweepRun) -> RunOutcome:
        """Run (or resume, or skip) the run; in a data-parallel job, as this task's process of it."""
        if not self.data_parallel:
            return execute(sweep_run, threads=self.threads)
        from submitit.helpers import TorchDistributedEnvironment

        from .data_parallel import environment_group

        # overwrite: sbatch passes the submitting shell's environment on, which may have its own RANK or MASTER_PORT
        TorchDistributedEnvironment().export(set_cuda_visible_devices=sweep_run.config.device != "cpu",
                                             overwrite=True)
        with environment_group(sweep_run.config.device):
            return execute(sweep_run, threads=self.threads)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """The same task with the same run: the run's own checkpoint file holds its state."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


@dataclass
class SlurmExecutor:
    """Runs as a Slurm job array; an :class:`~probprec.bench.executor.Executor`."""

    output_dir: Path
    options: SlurmOptions
    echo: Callable[[str], Any]

    def run(self, pending: list[SweepRun], report: Report) -> list[SweepRun]:
        """Submit ``pending`` as one job array and (unless told not to) wait; returns the runs left when interrupted."""
        executor, folder = self._submitit_executor(f"probprec-{self.output_dir.name}")
        runs = [_absolute(r) for r in pending]
        task = SlurmTask(threads_per_process(1, cores=self.options.cpus_per_task), self.options.tasks_per_node > 1)
        jobs = executor.map_array(task, runs)
        array = jobs[0].job_id.split("_")[0]
        with open(self.output_dir / SLURM_JOBS_NAME, "a") as handle:
            handle.write(f"{array}\n")
        self.echo(f"submitted {counted(len(runs), 'run')} as Slurm job array {array} (at most "
                  f"{self.options.array_parallelism} at a time); logs in {folder.replace('%j', array + '_*')}")
        if not self.options.wait:
            for sweep_run in runs:
                report(outcome_of(sweep_run, "submitted", f"Slurm job array {array}"))
            return []
        try:
            _wait(list(zip(jobs, runs, strict=True)), self.options.poll_s, report)
        except KeyboardInterrupt:
            subprocess.run(["scancel", array], capture_output=True, check=False)
            self.echo(f"cancelled Slurm job array {array}: runs in progress record 'interrupted' and keep their "
                      "checkpoint")
            return [r for job, r in zip(jobs, runs, strict=True) if not job.paths.result_pickle.exists()]
        (self.output_dir / SLURM_JOBS_NAME).unlink(missing_ok=True)
        return []

    def _submitit_executor(self, name: str) -> tuple[AutoExecutor, str]:
        """Submitit's executor with the options, and its folder; raises ConfigError without submitit or sbatch."""
        try:
            import submitit
        except ImportError:
            raise ConfigError("the slurm executor needs submitit: pip install 'submitit>=1.5'") from None
        if shutil.which("sbatch") is None:
            raise ConfigError("the slurm executor needs Slurm's sbatch on PATH (run the sweep on the cluster's login "
                              "node, or use --executor local or --emit-commands)")
        folder = self.options.folder or str(self.output_dir / ".slurm" / "%j")
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=self.options.max_requeue)
        executor.update_parameters(**self.options.parameters(name))
        return executor, folder


def _absolute(sweep_run: SweepRun) -> SweepRun:
    """The run with absolute folders (a task may start elsewhere) and no progress bar (logs are files)."""
    config = sweep_run.config
    return replace(sweep_run, config=replace(config, output_dir=str(Path(config.output_dir).absolute()),
                                             data_dir=str(Path(config.data_dir).absolute()), progress=False))


def _wait(pairs: list[tuple[Job[RunOutcome], SweepRun]], poll_s: float, report: Report) -> None:
    """Report each task when its result arrives; a task that left the queue without one failed.

    Queue states come from ``squeue`` (``sacct`` needs accounting, which small clusters often lack).
    """
    gone: Counter[str] = Counter()
    while pairs:
        live = _squeue_live([job.job_id for job, _ in pairs])
        waiting = []
        for job, sweep_run in pairs:
            outcome = _task_outcome(job, sweep_run) if job.paths.result_pickle.exists() else None
            if outcome is not None and not (outcome.status == "interrupted" and live and job.job_id in live):
                report(outcome)  # (an interrupted task that is still queued was requeued: it will resume)
            elif outcome is None and live is not None and job.job_id not in live:
                gone[job.job_id] += 1
                if gone[job.job_id] >= _GONE_LOOKS:
                    report(outcome_of(sweep_run, "failed", f"Slurm job {job.job_id} ended without a result; see "
                                                           f"{job.paths.stderr}"))
                else:
                    waiting.append((job, sweep_run))
            else:
                waiting.append((job, sweep_run))
        pairs = waiting
        if pairs:
            time.sleep(poll_s)


def _task_outcome(job: Job[RunOutcome], sweep_run: SweepRun) -> RunOutcome:
    """The outcome a finished task returned (task 0's, of a data-parallel job), or its failure.

    submitit's errors carry the remote traceback.
    """
    try:
        return job.results()[0]
    except Exception as error:
        last = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return outcome_of(sweep_run, "failed", f"Slurm job {job.job_id}: {last} (log: {job.paths.stderr})")


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


def check_no_active_jobs(output_dir: Path) -> None:
    """Refuse to start while Slurm jobs of an earlier invocation may still write into ``output_dir``.

    Raises:
        ConfigError: naming the job arrays still queued or running and what to do.
    """
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
