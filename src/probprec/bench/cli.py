"""The ``probprec`` command line (``probprec --help`` lists the commands).

Bad input and a hostile environment (an unreadable file, a full disk, a missing GPU)
exit with status 2 and one line on standard error, before any file is written where
they can be detected up front: :func:`main` catches :class:`~probprec.bench.errors.UserError`
and ``OSError`` once, for every command; any other exception is a bug and keeps its
traceback. ``run`` exits 0 when the run completed, diverged or collapsed (a result like
any other) or was skipped, 1 when it failed, and 130 when it was interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import sweep_cli
from .analysis.metrics import SELECTION_METRICS
from .argtypes import int_at_least
from .errors import ConfigError, UserError, describe_os_error
from .executor import LOCAL
from .experiment import experiment_names
from .runner import RESTART_POLICIES

__all__ = ["main"]

EXIT_CODES = {"completed": 0, "diverged": 0, "collapsed": 0, "skipped": 0, "failed": 1, "interrupted": 130}


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


_positive_int = int_at_least(1)
_seed = int_at_least(0)


def _restart(text: str) -> str | int:
    """``--restart``: a restart policy by name or an integer >= 1 (:data:`probprec.bench.runner.RESTART_POLICIES`)."""
    if text in RESTART_POLICIES:
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be {', '.join(RESTART_POLICIES)} or an integer >= 1, got {text!r}") from None


def _add_benchmark_command(sub: Any) -> None:
    """``benchmark``: the embedded benchmark and its report."""
    bench = sub.add_parser("benchmark", help="the embedded benchmark (no download): runs and their report",
                           description="Every problem that needs no download x PreconditionedSGD, AdaptiveSGD, "
                                       "SGD, Adam x 3 seeds; writes results and OUTPUT_DIR/report (HTML, Markdown, "
                                       "figures, tables).")
    bench.add_argument("--output-dir", default="results/benchmark", help="where results go (default %(default)s)")
    bench.add_argument("--problems", nargs="+", metavar="PROBLEM", help="a subset of the embedded problems")
    bench.add_argument("--optimizers", nargs="+", metavar="NAME", help="other optimizers")
    bench.add_argument("--seeds", nargs="+", type=_seed, metavar="SEED", help="default: 42 43 44")
    bench.add_argument("--quick", action="store_true", help="a few epochs per problem (a smoke test)")
    bench.add_argument("--force", action="store_true", help="run again even where results exist (new files)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_run_command(sub: Any) -> None:
    """``run``: one run of one problem with one optimizer."""
    run = sub.add_parser("run", help="one run of one problem with one optimizer",
                         description="Train PROBLEM with OPTIMIZER and write one result file in DeepOBS's layout.")
    run.add_argument("problem", help="a problem name (see `probprec list`)")
    run.add_argument("--optimizer", required=True, help="an optimizer name, or a torch.optim class by path")
    run.add_argument("--hp", nargs="+", default=[], metavar="KEY=VALUE",
                     help="optimizer hyperparameters, e.g. --hp lr=0.1 momentum=0.9 nesterov=true betas='(0.9, 0.99)'"
                          " (Python literals, true/false; other text is a string; numbers must be finite)")
    run.add_argument("--seed", type=_seed, default=42, help="random seed (default %(default)s)")
    run.add_argument("--epochs", type=_positive_int, help="default: the problem's")
    run.add_argument("--batch-size", type=_positive_int, help="default: the problem's")
    run.add_argument("--l2", type=float, help="the problem's L2 coefficient (default: the problem's)")
    run.add_argument("--restart", type=_restart, default="default",
                     help="when to re-estimate: default (the problem's schedule), epoch, every N epochs, "
                          "optimizer (its restart_interval), never")
    run.add_argument("--data-dir", default="data", help="where data sets are (default %(default)s)")
    run.add_argument("--download", action="store_true", help="download a missing data set into --data-dir")
    run.add_argument("--output-dir", default="results", help="where results go (default %(default)s)")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default %(default)s)")
    run.add_argument("--force", action="store_true", help="run again even if a result exists (a new file)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--nproc-per-node", type=_positive_int, default=1, metavar="N",
                     help="train data-parallel with N local processes (gloo on the CPU, nccl with one GPU each); "
                          "--batch-size is per process, the global batch N times it, and the run equals one process "
                          "with the global batch (see probprec.bench.data_parallel). Under torchrun the run joins "
                          "torchrun's processes instead. Default %(default)s")


def _add_ablation_command(sub: Any) -> None:
    """``ablation``: the thesis mode, the default mode and each fix alone."""
    ablation = sub.add_parser("ablation", help="the thesis mode, the default mode and each of its fixes alone",
                              description="PreconditionedSGD in the default mode, the thesis mode, and the thesis "
                                          "mode with each single fix; writes ablation.md.")
    ablation.add_argument("--scale", default="smoke", help="a section of the ablation file (smoke, full)")
    ablation.add_argument("--config", help="another ablation file (default: probprec/bench/experiments/ablation.toml)")
    ablation.add_argument("--seeds", nargs="+", type=_seed, metavar="SEED", help="default: the file's")
    ablation.add_argument("--output-dir", default="results/ablation", help="where runs and the report go")
    ablation.add_argument("--data-dir", default="data", help="where data sets are (full scale)")
    ablation.add_argument("--device", default="cpu", help="cpu, cuda or auto (default %(default)s)")
    ablation.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_report_command(sub: Any) -> None:
    """``report``: a report from result files."""
    report = sub.add_parser("report", help="an HTML and Markdown report (tables, figures) from result files",
                            description="Load every result file under RESULTS_DIR (ours or DeepOBS 1.2/1.1; files "
                                        "that break the result schema are named and left out), choose each "
                                        "optimizer's setting on validation (the rule and every choice stated), and "
                                        "write report.html, report.md, figures/ and tables/ to --out.")
    report.add_argument("results", nargs="+", metavar="RESULTS_DIR", help="result directories (or files)")
    report.add_argument("--out", help="where the report goes (default: RESULTS_DIR/report)")
    report.add_argument("--problems", nargs="+", metavar="PROBLEM", help="problems to report, in this order")
    report.add_argument("--optimizers", nargs="+", metavar="NAME", help="optimizers to report, in this order")
    report.add_argument("--reference", nargs="+", default=[], metavar="DIR",
                        help="baseline result directories, drawn dashed in the performance figure")
    report.add_argument("--mode", choices=["final", "best"], default="final",
                        help="select on the final epoch or the best epoch (default %(default)s)")
    report.add_argument("--metric", help="selection metric: " + ", ".join(SELECTION_METRICS) + " (DeepOBS's "
                        "plural keys too; default: validation accuracy where the problem has one, else validation "
                        "loss); test_accuracy or test_loss stand in for the validation metric only where files have no "
                        "validation curves and --legacy-test-selection is given")
    report.add_argument("--legacy-test-selection", action="store_true",
                        help="where the files have no validation curves (DeepOBS 1.1), choose settings on the test "
                             "metric as DeepOBS did then; every such table and figure says so")
    report.add_argument("--spread", choices=["quartiles", "std"], default="quartiles",
                        help="median with quartiles, or mean with standard deviation (default %(default)s)")
    report.add_argument("--baseline", default="SGD", help="runtimes are relative to it (default %(default)s)")
    report.add_argument("--title", default="probprec report", help="the report's title")


def _add_experiment_command(sub: Any) -> None:
    """``experiment``: a thesis or paper experiment and its report."""
    experiment = sub.add_parser("experiment", help="run a thesis or paper experiment and write its report",
                                description="Run one scale of an experiment (a sweep file with a [report] table) "
                                            f"and write its report. Shipped: {', '.join(experiment_names())}.")
    experiment.add_argument("name", help="a shipped experiment or the path of a sweep file")
    experiment.add_argument("--scale", default="smoke", help="smoke (CI, seconds) or full (default %(default)s)")
    experiment.add_argument("--output-dir", help="default: results/NAME/SCALE")
    experiment.add_argument("--report-only", action="store_true", help="only (re)write the report")
    sweep_cli.add_executor_options(experiment)


def _add_runtime_command(sub: Any) -> None:
    """``runtime``: time per epoch relative to SGD (thesis Exp. 2)."""
    runtime = sub.add_parser("runtime", help="thesis Exp. 2: time per epoch relative to SGD, wall clock and CPU",
                             description="Per repetition, SGD (lr 0.01) and then each optimizer for --epochs "
                                         "epochs; prints each optimizer's time per epoch relative to SGD's.")
    runtime.add_argument("--problem", default="mnist_mlp", help="default %(default)s (needs --data-dir)")
    runtime.add_argument("--optimizers", nargs="+", metavar="NAME",
                         default=["Adam", "PreconditionedSGD", "AdaptiveSGD", "OnlyAdaptiveSGD"])
    runtime.add_argument("--repetitions", type=_positive_int, default=5, help="default %(default)s")
    runtime.add_argument("--epochs", type=_positive_int, default=5, help="default %(default)s")
    runtime.add_argument("--batch-size", type=_positive_int, help="default: the problem's")
    runtime.add_argument("--data-dir", default="data", help="where data sets are")
    runtime.add_argument("--output-dir", default="results/runtime", help="default %(default)s")
    runtime.add_argument("--device", default="cpu", help="cpu, cuda or auto (default %(default)s)")


def _add_demo_command(sub: Any) -> None:
    """``demo``: PreconditionedSGD and SGD side by side on scikit-learn's digits."""
    demo = sub.add_parser("demo", help="PreconditionedSGD and SGD side by side on scikit-learn's digits",
                          description="A quick side-by-side training on scikit-learn's digits (no download).")
    demo.add_argument("--epochs", type=_positive_int, default=10, help="epochs (default %(default)s)")
    demo.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default %(default)s)")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation and batch order")
    demo.add_argument("--output-dir", default="results/demo", help="where demo.json and demo.png go")


