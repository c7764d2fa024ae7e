"""The report's figures as saved: no text cut off, no empty panels, every line named in a legend.

Each case writes made-up result files (ours, with timings and optimizer logs; :func:`probprec_record`), runs
:func:`write_report` with a contest, a learning-rate sweep and two batch sizes, so that it draws every figure
kind it has, and checks every figure as the report's own :func:`figures.save_figure` writes its PNG (the PDF,
the same figure, is left out to save time). The cases: one loss-only problem, one accuracy problem, and four
problems (two with accuracies, two loss-only: the report draws a loss-only performance figure beside an accuracy
one, as for the embedded benchmark). A last test draws the figures whose size depends on their labels with the
ablation experiment's long labels and a legacy reference label.

The rules checked on every saved figure:

* text: every Text artist drawn into the PNG (titles, axis labels, tick labels, offset texts, legend entries,
  cell marks), measured by the renderer that wrote the PNG, lies inside the PNG's pixels within one pixel; so
  what the PNG shows is checked, whatever options ``save_figure`` saves with;
* panels: a panel is drawn when its axes is visible and switched on; every drawn panel shows data (a line,
  collection, image or patch with a finite point), and every row and every column of a figure's grid of panels
  has a drawn panel (a cell without data may be left blank, a whole blank row or column may not);
* legends: every line with a finite point is named in a legend of the figure by its label, or is marked as
  unlabelled by design with ``gid == figures.UNLABELED`` (the runtime figure's baseline line at 1 and its
  median-and-quartile bars: its tick labels name the optimizers, its caption the bars). Dots and bands
  (collections) take their line's colour and are not named separately;
* layout: the layout engine never gives up (matplotlib's warning that the panels collapsed).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import probprec_record
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpecBase
from matplotlib.image import imread
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from probprec.bench.analysis import ReportOptions, figures, write_report
from probprec.bench.analysis.metrics import LEGACY_TEST_LABEL

EPOCHS = 4
SECONDS = {"PreconditionedSGD": 1.25, "AdaptiveSGD": 1.6, "SGD": 1.0, "Adam": 1.4}
"""The optimizers (the embedded benchmark's) and their seconds per epoch."""
LOSS_ONLY = {"quadratic_deep", "two_d_rosenbrock"}
CASES = {"one_loss_only": ["quadratic_deep"], "one_accuracy": ["digits_mlp"],
         "several": ["digits_mlp", "digits_cnn", "quadratic_deep", "two_d_rosenbrock"]}
KINDS = {"performance", "optimizer_state", "runtime", "batch_size_grid", "sensitivity", "contest"}
EXPECTED = {"one_loss_only": KINDS, "one_accuracy": KINDS,
            "several": (KINDS - {"performance", "optimizer_state"})
            | {"performance_1", "performance_2", "optimizer_state_1", "optimizer_state_2", "performance_profile"}}


def _record(problem: str, optimizer: str, seed: int, lr: float, batch_size: int) -> dict:
    """A completed run with losses (and accuracies) that fall at a rate set by the optimizer, lr and seed."""
    record = probprec_record(optimizer, seed, EPOCHS, problem, {"lr": lr})
    rate = 0.4 + 0.1 * list(SECONDS).index(optimizer) + 0.05 * math.log10(lr) + 0.01 * (seed - 42)
    losses = [2.3 * math.exp(-rate * epoch) for epoch in range(EPOCHS + 1)]
    record.update(batch_size=batch_size, train_losses=losses, valid_losses=[1.05 * v for v in losses],
                  test_losses=[1.1 * v for v in losses],
                  epoch_wall_times=[SECONDS[optimizer] * (1 + 0.02 * (seed - 42))] * EPOCHS,
                  epoch_cpu_times=[2 * SECONDS[optimizer]] * EPOCHS)
    if optimizer not in ("PreconditionedSGD", "AdaptiveSGD"):
        record["optimizer_logs"] = []
    if problem in LOSS_ONLY:
        for key in ("train_accuracies", "valid_accuracies", "test_accuracies"):
            del record[key]
        record["problem"] = {"name": problem, "metric": "loss"}
    else:
        accuracies = [0.1 + 0.8 * (1 - math.exp(-rate * epoch)) for epoch in range(EPOCHS + 1)]
        record.update(train_accuracies=accuracies, valid_accuracies=[a - 0.01 for a in accuracies],
                      test_accuracies=[a - 0.02 for a in accuracies])
    return record


def _write_results(root: Path, problems: list[str]) -> None:
    """Every optimizer at lr 0.1 and batch size 128; SGD also at lr 0.01 and 1 (a sweep) and batch size 64 on the
    first three problems (the fourth has neither: a row fewer in the sensitivity and batch size figures)."""
    extra = [("SGD", 0.01, 128), ("SGD", 1.0, 128), ("SGD", 0.1, 64)]
    for i, problem in enumerate(problems):
        for optimizer, lr, batch_size in [(o, 0.1, 128) for o in SECONDS] + (extra if i < 3 else []):
            for seed in (42, 43):
                folder = root / problem / optimizer / f"num_epochs__{EPOCHS}__batch_size__{batch_size}__lr__{lr}"
                folder.mkdir(parents=True, exist_ok=True)
                record = _record(problem, optimizer, seed, lr, batch_size)
                (folder / f"random_seed__{seed}__2024-01-01-00-00-00.json").write_text(json.dumps(record))


@dataclass
class Saved:
    """One figure as the report saved it."""

    figure: Figure
    png: Path
    size: tuple[int, int]
    """The PNG's width and height in pixels."""
    texts: list[tuple[str, Bbox]]
    """Every text drawn into the PNG and where, in the PNG's pixels (origin bottom left)."""


@contextmanager
def _recording(patch: pytest.MonkeyPatch, drawn: list[tuple[RendererAgg, str, Bbox]]) -> Iterator[None]:
    """Every text that an Agg renderer draws for real (not in a layout's dry run) goes to ``drawn``."""
    draw = Text.draw

    def recording_draw(text: Text, renderer: RendererAgg) -> None:
        draw(text, renderer)
        rendering = isinstance(renderer, RendererAgg) and "draw_text" not in vars(renderer)  # not a dry run
        if rendering and text.get_visible() and text.get_text():
            drawn.append((renderer, text.get_text(), text.get_window_extent(renderer)))

    patch.setattr(Text, "draw", recording_draw)
    yield


def _save(save: Callable[..., list[Path]], fig: Figure, stem: Path, drawn: list, dpi: int = 150) -> Saved:
    """``save`` (the report's :func:`figures.save_figure`) writes the PNG; the texts drawn into it."""
    drawn.clear()
    png = save(fig, stem, dpi, formats=(".png",))[0]  # the report's call, less the PDF (time)
    last = drawn[-1][0] if drawn else None  # the renderer that wrote the PNG (not one that only measured)
    height, width = imread(png).shape[:2]
    return Saved(fig, png, (width, height), [(text, box) for renderer, text, box in drawn if renderer is last])


def _render(root: Path, out: Path) -> tuple[dict[str, Saved], list[str]]:
    """Write the report; every figure it saves with the texts drawn into its PNG; the layout warnings."""
    drawn: list[tuple[RendererAgg, str, Bbox]] = []
    saved: dict[str, Saved] = {}
    save = figures.save_figure

    def recording_save(fig: Figure, stem: Path, dpi: int = 150) -> list[Path]:
        saved[Path(stem).name] = _save(save, fig, Path(stem), drawn, dpi)
        return [saved[Path(stem).name].png]

    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught, \
            _recording(patch, drawn):
        warnings.simplefilter("always")
        patch.setattr(figures, "save_figure", recording_save)
        write_report(root, out, ReportOptions(versus="SGD"))
    return saved, [str(w.message) for w in caught if "layout" in str(w.message).lower()]


@pytest.fixture(scope="module", params=list(CASES))
def report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict]]:
    """(case, figure name -> :class:`Saved`) of each case's report; the layout warnings under ``"warnings"``."""
    root = tmp_path_factory.mktemp(request.param)
    _write_results(root / "results", CASES[request.param])
    saved, caught = _render(root / "results", root / "report")
    yield request.param, {"figures": saved, "warnings": caught}


