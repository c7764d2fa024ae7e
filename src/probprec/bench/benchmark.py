"""The main job: the embedded benchmark, its summary table and its plots.

Every problem that needs no download, four optimizers (PreconditionedSGD,
AdaptiveSGD, SGD, Adam), three seeds; results in DeepOBS's layout under the
output directory, then ``summary.md``/``summary.csv`` and one figure per problem
in ``plots/``. Runs whose result exists are skipped, so a second invocation only
redraws the summary.
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .problems import EMBEDDED, get_problem
from .results import write_text_atomic
from .runner import RunConfig, RunResult, run

__all__ = ["BENCHMARK_OPTIMIZERS", "BENCHMARK_SEEDS", "run_benchmark", "summarize"]

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
    problems = problems or list(EMBEDDED)
    optimizers = optimizers or list(BENCHMARK_OPTIMIZERS)
    seeds = seeds or list(BENCHMARK_SEEDS)
    output = Path(output_dir)
    total = len(problems) * len(optimizers) * len(seeds)
    echo(f"benchmark: {len(problems)} problems x {len(optimizers)} optimizers x {len(seeds)} seeds = {total} runs "
         f"-> {output}")
    results = []
    start = time.perf_counter()
    for problem in problems:
        epochs = (QUICK_EPOCHS.get(problem, 5) if quick else None)
        for optimizer in optimizers:
            for seed in seeds:
                config = RunConfig(problem, optimizer, seed=seed, epochs=epochs, output_dir=str(output),
                                   force=force, progress=progress)
                result = run(config)
                results.append(result)
                echo(f"  [{len(results):>3}/{total}] {problem:<22} {optimizer:<18} seed {seed}: "
                     f"{result.status:<10} {_final(result.record)}")
                if result.status == "interrupted":
                    echo("interrupted: run the same command again to resume")
                    return results
    echo(f"finished in {time.perf_counter() - start:.0f} s")
    table = summarize(results)
    write_text_atomic(output / "summary.md", table.markdown)
    write_text_atomic(output / "summary.csv", table.csv)
    echo("\n" + table.markdown)
    written = plot_results(results, output / "plots", problems, optimizers)
    echo(f"wrote {output / 'summary.md'}, {output / 'summary.csv'} and {len(written)} plots in {output / 'plots'}")
    return results


def _final(record: dict[str, Any]) -> str:
    metric = record.get("problem", {}).get("metric", "loss")
    if not record.get("test_losses"):
        return ""
    text = f"test loss {record['test_losses'][-1]:.4g}"
    if metric == "accuracy" and record.get("test_accuracies"):
        text += f", test accuracy {record['test_accuracies'][-1]:.3f}"
    return text


class Summary:
    """The summary table as Markdown and CSV."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    @property
    def csv(self) -> str:
        buffer = io.StringIO()
        if self.rows:
            writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]))
            writer.writeheader()
            writer.writerows(self.rows)
        return buffer.getvalue()

    @property
    def markdown(self) -> str:
        head = ["problem", "optimizer", "runs", "status", "final test loss", "final test accuracy",
                "final train loss", "s / epoch"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            acc = "" if r["test_accuracy_median"] is None else _spread(r, "test_accuracy", ".3f")
            lines.append(f"| {r['problem']} | {r['optimizer']} | {r['runs']} | {r['status']} | "
                         f"{_spread(r, 'test_loss', '.4g')} | {acc} | {_spread(r, 'train_loss', '.4g')} | "
                         f"{_seconds(r['seconds_per_epoch'])} |")
        note = ("\nMedians over seeds with the lowest and highest value in brackets; final = after the last "
                "epoch a run completed.\n")
        return "\n".join(lines) + "\n" + note


def _seconds(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"  # NaN: no epoch completed


def _spread(row: dict[str, Any], key: str, fmt: str) -> str:
    if row[f"{key}_median"] is None:
        return "n/a"
    return f"{row[f'{key}_median']:{fmt}} [{row[f'{key}_min']:{fmt}}, {row[f'{key}_max']:{fmt}}]"


def summarize(results: list[RunResult]) -> Summary:
    """One row per problem and optimizer: status counts and final metrics over seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        record = result.record
        groups[(record["testproblem"], record["optimizer_name"])].append(record)
    rows = []
    for (problem, optimizer), records in groups.items():
        statuses = defaultdict(int)
        for r in records:
            statuses[r["status"]] += 1
        row: dict[str, Any] = {"problem": problem, "optimizer": optimizer, "runs": len(records),
                               "status": ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))}
        for key, name in (("test_losses", "test_loss"), ("test_accuracies", "test_accuracy"),
                          ("train_losses", "train_loss")):
            values = [r[key][-1] for r in records if r.get(key) and r[key][-1] is not None]
            row[f"{name}_median"] = statistics.median(values) if values else None
            row[f"{name}_min"] = min(values) if values else None
            row[f"{name}_max"] = max(values) if values else None
        times = [t for r in records for t in r.get("epoch_wall_times", [])]
        row["seconds_per_epoch"] = statistics.median(times) if times else float("nan")
        rows.append(row)
    return Summary(rows)


def plot_results(results: list[RunResult], folder: Path, problems: list[str], optimizers: list[str]) -> list[Path]:
    """Per problem: test loss, train loss (and test and train accuracy) against epochs; median and range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    by_problem: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        by_problem[result.record["testproblem"]][result.record["optimizer_name"]].append(result.record)
    written = []
    for problem in problems:
        if problem not in by_problem:
            continue
        accuracy = get_problem(problem).metric == "accuracy"
        panels = [("test_losses", "test loss"), ("train_losses", "train loss")]
        if accuracy:
            panels += [("test_accuracies", "test accuracy"), ("train_accuracies", "train accuracy")]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.0), constrained_layout=True,
                                 squeeze=False)
        for optimizer in optimizers:
            records = by_problem[problem].get(optimizer, [])
            for ax, (key, title) in zip(axes[0], panels, strict=True):
                curves = [[v for v in r.get(key) or [] if v is not None] for r in records]
                curves = [c for c in curves if c]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                columns = list(zip(*[c[:length] for c in curves], strict=True))
                med = [statistics.median(c) for c in columns]
                line = ax.plot(range(length), med, label=optimizer)[0]
                ax.fill_between(range(length), [min(c) for c in columns], [max(c) for c in columns],
                                color=line.get_color(), alpha=0.2, linewidth=0)
                ax.set_title(title)
                ax.set_xlabel("epoch")
        for ax, (key, _) in zip(axes[0], panels, strict=True):
            values = [v for records in by_problem[problem].values() for r in records for v in (r.get(key) or [])
                      if v is not None]
            if "loss" in key and values and min(values) > 0:
                ax.set_yscale("log")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(problem)
        path = folder / f"{problem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
