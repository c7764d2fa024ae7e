"""What a run was made on: software versions (the peers' among them), hardware, the git commit (DeepOBS issue #24)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .peers import PEER_PACKAGES

__all__ = ["environment"]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The commit of the source tree probprec was imported from, if it is a git checkout."""
    root = Path(__file__).resolve().parents[3]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, hardware, commit and the torch thread count now, as plain values."""
    return {**_fixed_environment(), "torch_threads": torch.get_num_threads()}


@cache
def _fixed_environment() -> dict[str, Any]:
    """What does not change while the process runs (computed once per process)."""
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "packages": {name: _version(name) for name in ("probprec", "torch", "torchvision", "numpy", "scipy",
                                                        "scikit-learn", "matplotlib", *PEER_PACKAGES)},
        "git_commit": _git_commit(),
    }
