"""Tune SGD's and Adam's learning rates on the embedded problems, selecting on validation.

DeepOBS's protocol, fixed: a log grid of learning rates, one run per point with
seed 42, the best point chosen on the *validation* metric of the last epoch
(accuracy, or loss for problems without accuracy; diverged runs never win). The
printed tables are what ``probprec.bench.optimizers`` uses as default learning
rates for these problems.

    python benchmarks/tune_embedded.py [--output-dir results/tuning]
"""

from __future__ import annotations

import argparse
import math
import tempfile

from probprec.bench.problems import EMBEDDED, FAMILY, get_problem
from probprec.bench.runner import RunConfig, run

GRID = [10 ** (e / 2) for e in range(-8, 1)]  # 1e-4 ... 1, half-decades


def score(record: dict, metric: str) -> float:
    """Higher is better; diverged or non-finite runs get -inf."""
    if record["status"] != "completed":
        return -math.inf
    if metric == "accuracy":
        return record["valid_accuracies"][-1] - 1e-9 * record["valid_losses"][-1]
    loss = record["valid_losses"][-1]
    return -loss if loss is not None and math.isfinite(loss) else -math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=None, help="keep the tuning runs here (default: a temporary folder)")
    parser.add_argument("--optimizers", nargs="+", default=["SGD", "Adam"])
    args = parser.parse_args()
    output = args.output_dir or tempfile.mkdtemp(prefix="probprec-tuning-")
    best: dict[str, dict[str, float]] = {name: {} for name in args.optimizers}
    for problem in [p for p in EMBEDDED if p not in FAMILY]:  # the robustness family is tuned by lr_free
        metric = get_problem(problem).metric
        for optimizer in args.optimizers:
            scores = {}
            for lr in GRID:
                result = run(RunConfig(problem, optimizer, {"lr": lr}, seed=42, output_dir=output, progress=False))
                scores[lr] = score(result.record, metric)
            lr = max(GRID, key=lambda v: scores[v])
            best[optimizer][problem] = lr
            shown = " ".join(f"{v:.0e}:{s:.4g}" for v, s in scores.items())
            print(f"{problem:<22} {optimizer:<5} best lr {lr:.3g}   ({metric}; {shown})", flush=True)
    for optimizer, table in best.items():
        print(f"\n{optimizer}: " + "{" + ", ".join(f'"{p}": {lr:.4g}' for p, lr in table.items()) + "}")


if __name__ == "__main__":
    main()
