"""Locks: one process at a time per run and per sweep output folder.

A run (its settings folder and seed) is executed by one process at a time, whoever
starts it: ``probprec run``, a sweep's worker, a Slurm task, the benchmark. A sweep
holds the lock of its output folder while it runs, and each of its runs holds the lock
of that run, so a sweep and a ``probprec run`` of one of its runs never both execute
it: the second is refused with :class:`LockHeldError`, whose message names the holder
(process id, host, since when). The lock files are named here and nowhere else
(:func:`run_lock_path`, :func:`sweep_lock_path`).

The locks are ``flock`` locks on the lock file: the kernel releases them when the
holding process ends, however it ends, so a lock file left behind by a killed process
blocks nothing. A holder removes its lock file when it is done. On network file
systems ``flock`` works where the mount supports it (NFS emulates it with POSIX locks;
Lustre needs ``-o flock``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from .errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["RUN_LOCK_NAME", "SWEEP_LOCK_NAME", "LockHeldError", "holder_of", "holding", "run_lock_path",
           "sweep_lock_path"]

SWEEP_LOCK_NAME = ".sweep.lock"
"""The lock file of a sweep, in its output folder."""
RUN_LOCK_NAME = ".random_seed__{seed}.lock"
"""The lock file of a run, in its settings folder next to its result files (``{seed}``: the run's seed)."""


class LockHeldError(UserError):
    """Another process holds the lock: the message names it and what to do."""

    def __init__(self, message: str, path: Path, holder: str):
        super().__init__(message)
        self.path = path
        self.holder = holder


def run_lock_path(folder: Path, seed: int) -> Path:
    """The lock file of the run of ``seed`` in the settings folder ``folder`` (next to its result files)."""
    return Path(folder) / RUN_LOCK_NAME.format(seed=seed)


def sweep_lock_path(output_dir: Path) -> Path:
    """The lock file of a sweep that writes into ``output_dir``."""
    return Path(output_dir) / SWEEP_LOCK_NAME


def _describe_self() -> str:
    return f"process {os.getpid()} on {socket.gethostname()}, since {datetime.now():%Y-%m-%d %H:%M:%S}"


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    return text or "a process that has not yet written its name"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a holder that finished removes its file)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)


def _acquire(path: Path, busy: str) -> int:
    """Open and lock ``path``; the open descriptor. Raises LockHeldError (``busy`` with ``{holder}``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeldError(busy.replace("{holder}", holder), path, holder) from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the file was removed by a holder that finished between our open and our lock: again


@contextmanager
def holding(path: Path, busy: str) -> Iterator[None]:
    """Hold the lock ``path`` for the body, or refuse at once.

    Args:
        path: the lock file (:func:`run_lock_path`, :func:`sweep_lock_path`).
        busy: the refusal's message; ``{holder}`` in it becomes the holder's description.

    Raises:
        LockHeldError: another process holds the lock (nothing was changed).
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    fd = _acquire(Path(path), busy)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{_describe_self()}\n".encode(), 0)
        yield
    finally:
        Path(path).unlink(missing_ok=True)  # while still holding it: a waiting opener sees the removal and retries
        os.close(fd)


def holder_of(path: Path) -> str | None:
    """Who holds the lock ``path`` now (its description), or None when nobody does.

    A probe for tests and diagnostics: it holds a shared lock for an instant, and a process that tries to take
    the lock in that instant is refused.
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)
    return None
