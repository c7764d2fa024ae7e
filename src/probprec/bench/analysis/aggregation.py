r"""The chosen settings over seeds: aggregated curves, time to a validation target, and the summary table.

Aggregation (:func:`aggregate`) summarizes the chosen settings' curves over
seeds: median with the 25 % and 75 % quantiles, mean with standard deviation,
minimum, maximum and the number of seeds at that epoch.

Time to target (:func:`time_to_target`), after AlgoPerf: per run, the first
epoch (and the training seconds up to it) at which the validation metric
reaches a target. Unless targets are given, a problem's target is
:math:`m_0 + f\,(m^\ast - m_0)`: the fraction :math:`f` (default 0.95) of the way
from the median initial value :math:`m_0` to the best median curve's best value
:math:`m^\ast` over the compared optimizers. Problems without the metric get no
target.

The summary (:func:`summary_table`) has one row per chosen setting: how it was
chosen, its status counts (and runs stuck at chance that kept another status), the final and best metrics
over seeds, the time per epoch and to the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .load import Results
from .metrics import higher_is_better
from .selection import check_selection_metric, default_metric, selected_runs

__all__ = ["SUMMARY_COLUMNS", "aggregate", "summary_table", "time_to_target"]

SUMMARY_COLUMNS = ["problem", "optimizer", "setting", "batch_size", "selected_on", "how_chosen", "score", "runs",
                   "status", "collapsed"]
"""The leading columns of the summary (the metric columns follow)."""
TARGET_COLUMNS = ["run_id", "problem", "optimizer", "seed", "metric", "target", "epochs", "seconds"]


def aggregate(results: Results, by: Sequence[str] = ("problem", "optimizer")) -> pd.DataFrame:
    """Per group, epoch and metric over seeds: ``n, median, q25, q75, mean, std, min, max``."""
    curves = results.curves
    if "batch_size" in by:
        curves = curves.merge(results.runs[["run_id", "batch_size"]], on="run_id")
    groups = curves.dropna(subset=["value"]).groupby([*by, "metric", "epoch"], sort=False)["value"]
    table = groups.agg(n="count", median="median", mean="mean", std="std", min="min", max="max")
    table["q25"] = groups.quantile(0.25)
    table["q75"] = groups.quantile(0.75)
    return table.reset_index()


def _target(rows: pd.DataFrame, high: bool, fraction: float) -> float:
    medians = rows.groupby(["optimizer", "epoch"])["value"].median()
    initial = float(rows[rows["epoch"] == 0]["value"].median())
    best = float(medians.max() if high else medians.min())
    return initial + fraction * (best - initial)


def time_to_target(results: Results, targets: dict[str, float] | None = None, fraction: float = 0.95,
                   metric: str | None = None) -> tuple[pd.DataFrame, dict[str, tuple[str, float]]]:
    """Epochs and training seconds until each run's validation metric first reaches its problem's target.

    Returns:
        A table with one row per run (``run_id, problem, optimizer, seed, metric, target, epochs, seconds``;
        ``inf`` where the run never reached it) and the ``problem -> (metric, target)`` used.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    chosen_metric = check_selection_metric(metric)
    curves = results.curves
    used: dict[str, tuple[str, float]] = {}
    rows = []
    for problem in results.problem_names:
        name = chosen_metric or default_metric(results, problem)
        rows_p = curves[(curves["problem"] == problem) & (curves["metric"] == name)].dropna(subset=["value"])
        if rows_p.empty:
            continue
        high = higher_is_better(name)
        target = float(targets[problem]) if targets and problem in targets else _target(rows_p, high, fraction)
        if math.isnan(target):
            continue
        used[problem] = (name, target)
        elapsed = curves[(curves["problem"] == problem) & (curves["metric"] == "elapsed_wall_time")]
        seconds_at = elapsed.set_index(["run_id", "epoch"])["value"].to_dict()
        for run_id, run_rows in rows_p[rows_p["epoch"] > 0].groupby("run_id", sort=False):
            reached = run_rows[run_rows["value"] >= target] if high else run_rows[run_rows["value"] <= target]
            epoch = int(reached["epoch"].min()) if not reached.empty else math.inf
            seconds = float(seconds_at.get((run_id, epoch), math.nan)) if epoch != math.inf else math.inf
            first = run_rows.iloc[0]
            rows.append({"run_id": run_id, "problem": problem, "optimizer": first["optimizer"], "seed": first["seed"],
                         "metric": name, "target": target, "epochs": epoch, "seconds": seconds})
    table = pd.DataFrame(rows, columns=TARGET_COLUMNS).astype({"target": float, "epochs": float, "seconds": float})
    return table, used


