"""One training run: the DeepOBS protocol with run status, timing, metadata, checkpoints and resume.

:func:`run` takes a :class:`RunConfig` and returns a :class:`RunResult`. The loop:

* N+1 evaluations (before training and after each epoch) on train_eval, valid
  and test, in eval mode, over every example; losses include the problem's L2 term;
* the second-order training loop of :mod:`probprec`: ``backward(create_graph=...)``
  only when the optimizer asks, and a fresh estimate (``start_estimate()``) at the
  start of every ``restart_every``-th epoch (by default not for an optimizer with adaptive restarts,
  which decides itself), or the optimizer's own policy (``maybe_start_estimate()`` before every step)
  with ``restart="optimizer"``;
* optimizers with ``train()``/``eval()`` modes (Schedule-Free) are put in ``train()`` before every training
  epoch and in ``eval()`` before every evaluation; the curvature peers get ``create_graph`` on the steps
  where they estimate (:mod:`probprec.bench.optimizer_protocol`);
* a non-finite training loss stops the run at that step with status ``diverged``; a run that ends
  having learned nothing over its last :attr:`~probprec.bench.collapse.CollapseCriterion.epochs` epochs
  (its training loss at or back at its initial level, or its accuracy at chance: the definition of
  :mod:`probprec.bench.collapse`, which the analysis uses too) gets the status ``collapsed``, the epoch
  from which it learned nothing (``collapsed_at_epoch``) and the evidence (``status_reason``); it trains
  its whole budget, so that a step size that warms up slowly is not taken for a collapse;
  an interrupt (SIGINT, SIGTERM) records status ``interrupted`` and keeps the
  checkpoint of the last finished epoch (:mod:`probprec.bench.checkpoints`), from
  which the same command resumes to the same result as an uninterrupted run; any
  other error is recorded as ``failed`` with its message;
* wall-clock and process CPU time per epoch, the optimizer's ``get_log()`` per
  epoch, minibatch losses every ``train_log_interval`` steps, and the environment;
* a run of :attr:`RunConfig.processes` > 1 trains data-parallel in the ``torch.distributed`` group that
  this process belongs to, equal to one process with the global batch ``processes x batch_size``
  (:mod:`probprec.bench.data_parallel`, which also starts such runs).
"""

from __future__ import annotations

import math
import random
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ._pause import pause_if_asked
from .checkpoints import CheckpointNotWrittenError, checkpoint_path, load_checkpoint, save_checkpoint
from .collapse import ended_collapsed
from .data import DataMissingError, Splits
from .data_parallel import ProcessLayout, layout
from .environment import environment
from .errors import ConfigError, UserError, describe_os_error
from .locks import holding, run_lock_path
from .optimizer_protocol import evaluation_mode, needs_graph, training_mode
from .optimizers import OptimizerSpec, get_optimizer
from .problems import Problem, get_problem
from .results import (
    SCHEMA_VERSION,
    ensure_writable_folder,
    existing_results,
    result_path,
    settings_folder,
    write_json_atomic,
)

__all__ = ["FINISHED", "RESTART_POLICIES", "ConfigError", "RunConfig", "RunResult", "check_data_parallel",
           "finished_result", "interruptible", "run", "run_folder"]

RESTART_POLICIES = ("default", "epoch", "optimizer", "never")
"""The restart policies by name (:attr:`RunConfig.restart`); an integer k >= 1 (every k epochs) is one too."""
FINISHED = ("completed", "diverged", "collapsed")
"""The statuses of a run that has ended for good (a result with one of them makes the run skip)."""


