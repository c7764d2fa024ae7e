"""The experiments of the thesis and the paper as sweep files, each one command from its report.

An experiment is a sweep file (:mod:`.sweeps`) in ``probprec/bench/experiments/``
(or any path) with a ``[report]`` table. :func:`run_experiment` runs one scale of
it (``smoke`` for CI: a few steps on embedded or generated data; ``full``: the
thesis's budget, for a GPU or a cluster) and writes its report; the runs go to
``<output>/runs`` and the report to ``<output>/report``. A file with ``protocol =
"tune"`` runs through the tuning protocol (:mod:`.tuning`; its record
``tuning.md`` goes beside the runs), so that optimizers with a grid are tuned on
validation and those with one setting run it with every seed. :func:`run_runtime`
is thesis Exp. 2 as DeepOBS's runtime estimate did it (SGD and the other
optimizers alternately, several repetitions), but per epoch, with CPU time,
evaluation excluded.

``[report]`` keys: ``title``, ``baseline`` (runtimes are divided by it),
``sensitivity`` (label -> hyperparameter), ``mode``, ``metric``, ``spread``,
``targets`` (problem -> validation target), ``reference`` (result directories of baselines),
``versus`` (the optimizer of the contest section's win/tie/loss table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .analysis import ReportOptions, load_results, runtime_ratios, write_report
from .analysis.load import hyperparams_key
from .analysis.report import Report, runtime_table
from .executor import LOCAL
from .optimizers import get_optimizer
from .sweeps import SweepError, SweepSpec, expand, load_sweep

if TYPE_CHECKING:  # the sweep's modules load when a sweep runs
    from .outcomes import SweepSummary
    from .slurm_executor import SlurmOptions
    from .tuning import TuningResult

__all__ = ["EXPERIMENT_DIR", "ExperimentResult", "experiment_names", "experiment_path", "report_options",
           "run_experiment", "run_runtime"]

EXPERIMENT_DIR = Path(__file__).resolve().parent / "experiments"
REPORT_KEYS = {"title", "baseline", "sensitivity", "mode", "metric", "spread", "targets", "reference", "versus"}


def experiment_names() -> list[str]:
    """The experiments that ship with probprec (the ablation has its own command)."""
    return sorted(p.stem for p in EXPERIMENT_DIR.glob("*.toml") if p.stem != "ablation")


def experiment_path(name: str | Path) -> Path:
    """A shipped experiment by name, or a sweep file by path."""
    path = Path(name)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SweepError(f"{path}: no such experiment file")
        return path
    if str(name) in experiment_names():
        return EXPERIMENT_DIR / f"{name}.toml"
    raise SweepError(f"unknown experiment {str(name)!r}; known experiments: {', '.join(experiment_names())}, "
                     "or a path to a sweep file")


def labels_of(spec: SweepSpec) -> tuple[dict[tuple[str, str, str], str], list[str]]:
    """(problem, optimizer, hyperparameter key) -> label of every run of the sweep, and the labels in order."""
    labels: dict[tuple[str, str, str], str] = {}
    for sweep_run in expand(spec, output_dir="."):
        config = sweep_run.config
        hyperparams = get_optimizer(config.optimizer).hyperparameters(config.problem, config.hyperparams)
        labels.setdefault((config.problem, config.optimizer, hyperparams_key(hyperparams)), sweep_run.label)
    return labels, list(dict.fromkeys(labels.values()))


def report_options(spec: SweepSpec) -> ReportOptions:
    """The report options of a sweep: its ``[report]`` table, its problem order and its optimizer labels."""
    table = dict(spec.report)
    unknown = sorted(set(table) - REPORT_KEYS)
    if unknown:
        allowed = ", ".join(sorted(REPORT_KEYS))
        raise SweepError(f"{spec.path} [report]: unknown key {unknown[0]!r} (allowed: {allowed})")
    labels, order = labels_of(spec)
    reference = table.get("reference", [])
    options = ReportOptions(
        title=str(table.get("title", spec.name)), problems=list(spec.problems), optimizers=order,
        mode=str(table.get("mode", "final")), metric=table.get("metric"), baseline=str(table.get("baseline", "SGD")),
        spread=str(table.get("spread", "quartiles")), sensitivity=table.get("sensitivity"),
        targets=table.get("targets"), labels=labels, description=spec.description,
        reference=[reference] if isinstance(reference, str) else list(reference), versus=table.get("versus"),
    )
    missing = [name for name in (options.sensitivity or {}) if name not in order]
    if missing:
        raise SweepError(f"{spec.path} [report]: sensitivity names {missing[0]!r}, which is not an optimizer label "
                         f"of the sweep ({', '.join(order)})")
    return options


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` did."""

    sweep: SweepSummary | None
    """The sweep's summary (counts of completed, diverged, failed, skipped runs; with the tuning protocol, of its
    last step); None with ``report_only``."""
    report: Report
    tuning: TuningResult | None = None
    """The tuning protocol's result (``protocol = "tune"``)."""

    @property
    def exit_code(self) -> int:
        """The command's exit status: the sweep's (or the tuning's), 0 with ``report_only``."""
        if self.tuning is not None:
            return self.tuning.exit_code
        return 0 if self.sweep is None else self.sweep.exit_code


