"""How the safeguard's per-tensor limit was chosen: OnlyAdaptiveSGD at several values of TENSOR_LIMIT.

An update may move any one tensor by at most ``probprec.safeguard.TENSOR_LIMIT`` of its norm (or of its share
of the group's norm). This runs OnlyAdaptiveSGD (the recommended variant) at its defaults on the robustness
family's members where the limit binds, with the limit at each candidate value, and prints per problem the
median over seeds of the final *validation* accuracy (the metric the default was chosen on; the test set plays
no part) and the number of collapsed or diverged runs. "group only" turns the per-tensor limit off (the group's
limit RELATIVE_LIMIT stays).

    python benchmarks/tensor_limit.py                       # about 8 minutes on one core
    python benchmarks/tensor_limit.py --limits 0.4 inf --seeds 42 43 --problems robust_mlp_deep
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import warnings

import probprec.safeguard
from probprec.bench.runner import RunConfig, run

PROBLEMS = ("robust_mlp_deep", "robust_mlp_small_init", "robust_mlp_narrow", "robust_cnn_pooled",
            "robust_cnn_narrow", "robust_cnn_plain", "robust_cnn_strided", "robust_spirals_mlp")


def validation(problem: str, limit: float, seeds: list[int], folder: str) -> tuple[float, int]:
    """Median final validation accuracy over ``seeds`` and the number of runs that collapsed or diverged."""
    probprec.safeguard.TENSOR_LIMIT = limit  # read at every update
    records = [run(RunConfig(problem, "OnlyAdaptiveSGD", seed=seed, output_dir=f"{folder}/{limit}",
                             progress=False)).record for seed in seeds]
    failed = sum(r["status"] in ("collapsed", "diverged") for r in records)
    return statistics.median(r["valid_accuracies"][-1] for r in records), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", type=float, nargs="+", default=[0.3, 0.4, 0.6, math.inf])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    names = ["group only" if math.isinf(limit) else f"{limit:g}" for limit in args.limits]
    print(f"{'problem':<24}" + "".join(f"{name:>16}" for name in names))
    totals = [0.0] * len(args.limits)
    with tempfile.TemporaryDirectory() as folder:
        for problem in args.problems:
            cells = []
            for i, limit in enumerate(args.limits):
                accuracy, failed = validation(problem, limit, args.seeds, folder)
                totals[i] += accuracy
                cells.append(f"{100 * accuracy:.1f}" + (f" ({failed} c/d)" if failed else ""))
            print(f"{problem:<24}" + "".join(f"{cell:>16}" for cell in cells), flush=True)
    print(f"{'mean':<24}" + "".join(f"{100 * total / len(args.problems):>16.2f}" for total in totals))


if __name__ == "__main__":
    main()
