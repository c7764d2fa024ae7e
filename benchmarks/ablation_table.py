"""The ablation of the default mode's mechanisms as tables: validation (to choose on) beside test (to report).

Reads the runs of ``probprec experiment lr_free_ablation --scale full`` (or any output of that sweep file) and
prints two Markdown tables:

* per problem and configuration, the median over seeds of the final validation metric and, after a slash, the
  final test metric (accuracy in % on classification problems, else the loss), with the count of collapsed or
  diverged seeds;
* per configuration, over problems: against the default on validation, how many problems it is better on by
  more than the tie margin, tied, and worse (margin: 1 point of accuracy, or 2 % of the loss), its collapsed and
  diverged runs, and the Hessian-vector products per update of its runs (the extra passes).

    python benchmarks/ablation_table.py results/lr_free_ablation/full
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd

from probprec.bench.analysis.load import load_results
from probprec.bench.experiment import experiment_path, labels_of
from probprec.bench.sweeps import load_sweep

DEFAULT = "PreconditionedSGD"
ACCURACY_TIE = 0.01
LOSS_TIE = 0.02


def final_metrics(folder: Path) -> pd.DataFrame:
    """One row per run: problem, label, seed, status, final valid and test metric, HVPs per update."""
    labels, order = labels_of(load_sweep(experiment_path("lr_free_ablation"), "full"))
    results = load_results(folder / "runs" if (folder / "runs").is_dir() else folder).relabel(labels)
    rows = []
    for run in results.runs.itertuples():
        record = json.loads(Path(run.path).read_text())
        accuracy = record.get("problem", {}).get("metric") == "accuracy"
        key = "accuracies" if accuracy else "losses"
        valid, test = record.get(f"valid_{key}") or [None], record.get(f"test_{key}") or [None]
        logs = record.get("optimizer_logs") or [{}]
        hvps = (logs[-1].get("hvp_count") or 0) / max(record.get("steps") or 1, 1)
        rows.append({"problem": run.problem, "label": run.optimizer, "seed": run.seed, "status": run.status,
                     "accuracy": accuracy, "valid": valid[-1], "test": test[-1], "hvps_per_update": hvps})
    frame = pd.DataFrame(rows)
    frame["label"] = pd.Categorical(frame["label"], categories=order, ordered=True)
    return frame


def _median(values: pd.Series) -> float | None:
    finite = [v for v in values if v is not None and v == v]
    return statistics.median(finite) if finite else None


def _cell(group: pd.DataFrame) -> str:
    if group.empty:
        return "not run"
    scale = 100 if group["accuracy"].iloc[0] else 1
    valid, test = _median(group["valid"]), _median(group["test"])
    text = "-" if valid is None else f"{valid * scale:.4g} / {test * scale:.4g}"
    bad = int((group["status"].isin(["collapsed", "diverged"])).sum())
    return text + (f" ({bad} of {len(group)} collapsed/diverged)" if bad else "")


def per_problem(frame: pd.DataFrame) -> str:
    labels = list(frame["label"].cat.categories)
    lines = ["| problem | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for problem, group in frame.groupby("problem", sort=False):
        cells = [_cell(group[group["label"] == label]) for label in labels]
        lines.append(f"| {problem} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _compare(mine: float | None, default: float | None, accuracy: bool) -> str:
    if mine is None or default is None:
        return "missing"
    if accuracy:
        difference = mine - default
        return "tie" if abs(difference) <= ACCURACY_TIE else ("better" if difference > 0 else "worse")
    ratio = mine / default if default else float("inf")
    return "tie" if abs(ratio - 1) <= LOSS_TIE else ("better" if ratio < 1 else "worse")


def summary(frame: pd.DataFrame) -> str:
    lines = ["| configuration | better | tied | worse (on validation, against the default) | collapsed or "
             "diverged runs | HVPs per update |", "|---|---|---|---|---|---|"]
    for label in frame["label"].cat.categories:
        mine = frame[frame["label"] == label]
        if mine.empty:
            continue
        counts = {"better": 0, "tie": 0, "worse": 0, "missing": 0}
        for problem, group in mine.groupby("problem", sort=False):
            default = frame[(frame["problem"] == problem) & (frame["label"] == DEFAULT)]
            counts[_compare(_median(group["valid"]), _median(default["valid"]), bool(group["accuracy"].iloc[0]))] += 1
        bad = int(mine["status"].isin(["collapsed", "diverged"]).sum())
        lines.append(f"| {label} | {counts['better']} | {counts['tie']} | {counts['worse']} | {bad} of {len(mine)} "
                     f"| {mine['hvps_per_update'].median():.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the experiment's output folder (or its runs folder)")
    frame = final_metrics(parser.parse_args().folder)
    print("Final validation / test metric, median over seeds (accuracy in %, else loss):\n")
    print(per_problem(frame))
    print("\nAgainst the default, over problems (validation):\n")
    print(summary(frame))


if __name__ == "__main__":
    main()