def run_experiment(name: str | Path, scale: str = "smoke", output_dir: str | Path | None = None,
                   data_dir: str = "data", device: str = "cpu", executor: str = LOCAL, workers: int | None = None,
                   report_only: bool = False, echo: Callable[[str], None] = print, slurm: SlurmOptions | None = None,
                   ) -> ExperimentResult:
    """Run one scale of an experiment and write its report (see the module docstring).

    Raises:
        SweepError: a bad experiment file, before anything runs.
    """
    from .orchestration import run_sweep
    from .tuning import tune

    path = experiment_path(name)
    spec = load_sweep(path, scale)
    options = report_options(spec)
    output = Path(output_dir) if output_dir is not None else Path("results") / spec.name / scale
    summary, tuning = None, None
    if not report_only and spec.protocol == "tune":
        tuning = tune(spec, output / "runs", metric=options.metric, mode=options.mode, seeds=spec.seeds,
                      executor=executor, workers=workers, data_dir=data_dir, device=device, slurm=slurm, echo=echo)
        summary = tuning.rerun or tuning.search
    elif not report_only:
        summary = run_sweep(spec, output / "runs", executor=executor, workers=workers, data_dir=data_dir,
                            device=device, slurm=slurm, echo=echo)
    report = write_report(output / "runs", output / "report", options)
    for line in report.problems_found:
        echo(f"warning: {line}")
    echo(f"report: {report.html} and {report.markdown}")
    return ExperimentResult(summary, report, tuning)


def run_runtime(problem: str = "mnist_mlp", optimizers: list[str] | None = None, repetitions: int = 5,
                epochs: int = 5, batch_size: int | None = None, output_dir: str | Path = "results/runtime",
                data_dir: str = "data", device: str = "cpu", baseline: str = "SGD", progress: bool = False,
                echo: Callable[[str], None] = print) -> Report:
    """Thesis Exp. 2: per repetition, the baseline and then every optimizer, each ``epochs`` epochs; the report.

    Repetition r uses seed 42 + r for every optimizer. Runs whose result exists are not repeated (their
    recorded times are used). The report's runtime table divides each run's median epoch time by the
    baseline run of the same repetition.
    """
    from .runner import RunConfig, run
    from .threads import threads_per_process, using_threads
    from .wording import counted

    optimizers = optimizers or ["Adam", "PreconditionedSGD", "AdaptiveSGD", "OnlyAdaptiveSGD"]
    names = [baseline, *[o for o in optimizers if o != baseline]]
    output = Path(output_dir)
    hyperparams = {"SGD": {"lr": 0.01}}  # DeepOBS's estimate_runtime: plain SGD at 0.01
    total = repetitions * len(names)
    threads = threads_per_process()
    echo(f"runtime: {problem}, {counted(repetitions, 'repetition')} x {counted(len(names), 'optimizer')} x "
         f"{counted(epochs, 'epoch')}, {counted(threads, 'torch thread')} -> {output}")
    done = 0
    with using_threads(threads):
        for repetition in range(repetitions):
            for name in names:
                result = run(RunConfig(problem, name, dict(hyperparams.get(name, {})), seed=42 + repetition,
                                       epochs=epochs, batch_size=batch_size, data_dir=data_dir, device=device,
                                       output_dir=str(output / "runs"), progress=progress))
                done += 1
                echo(f"  [{done}/{total}] {name} seed {42 + repetition}: {result.status}")
                if result.status == "interrupted":
                    raise KeyboardInterrupt
    options = ReportOptions(title=f"Runtime per epoch relative to {baseline} on {problem}", problems=[problem],
                            optimizers=names, baseline=baseline)
    report = write_report(output / "runs", output / "report", options)
    header, rows = runtime_table(runtime_ratios(load_results(output / "runs"), baseline), names, baseline)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
    echo(f"report: {report.html}")
    return report