@dataclass
class RunConfig:
    """Everything that defines a run."""

    problem: str
    optimizer: str
    hyperparams: dict[str, Any] = field(default_factory=dict)
    seed: int = 42
    epochs: int | None = None
    """None: the problem's default."""
    batch_size: int | None = None
    """None: the problem's default. The batch of one process: a data-parallel run's global batch is
    ``processes x batch_size`` (its record's ``batch_size``)."""
    l2: float | None = None
    """None: the problem's L2 coefficient."""
    restart: str | int = "default"
    """``"default"`` (the problem's ``restart_every``), ``"epoch"``, an int k (every k epochs), ``"optimizer"``
    (the optimizer's own ``maybe_start_estimate``) or ``"never"``."""
    data_dir: str = "data"
    download: bool = False
    output_dir: str = "results"
    force: bool = False
    """Run even if a finished result for this setting and seed exists (a new file is written)."""
    train_log_interval: int = 10
    device: str = "cpu"
    progress: bool = True
    processes: int = 1
    """Data-parallel processes (:mod:`probprec.bench.data_parallel`): more than 1 needs a ``torch.distributed``
    group of that many processes, which :func:`probprec.bench.data_parallel.run_data_parallel` sets up."""


@dataclass
class RunResult:
    """What :func:`run` did."""

    status: str
    """``completed``, ``diverged``, ``collapsed``, ``interrupted``, ``failed``, or ``skipped`` (a finished result
    existed)."""
    path: Path
    record: dict[str, Any]


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _restart_every(config: RunConfig, default: int) -> int | str:
    restart = config.restart
    if restart == "default":
        return default
    if restart == "epoch":
        return 1
    if restart in ("optimizer", "never"):
        return restart
    if isinstance(restart, int) and not isinstance(restart, bool) and restart >= 1:
        return restart
    raise ConfigError(f"restart must be one of {', '.join(RESTART_POLICIES)} or an integer >= 1, got {restart!r}")


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt in the body, as Ctrl-C is (main thread only; elsewhere: nothing)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def _plain(value: Any) -> Any:
    """JSON-able copy of hyperparameters (classes become their names)."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Evaluator:
    """Loss (with the L2 term) and accuracy of a model on a data set, over every example."""

    def __init__(self, problem: Problem, device: torch.device, batch_size: int):
        self.problem, self.device, self.batch_size = problem, device, batch_size

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, dataset: Dataset) -> tuple[float, float | None]:
        model.eval()
        total, correct, count = 0.0, 0, 0
        has_accuracy = True
        for x, y in DataLoader(dataset, batch_size=self.batch_size, shuffle=False):
            x, y = x.to(self.device), y.to(self.device)
            out = model(x)
            total += float(self.problem.loss(out, y)) * len(y)
            c = self.problem.correct(out, y)
            if c is None:
                has_accuracy = False
            else:
                correct += int(c)
            count += len(y)
        model.train()
        loss = total / count + float(self.problem.penalty(model))
        return loss, (correct / count if has_accuracy else None)


@dataclass
class _Settings:
    """What names a run: its problem, optimizer, budget and restart policy, and its settings folder."""

    problem: Problem
    spec: OptimizerSpec
    hyperparams: dict[str, Any]
    epochs: int
    batch_size: int
    """The batch of one process."""
    processes: int
    """Data-parallel processes (1: one process); the global batch is ``processes x batch_size``."""
    restart: int | str
    """Epochs between fresh estimates, ``"optimizer"`` or ``"never"`` (:func:`_restart_every`)."""
    folder: Path


@dataclass
class _Prepared:
    """A run ready to train: its settings, device, data, model and optimizer."""

    settings: _Settings
    device: torch.device
    splits: Splits
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer


def _settings(config: RunConfig) -> _Settings:
    """Validate what names a run (no data, no model) and find its settings folder; raises ConfigError."""
    try:
        problem = get_problem(config.problem, **({"l2": config.l2} if config.l2 is not None else {}))
    except (KeyError, ValueError) as error:
        raise ConfigError(str(error)) from None
    try:
        spec = get_optimizer(config.optimizer)
    except KeyError as error:
        raise ConfigError(str(error)) from None
    epochs = _check_positive_int("epochs", config.epochs if config.epochs is not None else problem.epochs)
    batch_size = _check_positive_int("batch size",
                                     config.batch_size if config.batch_size is not None else problem.batch_size)
    processes = _check_positive_int("processes", config.processes)
    _check_positive_int("train_log_interval", config.train_log_interval)
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {config.seed!r}")
    restart = _restart_every(config, problem.restart_every)
    hyperparams = spec.hyperparameters(problem.name, config.hyperparams)
    training_params = {**({} if config.restart == "default" else {"restart": restart}), **_processes_param(processes)}
    folder = Path(config.output_dir) / problem.name / spec.name / settings_folder(
        epochs, batch_size * processes, config.l2, _plain(hyperparams), training_params)
    return _Settings(problem, spec, hyperparams, epochs, batch_size, processes, restart, folder)


def _processes_param(processes: int) -> dict[str, int]:
    """The ``processes`` entry of a run's training parameters: only data-parallel runs have one."""
    return {"processes": processes} if processes > 1 else {}


