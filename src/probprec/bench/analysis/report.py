"""The report: from result directories to ``report.html``, ``report.md``, figures and tables.

:func:`write_report` checks the options and that every input exists, creates the
report folder (a missing input or a folder that cannot be created is a
:class:`~probprec.bench.errors.UserError`, raised before anything is written),
then :func:`analyse` loads the runs (:mod:`.load`), chooses every optimizer's
setting (:mod:`.selection`, the rule stated in the report), aggregates the seeds
(:mod:`.aggregation`), and the figures that the data support are drawn
(:mod:`.figures`). It writes

* ``report.html`` (self-contained, figures embedded) and ``report.md`` (its twin, figures linked);
* ``figures/*.png`` and ``*.pdf``;
* ``tables/``: ``summary.csv`` (one row per problem and chosen setting), ``selection.csv`` (every setting
  with its score, rank and how it was compared), ``time_to_target.csv``, ``runtime.csv`` and the tidy
  ``runs.csv`` and ``curves.csv`` (Parquet twins when pyarrow is installed); with ``versus``, the
  contest's ``contest.csv`` (per problem and optimizer) and ``contest_summary.csv`` (per optimizer).

Files that cannot be used are listed in the report, naming each, and not
counted; everything valid is still reported. Optimizers whose setting could not
be chosen are listed with the reason (one line per problem and reason).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import UserError
from ..results import write_text_atomic
from . import figures, sections
from .aggregation import aggregate, summary_table, time_to_target
from .contest import Contest, contest
from .document import Document
from .figures import FigureSummary
from .load import Results, check_inputs, load_results
from .metrics import LEGACY_TEST_LABEL
from .profiles import performance_profile, profile_scores
from .runtime import runtime_ratios, runtime_table
from .selection import NO_VALIDATION, check_selection_metric, default_metric, order, select_settings, selected_runs

if TYPE_CHECKING:  # matplotlib loads when a figure is drawn
    from matplotlib.figure import Figure

__all__ = ["Analysis", "Report", "ReportFolderError", "ReportOptions", "analyse", "runtime_ratios", "runtime_table",
           "sensitivity_points", "write_report"]


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
    legacy_test_selection: bool = False
    """Where a problem's runs have no validation curves (DeepOBS 1.1), choose on the test metric (labelled)."""
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
    versus: str | None = None
    """An optimizer to hold every other against: the contest section (:mod:`.contest`; None: no such section)."""


class ReportFolderError(UserError):
    """The report folder cannot be created or written; :attr:`folder` is the folder, :attr:`reason` why."""

    def __init__(self, folder: Path, reason: str) -> None:
        super().__init__(f"report folder {folder}: {reason}")
        self.folder = folder
        self.reason = reason


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
    figure_summaries: dict[str, FigureSummary] = field(default_factory=dict)
    """Figure name -> what it shows (lines and their styles, texts, axis ranges)."""
    notes: list[str] = field(default_factory=list)
    """One line per problem and reason where optimizers got no setting (e.g. no validation curves)."""
    runs: int = 0
    """The valid runs loaded (after the problem and optimizer filters)."""


@dataclass
class Analysis:
    """Everything a report shows, before anything is drawn or written (see :func:`analyse`)."""

    results: Results
    found: list[str]
    problems: list[str]
    optimizers: list[str]
    chosen: pd.DataFrame
    candidates: pd.DataFrame
    picked: Results
    aggregated: pd.DataFrame
    time_to_target: pd.DataFrame
    targets: dict[str, tuple[str, float]]
    summary: pd.DataFrame
    ratios: pd.DataFrame | None
    notes: list[str]
    legacy_problems: set[str]
    contest: Contest | None = None
    """The contest's tables, when the options name an optimizer to hold the others against (``versus``)."""


def _check_options(options: ReportOptions) -> None:
    if options.mode not in ("final", "best"):
        raise ValueError(f"mode must be 'final' or 'best', got {options.mode!r}")
    if options.spread not in ("quartiles", "std"):
        raise ValueError(f"spread must be 'quartiles' or 'std', got {options.spread!r}")
    check_selection_metric(options.metric)


def _notes(chosen: pd.DataFrame, prefix: str = "") -> list[str]:
    """One line per problem and reason for the optimizers without a chosen setting."""
    grouped: dict[tuple[str, str, str | None], list[str]] = {}
    for item in chosen.attrs.get("unchosen", []):
        group = item["group"]
        grouped.setdefault((str(group.get("problem")), item["why"], item["metric"]), []).append(
            str(group.get("optimizer")))
    lines = []
    for (problem, why, metric), names in grouped.items():
        if why == NO_VALIDATION:
            lines.append(f"{prefix}{problem}: no validation curves for {', '.join(names)} (DeepOBS 1.1 files?): no "
                         "setting chosen; --legacy-test-selection chooses on the test metric as DeepOBS did then "
                         "(and labels every table and figure so), --metric train_loss on the training loss")
        else:
            lines.append(f"{prefix}{problem}: no setting of {', '.join(names)} has a finished {metric} on every seed "
                         "without diverging: none chosen")
    return lines


