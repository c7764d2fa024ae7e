"""The local executor: the runs of a sweep in a pool of worker processes on this machine, or in this process.

:class:`LocalExecutor` runs at most ``workers`` runs at a time in a
:class:`concurrent.futures.ProcessPoolExecutor` (start method ``forkserver``, or ``spawn``
where there is none), one worker per core by default, each with its share of the cores
(:func:`probprec.bench.threads.threads_per_process`); with one worker it runs them one
after the other in this process.

A worker that dies (killed for memory, say) breaks the pool (``BrokenProcessPool``):
every run that was in flight then runs again alone, in a process of its own, to find
the one that kills its process, and only that run fails. When the sweep is interrupted
it tells its workers through a shared event (:class:`multiprocessing.Event`) and waits
until they are gone: each stops like on SIGTERM (a run in progress records
``interrupted`` and keeps its checkpoint) and starts no other run. A worker whose sweep
is gone (killed with SIGKILL) stops the same way.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.synchronize import Event

from .outcomes import Report, RunOutcome, execute, outcome_of
from .sweeps import SweepRun
from .threads import available_cores, threads_per_process, using_threads

__all__ = ["LocalExecutor"]

STOP_TIMEOUT_S = 60.0
"""How long an interrupted sweep waits for the process of a run that runs alone to record it as interrupted."""
_WATCH_INTERVAL_S = 0.5
"""How often a worker looks whether its sweep is gone, and how often a stopping worker repeats SIGTERM."""

_STOPPING = False
"""Set in a worker once it has been told to stop: the tasks it is given later are not started."""


@dataclass
class LocalExecutor:
    """Runs on this machine: worker processes, or this process with one worker.

    An :class:`~probprec.bench.executor.Executor`.
    """

    workers: int | None = None
    """Processes; None: one per core (one on an accelerator), at most one per pending run; 1: this process."""

    def run(self, pending: list[SweepRun], report: Report) -> list[SweepRun]:
        """Run ``pending``; returns the runs left when interrupted (empty otherwise)."""
        workers = min(self.workers or _default_workers(len(pending), pending[0].config.device), len(pending))
        if workers == 1:
            with using_threads(threads_per_process(1)):
                return _run_here(pending, report)
        pool = _WorkerPool(workers, report)
        try:
            pool.run(pending)
        except KeyboardInterrupt:
            return pool.left()
        return []


def _default_workers(pending: int, device: str) -> int:
    if device != "cpu":
        return 1  # one accelerator: runs take turns on it
    return max(1, min(available_cores(), pending))


def _run_here(runs: list[SweepRun], report: Report) -> list[SweepRun]:
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
# Inside a worker


def _context() -> ForkServerContext | SpawnContext:
    """The start method of worker processes: ``forkserver`` where there is one, else ``spawn``.

    Workers fork from a server that has imported torch once (fast starts). Both methods need only importable,
    picklable tasks, and neither forks a process that runs torch threads.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")  # pragma: no cover - Windows


def _init_worker(threads: int, stop: Event) -> None:
    """Worker start: Ctrl-C is the sweep's business, the pool's torch threads, stop when told or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(threads)
    parent = os.getppid()  # the sweep (spawn) or the fork server, which exits with the sweep
    threading.Thread(target=_watch, args=(parent, stop), daemon=True, name="probprec-stop-watch").start()


def _watch(parent: int, stop: Event) -> None:
    """Stop like on SIGTERM once the sweep says so, or once it is gone (killed with SIGKILL, say).

    SIGTERM every half second until the worker is gone: a run in progress records ``interrupted`` and keeps its
    checkpoint, a worker between runs ends, and no orphan keeps writing results while the sweep is started again.
    """
    global _STOPPING
    while not stop.wait(_WATCH_INTERVAL_S) and os.getppid() == parent:
        pass
    _STOPPING = True
    while True:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(_WATCH_INTERVAL_S)


def _run_in_worker(sweep_run: SweepRun) -> RunOutcome:
    """The pool's task: one run; after an interruption the worker starts nothing else."""
    global _STOPPING
    if _STOPPING:
        return outcome_of(sweep_run, "not run")
    outcome = execute(sweep_run)
    if outcome.status == "interrupted":
        _STOPPING = True
    return outcome


def _isolated(sweep_run: SweepRun, connection: Connection, threads: int, stop: Event) -> None:
    """Target of a process that runs one suspect run alone (after a worker died), with the pool's threads."""
    _init_worker(threads, stop)
    connection.send(execute(sweep_run))
    connection.close()


def _describe_exit(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it).

    Example:
        >>> _describe_exit(-9), _describe_exit(1)
        ('killed by SIGKILL (out of memory?)', 'exit status 1')
    """
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit status {code}"


# ---------------------------------------------------------------------------------------------------------------
# The pool, in the sweep's process


class _WorkerPool:
    """At most ``workers`` runs at a time in worker processes; a dead worker costs only its own run."""

    def __init__(self, workers: int, report: Report):
        self.workers = workers
        self.threads = threads_per_process(workers)
        self.report = report
        self.context = _context()
        self.stop = self.context.Event()
        self.queue: deque[SweepRun] = deque()
        self.in_flight: dict[Future[RunOutcome], SweepRun] = {}
        self.suspects: list[SweepRun] = []
        self.pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_init_worker,
                                   initargs=(self.threads, self.stop))

    def run(self, runs: list[SweepRun]) -> None:
        """Run ``runs``; on KeyboardInterrupt stop the workers (each run records ``interrupted``) and re-raise."""
        self.queue.extend(runs)
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

    def _collect(self, done: Iterable[Future[RunOutcome]]) -> bool:
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
                self.report(outcome_of(sweep_run, "failed", f"{type(error).__name__}: {error}"))
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
        process = self.context.Process(target=_isolated, args=(sweep_run, send, self.threads, self.stop), daemon=True)
        process.start()
        send.close()
        try:
            outcome = receive.recv()
        except EOFError:
            outcome = None
        except KeyboardInterrupt:
            process.terminate()
            process.join(STOP_TIMEOUT_S)
            raise
        process.join()
        if outcome is None:
            return outcome_of(sweep_run, "failed", f"its process died ({_describe_exit(process.exitcode)})")
        return outcome

    def _stop(self) -> None:
        """Tell every worker to stop (a run in progress records ``interrupted``), then wait until they are gone."""
        self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def left(self) -> list[SweepRun]:
        """Runs that were in flight or not started when the pool stopped."""
        return [*self.suspects, *self.in_flight.values(), *self.queue]