def run_folder(config: RunConfig) -> Path:
    """The settings folder that the result of ``config`` goes to (nothing is loaded or written).

    Raises:
        ConfigError: on a bad problem, optimizer, epochs, batch size, seed or restart policy.
    """
    return _settings(config).folder


def _finished(folder: Path, seed: int) -> tuple[Path, dict[str, Any]] | None:
    """The first finished result (:data:`FINISHED`) of ``seed`` in ``folder``, unless a checkpoint is left."""
    if checkpoint_path(folder, seed).exists():
        return None
    for path, record in existing_results(folder, seed):
        if record.get("status") in FINISHED:
            return path, record
    return None


def finished_result(config: RunConfig, folder: Path | None = None) -> Path | None:
    """The result file that makes :func:`run` skip ``config``, or None if the run would train.

    Args:
        config: the run.
        folder: its settings folder, if known (:func:`run_folder`).
    """
    found = None if config.force else _finished(folder or run_folder(config), config.seed)
    return found[0] if found else None


def _build_optimizer(settings: _Settings, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer over the problem's parameter groups of ``model``; raises ConfigError on bad values."""
    try:
        return settings.spec.build(settings.problem.param_groups(model), settings.hyperparams)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"invalid hyperparameters for {settings.spec.name}: {error}") from None


def _prepare(config: RunConfig, parallel: ProcessLayout) -> _Prepared:
    """Validate the configuration and build everything; raises ConfigError on bad input.

    The output folder is created by the process that writes (:attr:`ProcessLayout.writes`) only.
    """
    settings = _settings(config)
    device = parallel.device(config.device)
    try:
        splits = settings.problem.splits(config.data_dir, download=config.download)
    except DataMissingError as error:
        raise ConfigError(str(error)) from None
    train_size = len(splits.train)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; ours have one
    total = settings.batch_size * settings.processes
    if train_size < total:
        size = f"{settings.batch_size} x {settings.processes} processes = {total}" if settings.processes > 1 else total
        raise ConfigError(f"batch size {size} is larger than the training set ({train_size} examples)")
    _seed_everything(config.seed)
    model = settings.problem.model().to(device)
    optimizer = _build_optimizer(settings, model)
    parallel.check_optimizer(optimizer)
    if parallel.writes:
        ensure_writable_folder(config.output_dir)
    return _Prepared(settings, device, splits, model, optimizer)


def check_data_parallel(config: RunConfig) -> None:
    """What can be checked of a data-parallel run before its processes start (no data is loaded).

    Raises:
        ConfigError: a bad problem, optimizer, budget or hyperparameter, or an optimizer that cannot train
            data-parallel (:func:`probprec.bench.data_parallel.refusal`).
    """
    from .data_parallel import refusal

    settings = _settings(config)
    reason = refusal(_build_optimizer(settings, settings.problem.model()))
    if reason:
        raise ConfigError(reason)


def run(config: RunConfig) -> RunResult:
    """Run (or resume, or skip) one configuration; see the module docstring.

    One process at a time runs a configuration, whoever started it (:mod:`probprec.bench.locks`); in a
    data-parallel run, rank 0 holds the lock and the others follow its decisions.

    Raises:
        ConfigError: on bad input, before anything is written.
        LockHeldError: another process is running this configuration (nothing was changed).
    """
    parallel = layout(config.processes)
    prepared = parallel.agree(lambda: _prepare(config, parallel), rank0_first=config.download)
    settings = prepared.settings
    with parallel.hold(lambda: holding(
            run_lock_path(settings.folder, config.seed),
            f"{settings.problem.name} {settings.spec.name} seed {config.seed} is already running in {{holder}} "
            f"(settings folder {settings.folder}); wait for it to finish, then the same command skips or resumes it")):
        return _run_prepared(config, prepared, parallel)


