"""Training time per epoch relative to a baseline optimizer (thesis Exp. 2), per run and per optimizer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from .load import Results

__all__ = ["runtime_ratios", "runtime_table"]


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
