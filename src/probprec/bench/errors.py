"""Errors caused by the user's input or environment, which the command line reports in one line with exit status 2.

Code that detects bad input (an unknown name, a value out of range, an unreadable
file, a missing GPU) raises :class:`UserError` (or a subclass such as
:class:`ConfigError`) with a message that names the parameter or file and what is
accepted. :func:`probprec.bench.cli.main` catches it once, together with any
``OSError`` (a path that cannot be read or written, a full disk), prints one line
and exits with status 2. Every other exception is a bug of ours and keeps its
traceback.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["ConfigError", "UserError", "describe_os_error", "os_user_error"]

_ACTION_WORDS = {"read": "cannot read", "write": "cannot write", "create": "cannot create"}


class UserError(Exception):
    """Bad input or an unusable environment; the message is the whole report (one line, no traceback)."""


class ConfigError(UserError, ValueError):
    """A run cannot start: bad input (unknown name, invalid value, missing data, unwritable output)."""


def describe_os_error(error: OSError, path: str | Path | None = None, action: str | None = None) -> str:
    """One line for an ``OSError``: what could not be done to which path, and the system's reason.

    Args:
        error: the error.
        path: the path concerned (default: the error's ``filename``).
        action: ``"read"``, ``"write"`` or ``"create"`` (default: no verb, only the path).

    Example:
        >>> describe_os_error(PermissionError(13, "Permission denied", "r.json"), action="read")
        'cannot read r.json: Permission denied'
    """
    path = path if path is not None else error.filename
    reason = error.strerror or (os.strerror(error.errno) if error.errno else str(error) or type(error).__name__)
    if error.errno == errno.ENOSPC:
        reason += " (free some space, then run the same command again)"
    prefix = _ACTION_WORDS.get(action or "", "")
    if path is None:
        return f"{prefix}: {reason}" if prefix else reason
    return f"{prefix} {path}: {reason}" if prefix else f"{path}: {reason}"


def os_user_error(error: OSError, path: str | Path | None = None, action: str | None = None) -> UserError:
    """The :class:`UserError` that reports ``error`` (see :func:`describe_os_error`)."""
    return UserError(describe_os_error(error, path, action))
