"""Runs as ``probprec run`` command lines, for schedulers of your own (``probprec sweep --emit-commands``).

:func:`run_command` is the inverse of the ``run`` command's parser (:mod:`probprec.bench.cli`):
the command line it writes parses back to the same configuration, hyperparameters of the
same value and type included (:func:`probprec.bench.hyperparams.hyperparameter_argument`).
:func:`emit_commands` writes one for every pending run of a sweep.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .hyperparams import hyperparameter_argument
from .orchestration import pending_runs, prepare_runs
from .runner import RunConfig
from .sweeps import SweepSpec

__all__ = ["emit_commands", "run_command"]


def run_command(config: RunConfig, program: str = "probprec") -> str:
    """The ``probprec run`` command line of one run (shell-quoted).

    Raises:
        ConfigError: a hyperparameter value that no command line can carry.

    Example:
        >>> run_command(RunConfig("two_d_branin", "SGD", {"lr": 0.1}, seed=1, epochs=2, data_dir="d", output_dir="o"))
        'probprec run two_d_branin --optimizer SGD --seed 1 --epochs 2 --hp lr=0.1 --data-dir d --output-dir o'
    """
    argv = [program, "run", config.problem, "--optimizer", config.optimizer, "--seed", str(config.seed)]
    if config.epochs is not None:
        argv += ["--epochs", str(config.epochs)]
    if config.batch_size is not None:
        argv += ["--batch-size", str(config.batch_size)]
    if config.l2 is not None:
        argv += ["--l2", repr(float(config.l2))]
    if config.restart != "default":
        argv += ["--restart", str(config.restart)]
    if config.hyperparams:
        argv += ["--hp", *(hyperparameter_argument(k, v) for k, v in sorted(config.hyperparams.items()))]
    argv += ["--data-dir", str(config.data_dir), "--output-dir", str(config.output_dir)]
    if config.device != "cpu":
        argv += ["--device", config.device]
    if config.processes != 1:
        argv += ["--nproc-per-node", str(config.processes)]
    if config.download:
        argv.append("--download")
    if config.force:
        argv.append("--force")
    return shlex.join(argv)


def emit_commands(spec: SweepSpec, output_dir: str | Path, data_dir: str | Path = "data",
                  device: str = "cpu", processes: int = 1) -> list[str]:
    """``probprec run ...`` for every pending run of ``spec``; ``processes`` > 1: each data-parallel on that many.

    Raises:
        ConfigError: bad input, before anything is written.
    """
    runs = prepare_runs(spec, output_dir, data_dir, device, processes=processes)
    return [run_command(r.config) for r in pending_runs(runs)]