def _legacy(chosen: pd.DataFrame) -> set[str]:
    if chosen.empty:
        return set()
    return set(chosen.loc[chosen["selected_on"].str.contains(LEGACY_TEST_LABEL, regex=False), "problem"])


def analyse(paths: str | Path | Sequence[str | Path], options: ReportOptions | None = None) -> Analysis:
    """Load, select and aggregate: every table of the report, nothing drawn or written.

    Raises:
        ValueError: a bad option. UserError: an input path does not exist.
    """
    options = options or ReportOptions()
    _check_options(options)
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
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
    chosen, candidates = select_settings(results, options.metric, options.mode, problems=problems,
                                         optimizers=optimizers, return_candidates=True,
                                         legacy_test_selection=options.legacy_test_selection)
    picked = selected_runs(results, chosen)
    ttt, targets = time_to_target(picked, options.targets)
    ratios = runtime_ratios(results, options.baseline) if len(results.runs) else None
    held = contest(picked, ratios, ttt, options.versus) if options.versus else None
    return Analysis(results, found, problems, optimizers, chosen, candidates, picked, aggregate(picked), ttt,
                    targets, summary_table(results, chosen, ttt), ratios, _notes(chosen), _legacy(chosen), held)


def _prepare_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ReportFolderError(out, "exists and is not a folder") from None
    except OSError as error:
        raise ReportFolderError(out, f"cannot create it ({error.strerror or error})") from None


def write_report(paths: str | Path | Sequence[str | Path], out_dir: str | Path,
                 options: ReportOptions | None = None) -> Report:
    """Check, analyse, draw and write the report; see the module docstring.

    Raises:
        ValueError: a bad option (unknown metric, mode or spread), before anything is written.
        UserError: an input or reference path does not exist, before anything is written.
        ReportFolderError: the report folder cannot be created or written.
    """
    options = options or ReportOptions()
    _check_options(options)
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    check_inputs(paths)
    check_inputs(options.reference, "reference")
    out = Path(out_dir)
    _prepare_folder(out)
    analysis = analyse(paths, options)
    try:
        return _write(analysis, paths, out, options)
    except (FileExistsError, NotADirectoryError) as error:
        raise ReportFolderError(out, f"cannot write {error.filename}: a file is where a folder must go") from None
    except OSError as error:
        raise ReportFolderError(out, f"cannot write {error.filename or 'a file'} ({error.strerror or error})") from None


def _write(analysis: Analysis, paths: list, out: Path, options: ReportOptions) -> Report:
    doc = Document(options.title)
    sections.overview(doc, analysis, paths, options)
    if analysis.contest is not None:
        sections.contest_section(doc, analysis.contest, analysis.problems, analysis.optimizers)
    drawn = _Drawn(out / "figures", doc)
    notes = list(analysis.notes)
    if analysis.problems:
        doc.heading("Results per problem")
        sections.selection_rule(doc, analysis, options)
        for problem in analysis.problems:
            sections.problem_section(doc, analysis, problem, options)
        doc.heading("Figures")
        notes += _figures(drawn, analysis, options)
    sections.environment(doc, analysis.results)
    tables = _write_tables(out, analysis)
    html_path, md_path = out / "report.html", out / "report.md"
    write_text_atomic(md_path, doc.markdown(out))
    write_text_atomic(html_path, doc.html())
    return Report(html_path, md_path, drawn.paths, tables, analysis.found, analysis.summary, drawn.curves,
                  drawn.summaries, notes, len(analysis.results.runs))


@dataclass
class _Drawn:
    """Figures as they are saved: files, curve counts and summaries, and their place in the document."""

    folder: Path
    doc: Document
    paths: list[Path] = field(default_factory=list)
    curves: dict[str, int] = field(default_factory=dict)
    summaries: dict[str, FigureSummary] = field(default_factory=dict)

    def __call__(self, fig: Figure, name: str, caption: str) -> None:
        summary = figures.summarize(fig)
        self.curves[name], self.summaries[name] = summary.curves, summary
        written = figures.save_figure(fig, self.folder / name)
        self.paths.extend(written)
        self.doc.figure(written[0], caption)


def _legacy_caption(problems: Sequence[str], legacy: set[str]) -> str:
    marked = [p for p in problems if p in legacy]
    return f" Settings of {', '.join(marked)}: {LEGACY_TEST_LABEL}." if marked else ""


