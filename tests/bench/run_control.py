"""Helpers of the tests that act on runs in progress: other processes, the pause hook, waiting on conditions.

A test that interrupts, kills or competes with a run must act while that run is certainly in progress.
:func:`pause_env` makes every run started with it wait after the checkpoint of a given epoch
(:mod:`probprec.bench._pause`); :func:`wait_for` waits for a condition with a generous deadline (a
busy machine only makes it take longer); :func:`paused` lists the waiting runs and :func:`release`
lets one go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from probprec.bench._pause import PAUSE_DIR_VARIABLE, PAUSE_EPOCH_VARIABLE
from probprec.bench.locks import RUN_LOCK_NAME, holder_of

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240.0
"""How long a condition may take on a loaded machine before the test fails."""

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = TIMEOUT_S,
             process: subprocess.Popen | None = None) -> T:
    """Wait until ``condition()`` is true (and return it); fail naming ``what`` after ``timeout`` seconds.

    Args:
        condition: checked every 20 ms.
        what: the condition in words, for the failure message.
        timeout: seconds.
        process: a process that must not end meanwhile (its output is shown if it does).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            output = process.communicate()
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}: {output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.02)


def pause_env(epoch: int, folder: Path) -> dict[str, str]:
    """The environment of a process whose runs wait after the checkpoint of ``epoch`` (markers in ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    return {**os.environ, PAUSE_EPOCH_VARIABLE: str(epoch), PAUSE_DIR_VARIABLE: str(folder),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests" / "bench"),
                                           os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1"}


def paused(folder: Path, count: int | None = None) -> dict[Path, str]:
    """The markers of the runs waiting in ``folder``: marker -> the run's checkpoint path.

    Args:
        folder: the markers' folder (:func:`pause_env`).
        count: if given, the markers only when there are exactly this many (else an empty dict).
    """
    found = {}
    for marker in folder.glob("*.paused"):
        try:
            found[marker] = marker.read_text().splitlines()[0]
        except (OSError, IndexError):  # released meanwhile
            continue
    return found if count is None or len(found) == count else {}


def release(marker: Path) -> None:
    """Let the run that waits on ``marker`` go on."""
    marker.unlink()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``probprec ARGS`` in another process (text output; stdout and stderr apart)."""
    return subprocess.Popen([sys.executable, "-m", "probprec.bench.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def locks_free(folder: Path) -> bool:
    """Whether no process holds a run lock under ``folder`` (killed holders release theirs when they are gone)."""
    return all(holder_of(path) is None for path in folder.rglob(RUN_LOCK_NAME.format(seed="*")))
