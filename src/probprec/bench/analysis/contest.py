r"""The contest: every optimizer's final test metric per problem, and each against one baseline (win/tie/loss).

**Final test metric of a run**: the test accuracy (or, on problems without
one, the test loss) after the last epoch of its budget; collapsed runs train
their whole budget and count with what they reached. A run that diverged
stopped early with nothing usable: it counts with its value before training
(epoch 0), so that diverged runs pull a median down instead of dropping out of
it. Failed and interrupted runs are left out (they say nothing about the
optimizer).

**Per problem and optimizer** (:func:`contest_table`): the median and quartiles of
the final test metric over seeds, the number of runs that completed, collapsed
and diverged, and the median time per epoch relative to the baseline's runs of
the same seed (wall clock and CPU, :func:`~.runtime.runtime_ratios`).

**Against the baseline** (:func:`versus`): an optimizer *ties* on a problem when
the two medians differ by no more than the wider of the two interquartile ranges
(the seeds' own spread), or by less than :data:`ACCURACY_TIE` (half an accuracy
point) on an accuracy problem or :data:`LOSS_TIE` of the baseline's median on a
loss problem; otherwise the better median *wins*.

**Over problems** (:func:`contest`): per optimizer its wins, ties and losses, its
collapsed and diverged runs, the median over problems of its time ratios, and
its performance-profile score (AlgoPerf's: the area under the fraction of
problems on which it reaches the validation target within a factor tau of the
fastest, tau from 1 to 4; :mod:`.profiles`).

>>> outcome(0.90, (0.895, 0.905), 0.93, (0.925, 0.935), higher=True, accuracy=True)
'loss'
>>> outcome(0.931, (0.93, 0.932), 0.933, (0.932, 0.934), higher=True, accuracy=True)
'tie'
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .load import Results
from .metrics import higher_is_better
from .profiles import performance_profile, profile_scores

__all__ = ["ACCURACY_TIE", "LOSS_TIE", "STOPPED", "Contest", "contest", "contest_table", "final_test_scores", "outcome",
           "versus", "versus_counts"]

ACCURACY_TIE = 0.005
"""Medians closer than this (absolute, half an accuracy point) tie on an accuracy problem."""
LOSS_TIE = 0.01
"""Medians closer than this fraction of the baseline's median tie on a loss problem."""
STOPPED = ("diverged",)
"""The statuses of runs that stopped early and count with their metric before training."""
COUNTED = ("completed", "collapsed", *STOPPED)

SCORE_COLUMNS = ["run_id", "problem", "optimizer", "seed", "status", "metric", "value"]
TABLE_COLUMNS = ["problem", "optimizer", "metric", "runs", "median", "q25", "q75", "completed", "collapsed",
                 "diverged", "wall_ratio", "cpu_ratio"]


def final_test_scores(picked: Results) -> pd.DataFrame:
    """One row per counted run: its final test metric, or its value before training if it stopped early."""
    curves, rows = picked.curves, []
    for run in picked.runs.to_dict("records"):
        if run["status"] not in COUNTED:
            continue
        metric = f"test_{picked.metric_kind(str(run['problem']))}"
        values = curves[(curves["run_id"] == run["run_id"]) & (curves["metric"] == metric)]
        epoch = 0 if run["status"] in STOPPED else int(run["num_epochs"])
        at = values.loc[values["epoch"] == epoch, "value"]
        rows.append({"run_id": run["run_id"], "problem": run["problem"], "optimizer": run["optimizer"],
                     "seed": run["seed"], "status": run["status"], "metric": metric,
                     "value": float(at.iloc[0]) if len(at) else math.nan})
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _quartiles(values: pd.Series) -> tuple[float, float, float]:
    finite = values.dropna().to_numpy(dtype=float)
    if not len(finite):
        return math.nan, math.nan, math.nan
    q25, median, q75 = np.quantile(finite, [0.25, 0.5, 0.75])
    return float(median), float(q25), float(q75)


