"""The text sections of a report: overview, the files that could not be used, the selection rule, the tables.

Each function adds blocks to a :class:`~.document.Document`; the numbers come
from the analysis (:class:`~.report.Analysis`), never computed here.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..collapse import DEFAULT_CRITERION
from .contest import ACCURACY_TIE, LOSS_TIE
from .document import Document
from .load import Results
from .metrics import LEGACY_TEST_LABEL

if TYPE_CHECKING:
    from .contest import Contest
    from .report import Analysis, ReportOptions

__all__ = ["contest_section", "count", "environment", "overview", "problem_section", "selection_rule"]


def count(n: int, noun: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: ``n/a`` for missing, ``not reached`` for infinity, numbers to ``digits`` significant digits."""
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
        return f"{fmt(row[f'{key}_mean'])} ± {fmt(row[f'{key}_std'], 2)}"
    return f"{fmt(row[f'{key}_median'])} [{fmt(row[f'{key}_q25'])}, {fmt(row[f'{key}_q75'])}]"


def _sources(paths: Sequence) -> str:
    if len(paths) <= 3:
        return ", ".join(f"`{p}`" for p in paths)
    return f"{len(paths)} result files under `{os.path.commonpath([str(p) for p in paths])}`"


def overview(doc: Document, analysis: Analysis, paths: Sequence, options: ReportOptions) -> None:
    """What was read, the files that could not be used, the runs that did not complete, collapsed or are stuck."""
    results = analysis.results
    if options.description:
        doc.paragraph(options.description)
    statuses = results.runs["status"].value_counts()
    stuck = results.runs[results.runs["collapsed_at"].notna() & (results.runs["status"] != "collapsed")]
    doc.paragraph(f"Generated {datetime.now().isoformat(timespec='seconds')} from {_sources(paths)}: "
                  f"{count(len(results.runs), 'run')} of {count(len(results.problem_names), 'problem')} and "
                  f"{count(len(results.optimizer_names), 'optimizer')} ("
                  + (", ".join(f"{n} {s}" for s, n in statuses.items()) or "none") + ")"
                  + (f"; {count(len(stuck), 'run')} stuck at chance" if len(stuck) else "") + ".")
    if analysis.found:
        doc.heading("Files and names that could not be used")
        doc.bullets([f"`{line}`" if ": " not in line else f"`{line.split(': ', 1)[0]}`: {line.split(': ', 1)[1]}"
                     for line in analysis.found])
    failures = results.runs[results.runs["status"].isin(["diverged", "collapsed", "failed", "interrupted"])]
    if len(failures):
        doc.heading("Runs that did not complete or learned nothing")
        doc.table(["problem", "optimizer", "setting", "seed", "status", "reason"],
                  [[r.problem, r.optimizer, r.setting, r.seed, r.status, r.status_reason or ""]
                   for r in failures.itertuples()])
    if len(stuck):
        criterion = DEFAULT_CRITERION
        doc.heading("Runs stuck at chance")
        doc.paragraph(f"{count(len(stuck), 'run')} stuck at chance: the training loss stayed within "
                      f"{criterion.loss_tolerance:.0%} of its initial value (or above it) without progress, or the "
                      f"training accuracy within {criterion.accuracy_margin:.0%} of chance, for "
                      f"{criterion.epochs} consecutive epochs (`probprec.bench.collapse`), in files whose runner "
                      "did not stop them (status `collapsed`). They keep their status and count in their setting's "
                      "statistics.")
        doc.table(["problem", "optimizer", "setting", "seed", "status", "from epoch", "evidence"],
                  [[r.problem, r.optimizer, r.setting, r.seed, r.status, r.collapsed_at, r.collapse_evidence]
                   for r in stuck.itertuples()])