def _has_data(ax: Axes) -> bool:
    """A line, collection, image or patch of ``ax`` with a finite point."""
    for line in ax.get_lines():
        if _finite(np.column_stack([line.get_xdata(), line.get_ydata()])):
            return True
    for collection in ax.collections:
        offsets = np.asarray(collection.get_offsets())
        if _finite(offsets) if len(offsets) else any(_finite(p.vertices) for p in collection.get_paths()):
            return True
    return any(_finite(np.asarray(image.get_array(), dtype=float)) for image in ax.images) or bool(ax.patches)


def _finite(values: np.ndarray) -> bool:
    values = np.asarray(values, dtype=float)
    return values.size > 0 and bool(np.isfinite(values).any())


def _drawn(ax: Axes) -> bool:
    return ax.get_visible() and ax.axison


def _blank_rows_and_columns(fig: Figure) -> list[str]:
    """The rows and columns of each grid of panels without a drawn panel."""
    cells: dict[int, tuple[GridSpecBase, set[tuple[str, int]]]] = {}
    for ax in fig.axes:
        spec = ax.get_subplotspec()
        if spec is None:
            continue
        grid = spec.get_gridspec()
        _, covered = cells.setdefault(id(grid), (grid, set()))
        if _drawn(ax):
            covered.update(("row", r) for r in spec.rowspan)
            covered.update(("column", c) for c in spec.colspan)
    blank = []
    for grid, covered in cells.values():
        rows, columns = grid.get_geometry()
        blank += [f"{kind} {i + 1}" for kind, count in (("row", rows), ("column", columns)) for i in range(count)
                  if (kind, i) not in covered]
    return blank


