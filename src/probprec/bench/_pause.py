"""Test-only: a run waits after the checkpoint of a given epoch until the test lets it go on.

Private on purpose: no user of the harness has a use for it; the runner calls
:func:`pause_if_asked` after every checkpoint, and the tests of interrupts, kills,
resumption and locks set the variables below (``tests/bench/run_control.py``).

Tests of interrupts, kills, resumption and locks must act while a run is certainly in
progress and has a checkpoint; how long a run takes is no certainty. With both

* ``PROBPREC_PAUSE_AT_EPOCH=E`` (an epoch number) and
* ``PROBPREC_PAUSE_DIR=FOLDER`` (an existing folder)

in the environment, a run that has just written the checkpoint of epoch ``E`` creates a
marker file ``FOLDER/<key>.paused`` (one per run; its first line is the checkpoint's path,
its second the process id) and waits until that file is removed, then goes on. A signal
while it waits interrupts the run as anywhere else, and the marker is removed when the
run leaves the wait however it leaves. Without the variables the hook costs one look-up
of the environment per epoch.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

__all__ = ["PAUSE_DIR_VARIABLE", "PAUSE_EPOCH_VARIABLE", "pause_if_asked"]

PAUSE_EPOCH_VARIABLE = "PROBPREC_PAUSE_AT_EPOCH"
PAUSE_DIR_VARIABLE = "PROBPREC_PAUSE_DIR"
MARKER_SUFFIX = ".paused"


def pause_if_asked(epochs_completed: int, checkpoint: Path) -> None:
    """Wait here if the environment asks for a pause at ``epochs_completed`` (see the module docstring).

    Args:
        epochs_completed: the epochs the run has finished (the checkpoint's epoch).
        checkpoint: the checkpoint just written (names the run in the marker).
    """
    if os.environ.get(PAUSE_EPOCH_VARIABLE, "").strip() != str(epochs_completed):
        return
    folder = Path(os.environ.get(PAUSE_DIR_VARIABLE, ""))
    if not folder.is_dir():
        raise RuntimeError(f"{PAUSE_EPOCH_VARIABLE} is set but {PAUSE_DIR_VARIABLE} is no folder: {folder}")
    key = hashlib.sha1(str(Path(checkpoint).absolute()).encode()).hexdigest()[:16]
    marker = folder / f"{key}{MARKER_SUFFIX}"
    draft = folder / f".{key}.draft"
    draft.write_text(f"{checkpoint}\n{os.getpid()}\n")
    draft.replace(marker)  # a reader never sees half a marker
    try:
        while marker.exists():
            time.sleep(0.01)
    finally:
        marker.unlink(missing_ok=True)
