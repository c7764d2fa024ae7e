"""The torch device a run uses: ``--device`` parsed and checked to be present on this machine."""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["ACCEPTED_DEVICES", "resolve_device"]

ACCEPTED_DEVICES = "cpu, cuda, cuda:N, mps or auto"


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return kind == "cpu"


def resolve_device(name: str) -> torch.device:
    """The device called ``name``, after checking that this machine has it.

    ``auto`` is the first GPU where CUDA is available, else the CPU.

    Raises:
        ConfigError: an unknown device name, or a device this machine does not have (the message names it and
            what is accepted).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"device {name!r} is not a device name (accepted: {ACCEPTED_DEVICES})") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r}: {device.type} is not supported (accepted: {ACCEPTED_DEVICES})")
    if not _available(device.type):
        raise ConfigError(f"device {name!r}: no {device.type.upper()} device is available on this machine "
                          f"(use --device cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"device {name!r}: this machine has {count} CUDA device{'s' if count != 1 else ''} "
                          f"(cuda:0 to cuda:{count - 1})")
    return device
