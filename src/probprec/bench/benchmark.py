"""The main job: the embedded benchmark, its summary table and its plots.

Every problem that needs no download but the robustness family (which the
contest, ``probprec experiment lr_free``, runs), four optimizers (PreconditionedSGD,
AdaptiveSGD, SGD, Adam), three seeds; results in DeepOBS's layout under the
output directory, then the report (:mod:`probprec.bench.analysis`) in
``report/``: ``report.html``, ``report.md``, figures and tables. Runs whose
result exists are skipped, so a second invocation only redraws the report.
The runs take turns in this process, with the thread count of
:func:`probprec.bench.threads.threads_per_process`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from .analysis import ReportOptions, write_report
from .problems import EMBEDDED, FAMILY
from .runner import RunConfig, RunResult, run
from .threads import threads_per_process, using_threads
from .wording import counted

__all__ = ["BENCHMARK_OPTIMIZERS", "BENCHMARK_SEEDS", "console_table", "run_benchmark"]

BENCHMARK_OPTIMIZERS = ["PreconditionedSGD", "AdaptiveSGD", "SGD", "Adam"]
BENCHMARK_SEEDS = [42, 43, 44]
QUICK_EPOCHS = {"quadratic_deep": 20, "paper_regression": 2}
"""Shorter budgets for ``--quick`` (the others run 5 epochs)."""


def run_benchmark(
    output_dir: str | Path = "results/benchmark",
    problems: list[str] | None = None,
    optimizers: list[str] | None = None,
    seeds: list[int] | None = None,
    quick: bool = False,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[RunResult]:
    """Run the embedded benchmark and write its summary and plots; returns every run's result."""
    problems = problems or [p for p in EMBEDDED if p not in FAMILY]
    optimizers = optimizers or list(BENCHMARK_OPTIMIZERS)
    seeds = seeds or list(BENCHMARK_SEEDS)
    output = Path(output_dir)
    configs = [RunConfig(problem, optimizer, seed=seed, epochs=QUICK_EPOCHS.get(problem, 5) if quick else None,
                         output_dir=str(output), force=force, progress=progress)
               for problem in problems for optimizer in optimizers for seed in seeds]
    echo(f"benchmark: {counted(len(problems), 'problem')} x {counted(len(optimizers), 'optimizer')} x "
         f"{counted(len(seeds), 'seed')} = {counted(len(configs), 'run')} -> {output}")
    start = time.perf_counter()
    with using_threads(threads_per_process()):
        results = _run_all(configs, echo)
    if results[-1].status == "interrupted":
        echo("interrupted: run the same command again to resume")
        return results
    echo(f"finished in {time.perf_counter() - start:.0f} s")
    report = write_report([r.path for r in results], output / "report", ReportOptions(
        title="probprec: the embedded benchmark", problems=problems, optimizers=optimizers,
        description=f"Every embedded problem x {', '.join(optimizers)} x seeds {', '.join(map(str, seeds))}; "
                    "default hyperparameters (tuned learning rates where known)."))
    echo("\n" + console_table(report.summary))
    echo(f"report: {report.html} (and report.md, {len(report.figures) // 2} figures, tables/)")
    return results


def _run_all(configs: list[RunConfig], echo: Callable[[str], None]) -> list[RunResult]:
    """Run ``configs`` in turn, one progress line each; stop after an interrupted run."""
    results = []
    for config in configs:
        result = run(config)
        results.append(result)
        echo(f"  [{len(results):>3}/{len(configs)}] {config.problem:<22} {config.optimizer:<18} seed {config.seed}: "
             f"{result.status:<10} {_final(result.record)}")
        if result.status == "interrupted":
            break
    return results


def _final(record: dict[str, Any]) -> str:
    metric = record.get("problem", {}).get("metric", "loss")
    if not record.get("test_losses"):
        return ""
    text = f"test loss {record['test_losses'][-1]:.4g}"
    if metric == "accuracy" and record.get("test_accuracies"):
        text += f", test accuracy {record['test_accuracies'][-1]:.3f}"
    return text


def console_table(summary: pd.DataFrame) -> str:
    """Problem, optimizer, status and the final test metric (median over seeds) of a report's summary."""
    lines = [f"{'problem':<22} {'optimizer':<18} {'runs':<24} {'final test metric (median)':<28} s / epoch"]
    for row in summary.to_dict("records"):
        accuracy = row.get("final_test_accuracy_median", math.nan)
        if isinstance(accuracy, float) and not math.isnan(accuracy):
            metric = f"accuracy {accuracy:.4f}"
        elif not math.isnan(row["final_test_loss_median"]):
            metric = f"loss {row['final_test_loss_median']:.4g}"
        else:
            metric = "n/a (no run finished)"
        seconds = row["seconds_per_epoch_median"]
        lines.append(f"{row['problem']:<22} {row['optimizer']:<18} {row['status']:<24} {metric:<28} "
                     + ("n/a" if math.isnan(seconds) else f"{seconds:.4f}"))
    return "\n".join(lines)
