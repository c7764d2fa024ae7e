"""Whether the secant check earns a place in the default: OnlyAdaptiveSGD with ``secant_check`` off and on.

Runs OnlyAdaptiveSGD (the recommended variant) at its defaults and with ``secant_check=True`` on the contest's
problems, and prints per problem the mean over seeds of the final *validation* metric (accuracy, or loss where
the problem has no accuracy; the test set plays no part), the Hessian-vector products per run, and, given a
contest's ``time_to_target.csv`` (``--targets``), the median epochs to that contest's validation target (tuned
SGD's). The default was chosen on this table (docs/mechanisms.md).

    python benchmarks/secant_check.py                      # about 5 minutes on one core
    python benchmarks/secant_check.py --seeds 42 43 44 45 46 --problems robust_cnn_narrow two_d_branin \\
        --targets results/lr_free/report/tables/time_to_target.csv
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import tempfile
import warnings

from probprec.bench.runner import RunConfig, run

PROBLEMS = ("quadratic_deep", "two_d_rosenbrock", "two_d_beale", "two_d_branin", "paper_regression", "digits_mlp",
            "digits_cnn", "digits_mlp_layerwise", "robust_mlp_narrow", "robust_mlp_wide", "robust_mlp_deep",
            "robust_mlp_large_init", "robust_mlp_small_init", "robust_cnn_plain", "robust_cnn_strided",
            "robust_cnn_pooled", "robust_cnn_narrow", "robust_cnn_large_init", "robust_spirals_mlp")
SETTINGS = {"default": {}, "secant_check": {"secant_check": True}}


def read_targets(path: str | None) -> dict[str, float]:
    """Per problem, the validation target of a contest (its ``time_to_target.csv``)."""
    if path is None:
        return {}
    with open(path, newline="") as handle:
        return {row["problem"]: float(row["target"]) for row in csv.DictReader(handle)}


def epochs_to(curve: list[float], target: float | None, higher: bool) -> float:
    """The first epoch whose validation value reaches ``target`` (inf if none, nan without a target)."""
    if target is None:
        return math.nan
    return next((e for e, v in enumerate(curve) if (v >= target if higher else v <= target)), math.inf)


def measure(problem: str, setting: str, seeds: list[int], folder: str, target: float | None) -> str:
    """One cell: mean final validation metric, median epochs to the target, mean products per run."""
    records = [run(RunConfig(problem, "OnlyAdaptiveSGD", dict(SETTINGS[setting]), seed=seed,
                             output_dir=f"{folder}/{setting}", progress=False)).record for seed in seeds]
    higher = bool(records[0]["valid_accuracies"])
    curves = [r["valid_accuracies"] if higher else r["valid_losses"] for r in records]
    final = statistics.mean(c[-1] for c in curves)
    epochs = statistics.median(epochs_to(c, target, higher) for c in curves)
    products = statistics.mean(r["optimizer_logs"][-1]["hvp_count"] for r in records)
    return f"{100 * final if higher else final:.4g} / {epochs:g} / {products:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--targets", help="a contest's report/tables/time_to_target.csv")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    targets = read_targets(args.targets)
    print("validation metric (accuracy in %, or loss) / median epochs to the target / products per run")
    print(f"{'problem':<24}" + "".join(f"{name:>26}" for name in SETTINGS))
    with tempfile.TemporaryDirectory() as folder:
        for problem in args.problems:
            cells = [measure(problem, setting, args.seeds, folder, targets.get(problem)) for setting in SETTINGS]
            print(f"{problem:<24}" + "".join(f"{cell:>26}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
