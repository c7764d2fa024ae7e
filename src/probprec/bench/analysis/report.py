"""The report: from result directories to ``report.html``, ``report.md``, figures and tables.

:func:`write_report` loads the runs (:mod:`.load`), chooses every optimizer's
setting on validation (:mod:`.selection`), aggregates the seeds, draws the
figures that the data support (:mod:`.figures`) and writes

* ``report.html`` (self-contained, figures embedded) and ``report.md`` (its twin, figures linked);
* ``figures/*.png`` and ``*.pdf``;
* ``tables/``: ``summary.csv`` (one row per problem and optimizer), ``selection.csv`` (every setting
  with its validation score and rank), ``time_to_target.csv``, ``runtime.csv`` and the tidy
  ``runs.csv`` and ``curves.csv`` (Parquet twins when pyarrow is installed).

Files that cannot be read are listed in the report, naming each, and
everything readable is still reported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ..results import write_text_atomic
from . import figures
from .document import Document
from .load import Results, load_results
from .profiles import performance_profile, profile_scores
from .selection import (
    _check_selection_metric,
    aggregate,
    default_metric,
    order,
    select_settings,
    selected_runs,
    summary_table,
    time_to_target,
)

__all__ = ["Report", "ReportOptions", "runtime_ratios", "runtime_table", "sensitivity_points", "write_report"]


@dataclass
class ReportOptions:
    """What to report and how."""

    title: str = "probprec report"
    problems: list[str] | None = None
    """Problems to report, in this order (None: all, in the order met)."""
    optimizers: list[str] | None = None
    """Optimizers (or sweep labels) to report, in this order."""
    mode: str = "final"
    """Selection on the ``final`` or the ``best`` epoch."""
    metric: str | None = None
    """Selection metric (None: validation accuracy, else validation loss)."""
    reference: list[str] = field(default_factory=list)
    """Result directories of baselines drawn dashed in the performance figure."""
    baseline: str = "SGD"
    """The optimizer that runtimes are divided by."""
    spread: str = "quartiles"
    """``quartiles`` (median, 25-75 %) or ``std`` (mean, one standard deviation) in the curves."""
    sensitivity: dict[str, str] | None = None
    """Optimizer -> hyperparameter for the sensitivity figure (None: every numeric one with >= 3 values)."""
    targets: dict[str, float] | None = None
    """Problem -> validation target (None: 95 % of the way from the initial to the best median value)."""
    labels: dict[tuple[str, str, str], str] | None = None
    """(problem, optimizer, hyperparameter key) -> label, to tell apart entries of one optimizer."""
    description: str = ""


@dataclass
class Report:
    """What :func:`write_report` wrote."""

    html: Path
    markdown: Path
    figures: list[Path]
    tables: list[Path]
    problems_found: list[str]
    summary: pd.DataFrame
    curves: dict[str, int] = field(default_factory=dict)
    """Figure name -> the number of labelled curves drawn in it (lines and reference lines)."""


def _check_options(options: ReportOptions) -> None:
    if options.mode not in ("final", "best"):
        raise ValueError(f"mode must be 'final' or 'best', got {options.mode!r}")
    if options.spread not in ("quartiles", "std"):
        raise ValueError(f"spread must be 'quartiles' or 'std', got {options.spread!r}")
    _check_selection_metric(options.metric)


def runtime_ratios(results: Results, baseline: str = "SGD") -> pd.DataFrame:
    """Per run: its median time per epoch divided by the baseline's, wall clock and CPU.

    The baseline run is the one with the same problem, batch size and seed (the runs of one repetition), or
    else the median over the baseline's runs on that problem and batch size.
    """
    rows = []
    curves = results.curves[results.curves["metric"].isin(["epoch_wall_time", "epoch_cpu_time"])]
    per_run = curves.groupby(["run_id", "metric"])["value"].median().unstack("metric")
    runs = results.runs.set_index("run_id").join(per_run, how="inner")
    if "epoch_wall_time" not in runs:
        return pd.DataFrame(columns=["run_id", "problem", "optimizer", "seed", "wall_ratio", "cpu_ratio"])
    for (_problem, _batch), group in runs.groupby(["problem", "batch_size"], sort=False):
        base = group[group["optimizer"] == baseline]
        if base.empty:
            continue
        for run_id, run in group.iterrows():
            same = base[base["seed"] == run["seed"]]
            reference = same if len(same) else base
            row = {"run_id": run_id, "problem": run["problem"], "optimizer": run["optimizer"], "seed": run["seed"]}
            for column, name in (("epoch_wall_time", "wall_ratio"), ("epoch_cpu_time", "cpu_ratio")):
                denominator = reference[column].median() if column in reference else math.nan
                row[name] = run[column] / denominator if column in run and denominator > 0 else math.nan
            rows.append(row)
    return pd.DataFrame(rows, columns=["run_id", "problem", "optimizer", "seed", "wall_ratio", "cpu_ratio"])


def sensitivity_points(results: Results, sensitivity: dict[str, str] | None,
                       metric_split: str = "test") -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per run of every optimizer with a swept hyperparameter: its value and the final metric.

    Returns the points (``problem, optimizer, hyperparameter, value, final``) and optimizer -> hyperparameter.
    """
    runs = results.runs
    chosen = dict(sensitivity or {})
    if sensitivity is None:
        for optimizer, group in runs.groupby("optimizer", sort=False):
            counts: dict[str, set] = {}
            for hp in group["hyperparams"]:
                for key, value in hp.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                        counts.setdefault(key, set()).add(value)
            swept = [k for k, v in counts.items() if len(v) >= 3]
            if swept:
                chosen[optimizer] = max(swept, key=lambda k: len(counts[k]))
    rows = []
    for run in runs.itertuples():
        key = chosen.get(run.optimizer)
        if key is None or key not in run.hyperparams:
            continue
        metric = default_metric(results, run.problem, metric_split)
        final = results.curves[(results.curves["run_id"] == run.run_id) & (results.curves["metric"] == metric)
                               & (results.curves["epoch"] == run.num_epochs)]["value"]
        value = float(final.iloc[0]) if len(final) and run.status == "completed" else math.nan
        rows.append({"problem": run.problem, "optimizer": run.optimizer, "hyperparameter": key,
                     "value": float(run.hyperparams[key]), "final": value, "metric": metric})
    points = pd.DataFrame(rows, columns=["problem", "optimizer", "hyperparameter", "value", "final", "metric"])
    swept_here = points.groupby(["problem", "optimizer"])["value"].transform("nunique") >= 2
    return points[swept_here].reset_index(drop=True), chosen


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "not reached"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _spread_cell(row: pd.Series, key: str, spread: str) -> str:
    if row.get(f"{key}_n", 0) == 0 or pd.isna(row.get(f"{key}_median")):
        return "n/a"
    if spread == "std":
        return f"{_fmt(row[f'{key}_mean'])} ± {_fmt(row[f'{key}_std'], 2)}"
    return f"{_fmt(row[f'{key}_median'])} [{_fmt(row[f'{key}_q25'])}, {_fmt(row[f'{key}_q75'])}]"


