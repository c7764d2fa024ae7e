r"""Choosing each optimizer's setting, explicitly: the rule, the metric, and per optimizer how.

Among the settings (hyperparameters, batch size, budget; see :mod:`.grouping`) of
one optimizer on one problem, :func:`select_settings` takes the one with the best
**validation** metric: accuracy where the problem has one, else loss (or a
training metric, if asked). The score of a setting is the mean over seeds of

* ``mode="final"``: the metric after the last epoch of the budget;
* ``mode="best"``: the best epoch of the mean curve, :math:`\max_e \frac1S \sum_s m_{s,e}` (min for losses).

Settings are compared on the seeds they all share (a paired comparison: DeepOBS
and our tuning protocol run every candidate with one seed, then rerun the winner
with more, so the winner's extra seeds must not decide); where they share no
seed, each setting's mean over all its seeds counts. A setting with a diverged
or failed seed ranks below every setting whose seeds all finished; interrupted
runs are not finished and are left out.

The test set never chooses, with one exception the user must ask for: DeepOBS
1.1's files have no validation curves, and DeepOBS chose on the test set then.
With ``legacy_test_selection`` an optimizer whose runs have no validation curve
is chosen on the test metric instead, and every table and figure says so
(:data:`~.metrics.LEGACY_TEST_LABEL`). Without it, such an optimizer gets no
setting (one line says why and how to opt in), unless it has only one.

Nothing is ever chosen by name: where no setting has a score (no validation
curves, every setting diverged), none is chosen and the notes say why; an
optimizer with a single setting reports it as "the only setting".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from .load import Results
from .metrics import LEGACY_TEST_LABEL, SELECTION_METRICS, UnknownMetricError, canonical_metric, higher_is_better

__all__ = ["FINISHED", "MODES", "NO_SCORE", "NO_VALIDATION", "check_selection_metric", "default_metric", "order",
           "select_settings", "selected_runs"]

FINISHED = ("completed", "diverged", "collapsed", "failed")
"""The statuses of runs that ended (an interrupted run may still resume)."""
MODES = ("final", "best")
CANDIDATE_COLUMNS = ["hyperparams", "batch_size", "num_epochs", "metric", "selected_on", "score", "seeds", "runs",
                     "diverged", "interrupted", "collapsed", "compared_on", "rank", "how_chosen"]
"""The columns of the selection tables after the group keys and ``setting``."""


def default_metric(results: Results, problem: str, split: str = "valid") -> str:
    """``<split>_accuracy`` if the problem has accuracies, else ``<split>_loss``."""
    return f"{split}_{results.metric_kind(problem)}"


def order(values: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    """``values`` in the user's order (``preferred`` first, then the rest as met), never the file system's."""
    met = list(dict.fromkeys(values))
    if not preferred:
        return met
    return [v for v in preferred if v in met] + [v for v in met if v not in preferred]


def check_selection_metric(metric: str | None) -> str | None:
    """The canonical name of a selection metric (None stays None: the default per problem).

    Raises:
        UnknownMetricError: not a metric.
        ValueError: a metric that may not choose (a test metric, a time).
    """
    if metric is None:
        return None
    accepted = ", ".join(SELECTION_METRICS)
    try:
        name = canonical_metric(metric)
    except UnknownMetricError:
        raise UnknownMetricError(f"unknown metric {metric!r}; settings are selected on {accepted}") from None
    if name.startswith("test_"):
        raise ValueError(f"metric {metric!r}: settings are selected on validation (or training) metrics, never on "
                         f"the test set ({accepted}); for files without validation curves (DeepOBS 1.1), "
                         "--legacy-test-selection chooses on the test metric as DeepOBS did then")
    if name not in SELECTION_METRICS:
        raise ValueError(f"metric {metric!r} cannot select a setting; use one of {accepted}")
    return name


@dataclass(frozen=True)
class _Rule:
    """How one group is chosen: the metric, the mode and whether the test set stands in for validation."""

    metric: str
    mode: str
    legacy: bool = False

    @property
    def selected_on(self) -> str:
        if self.legacy:
            return f"{self.metric}, {LEGACY_TEST_LABEL}"
        return f"{self.metric}, {'validation' if self.metric.startswith('valid') else 'training'} set"


def _group_rule(results: Results, group: pd.DataFrame, metric: str | None, mode: str,
                legacy_test_selection: bool) -> _Rule | None:
    """The rule of one group, or None: its runs have no validation curve and the user did not opt in."""
    name = metric or default_metric(results, group["problem"].iloc[0])
    if not name.startswith("valid_"):
        return _Rule(name, mode)
    curves = results.curves
    present = curves["run_id"].isin(group["run_id"]) & (curves["metric"] == name)
    if present.any():
        return _Rule(name, mode)
    return _Rule(name.replace("valid_", "test_"), mode, legacy=True) if legacy_test_selection else None


def _score(curves: pd.DataFrame, run_ids: list[str], rule: _Rule, final_epoch: int) -> float:
    """The mean over runs of the metric at the final epoch, or the best epoch of the mean curve; NaN if missing."""
    rows = curves[(curves["metric"] == rule.metric) & curves["run_id"].isin(run_ids)]
    if not run_ids or rows["run_id"].nunique() < len(run_ids):
        return math.nan
    if rule.mode == "final":
        final = rows[rows["epoch"] == final_epoch].set_index("run_id")["value"].reindex(run_ids)
        return float(final.mean(skipna=False))
    mean = rows.pivot(index="epoch", columns="run_id", values="value").mean(axis=1, skipna=False).dropna()
    if mean.empty:
        return math.nan
    return float(mean.max() if higher_is_better(rule.metric) else mean.min())


def _seed_text(seeds: Iterable[int]) -> str:
    ordered = sorted(seeds)
    if len(ordered) == 1:
        return f"seed {ordered[0]}"
    if len(ordered) <= 4:
        return f"seeds {', '.join(map(str, ordered))}"
    return f"{len(ordered)} seeds {ordered[0]}-{ordered[-1]}"


def _shared_seeds(settings: Mapping[Any, pd.DataFrame]) -> set[int]:
    """The seeds every setting with a finished run has finished (empty with fewer than two such settings)."""
    seed_sets = [set(runs["seed"]) for runs in settings.values() if len(runs)]
    return set.intersection(*seed_sets) if len(seed_sets) > 1 else set()


def _candidates(results: Results, group: pd.DataFrame, rule: _Rule | None) -> list[dict]:
    """One row per setting of a group: its score under ``rule`` and what it was compared on."""
    finished = {setting: runs[runs["status"].isin(FINISHED)] for setting, runs in group.groupby("setting", sort=False)}
    shared = _shared_seeds(finished)
    rows = []
    for setting, runs in group.groupby("setting", sort=False):
        done = finished[setting]
        broken = int((done["status"] != "completed").sum())
        compared = done[done["seed"].isin(shared)] if shared else done
        score = math.nan
        if rule is not None and len(compared) and not broken:
            score = _score(results.curves, list(compared["run_id"]), rule, int(compared["num_epochs"].iloc[0]))
        if shared:
            compared_on = f"{_seed_text(shared)}, shared by all {len(finished)} settings"
        else:
            compared_on = "each setting's own seeds (they share no seed)" if len(finished) > 1 else "its seeds"
        first = runs.iloc[0]
        rows.append({"setting": setting, "hyperparams": first["hyperparams"], "batch_size": first["batch_size"],
                     "num_epochs": first["num_epochs"], "metric": rule.metric if rule else None,
                     "selected_on": rule.selected_on if rule else "nothing", "score": score,
                     "seeds": int(runs["seed"].nunique()), "runs": len(runs), "diverged": broken,
                     "interrupted": int((runs["status"] == "interrupted").sum()),
                     "collapsed": int(runs["collapsed_at"].notna().sum()), "compared_on": compared_on})
    return rows


def _rank(table: pd.DataFrame, metric: str | None) -> pd.Series:
    """1 = best; settings without a score last, ties by the setting's name (deterministic, never a choice)."""
    score = table["score"] if metric is None or higher_is_better(metric) else -table["score"]
    key = pd.DataFrame({"missing": score.isna(), "score": -score.fillna(0.0), "setting": table["setting"]},
                       index=table.index)
    ordered = key.sort_values(["missing", "score", "setting"], kind="stable").index
    return pd.Series(np.arange(1, len(table) + 1), index=ordered).reindex(table.index)