def contest_table(scores: pd.DataFrame, ratios: pd.DataFrame | None) -> pd.DataFrame:
    """Per problem and optimizer: the final test metric over seeds, the status counts and the time ratios."""
    rows = []
    for (problem, optimizer), group in scores.groupby(["problem", "optimizer"], sort=False):
        median, q25, q75 = _quartiles(group["value"])
        counts = group["status"].value_counts()
        mine = ratios[ratios["run_id"].isin(group["run_id"])] if ratios is not None else pd.DataFrame()
        rows.append({"problem": problem, "optimizer": optimizer, "metric": group["metric"].iloc[0],
                     "runs": len(group), "median": median, "q25": q25, "q75": q75,
                     **{status: int(counts.get(status, 0)) for status in COUNTED},
                     **{name: float(mine[name].median()) if len(mine) and mine[name].notna().any() else math.nan
                        for name in ("wall_ratio", "cpu_ratio")}})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def outcome(median: float, quartiles: tuple[float, float], base_median: float, base_quartiles: tuple[float, float],
            *, higher: bool, accuracy: bool) -> str:
    """``win``, ``tie`` or ``loss`` of one optimizer against the baseline on one problem (module docstring).

    Args:
        median: the optimizer's median final test metric.
        quartiles: its 25 % and 75 % quantiles.
        base_median: the baseline's median.
        base_quartiles: the baseline's quantiles.
        higher: whether higher is better (accuracy) or lower (loss).
        accuracy: whether the metric is an accuracy (the absolute tie margin) or a loss (the relative one).

    Returns:
        The outcome; ``n/a`` if either median is missing.
    """
    if math.isnan(median) or math.isnan(base_median):
        return "n/a"
    difference = median - base_median
    spread = max(quartiles[1] - quartiles[0], base_quartiles[1] - base_quartiles[0])
    margin = ACCURACY_TIE if accuracy else LOSS_TIE * abs(base_median)
    if abs(difference) <= spread or abs(difference) < margin:
        return "tie"
    better = difference > 0 if higher else difference < 0
    return "win" if better else "loss"


def versus(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The contest table with a column ``versus``: each row's outcome against ``baseline`` on its problem."""
    out = table.copy()
    out["versus"] = "n/a"
    for _, group in table.groupby("problem", sort=False):
        base = group[group["optimizer"] == baseline]
        if base.empty:
            continue
        b = base.iloc[0]
        metric = str(b["metric"])
        for index, row in group.iterrows():
            if row["optimizer"] != baseline:
                out.loc[index, "versus"] = outcome(row["median"], (row["q25"], row["q75"]), b["median"],
                                                   (b["q25"], b["q75"]), higher=higher_is_better(metric),
                                                   accuracy=metric.endswith("accuracy"))
    return out


def versus_counts(compared: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per optimizer but the baseline: wins, ties, losses, and the problems it lost (from :func:`versus`)."""
    rows = []
    for optimizer, group in compared.groupby("optimizer", sort=False):
        if optimizer == baseline:
            continue
        counts = group["versus"].value_counts()
        rows.append({"optimizer": optimizer, "win": int(counts.get("win", 0)), "tie": int(counts.get("tie", 0)),
                     "loss": int(counts.get("loss", 0)),
                     "lost_on": ", ".join(group.loc[group["versus"] == "loss", "problem"])})
    return pd.DataFrame(rows, columns=["optimizer", "win", "tie", "loss", "lost_on"])


@dataclass
class Contest:
    """The contest's tables (see the module docstring and :func:`contest`)."""

    baseline: str
    per_problem: pd.DataFrame
    """:func:`contest_table` with the outcome against the baseline (``versus``)."""
    per_optimizer: pd.DataFrame
    """Per optimizer: :func:`versus_counts`, runs collapsed and diverged, median time ratios, and the profile scores
    of the wall-clock time and of the epochs to the validation target."""


def _profile_scores(time_to_target: pd.DataFrame, column: str) -> pd.Series:
    """Per optimizer, the performance-profile score of ``column`` of the times to target (seconds or epochs)."""
    if time_to_target.empty or time_to_target["problem"].nunique() < 2:
        return pd.Series(dtype=float)
    profile = performance_profile(time_to_target, column)
    return profile_scores(profile) if len(profile.columns) else pd.Series(dtype=float)


def contest(picked: Results, ratios: pd.DataFrame | None, time_to_target: pd.DataFrame, baseline: str) -> Contest:
    """Every table of the contest from the chosen settings' runs, their time ratios and times to target."""
    per_problem = versus(contest_table(final_test_scores(picked), ratios), baseline)
    counts = versus_counts(per_problem, baseline).set_index("optimizer")
    scores, epoch_scores = _profile_scores(time_to_target, "seconds"), _profile_scores(time_to_target, "epochs")
    rows = []
    for optimizer, group in per_problem.groupby("optimizer", sort=False):
        row = counts.loc[optimizer].to_dict() if optimizer in counts.index else {}
        rows.append({"optimizer": optimizer, "problems": len(group), **row,
                     "collapsed": int(group["collapsed"].sum()), "diverged": int(group["diverged"].sum()),
                     "runs": int(group["runs"].sum()), "wall_ratio": float(group["wall_ratio"].median()),
                     "cpu_ratio": float(group["cpu_ratio"].median()),
                     "profile_score": float(scores.get(optimizer, math.nan)),
                     "epoch_profile_score": float(epoch_scores.get(optimizer, math.nan))})
    columns = ["optimizer", "problems", "win", "tie", "loss", "lost_on", "runs", "collapsed", "diverged",
               "wall_ratio", "cpu_ratio", "profile_score", "epoch_profile_score"]
    return Contest(baseline, per_problem, pd.DataFrame(rows, columns=columns))