@dataclass
class _Start:
    """Where a run starts: skipped (a finished result), or its record, first epoch and result file."""

    skipped: bool
    path: Path
    record: dict[str, Any]
    epoch: int = 0


def _start(config: RunConfig, prepared: _Prepared, loader_generator: torch.Generator, checkpoint: Path) -> _Start:
    """Skip, resume (loading the checkpoint) or start anew; decided by the process that writes."""
    settings = prepared.settings
    done = None if config.force else _finished(settings.folder, config.seed)
    if done is not None:
        return _Start(True, *done)
    record, start_epoch = _new_record(config, prepared), 0
    if checkpoint.exists():
        record, start_epoch = _resume(checkpoint, prepared, loader_generator)
    return _Start(False, _result_file(config, settings, record, start_epoch), record, start_epoch)


def _run_prepared(config: RunConfig, prepared: _Prepared, parallel: ProcessLayout) -> RunResult:
    """The body of :func:`run`, under the run's lock: skip, or resume or start, train, and write the result.

    In a data-parallel run rank 0 decides and the others follow: they load rank 0's checkpoint and take its record.
    """
    settings = prepared.settings
    loader_generator = torch.Generator().manual_seed(config.seed)
    checkpoint = checkpoint_path(settings.folder, config.seed)
    start = parallel.share(lambda: _start(config, prepared, loader_generator, checkpoint))
    if start.skipped:
        return RunResult("skipped", start.path, start.record)
    if start.epoch > 0 and not parallel.writes:
        _resume(checkpoint, prepared, loader_generator)
    record = start.record
    not_written = _Training(config, prepared, record, loader_generator, checkpoint, parallel).train(start.epoch)
    parallel.settle(record)
    finished = _finished_record(record, has_accuracy=settings.problem.metric == "accuracy")
    if parallel.writes:
        _write_record(start.path, finished, checkpoint, not_written)
    return RunResult(record["status"], start.path, finished)


def _new_record(config: RunConfig, prepared: _Prepared) -> dict[str, Any]:
    """The result record of a run that starts now (status ``running``, no epoch yet)."""
    settings, splits = prepared.settings, prepared.splits
    problem = settings.problem
    sizes = {f"{name}_size": len(getattr(splits, name)) for name in ("train", "valid", "test")}
    training_params = {"restart": settings.restart, "train_log_interval": config.train_log_interval,
                       **_processes_param(settings.processes)}
    return {
        "testproblem": problem.name, "batch_size": settings.batch_size * settings.processes,
        "num_epochs": settings.epochs, "random_seed": config.seed, "weight_decay": problem.l2,
        "optimizer_name": settings.spec.name, "optimizer_hyperparams": _plain(settings.hyperparams),
        "training_params": training_params,
        "train_losses": [], "valid_losses": [], "test_losses": [], "minibatch_train_losses": [],
        "train_accuracies": [], "valid_accuracies": [], "test_accuracies": [],
        "status": "running", "status_reason": None, "stopped_at_step": None, "stopped_at_epoch": None,
        "epochs_completed": 0, "steps": 0, "epoch_wall_times": [], "epoch_cpu_times": [], "eval_wall_times": [],
        "optimizer_logs": [],
        "problem": {"name": problem.name, "metric": problem.metric, "l2": problem.l2, "dataset": problem.dataset,
                    "parameters": problem.count_parameters(prepared.model), **sizes},
        "metadata": {"schema_version": SCHEMA_VERSION, "started": datetime.now().isoformat(timespec="seconds"),
                     "device": str(prepared.device), "environment": environment(), "resumed_at_epochs": []},
    }


