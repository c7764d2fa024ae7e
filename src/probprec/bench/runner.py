"""One training run: the DeepOBS protocol with run status, timing, metadata, checkpoints and resume.

:func:`run` takes a :class:`RunConfig` and returns a :class:`RunResult`. The loop:

* N+1 evaluations (before training and after each epoch) on train_eval, valid
  and test, in eval mode, over every example; losses include the problem's L2 term;
* the second-order training loop of :mod:`probprec`: ``backward(create_graph=...)``
  only when the optimizer asks, and a fresh estimate (``start_estimate()``) at the
  start of every ``restart_every``-th epoch, or the optimizer's own policy
  (``maybe_start_estimate()`` before every step) with ``restart="optimizer"``;
* a non-finite training loss stops the run at that step with status ``diverged``;
  an interrupt (SIGINT, SIGTERM) records status ``interrupted`` and keeps the
  checkpoint of the last finished epoch, from which the same command resumes
  to the same result as an uninterrupted run; any other error is recorded as
  ``failed`` with its message;
* wall-clock and process CPU time per epoch, the optimizer's ``get_log()`` per
  epoch, minibatch losses every ``train_log_interval`` steps, and the environment.
"""

from __future__ import annotations

import math
import random
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .atomic import atomic_writer
from .data import DataMissingError
from .devices import resolve_device
from .environment import environment
from .errors import ConfigError, UserError, describe_os_error
from .locks import holding, run_lock_path
from .optimizers import get_optimizer
from .pause import pause_if_asked
from .problems import get_problem
from .results import (
    SCHEMA_VERSION,
    ensure_writable_folder,
    existing_results,
    result_path,
    settings_folder,
    write_json_atomic,
)

__all__ = ["ConfigError", "RunConfig", "RunResult", "finished_result", "is_finished", "run", "run_folder"]

RESTART_POLICIES = ("default", "epoch", "optimizer", "never")


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
    """None: the problem's default."""
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


