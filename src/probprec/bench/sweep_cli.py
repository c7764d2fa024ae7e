"""The ``sweep`` and ``tune`` commands of ``probprec``.

``probprec sweep FILE`` runs a sweep file (:mod:`probprec.bench.sweeps`) on this machine
or on Slurm (:mod:`probprec.bench.orchestration`), or prints its pending runs as
``probprec run`` commands (``--emit-commands``). ``probprec tune FILE`` runs the tuning
protocol (:mod:`probprec.bench.tuning`).

Exit status: 0 when every run completed, diverged, collapsed or was finished before; 1 when a run
failed; 2 for bad input (one line on standard error, before anything runs); 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .argtypes import int_at_least as _int_at_least
from .argtypes import positive_float as _positive_float
from .executor import EXECUTORS, LOCAL

if TYPE_CHECKING:  # the sweep's modules load when a sweep runs
    from .slurm_executor import SlurmOptions

__all__ = ["add_commands", "add_executor_options", "dispatch", "slurm_options"]

COMMANDS = ("sweep", "tune")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a sweep file (TOML; see probprec.bench.sweeps)")
    parser.add_argument("--scale", default="smoke", help="the section of the file to run (default %(default)s)")
    parser.add_argument("--output-dir", help="where results go (default: results/<the sweep's name>)")
    add_executor_options(parser)


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """Where and how runs run: executor, workers, data, device, and the Slurm options."""
    parser.add_argument("--executor", choices=EXECUTORS, default=LOCAL,
                        help="local: a process pool on this machine (default); slurm: job arrays through submitit")
    parser.add_argument("--workers", type=_int_at_least(1),
                        help="local processes (default: one per core; 1 runs in this process)")
    parser.add_argument("--data-dir", default="data", help="where data sets are (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default %(default)s)")
    slurm = parser.add_argument_group("Slurm (with --executor slurm)")
    slurm.add_argument("--partition", help="the partition (default: the cluster's)")
    slurm.add_argument("--time-min", type=_int_at_least(1), default=60,
                       help="time limit per run in minutes; a run near it is requeued and resumes "
                            "(default %(default)s)")
    slurm.add_argument("--mem-gb", type=_positive_float, help="memory per run in GB (default: the cluster's)")
    slurm.add_argument("--cpus-per-task", type=_int_at_least(1), default=1,
                       help="CPUs (and torch threads) per run (default %(default)s)")
    slurm.add_argument("--gpus-per-node", type=_int_at_least(0), default=0, help="GPUs per run (default %(default)s)")
    slurm.add_argument("--tasks-per-node", type=_int_at_least(1), default=1, metavar="N",
                       help="train each run data-parallel with N Slurm tasks (torch.distributed; the batch size is per "
                            "task, the global batch N times it) (default %(default)s)")
    slurm.add_argument("--array-parallelism", type=_int_at_least(1), default=64,
                       help="at most this many runs at once (default %(default)s)")
    slurm.add_argument("--slurm-folder", help="job scripts and logs (default: <output-dir>/.slurm/%%j)")
    slurm.add_argument("--max-requeue", type=_int_at_least(0), default=3,
                       help="requeues of a run that reaches its time limit (default %(default)s)")
    slurm.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                       help="a shell line run before each run (repeatable), e.g. 'source venv/bin/activate'")


def add_commands(subparsers: Any) -> None:
    """Add ``sweep`` and ``tune`` to the subcommands of ``probprec``."""
    sweep = subparsers.add_parser(
        "sweep", help="run a sweep file (grids, random search, seeds) here or on Slurm",
        description="Expand a sweep file into runs, skip those with a result, run the rest (locally or as Slurm "
                    "job arrays) and summarise; or print the pending runs as probprec run commands.")
    _add_run_options(sweep)
    sweep.add_argument("--no-wait", action="store_true",
                       help="slurm: submit and return; the same command later collects the results")
    sweep.add_argument("--emit-commands", action="store_true",
                       help="print one `probprec run ...` line per pending run instead of running (with "
                            "--tasks-per-node N, each line trains data-parallel: --nproc-per-node N)")
    tune = subparsers.add_parser(
        "tune", help="the tuning protocol: search with one seed, choose on validation, rerun with 10 seeds",
        description="Run every setting of the sweep file with its first seed, choose per problem and optimizer the "
                    "setting with the best validation metric, rerun it with --seeds; writes tuning.json/.md.")
    _add_run_options(tune)
    tune.add_argument("--seeds", nargs="+", type=_int_at_least(0), default=list(range(42, 52)), metavar="SEED",
                      help="seeds of the rerun (default 42-51)")
    tune.add_argument("--metric", choices=("valid_loss", "valid_accuracy"),
                      help="the selection metric (default: validation accuracy where the problem has one, else loss)")
    tune.add_argument("--mode", choices=("final", "best"), default="final",
                      help="final: the metric after the last epoch; best: the best epoch (default %(default)s)")


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    """The SlurmOptions of parsed :func:`add_executor_options` arguments."""
    from .slurm_executor import SlurmOptions

    return SlurmOptions(partition=args.partition, time_min=args.time_min, mem_gb=args.mem_gb,
                        cpus_per_task=args.cpus_per_task, gpus_per_node=args.gpus_per_node,
                        tasks_per_node=args.tasks_per_node,
                        array_parallelism=args.array_parallelism, folder=args.slurm_folder,
                        max_requeue=args.max_requeue, wait=not getattr(args, "no_wait", False),
                        setup=list(args.slurm_setup))


def _echo_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _echo(text: str) -> None:
    print(text, flush=True)


def _sweep(args: argparse.Namespace) -> int:
    from .commands import emit_commands
    from .orchestration import run_sweep
    from .sweeps import load_sweep

    spec = load_sweep(args.file, args.scale)
    output_dir = args.output_dir or f"results/{spec.name}"
    if args.emit_commands:
        commands = emit_commands(spec, output_dir, args.data_dir, args.device, processes=args.tasks_per_node)
        _echo_stderr(f"{len(commands)} pending runs of {spec.name} [{spec.scale}] -> {output_dir}")
        for command in commands:
            print(command)
        return 0
    summary = run_sweep(spec, output_dir, executor=args.executor, workers=args.workers, data_dir=args.data_dir,
                        device=args.device, slurm=slurm_options(args), echo=_echo)
    return summary.exit_code


def _tune(args: argparse.Namespace) -> int:
    from .sweeps import load_sweep
    from .tuning import tune

    spec = load_sweep(args.file, args.scale)
    output_dir = args.output_dir or f"results/{spec.name}"
    result = tune(spec, output_dir, metric=args.metric, mode=args.mode, seeds=args.seeds, executor=args.executor,
                  workers=args.workers, data_dir=args.data_dir, device=args.device, slurm=slurm_options(args),
                  echo=_echo)
    return result.exit_code


def dispatch(args: argparse.Namespace) -> int | None:
    """Run ``sweep`` or ``tune``; None if ``args.command`` is another command."""
    if args.command not in COMMANDS:
        return None
    try:  # bad input (UserError) is reported by probprec.bench.cli.main, as for every command
        return _sweep(args) if args.command == "sweep" else _tune(args)
    except KeyboardInterrupt:
        print("probprec: interrupted; the same command resumes", file=sys.stderr)
        return 130