def _figures(draw: _Drawn, analysis: Analysis, options: ReportOptions) -> list[str]:
    """Every figure the data support; returns the notes on the reference runs."""
    colors = figures.colors_for(analysis.optimizers)
    reference, labels, notes, reference_legacy = _reference(options, analysis.problems)
    legacy = analysis.legacy_problems | reference_legacy
    shown = set(analysis.aggregated["problem"]) | (set(reference["problem"]) if reference is not None else set())
    chunks = _panels([p for p in analysis.problems if p in shown], analysis.results)
    for i, chunk in enumerate(chunks, start=1):
        draw(figures.performance_figure(analysis.aggregated, chunk, analysis.optimizers, reference, options.spread,
                                        colors, labels, legacy),
             f"performance{'_' + str(i) if len(chunks) > 1 else ''}",
             "Test and train loss (and accuracy) per epoch of every optimizer's chosen setting"
             + (" (reference runs dashed)" if reference is not None else "") + "."
             + _legacy_caption(chunk, legacy))
    draw.doc.bullets(notes)
    _state_figures(draw, analysis, colors)
    ratios = analysis.ratios
    if ratios is not None and len(ratios) and ratios["wall_ratio"].notna().any():
        present = [o for o in analysis.optimizers if o in set(ratios["optimizer"])]
        draw(figures.runtime_figure(ratios, present, options.baseline, colors), "runtime",
             f"Training time per epoch relative to {options.baseline} (each dot one run; the bar: median "
             "and quartiles).")
        draw.doc.table(*runtime_table(ratios, present, options.baseline))
    _grid(draw, analysis, options, colors)
    _sensitivity(draw, analysis, options, colors)
    _profiles(draw, analysis, colors)
    if analysis.contest is not None:
        held = analysis.contest
        draw(figures.contest_figure(held.per_problem, analysis.problems, analysis.optimizers, held.baseline),
             "contest", f"Each optimizer against {held.baseline} per problem (the rules: the contest section); a "
             "cell counts the seeds that collapsed (c) and diverged (d).")
    return notes


def _state_figures(draw: _Drawn, analysis: Analysis, colors: dict[str, str]) -> None:
    aggregated = analysis.aggregated
    state = aggregated[aggregated["metric"].isin(["step_size", "top_curvature"])]
    chunks = _panels([p for p in analysis.problems if p in set(state["problem"])], analysis.results)
    for i, chunk in enumerate(chunks, start=1):
        draw(figures.optimizer_state_figure(aggregated, chunk, analysis.optimizers, colors, analysis.legacy_problems),
             f"optimizer_state{'_' + str(i) if len(chunks) > 1 else ''}",
             "The estimated step size and the largest estimated curvature at the end of each epoch."
             + _legacy_caption(chunk, analysis.legacy_problems))


def _sensitivity(draw: _Drawn, analysis: Analysis, options: ReportOptions, colors: dict[str, str]) -> None:
    points, swept = sensitivity_points(analysis.results, options.sensitivity)
    if not len(points):
        return
    refs = _sensitivity_references(analysis.results, analysis.picked, swept)
    problems = [p for p in analysis.problems if p in set(points["problem"])]
    legacy = analysis.legacy_problems if refs is not None else set()
    metric = str(points["metric"].iloc[0])
    draw(figures.sensitivity_figure(points, problems, list(dict.fromkeys(points["optimizer"])), refs, metric, colors,
                                    legacy),
         "sensitivity", "Final " + metric.replace("_", " ") + " against "
         + ", ".join(f"{o}'s {h}" for o, h in swept.items()) + " (each dot one seed; crosses: diverged; "
         "dashed: the chosen settings of optimizers without that hyperparameter)." + _legacy_caption(problems, legacy))