def _legend_labels(fig: Figure) -> set[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return {text.get_text() for legend in legends for text in legend.get_texts()}


def _cut(name: str, saved: Saved) -> list[str]:
    """The texts drawn (partly) outside the PNG."""
    width, height = saved.size
    if not saved.texts:
        return [f"{name}: no text recorded"]
    return [f"{name}: {text!r} at x {box.x0:.0f}..{box.x1:.0f}, y {box.y0:.0f}..{box.y1:.0f} outside {width} x "
            f"{height} px" for text, box in saved.texts
            if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1]


def _empty(name: str, saved: Saved) -> list[str]:
    """The drawn panels without data, and the rows and columns of panels with none drawn."""
    fig = saved.figure
    return ([f"{name}: panel {ax.get_label() or i} is drawn without data"
             for i, ax in enumerate(fig.axes) if _drawn(ax) and not _has_data(ax)]
            + [f"{name}: {where} has no panel drawn" for where in _blank_rows_and_columns(fig)])


def _unnamed(name: str, saved: Saved) -> list[str]:
    """Legend entries not drawn, and lines with data neither in a legend nor marked unlabelled by design."""
    labels = _legend_labels(saved.figure)
    unnamed = [f"{name}: legend entry {label!r} is not drawn" for label in labels - {t for t, _ in saved.texts}]
    for ax in saved.figure.axes:
        for line in ax.get_lines():
            data = np.column_stack([line.get_xdata(), line.get_ydata()])
            if not line.get_visible() or not _finite(data) or line.get_gid() == figures.UNLABELED:
                continue
            if str(line.get_label()) not in labels:
                unnamed.append(f"{name}: line {line.get_label()!r} in {ax.get_label()!r} is not in a legend")
    return unnamed


def _problems(check: Callable[[str, Saved], list[str]], case: str, saved: dict[str, Saved]) -> str:
    return "\n".join(line for name, one in saved.items() for line in check(f"{case}/{name}", one))


def test_the_report_draws_every_figure_kind(report):
    case, drawn = report
    assert set(drawn["figures"]) == EXPECTED[case]


def test_no_text_is_cut_off(report):
    case, drawn = report
    cut = _problems(_cut, case, drawn["figures"])
    assert not cut, cut


def test_no_panel_is_empty(report):
    case, drawn = report
    empty = _problems(_empty, case, drawn["figures"])
    assert not empty, empty


def test_every_line_is_named_in_a_legend(report):
    case, drawn = report
    unnamed = _problems(_unnamed, case, drawn["figures"])
    assert not unnamed, unnamed


def test_the_layout_engine_gives_no_warning(report):
    case, drawn = report
    assert not drawn["warnings"], f"{case}: {drawn['warnings']}"


def test_loss_only_panels_are_labelled_as_losses(report):
    """The sensitivity figure's y label names each panel's metric (test loss where a problem has no accuracy)."""
    case, drawn = report
    fig = drawn["figures"]["sensitivity"].figure
    for ax in fig.axes:
        if _drawn(ax):
            expected = "loss" if ax.get_title() in LOSS_ONLY else "accuracy"
            assert ax.get_ylabel() == f"final test {expected}", (case, ax.get_title())


LONG = "all off (the earlier default)"
"""A label of the ablation experiment (lr_free_ablation): long tick labels and legend entries."""


def _curves_table(problem: str, optimizers: list[str], metrics: tuple[str, ...]) -> pd.DataFrame:
    """An aggregated table (:func:`aggregate`'s columns) of made-up curves, two seeds each."""
    rows = []
    for i, optimizer in enumerate(optimizers):
        for metric in metrics:
            for epoch in range(EPOCHS + 1):
                value = 2.0 * math.exp(-(0.3 + 0.1 * i) * epoch)
                rows.append({"problem": problem, "optimizer": optimizer, "metric": metric, "epoch": epoch, "n": 2,
                             "median": value, "mean": value, "std": 0.05, "min": value - 0.05,
                             "max": value + 0.05, "q25": value - 0.03, "q75": value + 0.03})
    return pd.DataFrame(rows)


def _long_label_figures() -> dict[str, Figure]:
    """The figures whose size depends on the labels, with the ablation's labels and a legacy reference label."""
    problem, optimizers = "robust_mlp_narrow", ["PreconditionedSGD", LONG]
    contest = pd.DataFrame([{"optimizer": LONG, "problem": problem, "versus": "loss", "collapsed": 1,
                             "diverged": 0}])
    ratios = pd.DataFrame({"run_id": range(4), "problem": problem, "optimizer": optimizers * 2,
                           "seed": [42, 42, 43, 43], "wall_ratio": [1.0, 1.3, 1.0, 1.4],
                           "cpu_ratio": [1.0, 1.2, 1.0, 1.25]})
    losses = ("test_loss", "train_loss")
    label = f"Momentum (reference, {LEGACY_TEST_LABEL})"
    profile = pd.DataFrame({o: np.linspace(0.2 * (i + 1), 1.0, 7) for i, o in enumerate(optimizers)},
                           index=pd.Index(np.linspace(1.0, 4.0, 7), name="tau"))
    return {
        "contest": figures.contest_figure(contest, [problem], optimizers, "PreconditionedSGD"),
        "runtime": figures.runtime_figure(ratios, optimizers, "PreconditionedSGD"),
        "performance": figures.performance_figure(_curves_table(problem, optimizers, losses), [problem], optimizers,
                                                  _curves_table(problem, ["Momentum"], losses),
                                                  reference_labels={"Momentum": label}, legacy={problem}),
        "performance_profile": figures.profile_figure(profile, optimizers),
    }


def test_long_labels_grow_the_figure_instead_of_being_cut(tmp_path):
    """One row and one column of the contest figure with a long label squeezed its panel to nothing (the layout
    engine gave up and the labels were cut); a legend entry wider than a one-problem figure was cut at both ends."""
    drawn: list[tuple[RendererAgg, str, Bbox]] = []
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught, \
            _recording(patch, drawn):
        warnings.simplefilter("always")
        saved = {name: _save(figures.save_figure, fig, tmp_path / name, drawn)
                 for name, fig in _long_label_figures().items()}
    for check in (_cut, _empty, _unnamed):
        problems = _problems(check, "long labels", saved)
        assert not problems, problems
    assert not [str(w.message) for w in caught if "layout" in str(w.message).lower()]