@dataclass
class RunResult:
    """What :func:`run` did."""

    status: str
    """``completed``, ``diverged``, ``interrupted``, ``failed``, or ``skipped`` (a finished result existed)."""
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
def _interruptible() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while a run is in progress (main thread only)."""

    def handler(signum, frame):
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


def _rng_state(loader_generator: torch.Generator) -> dict[str, Any]:
    # the global generators, which user code and DeepOBS-style problems use, are seeded and saved on purpose
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),  # noqa: NPY002
            "python": random.getstate(),
            "loader": loader_generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    loader_generator.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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

    def __init__(self, problem, device: torch.device, batch_size: int):
        self.problem, self.device, self.batch_size = problem, device, batch_size

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, dataset) -> tuple[float, float | None]:
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


def _settings(config: RunConfig):
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
    _check_positive_int("train_log_interval", config.train_log_interval)
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {config.seed!r}")
    restart = _restart_every(config, problem.restart_every)
    hyperparams = spec.hyperparameters(problem.name, config.hyperparams)
    training_params = {} if config.restart == "default" else {"restart": restart}
    folder = Path(config.output_dir) / problem.name / spec.name / settings_folder(
        epochs, batch_size, config.l2, _plain(hyperparams), training_params)
    return problem, spec, hyperparams, epochs, batch_size, restart, folder


def run_folder(config: RunConfig) -> Path:
    """The settings folder that the result of ``config`` goes to (nothing is loaded or written).

    Raises:
        ConfigError: on a bad problem, optimizer, epochs, batch size, seed or restart policy.
    """
    return _settings(config)[-1]


def _checkpoint_path(folder: Path, seed: int) -> Path:
    return folder / f".checkpoint__random_seed__{seed}.pt"


def _finished(folder: Path, seed: int) -> tuple[Path, dict[str, Any]] | None:
    """The first completed or diverged result of ``seed`` in ``folder``, unless a checkpoint is left."""
    if _checkpoint_path(folder, seed).exists():
        return None
    for path, record in existing_results(folder, seed):
        if record.get("status") in ("completed", "diverged"):
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


def is_finished(config: RunConfig) -> bool:
    """Whether :func:`run` would skip ``config``: a completed or diverged result exists and no checkpoint remains."""
    return finished_result(config) is not None


def _prepare(config: RunConfig):
    """Validate the configuration and build everything; raises ConfigError on bad input."""
    problem, spec, hyperparams, epochs, batch_size, restart, folder = _settings(config)
    device = resolve_device(config.device)
    try:
        splits = problem.splits(config.data_dir, download=config.download)
    except DataMissingError as error:
        raise ConfigError(str(error)) from None
    if len(splits.train) < batch_size:
        raise ConfigError(f"batch size {batch_size} is larger than the training set ({len(splits.train)} examples)")
    _seed_everything(config.seed)
    model = problem.model().to(device)
    try:
        optimizer = spec.build(problem.param_groups(model), hyperparams)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"invalid hyperparameters for {spec.name}: {error}") from None
    ensure_writable_folder(config.output_dir)
    return problem, spec, hyperparams, epochs, batch_size, restart, device, splits, model, optimizer, folder


def run(config: RunConfig) -> RunResult:
    """Run (or resume, or skip) one configuration; see the module docstring.

    One process at a time runs a configuration, whoever started it (:mod:`probprec.bench.locks`).

    Raises:
        ConfigError: on bad input, before anything is written.
        LockHeldError: another process is running this configuration (nothing was changed).
    """
    prepared = _prepare(config)
    problem, spec, folder = prepared[0], prepared[1], prepared[-1]
    with holding(run_lock_path(folder, config.seed),
                 f"{problem.name} {spec.name} seed {config.seed} is already running in {{holder}} (settings folder "
                 f"{folder}); wait for it to finish, then the same command skips or resumes it"):
        return _run_prepared(config, prepared)


def _run_prepared(config: RunConfig, prepared: tuple) -> RunResult:
    """The body of :func:`run`, under the run's lock."""
    (problem, spec, hyperparams, epochs, batch_size, restart, device, splits, model, optimizer,
     folder) = prepared
    checkpoint_path = _checkpoint_path(folder, config.seed)
    done = None if config.force else _finished(folder, config.seed)
    if done is not None:
        return RunResult("skipped", *done)

    loader_generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=loader_generator)
    evaluate = _Evaluator(problem, device, batch_size=max(batch_size, 1000))
    has_accuracy = problem.metric == "accuracy"

    started = datetime.now()
    record: dict[str, Any] = {
        "testproblem": problem.name, "batch_size": batch_size, "num_epochs": epochs, "random_seed": config.seed,
        "weight_decay": problem.l2, "optimizer_name": spec.name, "optimizer_hyperparams": _plain(hyperparams),
        "training_params": {"restart": restart, "train_log_interval": config.train_log_interval},
        "train_losses": [], "valid_losses": [], "test_losses": [], "minibatch_train_losses": [],
        "train_accuracies": [], "valid_accuracies": [], "test_accuracies": [],
        "status": "running", "status_reason": None, "stopped_at_step": None, "stopped_at_epoch": None,
        "epochs_completed": 0, "steps": 0, "epoch_wall_times": [], "epoch_cpu_times": [], "eval_wall_times": [],
        "optimizer_logs": [],
        "problem": {"name": problem.name, "metric": problem.metric, "l2": problem.l2, "dataset": problem.dataset,
                    "parameters": problem.count_parameters(model), "train_size": len(splits.train),
                    "valid_size": len(splits.valid), "test_size": len(splits.test)},
        "metadata": {"schema_version": SCHEMA_VERSION, "started": started.isoformat(timespec="seconds"),
                     "device": str(device), "environment": environment(), "resumed_at_epochs": []},
    }
    start_epoch = 0
    if checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        record = checkpoint["record"]
        start_epoch = checkpoint["epoch"]
        started = datetime.fromisoformat(record["metadata"]["started"])
        record["metadata"]["resumed_at_epochs"].append(start_epoch)
        _set_rng_state(checkpoint["rng"], loader_generator)
    path = result_path(config.output_dir, problem.name, spec.name, folder.name, config.seed, started)
    if start_epoch == 0:
        stale = [(p, r) for p, r in existing_results(folder, config.seed) if r.get("status") == "interrupted"]
        if stale:  # interrupted before its first checkpoint: this run replaces that record
            path = stale[-1][0]
            record["metadata"]["started"] = stale[-1][1]["metadata"]["started"]
        stale_paths = [p for p, _ in stale]
        while path.exists() and path not in stale_paths:  # never overwrite a result: a later time names it
            started += timedelta(seconds=1)
            record["metadata"]["started"] = started.isoformat(timespec="seconds")
            path = result_path(config.output_dir, problem.name, spec.name, folder.name, config.seed, started)

    def evaluation() -> None:
        t0 = time.perf_counter()
        for split, name in ((splits.train_eval, "train"), (splits.valid, "valid"), (splits.test, "test")):
            loss, accuracy = evaluate(model, split)
            record[f"{name}_losses"].append(loss)
            record[f"{name}_accuracies"].append(accuracy)
        record["eval_wall_times"].append(time.perf_counter() - t0)

    second_order = hasattr(optimizer, "create_graph")
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    progress = _progress(config.progress, epochs * len(loader), start_epoch * len(loader),
                         f"{problem.name} {spec.name} seed {config.seed}")
    step = record["steps"]
    epoch = start_epoch
    not_written = None
    try:
        with _interruptible():
            if start_epoch == 0:
                evaluation()
            for epoch in range(start_epoch, epochs):
                if second_order and epoch > 0 and isinstance(restart, int) and epoch % restart == 0:
                    optimizer.start_estimate()
                wall0, cpu0 = time.perf_counter(), time.process_time()
                for x, y in loader:
                    x, y = x.to(device), y.to(device)
                    if second_order and restart == "optimizer":
                        optimizer.maybe_start_estimate()
                    optimizer.zero_grad(set_to_none=True)
                    loss = problem.loss(model(x), y) + problem.penalty(model)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise _Diverged(f"training loss {value} at step {step} (epoch {epoch})", step)
                    loss.backward(create_graph=second_order and optimizer.create_graph)
                    optimizer.step()
                    step += 1
                    if step % config.train_log_interval == 0:
                        record["minibatch_train_losses"].append(value)
                    progress.update(1)
                record["epoch_wall_times"].append(time.perf_counter() - wall0)
                record["epoch_cpu_times"].append(time.process_time() - cpu0)
                if second_order:
                    record["optimizer_logs"].append(optimizer.get_log())
                evaluation()
                record["epochs_completed"] = epoch + 1
                record["steps"] = step
                progress.set_postfix_str(_postfix(record, has_accuracy))
                if not math.isfinite(record["train_losses"][-1]):
                    raise _Diverged(f"non-finite evaluation loss after epoch {epoch}", step)
                if epoch + 1 < epochs:
                    _save_checkpoint(checkpoint_path, model, optimizer, record, epoch + 1, loader_generator)
                    pause_if_asked(epoch + 1, checkpoint_path)
        record.update(status="completed", stopped_at_step=step, stopped_at_epoch=epochs)
        record["diagnostics"] = problem.diagnostics(model, optimizer)
    except _Diverged as diverged:
        record.update(status="diverged", status_reason=str(diverged), stopped_at_step=diverged.step,
                      stopped_at_epoch=epoch)
    except _CheckpointNotWritten as error:
        not_written = str(error)
        record.update(status="interrupted", stopped_at_step=step, stopped_at_epoch=epoch + 1,
                      status_reason=f"{error}; resumes from epoch {epoch}")
    except KeyboardInterrupt as interrupt:
        signal_name = str(interrupt) or "SIGINT"
        record.update(status="interrupted", stopped_at_step=step, stopped_at_epoch=epoch,
                      status_reason=f"{signal_name} during epoch {epoch}; resumes from epoch "
                                    f"{record['epochs_completed']}")
    except Exception as error:  # every other failure is recorded with the run
        record.update(status="failed", status_reason=f"{type(error).__name__}: {error}", stopped_at_step=step,
                      stopped_at_epoch=epoch)
    finally:
        progress.close()
    record["metadata"]["finished"] = datetime.now().isoformat(timespec="seconds")
    record["total_wall_time"] = sum(record["epoch_wall_times"]) + sum(record["eval_wall_times"])
    record["total_cpu_time"] = sum(record["epoch_cpu_times"])
    finished = {k: v for k, v in record.items()}
    if not has_accuracy:
        for name in ("train", "valid", "test"):
            finished.pop(f"{name}_accuracies")
    _write_record(path, finished, checkpoint_path, not_written)
    return RunResult(record["status"], path, finished)