def _resume(path: Path, prepared: _Prepared, loader_generator: torch.Generator) -> tuple[dict[str, Any], int]:
    """Load the checkpoint into the model, the optimizer and every random generator; its record and epoch."""
    checkpoint = load_checkpoint(path)
    prepared.model.load_state_dict(checkpoint.model)
    prepared.optimizer.load_state_dict(checkpoint.optimizer)
    record = checkpoint.record
    record["metadata"]["resumed_at_epochs"].append(checkpoint.epoch)
    checkpoint.restore_rng(loader_generator)
    return record, checkpoint.epoch


def _result_file(config: RunConfig, settings: _Settings, record: dict[str, Any], start_epoch: int) -> Path:
    """Where the result goes: named by the start time, never over another result.

    A run that starts anew replaces the record of its interruption before its first checkpoint; a name that
    another result has is moved on by a second (``metadata.started`` with it).
    """
    started = datetime.fromisoformat(record["metadata"]["started"])

    def named(started: datetime) -> Path:
        return result_path(config.output_dir, settings.problem.name, settings.spec.name, settings.folder.name,
                           config.seed, started)

    path = named(started)
    if start_epoch > 0:
        return path
    stale = [(p, r) for p, r in existing_results(settings.folder, config.seed) if r.get("status") == "interrupted"]
    if stale:  # interrupted before its first checkpoint: this run replaces that record
        path = stale[-1][0]
        record["metadata"]["started"] = stale[-1][1]["metadata"]["started"]
    stale_paths = [p for p, _ in stale]
    while path.exists() and path not in stale_paths:  # never overwrite a result: a later time names it
        started += timedelta(seconds=1)
        record["metadata"]["started"] = started.isoformat(timespec="seconds")
        path = named(started)
    return path


class _Diverged(Exception):
    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class _SecondOrder(Protocol):
    """What the training loop uses of an optimizer that estimates curvature (one with ``create_graph``)."""

    create_graph: bool
    """Whether the next backward pass must build the graph of the gradient (for Hessian-vector products)."""

    def start_estimate(self) -> None:
        """Begin a fresh curvature estimate now."""

    def maybe_start_estimate(self) -> object:
        """Begin a fresh estimate if the optimizer's own policy says so."""

    def get_log(self) -> Any:
        """The optimizer's log (recorded per epoch)."""