def _environment_rows(runs: pd.DataFrame) -> list[list[str]]:
    counts: dict[tuple, int] = {}
    for run in runs.itertuples():
        env = run.environment or {}
        packages = env.get("packages") or {}
        key = (str(run.device or "n/a"), str(env.get("cpu") or "n/a"), str(env.get("gpus") or "none"),
               str(packages.get("torch") or "n/a"), str(env.get("python") or "n/a"),
               str(env.get("git_commit") or "n/a"), str(run.source))
        counts[key] = counts.get(key, 0) + 1
    return [[*key, str(n)] for key, n in counts.items()]


def write_report(paths: str | Path | Sequence[str | Path], out_dir: str | Path,
                 options: ReportOptions | None = None) -> Report:
    """Load, select, aggregate, draw and write the report; see the module docstring.

    Raises:
        ValueError: a bad option (unknown metric, mode or spread), before anything is written.
    """
    options = options or ReportOptions()
    _check_options(options)
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    out = Path(out_dir)
    results = load_results(paths)
    if options.labels:
        results = results.relabel(options.labels)
    found = list(results.problems_found)
    for kind, wanted, present in (("problem", options.problems, results.problem_names),
                                  ("optimizer", options.optimizers, results.optimizer_names)):
        found += [f"no runs of {kind} {name!r} in the results" for name in wanted or [] if name not in present]
    results = results.subset(options.problems, options.optimizers)
    problems = order(results.problem_names, options.problems)
    optimizers = order(results.optimizer_names, options.optimizers)
    colors = figures.colors_for(optimizers)

    chosen, candidates = select_settings(results, options.metric, options.mode, problems=problems,
                                         optimizers=optimizers, return_candidates=True)
    picked = selected_runs(results, chosen)
    aggregated = aggregate(picked)
    ttt, targets = time_to_target(picked, options.targets)
    summary = summary_table(results, chosen, ttt)
    ratios = runtime_ratios(results, options.baseline) if len(results.runs) else None

    doc = Document(options.title)
    _overview(doc, results, paths, options, found)
    figure_dir = out / "figures"
    drawn: list[Path] = []

    curves: dict[str, int] = {}

    def draw(fig, name: str, caption: str) -> None:
        curves[name] = figures.count_curves(fig)
        paths_written = figures.save_figure(fig, figure_dir / name)
        drawn.extend(paths_written)
        doc.figure(paths_written[0], caption)

    if problems:
        doc.heading("Results per problem")
        doc.paragraph(f"Every optimizer's setting was chosen on the validation set ({options.mode} epoch, mean over "
                      "seeds; a setting with a diverged seed ranks last); the test set was not used to choose. "
                      + ("Cells: median [25 %, 75 %] over seeds. " if options.spread == "quartiles"
                         else "Cells: mean ± standard deviation over seeds. ")
                      + "Final = after the last epoch of the budget. `tables/selection.csv` lists every setting "
                        "with its validation score.")
        for problem in problems:
            _problem_section(doc, summary[summary["problem"] == problem], candidates, problem, options,
                             targets.get(problem), results.metric_kind(problem))
        doc.heading("Figures")
        reference = _reference(options, problems) if options.reference else None
        chunks = _panels(problems, results)
        for i, chunk in enumerate(chunks, start=1):
            suffix = f"_{i}" if len(chunks) > 1 else ""
            draw(figures.performance_figure(aggregated, chunk, optimizers, reference, options.spread, colors),
                 f"performance{suffix}", "Test and train loss (and accuracy) per epoch of every optimizer's chosen "
                 "setting" + (" (reference runs dashed)" if reference is not None else "") + ".")
        state = aggregated[aggregated["metric"].isin(["step_size", "top_curvature"])]
        chunks = [c for c in _panels([p for p in problems if p in set(state["problem"])], results)]
        for i, chunk in enumerate(chunks, start=1):
            suffix = f"_{i}" if len(chunks) > 1 else ""
            draw(figures.optimizer_state_figure(aggregated, chunk, optimizers, colors), f"optimizer_state{suffix}",
                 "The estimated step size and the largest estimated curvature at the end of each epoch.")
        if ratios is not None and len(ratios) and ratios["wall_ratio"].notna().any():
            present = [o for o in optimizers if o in set(ratios["optimizer"])]
            draw(figures.runtime_figure(ratios, present, options.baseline, colors), "runtime",
                 f"Training time per epoch relative to {options.baseline} (each dot one run; the bar: median "
                 "and quartiles).")
            doc.table(*runtime_table(ratios, present, options.baseline))
        _grid(doc, draw, results, problems, optimizers, options, colors)
        points, swept = sensitivity_points(results, options.sensitivity)
        if len(points):
            refs = _sensitivity_references(results, picked, swept, problems)
            sens_problems = [p for p in problems if p in set(points["problem"])]
            draw(figures.sensitivity_figure(points, sens_problems, list(dict.fromkeys(points["optimizer"])), refs,
                                            str(points["metric"].iloc[0]), colors),
                 "sensitivity", "Final " + str(points["metric"].iloc[0]).replace("_", " ") + " against "
                 + ", ".join(f"{o}'s {h}" for o, h in swept.items()) + " (each dot one seed; crosses: diverged; "
                 "dashed: optimizers without that hyperparameter).")
        if len(problems) >= 2 and len(optimizers) >= 2 and len(ttt):
            profile = performance_profile(ttt, "seconds")
            if not profile.empty and len(profile.columns):
                draw(figures.profile_figure(profile, optimizers, "seconds", colors), "performance_profile",
                     "Performance profiles: the fraction of problems on which an optimizer reaches the validation "
                     "target within a factor tau of the fastest.")
                scores = profile_scores(profile)
                doc.table(["optimizer", "profile score (area, 1 = always fastest)"],
                          [[o, _fmt(scores[o], 3)] for o in optimizers if o in scores])
    _environment(doc, results)

    tables = _write_tables(out, results, summary, candidates, ttt, ratios)
    html_path, md_path = out / "report.html", out / "report.md"
    write_text_atomic(md_path, doc.markdown(out))
    write_text_atomic(html_path, doc.html())
    return Report(html_path, md_path, drawn, tables, found, summary, curves)