class _Diverged(Exception):
    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class _CheckpointNotWritten(Exception):
    """The checkpoint could not be written (a full disk, ...); the previous one is intact."""


def _save_checkpoint(path: Path, model, optimizer, record, epoch: int, loader_generator) -> None:
    """Write the checkpoint atomically (a temporary name of its own, the umask's permissions, nothing partial)."""
    try:
        with atomic_writer(path, "wb") as handle:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "record": record,
                        "epoch": epoch, "rng": _rng_state(loader_generator)}, handle)
    except OSError as error:
        raise _CheckpointNotWritten(describe_os_error(error, path, "write")) from None


def _write_record(path: Path, record: dict[str, Any], checkpoint_path: Path, not_written: str | None) -> None:
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
        checkpoint_path.unlink(missing_ok=True)
    if not_written is not None:
        raise UserError(f"{not_written}; the run is recorded as interrupted in {path} and the same command "
                        "resumes it")


def _postfix(record: dict[str, Any], has_accuracy: bool) -> str:
    text = f"valid loss {record['valid_losses'][-1]:.4g}"
    if has_accuracy:
        text += f", valid acc {record['valid_accuracies'][-1]:.3f}"
    return text


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int, done: int, description: str):
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is part of the bench extra
        return _NoProgress()
    # disable=None: no bar when the output is not a terminal (logs, CI)
    return tqdm(total=total, initial=done, desc=description, unit="step", leave=False, dynamic_ncols=True,
                disable=None)


def config_dict(config: RunConfig) -> dict[str, Any]:
    """The configuration as plain values."""
    return asdict(config)
