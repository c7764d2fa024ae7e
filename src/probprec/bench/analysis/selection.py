r"""Choosing a setting on validation, aggregating seeds, and time to a validation target.

Selection (:func:`select_settings`): among the settings (hyperparameters,
batch size, budget) of one optimizer on one problem, the one with the best
*validation* metric: accuracy where the problem has one, else loss. The test
set is never used to choose; asking for a test metric is an error. The score
of a setting is, over its seeds,

* ``mode="final"``: the mean of the metric after the last epoch of the budget;
* ``mode="best"``: the best epoch of the mean curve, :math:`\max_e \frac1S \sum_s m_{s,e}`
  (min for losses).

A setting with a diverged or failed seed ranks below every setting whose seeds
all finished (a method that sometimes diverges is not "best" for its good
seeds); interrupted runs are not finished and are left out of the score.

Aggregation (:func:`aggregate`) summarizes the chosen settings' curves over
seeds: median with the 25 % and 75 % quantiles, mean with standard deviation,
minimum, maximum and the number of seeds at that epoch.

Time to target (:func:`time_to_target`), after AlgoPerf: per run, the first
epoch (and the training seconds up to it) at which the validation metric
reaches a target. Unless targets are given, a problem's target is
:math:`m_0 + f\,(m^\ast - m_0)`: the fraction :math:`f` (default 0.95) of the way
from the median initial value :math:`m_0` to the best median curve's best value
:math:`m^\ast` over the compared optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .load import Results, UnknownMetricError, canonical_metric

__all__ = ["aggregate", "default_metric", "higher_is_better", "order", "select_settings", "selected_runs",
           "summary_table", "time_to_target"]

FINISHED = ("completed", "diverged", "failed")
MODES = ("final", "best")


def higher_is_better(metric: str) -> bool:
    """Accuracies go up, losses and times go down."""
    return "accuracy" in metric


def default_metric(results: Results, problem: str, split: str = "valid") -> str:
    """``<split>_accuracy`` if the problem has accuracies, else ``<split>_loss``."""
    return f"{split}_{results.metric_kind(problem)}"


def order(values: Sequence[str], preferred: Sequence[str] | None) -> list[str]:
    """``values`` in the user's order (``preferred`` first, then the rest as met), never the file system's."""
    values = list(dict.fromkeys(values))
    if not preferred:
        return values
    return [v for v in preferred if v in values] + [v for v in values if v not in preferred]


def _check_selection_metric(metric: str | None) -> str | None:
    if metric is None:
        return None
    try:
        name = canonical_metric(metric)
    except UnknownMetricError:
        raise UnknownMetricError(f"unknown metric {metric!r}; settings are selected on valid_loss or "
                                 "valid_accuracy (or train_loss, train_accuracy)") from None
    if name.startswith("test_"):
        raise ValueError(f"metric {metric!r}: settings are selected on validation (or training) metrics, never on "
                         "the test set; use valid_loss or valid_accuracy")
    if name not in ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy"):
        raise ValueError(f"metric {metric!r} cannot select a setting; use valid_loss or valid_accuracy")
    return name


def _final_values(results: Results, metric: str) -> pd.Series:
    """Per run: the metric after the last epoch of its budget (NaN if the run stopped before)."""
    runs = results.runs.set_index("run_id")
    rows = results.curves[results.curves["metric"] == metric]
    last = rows[rows["epoch"] == rows["run_id"].map(runs["num_epochs"])]
    return last.set_index("run_id")["value"].reindex(runs.index)


def _setting_score(curves: pd.DataFrame, run_ids: list[str], metric: str, mode: str, final_epoch: int) -> float:
    rows = curves[(curves["metric"] == metric) & curves["run_id"].isin(run_ids)]
    table = rows.pivot_table(index="epoch", columns="run_id", values="value", aggfunc="first")
    if table.shape[1] < len(run_ids):
        return math.nan
    if mode == "final":
        if final_epoch not in table.index:
            return math.nan
        return float(table.loc[final_epoch].mean(skipna=False))
    mean = table.mean(axis=1, skipna=False).dropna()
    if mean.empty:
        return math.nan
    return float(mean.max() if higher_is_better(metric) else mean.min())


def select_settings(results: Results, metric: str | None = None, mode: str = "final",
                    by: Sequence[str] = ("problem", "optimizer"), problems: Sequence[str] | None = None,
                    optimizers: Sequence[str] | None = None,
                    return_candidates: bool = False) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """The best setting of every group (default: problem x optimizer) on the validation metric.

    Args:
        results: loaded results.
        metric: ``valid_loss``/``valid_accuracy`` (or a training metric); None: per problem, validation
            accuracy where there is one, else validation loss. Test metrics are refused.
        mode: ``final`` or ``best`` (see the module docstring).
        by: the columns that form a group; add ``batch_size`` to choose per batch size.
        problems: the order of the problems in the result (others follow in the order met).
        optimizers: the order of the optimizers in the result.
        return_candidates: also return every setting with its score and rank.

    Returns:
        One row per group: ``problem, optimizer, setting, hyperparams, batch_size, num_epochs, metric, score,
        seeds, runs, diverged, interrupted, rank`` (and the candidates table, with the same columns, if asked).
        ``chosen.attrs["notes"]`` lists the groups where nothing could be chosen, and why.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    chosen_metric = _check_selection_metric(metric)
    runs = results.runs
    notes: list[str] = []
    rows = []
    keys = list(dict.fromkeys([*by, "setting"]))
    for key, group in runs.groupby(keys, sort=False, dropna=False):
        values = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        name = chosen_metric or default_metric(results, values.get("problem", group["problem"].iloc[0]))
        finished = group[group["status"].isin(FINISHED)]
        broken = int((finished["status"] != "completed").sum())
        score = math.nan
        if len(finished) and not broken:
            score = _setting_score(results.curves, list(finished["run_id"]), name, mode,
                                   int(finished["num_epochs"].iloc[0]))
        rows.append({**values, "hyperparams": group["hyperparams"].iloc[0], "batch_size": group["batch_size"].iloc[0],
                     "num_epochs": group["num_epochs"].iloc[0], "metric": name, "score": score,
                     "seeds": int(group["seed"].nunique()), "runs": len(group), "diverged": broken,
                     "interrupted": int((group["status"] == "interrupted").sum())})
    columns = [*keys, "hyperparams", "batch_size", "num_epochs", "metric", "score", "seeds", "runs", "diverged",
               "interrupted", "rank"]
    columns = list(dict.fromkeys(columns))
    candidates = pd.DataFrame(rows, columns=[c for c in columns if c != "rank"])
    if candidates.empty:
        candidates["rank"] = pd.Series(dtype=int)
        chosen = candidates.copy()
        chosen.attrs["notes"] = ["no runs to select from"]
        return (chosen, candidates) if return_candidates else chosen
    ranks = []
    for _, group in candidates.groupby(list(by), sort=False, dropna=False):
        ranks.append(_rank(group))
    candidates["rank"] = pd.concat(ranks).reindex(candidates.index)
    for key, group in candidates.groupby(list(by), sort=False, dropna=False):
        if group["score"].isna().all() and len(group) > 1:
            notes.append(f"{'/'.join(map(str, key if isinstance(key, tuple) else (key,)))}: no setting has a finished "
                         f"{group['metric'].iloc[0]} on every seed; chose by name among {len(group)} settings")
    chosen = candidates[candidates["rank"] == 1].copy()
    chosen = _sorted(chosen, problems, optimizers)
    candidates = _sorted(candidates, problems, optimizers)
    chosen.attrs["notes"] = notes
    return (chosen, candidates) if return_candidates else chosen