def _build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    parser = _Parser(prog="probprec", description="Probabilistic preconditioning: benchmarks and demos.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_benchmark_command(sub)
    _add_run_command(sub)
    _add_ablation_command(sub)
    _add_report_command(sub)
    _add_experiment_command(sub)
    _add_runtime_command(sub)
    sweep_cli.add_commands(sub)
    sub.add_parser("list", help="the problems and optimizers with their defaults",
                   description="List the problems and optimizers with their defaults.")
    _add_demo_command(sub)
    return parser


def _list() -> None:
    from .optimizers import OPTIMIZERS
    from .problems import PROBLEMS

    print("problems (name, parameters, batch size, epochs, L2, metric, data):")
    for name, cls in PROBLEMS.items():
        data = cls.dataset or "embedded"
        problem = cls()
        count = problem.count_parameters(problem.model())
        print(f"  {name:<22} {count:>10,} {cls.batch_size:>5} {cls.epochs:>5} {cls.l2:>8g}  {cls.metric:<9} "
              f"{data:<9} {cls.description}")
    print("\noptimizers (name, defaults; tuned learning rates per problem where known):")
    for name, spec in OPTIMIZERS.items():
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items()) or (
            "lr estimated" if spec.second_order else "its package's defaults")
        if name.startswith("PreconditionedTuned"):
            defaults = "lr required unless tuned"
        tuned = f"; tuned lr for {', '.join(spec.tuned_lr)}" if spec.tuned_lr else ""
        print(f"  {name:<28} {defaults}{tuned}  ({spec.description})")
    print("  any torch.optim class by its path, e.g. torch.optim.RMSprop --hp lr=0.01")