class _Training:
    """The training loop of one run: N+1 evaluations, the steps, the restarts, checkpoints and the run's status.

    ``model`` is the model itself (evaluated, checkpointed, regularised); ``train_model`` is what the training
    steps call: the model, or its ``DistributedDataParallel`` wrapper in a data-parallel run.
    """

    def __init__(self, config: RunConfig, prepared: _Prepared, record: dict[str, Any],
                 loader_generator: torch.Generator, checkpoint: Path, parallel: ProcessLayout):
        settings = prepared.settings
        self.config, self.settings, self.record, self.checkpoint = config, settings, record, checkpoint
        self.model, self.optimizer, self.device, self.splits = (prepared.model, prepared.optimizer, prepared.device,
                                                                 prepared.splits)
        self.parallel = parallel
        self.train_model = parallel.wrap(self.model)
        self.loader_generator = loader_generator
        self.loader = parallel.loader(prepared.splits.train, settings.batch_size, loader_generator)
        self.evaluate = _Evaluator(settings.problem, prepared.device, batch_size=max(settings.batch_size, 1000))
        self.second_order = cast(_SecondOrder, self.optimizer) if hasattr(self.optimizer, "create_graph") else None
        self.step: int = record["steps"]
        self.epoch = 0

    def train(self, start_epoch: int) -> str | None:
        """Train from ``start_epoch`` and set the record's status; why the last checkpoint was not written, if so."""
        record, problem = self.record, self.settings.problem
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        progress = _progress(self.config.progress and self.parallel.writes, self.settings.epochs * len(self.loader),
                             start_epoch * len(self.loader), f"{problem.name} {self.settings.spec.name} seed "
                                                             f"{self.config.seed}")
        self.epoch = start_epoch
        not_written = None
        try:
            with interruptible():
                self._epochs(start_epoch, progress)
            self._finish()
            record["diagnostics"] = problem.diagnostics(self.model, self.optimizer)
        except _Diverged as diverged:
            record.update(status="diverged", status_reason=str(diverged), stopped_at_step=diverged.step,
                          stopped_at_epoch=self.epoch)
        except CheckpointNotWrittenError as error:
            not_written = str(error)
            record.update(status="interrupted", stopped_at_step=self.step, stopped_at_epoch=self.epoch + 1,
                          status_reason=f"{error}; resumes from epoch {self.epoch}")
        except KeyboardInterrupt as interrupt:
            signal_name = str(interrupt) or "SIGINT"
            record.update(status="interrupted", stopped_at_step=self.step, stopped_at_epoch=self.epoch,
                          status_reason=f"{signal_name} during epoch {self.epoch}; resumes from epoch "
                                        f"{record['epochs_completed']}")
        except Exception as error:  # every other failure is recorded with the run
            record.update(status="failed", status_reason=f"{type(error).__name__}: {error}",
                          stopped_at_step=self.step, stopped_at_epoch=self.epoch)
        finally:
            progress.close()
        return not_written

    def _epochs(self, start_epoch: int, progress: _Progress) -> None:
        """Every epoch from ``start_epoch``, each followed by its evaluation and (but the last) a checkpoint."""
        record, restart, epochs = self.record, self.settings.restart, self.settings.epochs
        if start_epoch == 0:
            self._evaluation()
        for epoch in range(start_epoch, epochs):
            self.epoch = epoch
            scheduled = isinstance(restart, int) and epoch > 0 and epoch % restart == 0
            if self.second_order and scheduled and not self._restarts_itself():
                self.second_order.start_estimate()
            self._train_epoch(progress)
            if self.second_order:
                record["optimizer_logs"].append(self.second_order.get_log())
            self._evaluation()
            record["epochs_completed"] = epoch + 1
            record["steps"] = self.step
            progress.set_postfix_str(_postfix(record, self.settings.problem.metric == "accuracy"))
            if not math.isfinite(record["train_losses"][-1]):
                raise _Diverged(f"non-finite evaluation loss after epoch {epoch}", self.step)
            if epoch + 1 < epochs and self.parallel.writes:
                save_checkpoint(self.checkpoint, self.model, self.optimizer, record, epoch + 1, self.loader_generator)
                pause_if_asked(epoch + 1, self.checkpoint)

    def _restarts_itself(self) -> bool:
        """Whether the default restart policy leaves the restarts to the optimizer (its adaptive restarts)."""
        config = getattr(self.second_order, "config", None)
        return self.config.restart == "default" and bool(getattr(config, "adaptive_restarts", False))

    def _finish(self) -> None:
        """The status of a run that trained its whole budget: ``completed``, or ``collapsed`` with the evidence."""
        record = self.record
        accuracies = record["train_accuracies"] if self.settings.problem.metric == "accuracy" else None
        collapse = ended_collapsed(record["train_losses"], accuracies)
        record.update(status="completed", stopped_at_step=self.step, stopped_at_epoch=self.settings.epochs)
        if collapse is not None:
            record.update(status="collapsed", collapsed_at_epoch=collapse.epoch,
                          status_reason=f"learned nothing from epoch {collapse.epoch}: {collapse.evidence}")

    def _train_epoch(self, progress: _Progress) -> None:
        """One pass over the training set; its wall-clock and CPU time go to the record."""
        second_order, record = self.second_order, self.record
        on_demand = second_order if self.settings.restart == "optimizer" else None
        wall0, cpu0 = time.perf_counter(), time.process_time()
        training_mode(self.optimizer)
        for x, y in self.loader:
            x, y = x.to(self.device), y.to(self.device)
            if on_demand:
                on_demand.maybe_start_estimate()
            value = self._step(x, y)
            self.step += 1
            if self.step % self.config.train_log_interval == 0:
                record["minibatch_train_losses"].append(value)
            progress.update(1)
        record["epoch_wall_times"].append(time.perf_counter() - wall0)
        record["epoch_cpu_times"].append(time.process_time() - cpu0)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One training step on the batch ``(x, y)``; its training loss (over every process's batch).

        The gradient's graph is built when the optimizer asks (:func:`needs_graph`); a data-parallel model then
        runs forward and backward outside DDP's all-reduce (:meth:`ProcessLayout.step`). A non-finite loss stops the
        run before the backward pass, on every process alike.
        """
        problem, optimizer = self.settings.problem, self.optimizer
        optimizer.zero_grad(set_to_none=True)
        graph = needs_graph(optimizer)
        with self.parallel.step(self.train_model, graph):
            loss = problem.loss(self.train_model(x), y) + problem.penalty(self.model)
            value = self.parallel.mean_loss(loss)
            if not math.isfinite(value):
                raise _Diverged(f"training loss {value} at step {self.step} (epoch {self.epoch})", self.step)
            loss.backward(create_graph=graph)
        optimizer.step()
        return value

    def _evaluation(self) -> None:
        """Loss and accuracy on train_eval, valid and test, appended to the record with the time they took.

        In a data-parallel run rank 0 evaluates and every process records its numbers.
        """
        t0 = time.perf_counter()
        splits = self.splits
        evaluation_mode(self.optimizer)
        names = ((splits.train_eval, "train"), (splits.valid, "valid"), (splits.test, "test"))
        numbers = self.parallel.evaluate(lambda: [self.evaluate(self.model, split) for split, _ in names])
        for (loss, accuracy), (_, name) in zip(numbers, names, strict=True):
            self.record[f"{name}_losses"].append(loss)
            self.record[f"{name}_accuracies"].append(accuracy)
        self.record["eval_wall_times"].append(time.perf_counter() - t0)


def _finished_record(record: dict[str, Any], has_accuracy: bool) -> dict[str, Any]:
    """The record as written: end time and totals added, accuracies left out where the problem has none."""
    record["metadata"]["finished"] = datetime.now().isoformat(timespec="seconds")
    record["total_wall_time"] = sum(record["epoch_wall_times"]) + sum(record["eval_wall_times"])
    record["total_cpu_time"] = sum(record["epoch_cpu_times"])
    finished = dict(record)
    if not has_accuracy:
        for name in ("train", "valid", "test"):
            finished.pop(f"{name}_accuracies")
    return finished


def _write_record(path: Path, record: dict[str, Any], checkpoint: Path, not_written: str | None) -> None:
    """Write the result file, then drop the checkpoint unless the run is to resume.

    Raises:
        UserError: the result file or a checkpoint could not be written (what is kept lets the run resume).
    """
    try:
        write_json_atomic(path, record)
    except OSError as error:
        raise UserError(f"{describe_os_error(error, path, 'write')}; the same command resumes the run from its "
                        "last checkpoint") from None
    if record["status"] != "interrupted":
        checkpoint.unlink(missing_ok=True)
    if not_written is not None:
        raise UserError(f"{not_written}; the run is recorded as interrupted in {path} and the same command "
                        "resumes it")


def _postfix(record: dict[str, Any], has_accuracy: bool) -> str:
    """The progress bar's postfix: the last validation loss (and accuracy)."""
    text = f"valid loss {record['valid_losses'][-1]:.4g}"
    if has_accuracy:
        text += f", valid acc {record['valid_accuracies'][-1]:.3f}"
    return text


class _Progress(Protocol):
    """What the training loop uses of a progress bar (tqdm's methods)."""

    def update(self, n: int = 1, /) -> object:
        """``n`` more steps are done."""

    def set_postfix_str(self, text: str, /) -> object:
        """Show ``text`` after the bar."""

    def close(self) -> object:
        """Remove the bar."""


class _NoProgress:
    """No progress bar."""

    def update(self, n: int = 1, /) -> None:
        pass

    def set_postfix_str(self, text: str, /) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int, done: int, description: str) -> _Progress:
    """A tqdm bar of ``total`` steps with ``done`` done, or no bar (disabled, or no tqdm)."""
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is part of the bench extra
        return _NoProgress()
    # disable=None: no bar when the output is not a terminal (logs, CI)
    return tqdm(total=total, initial=done, desc=description, unit="step", leave=False, dynamic_ncols=True,
                disable=None)