def _spread(values: np.ndarray) -> dict[str, float]:
    """Median, quartiles (linear interpolation, as pandas), mean, standard deviation (n - 1) and count."""
    values = values[~np.isnan(values)]
    if not len(values):
        return {"median": math.nan, "q25": math.nan, "q75": math.nan, "mean": math.nan, "std": math.nan, "n": 0}
    q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}


def _per_run(picked: Results) -> pd.DataFrame:
    """Per run (rows) and metric: the final value and the best values over epochs.

    Columns ``final_<metric>`` (after the last epoch of the budget; NaN if the run stopped before),
    ``best_max_<metric>`` and ``best_min_<metric>``.
    """
    curves = picked.curves.merge(picked.runs[["run_id", "num_epochs"]], on="run_id")
    final = curves[curves["epoch"] == curves["num_epochs"]].pivot_table(
        index="run_id", columns="metric", values="value", aggfunc="first", dropna=False).add_prefix("final_")
    values = curves.groupby(["run_id", "metric"])["value"]
    best = pd.DataFrame(pd.concat({"best_max": values.max(), "best_min": values.min()}, axis=1).unstack("metric"))
    best.columns = best.columns.map("_".join)  # (kind, metric) -> kind_metric
    return final.join(best, how="outer").reindex(picked.runs["run_id"])


def _metric_columns(table: pd.DataFrame, timing: pd.DataFrame, ids: list[str], kind: str) -> dict[str, float]:
    """The summary's metric columns of one chosen setting from the per-run table and the timing curves."""
    rows = table.loc[ids]

    def column(name: str) -> np.ndarray:
        return rows[name].to_numpy(dtype=float) if name in rows else np.full(len(rows), np.nan)

    out = {}
    for metric in ("test_loss", "valid_loss", "train_loss") + (
            ("test_accuracy", "valid_accuracy", "train_accuracy") if kind == "accuracy" else ()):
        for stat, value in _spread(column(f"final_{metric}")).items():
            out[f"final_{metric}_{stat}"] = value
    valid = f"valid_{kind}"
    best = column(f"best_{'max' if kind == 'accuracy' else 'min'}_{valid}")
    for stat, value in _spread(best).items():
        out[f"best_{valid}_{stat}"] = value
    mine = timing[timing["run_id"].isin(ids)]
    for name, metric in (("seconds_per_epoch_median", "epoch_wall_time"),
                         ("cpu_seconds_per_epoch_median", "epoch_cpu_time")):
        times = mine.loc[mine["metric"] == metric, "value"].dropna()
        out[name] = float(times.median()) if len(times) else math.nan  # over every epoch of every seed
    return out


def _target_columns(targets: pd.DataFrame, ids: list[str]) -> dict[str, float | str]:
    hits = targets[targets["run_id"].isin(ids)]
    return {"target": float(hits["target"].iloc[0]) if len(hits) else math.nan,
            "target_reached": f"{int(np.isfinite(hits['epochs']).sum())}/{len(hits)}",
            "epochs_to_target_median": float(hits["epochs"].median()) if len(hits) else math.nan,
            "seconds_to_target_median": float(hits["seconds"].median()) if len(hits) else math.nan}


def summary_table(results: Results, chosen: pd.DataFrame, targets: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per chosen setting: how it was chosen, status counts, final and best metrics over seeds, times.

    Final metrics are taken after the last epoch of the budget from the runs that got there; ``best_valid`` is
    each run's best validation value over epochs. Columns :data:`SUMMARY_COLUMNS`, then
    ``<metric>_median/_q25/_q75/_mean/_std/_n`` and the times.
    """
    picked = selected_runs(results, chosen)
    per_run = _per_run(picked)
    timing = picked.curves[picked.curves["metric"].isin(["epoch_wall_time", "epoch_cpu_time"])]
    rows = []
    for row in chosen.itertuples():
        runs = picked.runs[(picked.runs["problem"] == row.problem) & (picked.runs["optimizer"] == row.optimizer)
                           & (picked.runs["setting"] == row.setting)]
        ids = list(runs["run_id"])
        out = {"problem": row.problem, "optimizer": row.optimizer, "setting": row.setting,
               "batch_size": row.batch_size, "selected_on": row.selected_on, "how_chosen": row.how_chosen,
               "score": row.score, "runs": len(runs),
               "status": ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().sort_index().items()),
               "collapsed": int((runs["collapsed_at"].notna() & (runs["status"] != "collapsed")).sum())}
        out.update(_metric_columns(per_run, timing, ids, results.metric_kind(str(row.problem))))
        if targets is not None:
            out.update(_target_columns(targets, ids))
        rows.append(out)
    return pd.DataFrame(rows, columns=None if rows else SUMMARY_COLUMNS)