def _run(args: argparse.Namespace) -> int:
    from .data_parallel import group_environment, run_data_parallel
    from .hyperparams import parse_hyperparameters
    from .runner import RunConfig, run
    from .threads import threads_per_process, using_threads

    hyperparams = parse_hyperparameters(args.hp)
    config = RunConfig(
        args.problem, args.optimizer, hyperparams, seed=args.seed, epochs=args.epochs,
        batch_size=args.batch_size, l2=args.l2, restart=args.restart, data_dir=args.data_dir,
        download=args.download, output_dir=args.output_dir, force=args.force, device=args.device,
        progress=not args.no_progress, processes=args.nproc_per_node,
    )
    group = group_environment()
    if config.processes > 1 or group is not None:
        result = run_data_parallel(config)
        if group is not None and group.rank != 0:  # rank 0 reports the run (torchrun)
            return EXIT_CODES[result.status]
    else:
        with using_threads(threads_per_process()):
            result = run(config)
    record = result.record
    line = (f"{result.status}: {record.get('testproblem')} {record.get('optimizer_name')} "
            f"seed {record.get('random_seed')}")
    if record.get("test_losses"):
        line += f", final test loss {record['test_losses'][-1]:.4g}"
        if record.get("test_accuracies"):
            line += f", test accuracy {record['test_accuracies'][-1]:.4f}"
    if record.get("status_reason"):
        line += f" ({record['status_reason']})"
    print(f"{line}\n  {result.path}")
    return EXIT_CODES[result.status]


