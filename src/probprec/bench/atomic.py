"""Atomic file writes: a reader sees the old file or the whole new one, never a part, and no temporary is left.

:func:`atomic_writer` writes through a temporary file of its own (a unique name
in the target's folder, created as ``open()`` creates files, so it gets the
permissions that the umask gives ordinary files, 0o666 & ~umask), flushes it to
disk and renames it over the target. If anything fails (a full disk, an
interrupt), the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_writer", "temporary_name"]

_ATTEMPTS = 100
"""Unique names to try before giving up (each collision is a 1 in 2**64 event)."""


def temporary_name(path: Path) -> Path:
    """A hidden name next to ``path`` that no other writer uses (``.<name>.<random>.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


def _create(path: Path) -> tuple[int, Path]:
    """A new file next to ``path`` with mode 0o666 & ~umask (as ``open(..., "w")`` would create it)."""
    for _ in range(_ATTEMPTS):
        tmp = temporary_name(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name next to {path}")  # pragma: no cover - 100 collisions


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """A file object whose content replaces ``path`` when the block ends without an exception.

    Args:
        path: the target (its folder is created if needed).
        mode: ``"w"`` (text) or ``"wb"`` (bytes).
        encoding: of text mode.

    Raises:
        OSError: the write, the flush to disk or the rename failed; the target is unchanged and the temporary
            file removed.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
