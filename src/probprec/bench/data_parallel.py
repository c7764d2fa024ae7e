"""Data-parallel runs: one run trained by N processes with ``torch.distributed``, equal to one process with N x b.

``probprec run PROBLEM --nproc-per-node N --batch-size b`` trains one run with N local
processes (:func:`run_data_parallel`: ``torch.multiprocessing`` spawn; the gloo backend on the
CPU, nccl on CUDA with one GPU per process; the processes meet through a file store in a
temporary folder of their own, no ports). A ``probprec run`` that ``torchrun`` started (the
environment has ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, ``WORLD_SIZE > 1``) joins
torchrun's group instead (``env://``), and so does a Slurm task of a sweep with
``--tasks-per-node`` (:mod:`probprec.bench.slurm_executor`, which exports the same variables).
Each process sets its torch threads by the thread policy (:mod:`probprec.bench.threads`) with
processes = the processes on this machine.

What a data-parallel run is (:class:`DataParallel`, used by :func:`probprec.bench.runner.run`):

* ``--batch-size`` b is the batch of one process; the global batch is N x b, and the record's
  ``batch_size`` is N x b. Every rank draws the same epoch permutation as a single-process run
  draws (a ``RandomSampler`` with the run's seeded loader generator, so checkpoints keep and
  restore the order as before), cuts it into global batches of N x b (the incomplete last one
  dropped) and takes its slice ``[r*b, (r+1)*b)`` of each (:class:`RankBatchSampler`). With
  losses that are means over the batch, the averaged gradient is the gradient of the global
  batch: the run equals the single-process run with batch size N x b up to the order of
  floating-point sums.
* The model is wrapped in ``DistributedDataParallel`` for the training steps. On the steps
  where the optimizer needs the gradient's graph (:func:`probprec.bench.optimizer_protocol.needs_graph`)
  the forward and backward pass run inside ``model.no_sync()``: the optimizer averages the
  gradients and Hessian-vector products across the ranks itself (:mod:`probprec.distributed`),
  while DDP would all-reduce into detached buckets and lose the graph. Optimizers that need the
  graph and do not average (the Hutchinson peers AdaHessian and Sophia-H, or a Preconditioner
  of a probprec without data-parallel support) are refused (:func:`refusal`).
* The training loss of each step (divergence detection, ``minibatch_train_losses``) is the mean
  over the ranks (one scalar all-reduce per step): the loss of the global batch, the same
  decision on every rank.
* Rank 0 evaluates the unwrapped model and sends the numbers to the others, so every rank's
  record, and every decision taken from it (divergence, collapse), is the same. Rank 0 alone
  takes the run's lock and writes result files and checkpoints; the others write nothing, and on
  resume every rank loads rank 0's checkpoint.
* Random numbers: every rank is seeded with the run's seed and draws the same numbers, so
  rank 0's checkpoint restores every rank's generators (rank 0's evaluation draws nothing from
  them: it runs in ``torch.random.fork_rng``). Hence dropout masks differ from the
  single-process run's, and each rank applies the same masks to its own examples.
* BatchNorm computes its batch statistics per rank (over b examples, not N x b) and its running
  statistics come from rank 0 (DDP broadcasts rank 0's buffers before every forward pass), so a
  model with BatchNorm does not equal the single-process run; ``torch.nn.SyncBatchNorm`` would.
* The record's ``training_params`` has ``"processes": N`` (only for N > 1, so single-process
  settings folders and results are unchanged), and the settings folder names it.

Failures: a rank whose run fails or is interrupted leaves a note in the group's store (the first
note wins); the others then fail on their next collective, which gloo and nccl raise when a peer
process has gone, and rank 0 records the first note (``process r of N: reason``) instead of its
own lost connection. The launcher joins every process, reports the first process that died with
an error as one line (:class:`~probprec.bench.errors.UserError`), and otherwise returns rank 0's
result. A process that stays alive but stops taking part is given up after :data:`GROUP_TIMEOUT`.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

import probprec

from .devices import resolve_device
from .errors import ConfigError, UserError
from .peers import hutchinson_period
from .threads import threads_per_process, using_threads

if TYPE_CHECKING:
    from .runner import RunConfig, RunResult

__all__ = ["GROUP_TIMEOUT", "DataParallel", "GroupEnvironment", "ProcessLayout", "RankBatchSampler",
           "SingleProcess", "group_environment", "joined_group", "layout", "refusal", "run_data_parallel"]

T = TypeVar("T")

GROUP_TIMEOUT = timedelta(minutes=30)
"""How long a collective waits for a process that is alive but does not take part (torch's default for gloo)."""
_JOIN_GRACE_S = 30.0
"""After a process died with an error, how long the launcher lets the others record it before it stops them."""
_FAILURE_KEY = "probprec/first_failure"
"""The store key of the first failure note (``status``, rank and reason on three lines)."""
_OUTCOME_NAME = "outcome.pkl"
"""The file in the launcher's temporary folder where rank 0 leaves its result (or its one-line error)."""


class RankBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s slice of every global batch: ``[rank*b, (rank+1)*b)`` of each ``processes*b`` indices.

    The global batches are exactly the single-process batches of size ``processes * b``:
    ``BatchSampler(sampler, processes * b, drop_last=True)`` over the same index sampler, which
    is a ``RandomSampler`` with the run's seeded loader generator. ``DistributedSampler`` would not
    do: it shuffles with a generator of its own (seeded by its seed and epoch) and deals
    indices round-robin, so its batches are not the single-process batches, and the loader
    generator that a checkpoint restores would not steer it.

    Args:
        sampler: the index sampler (the same on every rank, drawing the same permutation).
        batch_size: b, the batch of one process.
        processes: the processes of the run.
        rank: this process's rank.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, processes: int, rank: int):
        if not 0 <= rank < processes:
            raise ValueError(f"rank must be in [0, {processes}), got {rank}")
        self.sampler, self.batch_size, self.processes, self.rank = sampler, batch_size, processes, rank
        self.global_batches = BatchSampler(sampler, batch_size * processes, drop_last=True)

    def __iter__(self) -> Iterator[list[int]]:
        start = self.rank * self.batch_size
        for batch in self.global_batches:
            yield batch[start:start + self.batch_size]

    def __len__(self) -> int:
        return len(self.global_batches)


def refusal(optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``optimizer`` cannot train data-parallel, or None when it can.

    It cannot when it needs the gradient's graph on some steps (a backward pass with
    ``create_graph=True``, run outside DDP's all-reduce) and does not average gradients and
    Hessian-vector products across the ranks itself, as a :class:`~probprec.Preconditioner` does
    (:mod:`probprec.distributed`): the Hutchinson peers, and any other optimizer that asks for the graph.
    """
    name = type(optimizer).__name__
    if hutchinson_period(optimizer) is not None:
        return (f"{name} needs the gradient's graph for its Hessian estimates and does not average them across "
                "processes, so it cannot train data-parallel")
    if getattr(optimizer, "create_graph", None) is None or isinstance(optimizer, probprec.Preconditioner):
        return None
    return (f"{name} takes Hessian-vector products and does not average them across processes, so it cannot "
            "train data-parallel")


class ProcessLayout(Protocol):
    """What the runner asks of the processes that train one run: one process, or a data-parallel group."""

    processes: int

    @property
    def writes(self) -> bool:
        """Whether this process takes the run's lock and writes its files (rank 0, or the only process)."""

    def device(self, name: str) -> torch.device:
        """This process's device for ``--device name`` (ConfigError if it has none)."""

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise ConfigError if the optimizer cannot train in this layout."""

    def agree(self, compute: Callable[[], T], rank0_first: bool = False) -> T:
        """Every process computes; a UserError in any process is raised in every process."""

    def hold(self, context: Callable[[], AbstractContextManager[Any]]) -> AbstractContextManager[None]:
        """Rank 0 holds ``context()`` (the run's lock) for the body; its refusal is raised in every process."""

    def share(self, compute: Callable[[], T]) -> T:
        """Rank 0 computes, every process gets the value."""

    def evaluate(self, compute: Callable[[], T]) -> T:
        """Rank 0 computes without drawing random numbers, every process gets the value."""

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model that the training steps call."""

    def loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator) -> DataLoader:
        """This process's training batches."""

    def step(self, model: torch.nn.Module, graph: bool) -> AbstractContextManager[Any]:
        """The context of one step's forward and backward pass."""

    def mean_loss(self, loss: torch.Tensor) -> float:
        """The step's training loss: the mean over the processes."""

    def settle(self, record: dict[str, Any]) -> None:
        """After training: a failure's reason as the first process that failed gave it (rank 0's record)."""


class SingleProcess:
    """One process: what the runner always did (every method is the plain operation)."""

    processes = 1
    writes = True

    def device(self, name: str) -> torch.device:
        """``--device`` as :func:`~probprec.bench.devices.resolve_device` resolves it."""
        return resolve_device(name)

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Every optimizer trains in one process."""

    def agree(self, compute: Callable[[], T], rank0_first: bool = False) -> T:
        """``compute()``."""
        return compute()

    @contextmanager
    def hold(self, context: Callable[[], AbstractContextManager[Any]]) -> Iterator[None]:
        """``with context():``."""
        with context():
            yield

    def share(self, compute: Callable[[], T]) -> T:
        """``compute()``."""
        return compute()

    def evaluate(self, compute: Callable[[], T]) -> T:
        """``compute()``."""
        return compute()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model itself."""
        return model

    def loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator) -> DataLoader:
        """Shuffled batches of ``batch_size`` drawn with ``generator``, the incomplete last one dropped."""
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)

    def step(self, model: torch.nn.Module, graph: bool) -> AbstractContextManager[Any]:
        """Nothing to do."""
        return nullcontext()

    def mean_loss(self, loss: torch.Tensor) -> float:
        """The loss as a number."""
        return float(loss.detach())

    def settle(self, record: dict[str, Any]) -> None:
        """The record's reason is this process's own."""


@dataclass
class _Joined:
    """The group that :func:`joined_group` set up: its store (for failure notes) and this process's local rank."""

    store: dist.Store
    local_rank: int
    attempt: int


_JOINED: _Joined | None = None
"""The group this process joined through :func:`joined_group`, while it is joined."""


class _PeerFailed(UserError):
    """Another process of the run failed where this one waited for it (the message names the process)."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class DataParallel:
    """One process of a data-parallel group (see the module docstring): rank ``rank`` of ``processes``."""

    rank: int
    processes: int
    local_rank: int
    store: dist.Store | None = None
    """The group's store, for failure notes; None for a group that someone else set up."""
    attempt: int = 0
    """torchrun's restart count (the notes of an earlier attempt are not this attempt's)."""

    @property
    def writes(self) -> bool:
        """Rank 0 writes."""
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device of this rank: the CPU, or the GPU of its local rank (:func:`_check_device`)."""
        device = _check_device(name, self.processes)
        if device.type != "cuda":
            return device
        visible = torch.cuda.device_count()
        index = 0 if visible == 1 else self.local_rank  # one visible GPU: the launcher narrowed it to ours
        if index >= visible:
            raise ConfigError(f"process {self.rank} (local rank {self.local_rank}) has no GPU of its own: this "
                              f"machine shows {visible} CUDA devices")
        return torch.device("cuda", index)

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise ConfigError naming why the optimizer cannot train data-parallel (:func:`refusal`)."""
        reason = refusal(optimizer)
        if reason:
            raise ConfigError(reason)

    def agree(self, compute: Callable[[], T], rank0_first: bool = False) -> T:
        """Every rank computes (rank 0 first, if asked: a download); the first rank's UserError is raised on all."""
        value: T | None = None
        error: UserError | None = None
        if rank0_first:
            if self.rank == 0:
                value, error = _attempt(compute)
            _raise_first(self._gather(error if self.rank == 0 else None), error)
        if not rank0_first or self.rank != 0:
            value, error = _attempt(compute)
        _raise_first(self._gather(error), error)
        return value  # type: ignore[return-value]  # no error anywhere: computed

    def _gather(self, error: UserError | None) -> list[str | None]:
        messages: list[str | None] = [None] * self.processes
        dist.all_gather_object(messages, None if error is None else str(error))
        return messages

    @contextmanager
    def hold(self, context: Callable[[], AbstractContextManager[Any]]) -> Iterator[None]:
        """Rank 0 enters ``context()``; its UserError (the lock is held elsewhere) is raised on every rank."""
        with ExitStack() as stack:
            if self.rank == 0:
                try:
                    stack.enter_context(context())
                except UserError as error:
                    self._send(_Failure.of(error))
                    raise
                self._send(None)
            else:
                self._receive()
            yield

    def share(self, compute: Callable[[], T]) -> T:
        """Rank 0 computes; every rank gets the value, or raises if rank 0's computation failed."""
        if self.rank != 0:
            return self._receive()  # what rank 0 computed
        try:
            value = compute()
        except Exception as error:
            self._send(_Failure.of(error))
            raise
        self._send(value)
        return value

    def evaluate(self, compute: Callable[[], T]) -> T:
        """:meth:`share`, with rank 0's global random generators left as they were (every rank keeps them equal)."""
        return self.share(lambda: _without_drawing(compute))

    def _send(self, value: Any) -> None:
        dist.broadcast_object_list([value], src=0)

    def _receive(self) -> Any:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        if isinstance(box[0], _Failure):
            raise _PeerFailed(f"process 0 of {self.processes}: {box[0].message}")
        return box[0]

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``DistributedDataParallel(model)`` (on the GPU of this rank for a CUDA model)."""
        from torch.nn.parallel import DistributedDataParallel

        parameter = next(model.parameters(), None)
        if parameter is not None and parameter.device.type == "cuda":
            return DistributedDataParallel(model, device_ids=[parameter.device.index])
        return DistributedDataParallel(model)

    def loader(self, dataset: Dataset, batch_size: int, generator: torch.Generator) -> DataLoader:
        """This rank's slices of the single-process batches of ``processes * batch_size`` (:class:`RankBatchSampler`).

        The loader draws from ``generator`` exactly as the single-process loader does (its base seed, then the
        permutation), so the generator that checkpoints save goes on as before.
        """
        indices = RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]  # our data sets are sized
        sampler = RankBatchSampler(indices, batch_size, self.processes, self.rank)
        return DataLoader(dataset, batch_sampler=sampler, generator=generator)

    def step(self, model: torch.nn.Module, graph: bool) -> AbstractContextManager[Any]:
        """``model.no_sync()`` on a step that needs the graph (the optimizer averages), else nothing (DDP does)."""
        no_sync = getattr(model, "no_sync", None)
        return no_sync() if graph and no_sync is not None else nullcontext()

    def mean_loss(self, loss: torch.Tensor) -> float:
        """The mean of the ranks' losses: the loss of the global batch (one scalar all-reduce)."""
        total = loss.detach().clone()
        dist.all_reduce(total)
        return float(total) / self.processes

    def settle(self, record: dict[str, Any]) -> None:
        """Leave a failure note; rank 0's record takes the first note's status and reason when another rank wrote it.

        Rank 0 replaces its own ``failed`` (mostly the lost connection to a process that stopped) by the first note
        of another rank; an interruption of its own it keeps.
        """
        status = record.get("status")
        if self.store is None or status not in ("failed", "interrupted"):
            return
        note = f"{status}\n{self.rank}\n{record.get('status_reason')}"
        try:
            first = self.store.compare_set(f"{_FAILURE_KEY}/{self.attempt}", "", note).decode()
        except RuntimeError:  # the store went with its host (rank 0 under torchrun): nothing to compare
            return
        first_status, first_rank, reason = first.split("\n", 2)
        if self.rank == 0 and status == "failed" and int(first_rank) != 0:
            record.update(status=first_status, status_reason=f"process {first_rank} of {self.processes}: {reason}")


@dataclass
class _Failure:
    """What rank 0 sends instead of a value when computing it failed."""

    message: str

    @classmethod
    def of(cls, error: Exception) -> _Failure:
        """A UserError's message as it is; any other error with its type."""
        return cls(" ".join(str(error).split()) if isinstance(error, UserError) else _one_line(error))


def _attempt(compute: Callable[[], T]) -> tuple[T | None, UserError | None]:
    try:
        return compute(), None
    except UserError as error:
        return None, error


def _raise_first(messages: list[str | None], own: UserError | None) -> None:
    """Raise this rank's own error, else the first rank's (as a UserError), if any rank had one."""
    if own is not None:
        raise own
    for rank, message in enumerate(messages):
        if message is not None:
            raise _PeerFailed(f"process {rank} of {len(messages)}: {message}")


def _without_drawing(compute: Callable[[], T]) -> T:
    """``compute()``, with the global generators (the CPU's, and the current GPU's if CUDA is in use) put back."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        return compute()


def _check_device(name: str, processes: int) -> torch.device:
    """The device ``name`` resolved, if ``processes`` processes can share it: the CPU, or one GPU each.

    Raises:
        ConfigError: a GPU by its index (each process takes its own), too few GPUs, or MPS.
    """
    device = resolve_device(name)
    if device.type == "mps":
        raise ConfigError(f"--device {name}: data-parallel runs need the CPU (gloo) or CUDA GPUs (nccl), not MPS")
    if device.type == "cuda" and device.index is not None:
        raise ConfigError(f"--device {name} names one GPU, but each of the {processes} processes takes its own: "
                          "use --device cuda")
    return device


def layout(processes: int) -> ProcessLayout:
    """The processes that train a run of ``processes`` processes: this one alone, or this one's group.

    Raises:
        ConfigError: the processes asked for are not those of the ``torch.distributed`` group that is set up (none
            for 1 process, ``processes`` for more).
    """
    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else 1
    if processes == 1 and world == 1:
        return SingleProcess()
    if world != processes:
        group = f"the torch.distributed group has {world} processes" if initialised else "torch.distributed is off"
        raise ConfigError(f"the run asks for {processes} process{'es' if processes != 1 else ''} but {group}; start "
                          "data-parallel runs with probprec run --nproc-per-node, torchrun or Slurm tasks")
    joined = _JOINED
    rank = dist.get_rank()
    if joined is None:
        return DataParallel(rank, processes, int(os.environ.get("LOCAL_RANK", rank)))
    return DataParallel(rank, processes, joined.local_rank, joined.store, joined.attempt)


@dataclass(frozen=True)
class GroupEnvironment:
    """The variables by which torchrun (or a Slurm task) places this process in a group (``env://``)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def group_environment(environ: Mapping[str, str] = os.environ) -> GroupEnvironment | None:
    """This process's place in a group started by torchrun or Slurm, or None (not set, or a group of one).

    Raises:
        ConfigError: ``RANK``, ``WORLD_SIZE`` or ``LOCAL_RANK`` is not an integer.
    """
    if not all(key in environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    try:
        rank, world, local = (int(environ[key]) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (torchrun sets them)"
                          ) from None
    return GroupEnvironment(rank, world, local, local_world) if world > 1 else None


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def joined_group(backend: str, store: dist.Store, rank: int, processes: int, local_rank: int) -> Iterator[None]:
    """This process as rank ``rank`` of a group of ``processes`` that meets in ``store``, for the body.

    The group is the default group (so the optimizer's ``process_group=None`` is it); it is taken down afterwards.
    """
    global _JOINED
    if backend == "nccl":
        torch.cuda.set_device(local_rank if torch.cuda.device_count() > 1 else 0)
    dist.init_process_group(backend, store=store, rank=rank, world_size=processes, timeout=GROUP_TIMEOUT)
    _JOINED = _Joined(store, local_rank, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0))
    try:
        yield
    finally:
        _JOINED = None
        gc.collect()  # what still refers to the group or its pending work goes now, while the interpreter is whole
        dist.destroy_process_group()


@contextmanager
def environment_group(device_name: str) -> Iterator[GroupEnvironment]:
    """Join the group that the environment describes (torchrun, a Slurm task) through ``env://``.

    Raises:
        ConfigError: the environment describes no group of more than one process, or a bad device.
    """
    environment = group_environment()
    if environment is None:
        raise ConfigError("RANK, WORLD_SIZE > 1 and LOCAL_RANK are not set: no group to join (start with torchrun)")
    backend = _backend(_check_device(device_name, environment.world_size))
    store, rank, world = next(dist.rendezvous("env://", timeout=GROUP_TIMEOUT))
    with joined_group(backend, store, rank, world, environment.local_rank):
        yield environment


def run_data_parallel(config: RunConfig) -> RunResult:
    """Run ``config`` data-parallel: in the group of torchrun or Slurm, or with ``config.processes`` local processes.

    Under torchrun every process calls this and gets the result (rank 0's files are the run's); otherwise this
    process starts the others, waits for them and returns rank 0's result.

    Raises:
        UserError: bad input (before any process starts where it can be seen here), or a process that died with an
            error (the first one, in one line).
    """
    from .runner import run

    environment = group_environment()
    if environment is None and config.processes == 1:
        with using_threads(threads_per_process()):
            return run(config)
    if environment is None:
        return _spawn(config)
    if config.processes not in (1, environment.local_world_size):
        raise ConfigError(f"--nproc-per-node {config.processes}: torchrun started {environment.local_world_size} "
                          "processes on this machine already; leave --nproc-per-node out")
    config = replace(config, processes=environment.world_size)
    with using_threads(threads_per_process(environment.local_world_size)), environment_group(config.device):
        return run(config)


def _spawn(config: RunConfig) -> RunResult:
    """Start ``config.processes`` processes, wait for all of them, and return rank 0's result.

    A run with a finished result is skipped here, before any process starts (rank 0 checks again under the lock).
    """
    import torch.multiprocessing as mp

    from .runner import RunResult, check_data_parallel, finished_result

    check_data_parallel(config)
    done = finished_result(config)
    if done is not None:
        return RunResult("skipped", done, json.loads(done.read_text()))
    device = _check_device(config.device, config.processes)
    if device.type == "cuda" and torch.cuda.device_count() < config.processes:
        raise ConfigError(f"--nproc-per-node {config.processes} on CUDA needs a GPU per process; this machine has "
                          f"{torch.cuda.device_count()}")

    with tempfile.TemporaryDirectory(prefix="probprec-data-parallel-") as folder:
        context = mp.start_processes(_spawned, args=(config, folder), nprocs=config.processes, join=False,
                                     start_method="spawn")
        failure = _join(context) if context is not None else None
        outcome_path = Path(folder) / _OUTCOME_NAME
        outcome = pickle.loads(outcome_path.read_bytes()) if outcome_path.exists() else None
    return _outcome(config, outcome, failure)


def _outcome(config: RunConfig, outcome: Any, failure: str | None) -> RunResult:
    """Rank 0's result, or the failure of a process, or rank 0's one-line error, as :func:`_spawn` returns it.

    A run that rank 0 finished and recorded (completed, diverged, collapsed) is the result even when another
    process ended badly afterwards (said on standard error).
    """
    from .runner import FINISHED

    finished = outcome is not None and not isinstance(outcome, str) and outcome.status in FINISHED
    if failure is not None and not finished:
        where = f"; recorded in {outcome.path}" if outcome is not None and not isinstance(outcome, str) else ""
        raise UserError(f"the data-parallel run of {config.problem} {config.optimizer} seed {config.seed} failed: "
                        f"{failure}{where}")
    if failure is not None:
        print(f"probprec: warning: after the run was recorded, {failure}", file=sys.stderr)
    if outcome is None:  # rank 0 left without a result: it was interrupted before training
        raise KeyboardInterrupt
    if isinstance(outcome, str):
        raise UserError(outcome)
    return outcome  # rank 0's RunResult


def _spawned(rank: int, config: RunConfig, folder: str) -> None:
    """One process of a spawned run: join the group in ``folder``, run, and (rank 0) leave the outcome there."""
    from .runner import run

    torch.set_num_threads(threads_per_process(config.processes))
    backend = _backend(_check_device(config.device, config.processes))
    store = dist.FileStore(str(Path(folder) / "store"), config.processes)
    with joined_group(backend, store, rank, config.processes, rank):
        try:
            outcome: Any = run(config)
        except UserError as error:
            outcome = " ".join(str(error).split())
        if rank == 0:
            draft = Path(folder) / f".{_OUTCOME_NAME}"
            draft.write_bytes(pickle.dumps(outcome))
            draft.replace(Path(folder) / _OUTCOME_NAME)
    # Done: leave without the interpreter's finalization, in which native threads of the communication library
    # that outlive the group have aborted a process (SIGABRT, "terminate called without an active exception":
    # seen 3 times in about 70 runs on a loaded machine); everything this process had to do is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _join(context: Any) -> str | None:
    """Wait for every process of ``context``; the first failure in one line, or None.

    Ctrl-C reaches every process of the terminal's process group: each records its interruption, and this one
    keeps waiting for them. SIGTERM is passed on to the processes, which record it as an interruption.
    """
    def forward(signum: int, frame: FrameType | None) -> None:
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    from torch.multiprocessing.spawn import ProcessException, ProcessRaisedException

    try:
        previous = signal.signal(signal.SIGTERM, forward)
    except ValueError:  # not the main thread
        previous = None
    try:
        while True:
            try:
                if context.join(grace_period=_JOIN_GRACE_S):
                    return None
            except KeyboardInterrupt:
                continue
            except ProcessRaisedException as error:
                lines = [line for line in str(error).splitlines() if line.strip()]
                return f"process {error.error_index} of {len(context.processes)}: {lines[-1].strip()}"
            except ProcessException as error:
                return str(error)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