def _panels(problems: list[str], results: Results, width: int = 4) -> list[list[str]]:
    """Problems in figure-sized groups: those with accuracies first, at most ``width`` per figure."""
    kinds = {p: results.metric_kind(p) for p in problems}
    ordered = [p for p in problems if kinds[p] == "accuracy"] + [p for p in problems if kinds[p] == "loss"]
    chunks: list[list[str]] = []
    for problem in ordered:
        if not chunks or len(chunks[-1]) == width or kinds[chunks[-1][0]] != kinds[problem]:
            chunks.append([])
        chunks[-1].append(problem)
    return chunks


def _overview(doc: Document, results: Results, paths: list, options: ReportOptions, found: list[str]) -> None:
    if options.description:
        doc.paragraph(options.description)
    statuses = results.runs["status"].value_counts()
    sources = (", ".join(f"`{p}`" for p in paths) if len(paths) <= 3
               else f"{len(paths)} result files under `{os.path.commonpath([str(p) for p in paths])}`")
    doc.paragraph(f"Generated {datetime.now().isoformat(timespec='seconds')} from {sources}: "
                  f"{_count(len(results.runs), 'run')} of "
                  f"{_count(len(results.problem_names), 'problem')} and "
                  f"{_count(len(results.optimizer_names), 'optimizer')} ("
                  + (", ".join(f"{n} {s}" for s, n in statuses.items()) or "none") + ").")
    if found:
        doc.heading("Files and names that could not be used")
        doc.bullets([f"`{line}`" if ": " not in line else f"`{line.split(': ', 1)[0]}`: {line.split(': ', 1)[1]}"
                     for line in found])
    failures = results.runs[results.runs["status"].isin(["diverged", "failed", "interrupted"])]
    if len(failures):
        doc.heading("Runs that did not complete")
        doc.table(["problem", "optimizer", "setting", "seed", "status", "reason"],
                  [[r.problem, r.optimizer, r.setting, r.seed, r.status, r.status_reason or ""]
                   for r in failures.itertuples()])