def _benchmark(args: argparse.Namespace) -> int:
    from .benchmark import run_benchmark
    from .problems import EMBEDDED

    unknown = [p for p in args.problems or [] if p not in EMBEDDED]
    if unknown:
        raise ConfigError(f"not an embedded problem: {', '.join(unknown)} (embedded: {', '.join(EMBEDDED)})")
    results = run_benchmark(args.output_dir, args.problems, args.optimizers, args.seeds, args.quick, args.force,
                            progress=not args.no_progress)
    if any(r.status == "interrupted" for r in results):
        return 130
    return 1 if any(r.status == "failed" for r in results) else 0


def _ablation(args: argparse.Namespace) -> int:
    from .ablation import run_ablation

    run_ablation(args.output_dir, args.scale, args.config, args.seeds, args.data_dir, args.device,
                 progress=not args.no_progress)
    return 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .analysis import ReportOptions, UnknownMetricError, write_report
    from .analysis.report import ReportFolderError

    out = args.out or str(Path(args.results[0]) / "report")
    options = ReportOptions(title=args.title, problems=args.problems, optimizers=args.optimizers,
                            mode=args.mode, metric=args.metric, reference=args.reference, baseline=args.baseline,
                            spread=args.spread, legacy_test_selection=args.legacy_test_selection)
    try:
        report = write_report(args.results, out, options)
    except ReportFolderError as error:
        raise UserError(f"--out {error.folder}: {error.reason}") from None
    except (UnknownMetricError, ValueError) as error:
        print(f"probprec: error: {error}", file=sys.stderr)
        return 2
    for line in report.problems_found + report.notes:
        print(f"probprec: warning: {line}", file=sys.stderr)
    print(f"wrote {report.html}, {report.markdown}, {len(report.figures)} figure files and {len(report.tables)} "
          f"tables in {out}")
    return 0 if report.runs else 1


def _experiment(args: argparse.Namespace) -> int:
    from .experiment import run_experiment

    result = run_experiment(args.name, args.scale, args.output_dir, args.data_dir, args.device, args.executor,
                            args.workers, args.report_only, slurm=sweep_cli.slurm_options(args))
    return result.exit_code


def _runtime(args: argparse.Namespace) -> int:
    from .experiment import run_runtime

    try:
        run_runtime(args.problem, args.optimizers, args.repetitions, args.epochs, args.batch_size, args.output_dir,
                    args.data_dir, args.device)
    except KeyboardInterrupt:
        return 130
    return 0


def _list_command(args: argparse.Namespace) -> int:
    _list()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .results import ensure_writable_folder

    ensure_writable_folder(args.output_dir)  # before training, not after
    run_demo(args.epochs, args.batch_size, args.seed, args.output_dir)
    return 0


COMMANDS = {"list": _list_command, "run": _run, "benchmark": _benchmark, "ablation": _ablation, "report": _report,
            "experiment": _experiment, "runtime": _runtime, "demo": _demo}
"""The handler of each command except ``sweep`` and ``tune`` (:mod:`.sweep_cli`)."""


def _check_local_device(args: argparse.Namespace) -> None:
    """``--device`` of a command that trains in this process or its workers (Slurm nodes check their own)."""
    if getattr(args, "device", None) is not None and getattr(args, "executor", LOCAL) == LOCAL:
        from .devices import resolve_device

        resolve_device(args.device)


def _dispatch(args: argparse.Namespace) -> int:
    _check_local_device(args)
    code = sweep_cli.dispatch(args)
    return code if code is not None else COMMANDS[args.command](args)


def _error(message: str) -> int:
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"probprec: error: {one_line}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status.

    Bad input and a hostile environment (:class:`~probprec.bench.errors.UserError`, ``OSError``) are reported in
    one line on standard error with status 2, whichever command met them; Ctrl-C in one line with status 130.
    """
    args = _build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UserError as error:
        return _error(str(error))
    except BrokenPipeError as error:
        if error.filename is not None:
            return _error(describe_os_error(error))
        # the reader of our output left (`probprec list | head`): nothing more may go to it, not even at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _error("standard output: Broken pipe")
    except OSError as error:
        return _error(describe_os_error(error))
    except KeyboardInterrupt:  # runs in progress record it themselves; the user sees one line, no traceback
        print("probprec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
