"""What the rank-k rescaling does: PreconditionedSGD against AdaptiveSGD (the same estimate, not applied).

On quadratic_deep, whose Hessian is known (10 eigenvalues in [30, 60] over 90 in [0, 1], condition number
9,621), the harness records the condition number of the preconditioned Hessian P^(1/2) H P^(1/2) at the end
of each run. The ranks tried: the default 2, then 5 and 10 (as many as the large eigenvalues), each with
three more posterior observations than its rank. Also the paper's regression (a prescribed spectrum), and
Adam as the inner optimizer, with the preconditioner applied and not (the same estimated step size), beside
Adam at its default rate. Medians over 3 seeds of the final test loss, and of the condition number.

    python benchmarks/preconditioner_value.py            # about ten minutes on 2 cores
"""

from __future__ import annotations

import statistics
import tempfile
import warnings

from probprec.bench.runner import RunConfig, run

SEEDS = (42, 43, 44)
RANKS = (2, 5, 10)


def runs(problem: str, optimizer: str, hyperparams: dict, epochs: int | None = None) -> list[dict]:
    records = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in SEEDS:
            config = RunConfig(problem, optimizer, seed=seed, epochs=epochs, output_dir=folder, progress=False,
                               hyperparams=hyperparams)
            records.append(run(config).record)
    return records


def summary(records: list[dict]) -> str:
    losses = [r["test_losses"][-1] for r in records if r["status"] == "completed"]
    conditions = [(r.get("diagnostics") or {}).get("preconditioned_condition_number") for r in records]
    conditions = [c for c in conditions if c is not None]
    loss = f"{statistics.median(losses):.5g}" if losses else "n/a"
    condition = f"{statistics.median(conditions):,.0f}" if conditions else "-"
    statuses = ", ".join(sorted({r["status"] for r in records}))
    return f"{loss:>10} {condition:>12}   ({statuses})"


def main() -> None:
    warnings.filterwarnings("ignore")
    print(f"{'problem':<18}{'optimizer':<34}{'rank':>5}{'test loss':>11}{'cond(PHP)':>13}")
    for problem in ("quadratic_deep", "paper_regression"):
        for rank in RANKS:
            hyperparams = {"est_rank": rank, "num_observations": rank + 3}
            for optimizer in ("PreconditionedSGD", "AdaptiveSGD"):
                print(f"{problem:<18}{optimizer:<34}{rank:>5}" + summary(runs(problem, optimizer, hyperparams)),
                      flush=True)
        for label, optimizer, hyperparams in (("PreconditionedAdam", "PreconditionedAdam", {}),
                                              ("PreconditionedAdam, not applied", "PreconditionedAdam",
                                               {"apply_preconditioner": False}),
                                              ("Adam (lr 1e-3)", "Adam", {})):
            print(f"{problem:<18}{label:<34}{2:>5}" + summary(runs(problem, optimizer, hyperparams)), flush=True)


if __name__ == "__main__":
    main()