def _problem_section(doc: Document, rows: pd.DataFrame, candidates: pd.DataFrame, problem: str,
                     options: ReportOptions, target: tuple[str, float] | None, kind: str) -> None:
    doc.heading(problem, 3)
    metrics = [("final_test_loss", "final test loss"), ("final_train_loss", "final train loss")]
    if kind == "accuracy":
        metrics = [("final_test_accuracy", "final test accuracy"), *metrics]
    valid = f"best_valid_{kind}"
    header = ["optimizer", "chosen setting", "runs", *[m[1] for m in metrics], f"best valid {kind}",
              "epochs to target", "s to target", "s / epoch"]
    table = []
    for _, row in rows.iterrows():
        n_settings = int((candidates["problem"].eq(problem) & candidates["optimizer"].eq(row["optimizer"])).sum())
        setting = row["setting"] + (f" (best of {n_settings})" if n_settings > 1 else "")
        table.append([row["optimizer"], setting, row["status"],
                      *[_spread_cell(row, key, options.spread) for key, _ in metrics],
                      _spread_cell(row, valid, options.spread),
                      f"{_fmt(row.get('epochs_to_target_median'))} ({row.get('target_reached', 'n/a')})",
                      _fmt(row.get("seconds_to_target_median"), 3), _fmt(row["seconds_per_epoch_median"], 3)])
    doc.table(header, table)
    if target is not None:
        doc.paragraph(f"Validation target: {target[0].replace('_', ' ')} "
                      f"{'>=' if 'accuracy' in target[0] else '<='} {_fmt(target[1])}"
                      + (" (given)." if options.targets and problem in options.targets else
                         " (95 % of the way from the initial to the best median value; epochs to target: median "
                         "over seeds, reached/runs in brackets; seconds: training time, evaluation excluded)."))