def selection_rule(doc: Document, analysis: Analysis, options: ReportOptions) -> None:
    """The selection rule in words, the notes on optimizers without a choice, and the legacy label."""
    metric = (f"`{options.metric}`" if options.metric else
              "the validation accuracy where a problem has one, else the validation loss")
    doc.paragraph(f"Selection: per problem and optimizer, the setting with the best mean over seeds of {metric} "
                  f"({options.mode} epoch), settings compared on the seeds they all share (else each on its own "
                  "seeds); a setting with a diverged or failed seed ranks last; nothing is chosen by name. The "
                  "columns *selected on* and *how chosen* say it per optimizer. "
                  + ("Cells: median [25 %, 75 %] over seeds. " if options.spread == "quartiles"
                     else "Cells: mean ± standard deviation over seeds. ")
                  + "Final = after the last epoch of the budget. `tables/selection.csv` lists every setting "
                    "with its score.")
    if analysis.legacy_problems:
        doc.paragraph(f"Legacy files: the runs of {', '.join(sorted(analysis.legacy_problems))} have no "
                      "validation curves (DeepOBS 1.1); as asked (`--legacy-test-selection`), their settings were "
                      f"chosen on the test metric, as DeepOBS did then. Every such row and figure says "
                      f"*{LEGACY_TEST_LABEL}*: their test numbers are optimistic.")
    if analysis.notes:
        doc.heading("Optimizers without a chosen setting", 3)
        doc.bullets(analysis.notes)


def _row_cells(row: pd.Series, metrics: list[tuple[str, str]], valid: str, options: ReportOptions) -> list[str]:
    status = row["status"] + (f", {row['collapsed']} stuck at chance" if row.get("collapsed", 0) else "")
    return [row["optimizer"], row["setting"], row["selected_on"], row["how_chosen"], status,
            *[_spread_cell(row, key, options.spread) for key, _ in metrics], _spread_cell(row, valid, options.spread),
            f"{fmt(row.get('epochs_to_target_median'))} ({row.get('target_reached', 'n/a')})",
            fmt(row.get("seconds_to_target_median"), 3), fmt(row.get("seconds_per_epoch_median"), 3)]


def problem_section(doc: Document, analysis: Analysis, problem: str, options: ReportOptions) -> None:
    """One problem: a row per optimizer (chosen or not, and how), the final metrics, the validation target."""
    kind = analysis.results.metric_kind(problem)
    doc.heading(problem, 3)
    metrics = [("final_test_loss", "final test loss"), ("final_train_loss", "final train loss")]
    if kind == "accuracy":
        metrics = [("final_test_accuracy", "final test accuracy"), *metrics]
    valid = f"best_valid_{kind}"
    header = ["optimizer", "chosen setting", "selected on", "how chosen", "runs", *[m[1] for m in metrics],
              f"best valid {kind}", "epochs to target", "s to target", "s / epoch"]
    rows = analysis.summary[analysis.summary["problem"] == problem] if len(analysis.summary) else analysis.summary
    table = [_row_cells(row, metrics, valid, options) for _, row in rows.iterrows()]
    unchosen = analysis.candidates[(analysis.candidates["problem"] == problem)
                                   & ~analysis.candidates["optimizer"].isin(set(rows.get("optimizer", [])))]
    for optimizer, group in unchosen.groupby("optimizer", sort=False):
        reason = group.loc[group["rank"] == 1, "how_chosen"].iloc[0]
        table.append([str(optimizer), f"none of {count(len(group), 'setting')}", "nothing", reason,
                      str(int(group["runs"].sum())), *["n/a"] * (len(header) - 5)])
    doc.table(header, table)
    target = analysis.targets.get(problem)
    if target is not None:
        doc.paragraph(f"Validation target: {target[0].replace('_', ' ')} "
                      f"{'>=' if 'accuracy' in target[0] else '<='} {fmt(target[1])}"
                      + (" (given)." if options.targets and problem in options.targets else
                         " (95 % of the way from the initial to the best median value; epochs to target: median "
                         "over seeds, reached/runs in brackets; seconds: training time, evaluation excluded)."))


