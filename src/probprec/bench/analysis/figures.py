"""The figures of the thesis (Fig. 4.1-4.5) and beyond, from aggregated result tables.

Every function returns a :class:`matplotlib.figure.Figure` (so that tests can
count its curves) drawn with tueplots' NeurIPS sizes and fonts, without LaTeX;
:func:`save_figure` writes it as PNG and PDF. Colours follow the optimizer
order, so an optimizer has the same colour in every figure of a report.

The layout: constrained layout places the panels; legends go below the panels
(in as many columns as fit the figure's width) and name every line, except lines
marked :data:`UNLABELED` by design; rows of metrics that the figure's problems do
not have are left out (loss-only problems get no accuracy rows) and a panel
without data is left blank; and each figure grows, before it is returned, until
every text lies inside it and no panel is squeezed (:func:`_fit`), so that the
saved files, written at the figure's size and not cropped, cut nothing off.

* :func:`performance_figure`: test loss, train loss, test accuracy, train accuracy
  against epochs, one column per problem; the median over seeds with the
  quartiles (or the mean with one standard deviation), reference runs dashed
  (thesis Fig. 4.1, 4.2);
* :func:`runtime_figure`: time per epoch relative to a baseline optimizer, wall
  clock and CPU, every run a dot, the median with quartiles (Fig. 4.3);
* :func:`grid_figure`: a metric against epochs on a grid of problems (rows) x
  batch sizes (columns) (Fig. 4.4: initialisation x batch size);
* :func:`sensitivity_figure`: the final metric against a hyperparameter on a
  log axis, seeds scattered, reference optimizers as horizontal lines (Fig. 4.5);
* :func:`optimizer_state_figure`: the estimated step size and top curvature per epoch;
* :func:`profile_figure`: performance profiles over problems.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np
import pandas as pd

from ..atomic import atomic_writer
from .metrics import LEGACY_TEST_LABEL

if TYPE_CHECKING:  # matplotlib loads when a figure is drawn
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PANEL_METRICS", "UNLABELED", "FigureSummary", "colors_for", "contest_figure", "grid_figure",
           "optimizer_state_figure", "performance_figure", "profile_figure", "runtime_figure", "save_figure",
           "sensitivity_figure", "summarize"]

PANEL_METRICS = ("test_loss", "train_loss", "test_accuracy", "train_accuracy")
LABELS = {"test_loss": "test loss", "train_loss": "train loss", "valid_loss": "validation loss",
          "test_accuracy": "test accuracy", "train_accuracy": "train accuracy",
          "valid_accuracy": "validation accuracy", "step_size": "step size", "top_curvature": "top curvature"}
UNLABELED = "unlabeled"
"""The ``gid`` of lines left out of the legends by design (the runtime figure's baseline line and bars)."""


@contextmanager
def _style() -> Iterator[ModuleType]:
    """The style: tueplots' NeurIPS font sizes and layout, no LaTeX, the system's fonts; non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tueplots import bundles

    rc = {k: v for k, v in bundles.neurips2024(usetex=False, family="sans-serif").items()
          if not k.startswith("font.s")}
    rc.update({"axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False})
    with plt.rc_context(rc):
        yield plt


def colors_for(names: Sequence[str]) -> dict[str, str]:
    """One colour per name, in order (matplotlib's default cycle, then tab20)."""
    palette = [f"C{i}" for i in range(10)] + [f"tab:{c}" for c in ("olive", "cyan", "brown", "pink", "gray")]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


@dataclass(frozen=True)
class FigureSummary:
    """What a figure shows, read from it before it is saved (for the report's record and for tests)."""

    curves: int
    """Labelled lines: curves and reference lines (bands and error bars are not counted)."""
    lines: list[tuple[str, str]]
    """``(label, linestyle)`` of every labelled line."""
    texts: list[str]
    """Every title, axis label, legend entry and figure text."""
    y_limits: dict[str, tuple[float, float]]
    """Axis label (see ``Axes.get_label``) -> the y range shown, for labelled axes."""
    bands: int
    """Filled spread bands (one per curve with more than one seed)."""


class _Texted(Protocol):
    """An artist with text (a title, a label, a legend entry, ...)."""

    def get_text(self) -> str:
        """Its text."""


def summarize(fig: Figure) -> FigureSummary:
    """The :class:`FigureSummary` of a figure."""
    from matplotlib.collections import PolyCollection

    lines = [(str(line.get_label()), str(line.get_linestyle())) for ax in fig.axes for line in ax.get_lines()
             if not str(line.get_label()).startswith("_")]
    texted = [cast(_Texted, t) for t in fig.findobj(match=lambda artist: hasattr(artist, "get_text"))]
    texts = [t.get_text() for t in texted if t.get_text()]
    limits = {str(ax.get_label()): (float(ax.get_ylim()[0]), float(ax.get_ylim()[1])) for ax in fig.axes
              if ax.get_label() and ax.axison}
    bands = sum(1 for ax in fig.axes for item in ax.collections if isinstance(item, PolyCollection))
    return FigureSummary(len(lines), lines, texts, limits, bands)


def save_figure(fig: Figure, stem: str | Path, dpi: int = 150,
                formats: Sequence[str] = (".png", ".pdf")) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` atomically (:mod:`probprec.bench.atomic`); closes the figure.

    The files show the whole figure at its size (not cropped): the figure functions make everything fit in it.
    ``formats``: the suffixes to write, in this order.
    """
    import matplotlib.pyplot as plt

    stem = Path(stem)
    written = []
    try:
        for suffix in formats:
            path = stem.with_suffix(suffix)
            with atomic_writer(path, "wb") as handle:
                fig.savefig(handle, dpi=dpi, format=suffix[1:])
            written.append(path)
    finally:
        plt.close(fig)
    return written


def _band(ax: Axes, rows: pd.DataFrame, color: str, label: str, spread: str, linestyle: str = "-") -> None:
    rows = rows.sort_values("epoch")
    center = rows["median"] if spread == "quartiles" else rows["mean"]
    low, high = ((rows["q25"], rows["q75"]) if spread == "quartiles"
                 else (rows["mean"] - rows["std"].fillna(0), rows["mean"] + rows["std"].fillna(0)))
    ax.plot(rows["epoch"], center, color=color, label=label, linestyle=linestyle)
    if (rows["n"] > 1).any():
        ax.fill_between(rows["epoch"], low, high, color=color, alpha=0.2, linewidth=0)


def _curves(ax: Axes, rows: pd.DataFrame, optimizers: Sequence[str], colors: dict[str, str],
            spread: str = "quartiles") -> None:
    """One band (line and spread) per optimizer present in ``rows``, in the given order."""
    for optimizer in optimizers:
        sub = rows[rows["optimizer"] == optimizer]
        if not sub.empty:
            _band(ax, sub, colors.get(optimizer, "k"), optimizer, spread)


def _log_if_positive(ax: Axes, values: pd.Series) -> None:
    values = values.dropna()
    if len(values) and (values > 0).all() and values.max() / values.min() > 20:
        ax.set_yscale("log")


def _title(problem: str, legacy: Collection[str]) -> str:
    """A panel title: the problem, and the legacy label where its settings were chosen on the test set."""
    return f"{problem}\n({LEGACY_TEST_LABEL})" if problem in legacy else problem


def _zoom_accuracy(ax: Axes, frames: Sequence[pd.DataFrame], spread: str) -> None:
    """An accuracy axis from the data after the first tenth of the epochs (epoch 0 sits at chance).

    The range covers every center line and band from that epoch on, padded by 5 %, so that final differences
    of a few tenths of a percent and the seed bands are visible.
    """
    rows = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else None
    if rows is None:
        return
    start = max(1, math.ceil(0.1 * rows["epoch"].max()))
    late = rows[rows["epoch"] >= start]
    if late.empty:
        return
    low, high = _band_limits(late, spread)
    values = pd.concat([low, high]).dropna()
    if values.empty:
        return
    bottom, top = float(values.min()), float(values.max())
    pad = max(0.05 * (top - bottom), 0.002)
    ax.set_ylim(bottom - pad, top + pad)


def _band_limits(rows: pd.DataFrame, spread: str) -> tuple[pd.Series, pd.Series]:
    if spread == "quartiles":
        return rows[["q25", "median"]].min(axis=1), rows[["q75", "median"]].max(axis=1)
    std = rows["std"].fillna(0)
    return rows["mean"] - std, rows["mean"] + std


def _panel(ax: Axes, rows: pd.DataFrame, refs: pd.DataFrame, metric: str, optimizers: Sequence[str],
           colors: dict[str, str], references: dict[str, str], spread: str) -> None:
    """One panel of the performance figure: our curves solid, the reference curves dashed."""
    _curves(ax, rows, optimizers, colors, spread)
    reference_colors = colors_for([*optimizers, *[r for r in references if r not in optimizers]])
    for name, label in references.items():
        sub = refs[refs["optimizer"] == name]
        if not sub.empty:
            _band(ax, sub, reference_colors[name], label, spread, linestyle="--")
    if "loss" in metric:
        _log_if_positive(ax, pd.concat([rows["median"], refs.get("median", pd.Series(dtype=float))]))
    else:
        _zoom_accuracy(ax, [rows, refs], spread)


def performance_figure(aggregated: pd.DataFrame, problems: Sequence[str], optimizers: Sequence[str],
                       reference: pd.DataFrame | None = None, spread: str = "quartiles",
                       colors: dict[str, str] | None = None, reference_labels: dict[str, str] | None = None,
                       legacy: Collection[str] = ()) -> Figure:
    """Rows: test loss, train loss (and test and train accuracy where a problem has them); columns: problems.

    Args:
        aggregated: :func:`~probprec.bench.analysis.aggregation.aggregate` of the chosen settings.
        problems: the columns, in this order.
        optimizers: the curves, in this order.
        reference: aggregated baseline results, drawn dashed.
        spread: ``quartiles`` (median and 25-75 %) or ``std`` (mean and one standard deviation).
        colors: optimizer -> colour.
        reference_labels: reference optimizer -> its legend label (default: "NAME (reference)").
        legacy: the problems whose settings were chosen on the test set; their titles say so.

    Every axis is labelled ``"<problem>: <metric>"`` (``Axes.get_label``), for tests and tools. The rows are the
    metrics that these problems have (a figure of loss-only problems has the two loss rows); a panel without data
    is left blank.
    """
    if spread not in ("quartiles", "std"):
        raise ValueError(f"spread must be 'quartiles' or 'std', got {spread!r}")
    colors = colors or colors_for(optimizers)
    shown = aggregated[aggregated["problem"].isin(list(problems)) & aggregated["optimizer"].isin(list(optimizers))]
    refs_shown = reference[reference["problem"].isin(list(problems))] if reference is not None else shown.iloc[:0]
    present = set(shown["metric"]) | set(refs_shown["metric"])
    metrics = [m for m in PANEL_METRICS if m in present] or list(PANEL_METRICS[:2])
    names = [] if reference is None else list(dict.fromkeys(reference["optimizer"]))
    references = {name: (reference_labels or {}).get(name, f"{name} (reference)") for name in names}
    with _style() as plt:
        fig, axes = plt.subplots(len(metrics), len(problems), squeeze=False,
                                 figsize=(max(3.0, 2.6 * len(problems)), 1.9 * len(metrics)))
        drawn = np.zeros(axes.shape, dtype=bool)
        for (row, col), ax in np.ndenumerate(axes):
            problem, metric = problems[col], metrics[row]
            ax.set_label(f"{problem}: {metric}")
            rows = shown[(shown["problem"] == problem) & (shown["metric"] == metric)]
            refs = refs_shown[(refs_shown["problem"] == problem) & (refs_shown["metric"] == metric)]
            if len(rows) or len(refs):
                _panel(ax, rows, refs, metric, optimizers, colors, references, spread)
                drawn[row, col] = True
        _label_grid(axes, drawn, [_title(p, legacy) for p in problems], [LABELS[m] for m in metrics])
        _legend(fig, axes)
        _fit(fig)
    return fig


_MARGIN = 0.03
"""Inches kept free at the figure's edges (legend width, growth in :func:`_fit`)."""


def _legend(fig: Figure, axes: np.ndarray | Sequence[Axes]) -> None:
    """One legend below the panels naming every labelled line once, in as many columns as fit the figure.

    A legend wider than the figure would be cut off at both ends; a single column that is still too wide is
    left to :func:`_fit`, which widens the figure. The figure grows by the legend's height, so that the panels
    keep theirs.
    """
    handles, labels = {}, []
    for ax in np.ravel(np.asarray(axes, dtype=object)):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if not handles:
        return
    room = (fig.get_figwidth() - 2 * _MARGIN) * fig.dpi
    for ncols in range(len(labels), 0, -1):
        legend = fig.legend([handles[label] for label in labels], labels, loc="outside lower center", ncols=ncols,
                            frameon=False)
        box = legend.get_window_extent()
        if ncols == 1 or box.width <= room:
            fig.set_size_inches(fig.get_figwidth(), fig.get_figheight() + box.height / fig.dpi)
            return
        legend.remove()


def _fit(fig: Figure, panel: tuple[float, float] = (1.0, 0.75), tries: int = 5) -> None:
    """Grow ``fig`` until everything drawn lies inside it and every panel keeps ``panel`` inches (width, height).

    Constrained layout keeps labels and legends inside the figure only while they fit: a y label longer than its
    panel is high, an x label wider than the figure, or a legend whose widest entry is wider than the figure
    sticks out and is cut off when saved; long tick labels can squeeze a panel to nothing, and then the layout is
    not applied at all. Each pass lays the figure out (as drawing would, without drawing) and grows it, on each
    axis, by twice what sticks out on the worse side (a centred text then fits in one pass) plus a margin, and by
    what the narrowest (lowest) panel lacks times the panels side by side (one above the other).
    """
    for _ in range(tries):
        collapsed = _lay_out(fig)
        width, height = fig.get_size_inches()
        box = fig.get_tightbbox()
        over_x, over_y = max(-box.x0, box.x1 - width, 0.0), max(-box.y0, box.y1 - height, 0.0)
        short_x, short_y = _shortfall(fig, panel, collapsed)
        grow_x = (2 * over_x + _MARGIN if over_x > 0 else 0.0) + short_x
        grow_y = (2 * over_y + _MARGIN if over_y > 0 else 0.0) + short_y
        if grow_x <= 0 and grow_y <= 0:
            return
        fig.set_size_inches(width + grow_x, height + grow_y)


def _lay_out(fig: Figure) -> bool:
    """Apply the figure's layout engine; whether it gave up because the panels would collapse."""
    import warnings

    engine = fig.get_layout_engine()
    if engine is None:
        return False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.execute(fig)
    collapsed = [w for w in caught if "collapsed" in str(w.message)]
    for other in (w for w in caught if w not in collapsed):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    return bool(collapsed)


def _shortfall(fig: Figure, panel: tuple[float, float], collapsed: bool) -> tuple[float, float]:
    """Inches to add to the figure's width and height so that every drawn panel is at least ``panel`` big."""
    width, height = fig.get_size_inches()
    short_x = short_y = 0.0
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        if spec is None or not (ax.get_visible() and ax.axison):
            continue
        rows, columns = spec.get_gridspec().get_geometry()
        box = ax.get_position()
        shown_x, shown_y = (0.0, 0.0) if collapsed else (box.width * width, box.height * height)
        short_x = max(short_x, (panel[0] - shown_x) * columns)
        short_y = max(short_y, (panel[1] - shown_y) * rows)
    return short_x, short_y


def _label_grid(axes: np.ndarray, drawn: np.ndarray, titles: Sequence[str], ylabels: Sequence[str],
                xlabel: str = "epoch") -> None:
    """Switch off the panels without data; the titles, y and x labels on each column's or row's outer panels.

    ``drawn[r, c]``: whether panel ``(r, c)`` shows data. Column ``c``'s title goes on its top drawn panel and
    ``xlabel`` under its bottom one; row ``r``'s y label on its leftmost drawn panel.
    """
    for (row, column), ax in np.ndenumerate(axes):
        if not drawn[row, column]:
            ax.set_axis_off()
    for column, title in enumerate(titles):
        rows = np.flatnonzero(drawn[:, column])
        if len(rows):
            axes[rows[0], column].set_title(title)
            axes[rows[-1], column].set_xlabel(xlabel)
    for row, label in enumerate(ylabels):
        columns = np.flatnonzero(drawn[row])
        if len(columns):
            axes[row, columns[0]].set_ylabel(label)


def runtime_figure(ratios: pd.DataFrame, optimizers: Sequence[str], baseline: str,
                   colors: dict[str, str] | None = None) -> Figure:
    """Time per epoch relative to ``baseline`` (wall clock and CPU); ``ratios`` from ``runtime_ratios``.

    Every run is a dot; the line through each optimizer's dots marks its median with the quartiles as error bar.
    No legend: the tick labels name the optimizers, and the bars and the baseline's line at 1 are marked
    :data:`UNLABELED`.
    """
    colors = colors or colors_for(optimizers)
    panels = [c for c in ("wall_ratio", "cpu_ratio") if c in ratios and ratios[c].notna().any()]
    with _style() as plt:
        fig, axes = plt.subplots(1, max(len(panels), 1), squeeze=False, figsize=(2.8 * max(len(panels), 1), 2.4))
        rng = np.random.default_rng(0)
        for ax, column in zip(axes[0], panels, strict=False):
            for i, optimizer in enumerate(optimizers):
                values = ratios.loc[ratios["optimizer"] == optimizer, column].dropna()
                if values.empty:
                    continue
                ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=8, color=colors.get(optimizer),
                           alpha=0.6)
                q25, median, q75 = values.quantile([0.25, 0.5, 0.75])
                bars = ax.errorbar([i], [median], yerr=[[median - q25], [q75 - median]], color="k", marker="_",
                                   markersize=14, capsize=3, label=None)
                for line in bars.lines[1]:
                    line.set_gid(UNLABELED)
                if bars.lines[0] is not None:
                    bars.lines[0].set_gid(UNLABELED)
            ax.axhline(1.0, color="gray", linestyle=":", linewidth=1, gid=UNLABELED)
            ax.set_xticks(range(len(optimizers)), optimizers, rotation=30, ha="right")
            clock = "wall-clock" if column == "wall_ratio" else "CPU"
            ax.set_ylabel(f"{clock} time per epoch\nrelative to {baseline}")
        for ax in axes[0][len(panels):]:
            ax.set_axis_off()
        _fit(fig)
    return fig


def grid_figure(aggregated: pd.DataFrame, problems: Sequence[str], batch_sizes: Sequence[int],
                optimizers: Sequence[str], metric: str = "train_loss", colors: dict[str, str] | None = None,
                legacy: Collection[str] = ()) -> Figure:
    """``metric`` against epochs, rows problems, columns batch sizes (``aggregated`` grouped by batch_size).

    ``legacy``: the problems whose settings were chosen on the test set; their row labels say so. Problems and
    batch sizes without any ``metric`` rows get no row or column; a cell without data is left blank.
    """
    colors = colors or colors_for(optimizers)
    rows = aggregated[(aggregated["metric"] == metric) & aggregated["optimizer"].isin(list(optimizers))]
    problems = [p for p in problems if (rows["problem"] == p).any()] or list(problems)
    batch_sizes = [b for b in batch_sizes if (rows["batch_size"] == b).any()] or list(batch_sizes)
    with _style() as plt:
        fig, axes = plt.subplots(len(problems), len(batch_sizes), squeeze=False, sharey=True,
                                 figsize=(max(3.0, 2.2 * len(batch_sizes)), 1.9 * len(problems)))
        drawn = np.zeros(axes.shape, dtype=bool)
        for (r, c), ax in np.ndenumerate(axes):
            cell = rows[(rows["problem"] == problems[r]) & (rows["batch_size"] == batch_sizes[c])]
            _curves(ax, cell, optimizers, colors)
            drawn[r, c] = bool(len(cell))
        _label_grid(axes, drawn, [f"batch size {b}" for b in batch_sizes],
                    [f"{_title(p, legacy)}\n{LABELS.get(metric, metric)}" for p in problems])
        _legend(fig, axes)
        _fit(fig)
    return fig


def sensitivity_figure(points: pd.DataFrame, problems: Sequence[str], curves: Sequence[str],
                       references: pd.DataFrame | None = None, metric: str = "test_accuracy",
                       colors: dict[str, str] | None = None, legacy: Collection[str] = ()) -> Figure:
    """Final ``metric`` against a hyperparameter on a log axis, one panel per problem.

    Args:
        points: one row per run: ``problem, optimizer, value`` (the hyperparameter) and ``final``; diverged runs
            have a NaN ``final`` and are drawn as crosses at the bottom of the panel.
        problems: the panels.
        curves: the optimizers drawn as a median line through their seeds.
        references: ``problem, optimizer, final`` rows of optimizers without the hyperparameter; each is a
            dashed horizontal line at its median.
        metric: the y label (a panel whose ``points`` name their ``metric`` is labelled with that one).
        colors: optimizer -> colour.
        legacy: the problems whose reference settings were chosen on the test set; their titles say so.
    """
    names = [*curves, *([] if references is None else dict.fromkeys(references["optimizer"]))]
    colors = colors or colors_for(names)
    with _style() as plt:
        fig, axes = plt.subplots(1, len(problems), squeeze=False, figsize=(3.2 * len(problems), 2.6))
        for ax, problem in zip(axes[0], problems, strict=True):
            rows = points[points["problem"] == problem]
            finite = rows["final"].dropna()
            floor = float(finite.min()) if len(finite) else 0.0
            for optimizer in curves:
                sub = rows[rows["optimizer"] == optimizer]
                if sub.empty:
                    continue
                ok = sub[sub["final"].notna()]
                ax.scatter(ok["value"], ok["final"], s=9, color=colors[optimizer], alpha=0.5)
                bad = sub[sub["final"].isna()]
                if len(bad):
                    ax.scatter(bad["value"], [floor] * len(bad), marker="x", s=14, color=colors[optimizer])
                medians = sub.groupby("value")["final"].median()
                ax.plot(medians.index, medians.to_numpy(), color=colors[optimizer], label=optimizer, marker="o",
                        markersize=3)
            if references is not None:
                for name, sub in references[references["problem"] == problem].groupby("optimizer", sort=False):
                    median = sub["final"].median()
                    if not math.isnan(median):
                        ax.axhline(median, color=colors[str(name)], linestyle="--", label=f"{name} (reference)")
            ax.set_xscale("log")
            ax.set_title(_title(problem, legacy))
            ax.set_xlabel(", ".join(dict.fromkeys(rows["hyperparameter"])) if "hyperparameter" in rows else "value")
            shown = list(dict.fromkeys(rows["metric"])) if "metric" in rows and len(rows) else [metric]
            ax.set_ylabel("final " + ", ".join(LABELS.get(str(m), str(m)) for m in shown))
        _legend(fig, axes)
        _fit(fig)
    return fig


def optimizer_state_figure(aggregated: pd.DataFrame, problems: Sequence[str], optimizers: Sequence[str],
                           colors: dict[str, str] | None = None, legacy: Collection[str] = ()) -> Figure:
    """The estimated step size (top row) and top curvature (bottom row) per epoch; columns problems.

    ``legacy``: the problems whose settings were chosen on the test set; their titles say so. The rows are the
    quantities these problems' runs logged; a panel without data is left blank.
    """
    colors = colors or colors_for(optimizers)
    shown = aggregated[aggregated["problem"].isin(list(problems)) & aggregated["optimizer"].isin(list(optimizers))]
    metrics = [m for m in ("step_size", "top_curvature") if (shown["metric"] == m).any()] or ["step_size"]
    with _style() as plt:
        fig, axes = plt.subplots(len(metrics), len(problems), squeeze=False,
                                 figsize=(max(3.0, 2.6 * len(problems)), 1.9 * len(metrics)))
        drawn = np.zeros(axes.shape, dtype=bool)
        for (r, c), ax in np.ndenumerate(axes):
            rows = shown[(shown["problem"] == problems[c]) & (shown["metric"] == metrics[r])]
            _curves(ax, rows, optimizers, colors)
            _log_if_positive(ax, rows["median"])
            drawn[r, c] = bool(len(rows))
        _label_grid(axes, drawn, [_title(p, legacy) for p in problems], [LABELS[m] for m in metrics])
        _legend(fig, axes)
        _fit(fig)
    return fig


def profile_figure(profile: pd.DataFrame, optimizers: Sequence[str], what: str = "seconds",
                   colors: dict[str, str] | None = None) -> Figure:
    """Performance profiles: the fraction of problems within a factor tau of the fastest (legend below)."""
    colors = colors or colors_for(optimizers)
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(3.4, 2.4))
        for optimizer in optimizers:
            if optimizer in profile:
                ax.step(profile.index, profile[optimizer], where="post", color=colors.get(optimizer),
                        label=optimizer)
        ax.set_xlabel(f"tau: {what} to the validation target\nas a multiple of the fastest's")
        ax.set_ylabel("fraction of problems")
        ax.set_ylim(-0.02, 1.02)
        _legend(fig, [ax])
        _fit(fig)
    return fig


OUTCOME_COLORS = {"loss": "#d6604d", "tie": "#bababa", "win": "#4393c3"}
"""The colours of the contest figure's cells (red, grey, blue: distinguishable without red-green vision)."""


def contest_figure(per_problem: pd.DataFrame, problems: Sequence[str], optimizers: Sequence[str],
                   baseline: str) -> Figure:
    """Each optimizer (rows) against the baseline on each problem (columns): win, tie or loss.

    ``per_problem`` is the contest's table (:func:`~.contest.versus`); a cell names its collapsed (``c``) and
    diverged (``d``) seeds.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rows = [o for o in optimizers if o != baseline and o in set(per_problem["optimizer"])]
    columns = [p for p in problems if p in set(per_problem["problem"])]
    codes = {name: i for i, name in enumerate(OUTCOME_COLORS)}
    grid = np.full((len(rows), len(columns)), np.nan)
    with _style() as plt:
        fig, ax = plt.subplots(figsize=(1.8 + 0.28 * len(columns), 0.9 + 0.24 * len(rows)))
        for record in per_problem.to_dict("records"):
            if record["optimizer"] in rows and record["problem"] in columns:
                i, j = rows.index(str(record["optimizer"])), columns.index(str(record["problem"]))
                grid[i, j] = codes.get(str(record["versus"]), np.nan)
                marks = "".join(f"{n}{k}" for n, k in ((record["collapsed"], "c"), (record["diverged"], "d")) if n)
                ax.text(j, i, marks, ha="center", va="center", fontsize=5)
        ax.imshow(grid, cmap=ListedColormap(list(OUTCOME_COLORS.values())), vmin=-0.5, vmax=len(codes) - 0.5,
                  aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=6)
        ax.set_yticks(range(len(rows)), rows, fontsize=6)
        ax.grid(False)
        ax.set_title(f"against {baseline}", fontsize=7)
        ax.legend(handles=[Patch(color=color, label=name) for name, color in OUTCOME_COLORS.items()], frameon=False,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=6)
        _fit(fig, panel=(0.28 * max(len(columns), 1), 0.24 * max(len(rows), 1)))
    return fig