def runtime_table(ratios: pd.DataFrame, optimizers: Sequence[str], baseline: str) -> tuple[list[str], list[list]]:
    """Header and rows: per optimizer, its runs and the wall-clock and CPU ratios (median [quartiles]; mean ± sd)."""
    rows = []
    for optimizer in optimizers:
        sub = ratios[ratios["optimizer"] == optimizer]
        cells = []
        for column in ("wall_ratio", "cpu_ratio"):
            values = sub[column].dropna()
            cells.append("n/a" if values.empty else
                         f"{values.median():.3f} [{values.quantile(0.25):.3f}, {values.quantile(0.75):.3f}]; "
                         f"{values.mean():.3f} ± {values.std() if len(values) > 1 else 0.0:.3f}")
        rows.append([optimizer, str(len(sub)), *cells])
    header = ["optimizer", "runs", f"wall clock / epoch, x {baseline}: median [quartiles]; mean ± sd",
              f"CPU / epoch, x {baseline}: median [quartiles]; mean ± sd"]
    return header, rows


def _grid(doc, draw, results: Results, problems: list[str], optimizers: list[str], options: ReportOptions,
          colors: dict[str, str]) -> None:
    sizes = results.runs.groupby("problem")["batch_size"].nunique()
    multi = [p for p in problems if sizes.get(p, 0) > 1]
    if not multi:
        return
    subset = results.subset(problems=multi)
    chosen = select_settings(subset, options.metric, options.mode, by=("problem", "optimizer", "batch_size"),
                             problems=problems, optimizers=optimizers)
    aggregated = aggregate(selected_runs(subset, chosen), by=("problem", "optimizer", "batch_size"))
    batch_sizes = sorted(int(b) for b in subset.runs["batch_size"].dropna().unique())
    draw(figures.grid_figure(aggregated, multi, batch_sizes, optimizers, "train_loss", colors), "batch_size_grid",
         "Train loss per epoch on a grid of problems (rows) and batch sizes (columns), each batch size's setting "
         "chosen on validation.")


def _sensitivity_references(results: Results, picked: Results, swept: dict[str, str],
                            problems: list[str]) -> pd.DataFrame | None:
    others = picked.runs[~picked.runs["optimizer"].isin(list(swept))]
    if others.empty:
        return None
    rows = []
    for run in others.itertuples():
        metric = default_metric(results, run.problem, "test")
        final = picked.curves[(picked.curves["run_id"] == run.run_id) & (picked.curves["metric"] == metric)
                              & (picked.curves["epoch"] == run.num_epochs)]["value"]
        rows.append({"problem": run.problem, "optimizer": run.optimizer,
                     "final": float(final.iloc[0]) if len(final) else math.nan})
    return pd.DataFrame(rows)


def _reference(options: ReportOptions, problems: list[str]) -> pd.DataFrame | None:
    reference = load_results(options.reference).subset(problems=problems)
    if reference.runs.empty:
        return None
    chosen = select_settings(reference, options.metric, options.mode)
    return aggregate(selected_runs(reference, chosen))


def _environment(doc: Document, results: Results) -> None:
    if results.runs.empty:
        return
    doc.heading("Environment")
    doc.table(["device", "CPU", "GPUs", "torch", "Python", "git commit", "source", "runs"],
              _environment_rows(results.runs))


def _write_tables(out: Path, results: Results, summary: pd.DataFrame, candidates: pd.DataFrame, ttt: pd.DataFrame,
                  ratios: pd.DataFrame | None) -> list[Path]:
    folder = out / "tables"
    written = results.to_files(folder)
    for name, table in (("summary", summary), ("selection", candidates), ("time_to_target", ttt),
                        ("runtime", ratios)):
        if table is None:
            continue
        table = table.copy()
        if "hyperparams" in table:
            table["hyperparams"] = [str(v) for v in table["hyperparams"]]
        path = folder / f"{name}.csv"
        write_text_atomic(path, table.to_csv(index=False))
        written.append(path)
    return written