def _environment_rows(runs: pd.DataFrame) -> list[list[str]]:
    counts: dict[tuple, int] = {}
    for run in runs.to_dict("records"):
        env = run["environment"] or {}
        packages = env.get("packages") or {}
        key = (str(run["device"] or "n/a"), str(env.get("cpu") or "n/a"), str(env.get("gpus") or "none"),
               str(packages.get("torch") or "n/a"), str(env.get("python") or "n/a"),
               str(env.get("git_commit") or "n/a"), str(run["source"]))
        counts[key] = counts.get(key, 0) + 1
    return [[*key, str(n)] for key, n in counts.items()]


def environment(doc: Document, results: Results) -> None:
    """Where the runs ran: device, CPU, GPUs, torch, Python, commit and source, with counts."""
    if results.runs.empty:
        return
    doc.heading("Environment")
    doc.table(["device", "CPU", "GPUs", "torch", "Python", "git commit", "source", "runs"],
              _environment_rows(results.runs))


def _ratio(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}x"


def _count(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(int(value))


def _contest_rules(base: str) -> str:
    return ("Final test metric: the test accuracy (the test loss on problems without one) after the last epoch; a "
            "diverged run counts with its value before training, a collapsed run with what it reached. "
            f"Against {base}: a *tie* when the two medians over seeds differ by no more than the wider of their "
            f"interquartile ranges, or by less than {ACCURACY_TIE * 100:g} accuracy points (accuracy problems) or "
            f"{LOSS_TIE:.0%} of {base}'s median (loss problems); otherwise the better median *wins*. Time: the "
            f"median over problems of each problem's median time per epoch relative to {base} (same seed). "
            "Profile score: the area under the performance profile of the wall-clock time to the validation "
            "target, tau from 1 to 4 (1: fastest on every problem); the same of the epochs to the target, which "
            "no load on the machine can change.")


def _optimizer_row(row: dict[str, Any], base: str) -> list[str]:
    return [row["optimizer"], _count(row["win"]), _count(row["tie"]), _count(row["loss"]),
            "(baseline)" if row["optimizer"] == base else str(row["lost_on"]), f"{row['collapsed']} of {row['runs']}",
            str(row["diverged"]), _ratio(row["wall_ratio"]), _ratio(row["cpu_ratio"]), fmt(row["profile_score"], 3),
            fmt(row["epoch_profile_score"], 3)]


def _problem_row(row: dict[str, Any], base: str) -> list[str]:
    return [row["optimizer"], f"{fmt(row['median'])} [{fmt(row['q25'])}, {fmt(row['q75'])}]", str(row["runs"]),
            str(row["collapsed"]), str(row["diverged"]), _ratio(row["wall_ratio"]), _ratio(row["cpu_ratio"]),
            "-" if row["optimizer"] == base else str(row["versus"])]


def _in_order(table: pd.DataFrame, optimizers: Sequence[str]) -> list[dict[str, Any]]:
    rows = {str(row["optimizer"]): {str(k): v for k, v in row.items()} for row in table.to_dict("records")}
    return [rows[o] for o in optimizers if o in rows]


def contest_section(doc: Document, contest: Contest, problems: Sequence[str], optimizers: Sequence[str]) -> None:
    """The contest: the rules, every optimizer against the baseline over problems, then the final metric per problem."""
    base = contest.baseline
    doc.heading(f"Contest: every optimizer against {base}")
    doc.paragraph(_contest_rules(base))
    doc.table(["optimizer", "win", "tie", "loss", "lost on", "collapsed runs", "diverged runs", "wall / epoch",
               "CPU / epoch", "profile score", "profile score (epochs)"],
              [_optimizer_row(row, base) for row in _in_order(contest.per_optimizer, optimizers)])
    table = contest.per_problem
    for problem in problems:
        mine = table[table["problem"] == problem]
        if mine.empty:
            continue
        doc.heading(f"{problem}: final {str(mine['metric'].iloc[0]).replace('_', ' ')}", 4)
        doc.table(["optimizer", "median [25 %, 75 %]", "runs", "collapsed", "diverged", "wall / epoch", "CPU / epoch",
                   f"vs {base}"], [_problem_row(row, base) for row in _in_order(mine, optimizers)])