def _rank(group: pd.DataFrame) -> pd.Series:
    """1 = best; unfinished or diverged settings last, ties broken by the setting's name (deterministic)."""
    better_high = higher_is_better(group["metric"].iloc[0])
    score = group["score"] if better_high else -group["score"]
    key = pd.DataFrame({"missing": score.isna(), "score": -score.fillna(0.0), "setting": group["setting"]},
                       index=group.index)
    ordered = key.sort_values(["missing", "score", "setting"], kind="stable").index
    return pd.Series(np.arange(1, len(group) + 1), index=ordered).reindex(group.index)


def _sorted(table: pd.DataFrame, problems: Sequence[str] | None, optimizers: Sequence[str] | None) -> pd.DataFrame:
    if table.empty:
        return table
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


def time_to_target(results: Results, targets: dict[str, float] | None = None, fraction: float = 0.95,
                   metric: str | None = None) -> tuple[pd.DataFrame, dict[str, tuple[str, float]]]:
    """Epochs and training seconds until each run's validation metric first reaches its problem's target.

    Returns:
        A table with one row per run (``run_id, problem, optimizer, seed, metric, target, epochs, seconds``;
        ``inf`` where the run never reached it) and the ``problem -> (metric, target)`` used.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    chosen_metric = _check_selection_metric(metric)
    curves = results.curves
    used: dict[str, tuple[str, float]] = {}
    rows = []
    for problem in results.problem_names:
        name = chosen_metric or default_metric(results, problem)
        rows_p = curves[(curves["problem"] == problem) & (curves["metric"] == name)]
        if rows_p.empty:
            continue
        high = higher_is_better(name)
        if targets and problem in targets:
            target = float(targets[problem])
        else:
            medians = rows_p.groupby(["optimizer", "epoch"])["value"].median()
            initial = float(rows_p[rows_p["epoch"] == 0]["value"].median())
            best = float(medians.max() if high else medians.min())
            target = initial + fraction * (best - initial)
        used[problem] = (name, target)
        elapsed = curves[(curves["problem"] == problem) & (curves["metric"] == "elapsed_wall_time")]
        elapsed = elapsed.set_index(["run_id", "epoch"])["value"]
        for run_id, run_rows in rows_p[rows_p["epoch"] > 0].groupby("run_id", sort=False):
            reached = run_rows[run_rows["value"] >= target] if high else run_rows[run_rows["value"] <= target]
            epoch = int(reached["epoch"].min()) if not reached.empty else math.inf
            seconds = float(elapsed.get((run_id, epoch), math.nan)) if epoch != math.inf else math.inf
            first = run_rows.iloc[0]
            rows.append({"run_id": run_id, "problem": problem, "optimizer": first["optimizer"], "seed": first["seed"],
                         "metric": name, "target": target, "epochs": epoch, "seconds": seconds})
    columns = ["run_id", "problem", "optimizer", "seed", "metric", "target", "epochs", "seconds"]
    return pd.DataFrame(rows, columns=columns), used


def _spread(values: pd.Series) -> dict[str, float]:
    values = values.dropna()
    if values.empty:
        return {"median": math.nan, "q25": math.nan, "q75": math.nan, "mean": math.nan, "std": math.nan, "n": 0}
    return {"median": float(values.median()), "q25": float(values.quantile(0.25)),
            "q75": float(values.quantile(0.75)), "mean": float(values.mean()),
            "std": float(values.std()) if len(values) > 1 else 0.0, "n": len(values)}


def summary_table(results: Results, chosen: pd.DataFrame, targets: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per chosen setting: status counts, final and best metrics over seeds, time per epoch and to target.

    Final metrics are taken after the last epoch of the budget from the runs that got there; ``best_valid`` is
    each run's best validation value over epochs. Columns ``<metric>_median/_q25/_q75/_mean/_std/_n``.
    """
    picked = selected_runs(results, chosen)
    rows = []
    for row in chosen.itertuples():
        runs = picked.runs[(picked.runs["problem"] == row.problem) & (picked.runs["optimizer"] == row.optimizer)
                           & (picked.runs["setting"] == row.setting)]
        ids = list(runs["run_id"])
        out = {"problem": row.problem, "optimizer": row.optimizer, "setting": row.setting,
               "batch_size": row.batch_size, "selected_on": row.metric, "score": row.score, "runs": len(runs),
               "status": ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().sort_index().items())}
        sub = Results(runs, picked.curves[picked.curves["run_id"].isin(ids)])
        kind = results.metric_kind(row.problem)
        for metric in ("test_loss", "valid_loss", "train_loss") + (
                ("test_accuracy", "valid_accuracy", "train_accuracy") if kind == "accuracy" else ()):
            for stat, value in _spread(_final_values(sub, metric)).items():
                out[f"final_{metric}_{stat}"] = value
        valid = f"valid_{kind}"
        per_run = sub.curves[sub.curves["metric"] == valid].groupby("run_id")["value"]
        best = per_run.max() if kind == "accuracy" else per_run.min()
        for stat, value in _spread(best).items():
            out[f"best_{valid}_{stat}"] = value
        times = sub.curves[sub.curves["metric"] == "epoch_wall_time"]["value"]
        cpu = sub.curves[sub.curves["metric"] == "epoch_cpu_time"]["value"]
        out["seconds_per_epoch_median"] = float(times.median()) if len(times) else math.nan
        out["cpu_seconds_per_epoch_median"] = float(cpu.median()) if len(cpu) else math.nan
        if targets is not None:
            hits = targets[targets["run_id"].isin(ids)]
            out["target"] = float(hits["target"].iloc[0]) if len(hits) else math.nan
            out["target_reached"] = f"{int(np.isfinite(hits['epochs']).sum())}/{len(hits)}"
            out["epochs_to_target_median"] = float(hits["epochs"].median()) if len(hits) else math.nan
            out["seconds_to_target_median"] = float(hits["seconds"].median()) if len(hits) else math.nan
        rows.append(out)
    return pd.DataFrame(rows)