NO_VALIDATION = "no validation curves"
NO_SCORE = "no score"


def _how_chosen(table: pd.DataFrame, rule: _Rule | None) -> tuple[str, str | None]:
    """How the group's setting was chosen (for its rank-1 row), and why none was (``NO_VALIDATION``, ``NO_SCORE``)."""
    n = len(table)
    best = table.loc[table["rank"] == 1].iloc[0]
    if n == 1:
        return "the only setting (no choice made)", None
    if rule is None:
        return (f"{NO_VALIDATION}: none of {n} settings chosen (--legacy-test-selection chooses on the test metric "
                "as DeepOBS 1.1 did; --metric train_loss on the training loss)"), NO_VALIDATION
    if math.isnan(best["score"]):
        return (f"no setting has a finished {rule.metric} on every seed without diverging: none of {n} settings "
                "chosen"), NO_SCORE
    how = f"best of {n} settings on the {rule.mode} {rule.metric} (mean over seeds), compared on {best['compared_on']}"
    return how + (f" ({LEGACY_TEST_LABEL})" if rule.legacy else ""), None


@overload
def select_settings(results: Results, metric: str | None = None, mode: str = "final",
                    by: Sequence[str] = ("problem", "optimizer"), problems: Sequence[str] | None = None,
                    optimizers: Sequence[str] | None = None, return_candidates: Literal[False] = False,
                    legacy_test_selection: bool = False) -> pd.DataFrame: ...


