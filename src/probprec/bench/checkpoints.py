"""A run's checkpoint: its file name, what it holds, and how it is written and read back.

After every finished epoch but the last, the runner writes one checkpoint per run into
the run's settings folder (:func:`checkpoint_path`): the model's and the optimizer's
state dicts, the result record so far, the epoch, and every random generator the run
draws from (torch's, numpy's and Python's global ones, the data loader's, CUDA's), so a
run resumed from it continues as if it had never stopped. A checkpoint is written
atomically (a temporary name of its own, then renamed): a reader never sees half of one.
A run that is left with a checkpoint has not finished (:func:`probprec.bench.runner.finished_result`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_writer
from .errors import describe_os_error

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "CheckpointNotWrittenError", "checkpoint_path", "load_checkpoint",
           "save_checkpoint"]

CHECKPOINT_NAME = ".checkpoint__random_seed__{seed}.pt"
"""The checkpoint file of a run, in its settings folder next to its result files (``{seed}``: the run's seed)."""


class CheckpointNotWrittenError(Exception):
    """The checkpoint could not be written (a full disk, ...); the previous one is intact."""


@dataclass
class Checkpoint:
    """What a run resumes from."""

    model: dict[str, Any]
    """The model's state dict."""
    optimizer: dict[str, Any]
    """The optimizer's state dict."""
    record: dict[str, Any]
    """The result record so far."""
    epoch: int
    """The epochs finished."""
    rng: dict[str, Any]
    """The state of every random generator (:func:`_rng_state`)."""

    def restore_rng(self, loader_generator: torch.Generator) -> None:
        """Put every random generator back as it was at the checkpoint (``loader_generator`` included)."""
        _set_rng_state(self.rng, loader_generator)


def checkpoint_path(folder: Path, seed: int) -> Path:
    """The checkpoint file of the run of ``seed`` in the settings folder ``folder``."""
    return Path(folder) / CHECKPOINT_NAME.format(seed=seed)


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


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, record: dict[str, Any],
                    epoch: int, loader_generator: torch.Generator) -> None:
    """Write the checkpoint atomically (a temporary name of its own, the umask's permissions, nothing partial).

    Raises:
        CheckpointNotWrittenError: the file could not be written; the message says why and where.
    """
    try:
        with atomic_writer(path, "wb") as handle:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "record": record,
                        "epoch": epoch, "rng": _rng_state(loader_generator)}, handle)
    except OSError as error:
        raise CheckpointNotWrittenError(describe_os_error(error, path, "write")) from None


def load_checkpoint(path: Path) -> Checkpoint:
    """Read the checkpoint at ``path`` (written by :func:`save_checkpoint`)."""
    return Checkpoint(**torch.load(path, weights_only=False))