def _profiles(draw: _Drawn, analysis: Analysis, colors: dict[str, str]) -> None:
    ttt, optimizers = analysis.time_to_target, analysis.optimizers
    if len(analysis.problems) < 2 or len(optimizers) < 2 or not len(ttt):
        return
    profile = performance_profile(ttt, "seconds")
    if profile.empty or not len(profile.columns):
        return
    draw(figures.profile_figure(profile, optimizers, "seconds", colors), "performance_profile",
         "Performance profiles: the fraction of problems on which an optimizer reaches the validation "
         "target within a factor tau of the fastest.")
    scores = profile_scores(profile)
    draw.doc.table(["optimizer", "profile score (area, 1 = always fastest)"],
                   [[o, sections.fmt(scores[o], 3)] for o in optimizers if o in scores])


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
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
                        counts.setdefault(key, set()).add(value)
            swept = [k for k, v in counts.items() if len(v) >= 3]
            if swept:
                chosen[str(optimizer)] = max(swept, key=lambda k: len(counts[k]))
    rows = []
    for run in runs.to_dict("records"):
        key = chosen.get(run["optimizer"])
        value = run["hyperparams"].get(key) if key is not None else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
            continue
        metric = default_metric(results, run["problem"], metric_split)
        final = results.curves[(results.curves["run_id"] == run["run_id"]) & (results.curves["metric"] == metric)
                               & (results.curves["epoch"] == run["num_epochs"])]["value"]
        rows.append({"problem": run["problem"], "optimizer": run["optimizer"], "hyperparameter": key,
                     "value": float(value),
                     "final": float(final.iloc[0]) if len(final) and run["status"] == "completed" else math.nan,
                     "metric": metric})
    points = pd.DataFrame(rows, columns=["problem", "optimizer", "hyperparameter", "value", "final", "metric"])
    swept_here = points.groupby(["problem", "optimizer"])["value"].transform("nunique") >= 2
    return points[swept_here].reset_index(drop=True), chosen


def _sensitivity_references(results: Results, picked: Results, swept: dict[str, str]) -> pd.DataFrame | None:
    others = picked.runs[~picked.runs["optimizer"].isin(list(swept))]
    if others.empty:
        return None
    rows = []
    for run in others.to_dict("records"):
        metric = default_metric(results, run["problem"], "test")
        final = picked.curves[(picked.curves["run_id"] == run["run_id"]) & (picked.curves["metric"] == metric)
                              & (picked.curves["epoch"] == run["num_epochs"])]["value"]
        rows.append({"problem": run["problem"], "optimizer": run["optimizer"],
                     "final": float(final.iloc[0]) if len(final) else math.nan})
    return pd.DataFrame(rows)


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


def _grid(draw: _Drawn, analysis: Analysis, options: ReportOptions, colors: dict[str, str]) -> None:
    results = analysis.results
    sizes = results.runs.groupby("problem")["batch_size"].nunique()
    multi = [p for p in analysis.problems if sizes.get(p, 0) > 1]
    if not multi:
        return
    subset = results.subset(problems=multi)
    chosen = select_settings(subset, options.metric, options.mode, by=("problem", "optimizer", "batch_size"),
                             problems=analysis.problems, optimizers=analysis.optimizers,
                             legacy_test_selection=options.legacy_test_selection)
    aggregated = aggregate(selected_runs(subset, chosen), by=("problem", "optimizer", "batch_size"))
    if aggregated.empty:
        return
    batch_sizes = sorted(int(b) for b in subset.runs["batch_size"].dropna().unique())
    legacy = _legacy(chosen)
    draw(figures.grid_figure(aggregated, multi, batch_sizes, analysis.optimizers, "train_loss", colors, legacy),
         "batch_size_grid", "Train loss per epoch on a grid of problems (rows) and batch sizes (columns), each batch "
         "size's setting chosen as in the tables." + _legacy_caption(multi, legacy))


def _reference(options: ReportOptions,
               problems: list[str]) -> tuple[pd.DataFrame | None, dict[str, str], list[str], set[str]]:
    """The reference runs' chosen settings aggregated, their legend labels, notes and legacy problems."""
    if not options.reference:
        return None, {}, [], set()
    reference = load_results(options.reference).subset(problems=problems)
    if reference.runs.empty:
        return None, {}, [], set()
    chosen = select_settings(reference, options.metric, options.mode,
                             legacy_test_selection=options.legacy_test_selection)
    labels = {row["optimizer"]: f"{row['optimizer']} (reference"
              + (f", {LEGACY_TEST_LABEL})" if LEGACY_TEST_LABEL in row["selected_on"] else ")")
              for row in chosen.to_dict("records")}
    aggregated = aggregate(selected_runs(reference, chosen))
    return (aggregated if len(aggregated) else None), labels, _notes(chosen, "reference "), _legacy(chosen)


def _write_tables(out: Path, analysis: Analysis) -> list[Path]:
    folder = out / "tables"
    written = analysis.results.to_files(folder)
    held = analysis.contest
    for name, table in (("summary", analysis.summary), ("selection", analysis.candidates),
                        ("time_to_target", analysis.time_to_target), ("runtime", analysis.ratios),
                        ("contest", held.per_problem if held else None),
                        ("contest_summary", held.per_optimizer if held else None)):
        if table is None:
            continue
        table = table.copy()
        if "hyperparams" in table:
            table["hyperparams"] = [str(v) for v in table["hyperparams"]]
        path = folder / f"{name}.csv"
        write_text_atomic(path, table.to_csv(index=False))
        written.append(path)
    return written