@overload
def select_settings(results: Results, metric: str | None = None, mode: str = "final",
                    by: Sequence[str] = ("problem", "optimizer"), problems: Sequence[str] | None = None,
                    optimizers: Sequence[str] | None = None, *, return_candidates: Literal[True],
                    legacy_test_selection: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]: ...


def select_settings(results: Results, metric: str | None = None, mode: str = "final",
                    by: Sequence[str] = ("problem", "optimizer"), problems: Sequence[str] | None = None,
                    optimizers: Sequence[str] | None = None, return_candidates: bool = False,
                    legacy_test_selection: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """The chosen setting of every group (default: problem x optimizer); see the module docstring.

    Args:
        results: loaded results.
        metric: one of :data:`~.metrics.SELECTION_METRICS`; None: per problem, validation accuracy where there
            is one, else validation loss. Test metrics are refused.
        mode: ``final`` or ``best``.
        by: the columns that form a group; add ``batch_size`` to choose per batch size.
        problems: the order of the problems in the result (others follow in the order met).
        optimizers: the order of the optimizers in the result.
        return_candidates: also return every setting with its score, rank and how it was compared.
        legacy_test_selection: choose on the test metric where a group has no validation curves.

    Returns:
        The chosen rows (group keys, ``setting`` and :data:`CANDIDATE_COLUMNS`) and, if asked, every candidate.
        ``chosen.attrs["notes"]`` has one line per group where nothing was chosen, saying why, and
        ``chosen.attrs["unchosen"]`` the same as ``{"group": {...}, "why": NO_VALIDATION or NO_SCORE}``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    chosen_metric = check_selection_metric(metric)
    keys = list(dict.fromkeys([*by, "setting"]))
    tables: list[pd.DataFrame] = []
    notes: list[str] = []
    unchosen: list[dict[str, Any]] = []
    picked: list[int] = []
    for key, group in results.runs.groupby(list(by), sort=False, dropna=False):
        values = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        rule = _group_rule(results, group, chosen_metric, mode, legacy_test_selection)
        table = pd.DataFrame([{**values, **row} for row in _candidates(results, group, rule)])
        table["rank"] = _rank(table, rule.metric if rule else None)
        how, why = _how_chosen(table, rule)
        table["how_chosen"] = np.where(table["rank"] == 1, how, "")
        if why:
            notes.append(f"{'/'.join(map(str, values.values()))}: {how}")
            unchosen.append({"group": values, "why": why, "metric": rule.metric if rule else None})
        else:
            picked.append(table.index[table["rank"] == 1][0] + sum(len(t) for t in tables))
        tables.append(table)
    columns = list(dict.fromkeys([*keys, *CANDIDATE_COLUMNS]))
    candidates = pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)
    chosen = _sorted(candidates.loc[picked], problems, optimizers)
    candidates = _sorted(candidates, problems, optimizers)
    chosen.attrs["notes"] = notes if len(results.runs) else ["no runs to select from"]
    chosen.attrs["unchosen"] = unchosen
    return (chosen, candidates) if return_candidates else chosen


def _sorted(table: pd.DataFrame, problems: Sequence[str] | None, optimizers: Sequence[str] | None) -> pd.DataFrame:
    if table.empty:
        return table.reset_index(drop=True)
    problem_order = {p: i for i, p in enumerate(order(table["problem"], problems))}
    optimizer_order = {o: i for i, o in enumerate(order(table["optimizer"], optimizers))}
    extra = [c for c in ("batch_size", "rank") if c in table.columns]
    keyed = table.assign(_p=table["problem"].map(problem_order), _o=table["optimizer"].map(optimizer_order))
    return keyed.sort_values(["_p", "_o", *extra], kind="stable").drop(columns=["_p", "_o"]).reset_index(drop=True)


def selected_runs(results: Results, chosen: pd.DataFrame) -> Results:
    """The runs (and curves) of the chosen settings."""
    keys = [c for c in ("problem", "optimizer", "batch_size", "setting") if c in chosen.columns]
    picked = results.runs.merge(chosen[keys].drop_duplicates(), on=keys, how="inner")["run_id"]
    runs = results.runs[results.runs["run_id"].isin(picked)].reset_index(drop=True)
    curves = results.curves[results.curves["run_id"].isin(picked)].reset_index(drop=True)
    return Results(runs, curves, list(results.problems_found))
