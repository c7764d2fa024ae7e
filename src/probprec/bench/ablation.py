"""The ablation of the 2019 class: which of the thesis's conclusions survive each fix.

Configurations: the default mode, the thesis mode (``mode="thesis"``: the 2019
arithmetic, quirks included), and the thesis mode with each single fix of
:data:`probprec.thesis.FIXES`. Problems and budgets come from
``probprec/bench/experiments/ablation.toml`` (``smoke`` for CI, ``full`` for a GPU or a cluster).
The report states, per configuration and problem, the final metrics over seeds
and their change against the thesis mode, and on quadratic_deep (whose Hessian
is known) the estimated top curvatures against the true top eigenvalues and the
condition number of the preconditioned Hessian.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probprec.thesis import FIXES

from .problems import get_problem
from .results import write_text_atomic
from .runner import RunConfig, RunResult, run
from .threads import threads_per_process, using_threads
from .wording import counted

__all__ = ["CONFIGURATIONS", "load_ablation", "report", "run_ablation"]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "experiments" / "ablation.toml"

CONFIGURATIONS: list[tuple[str, dict[str, Any]]] = [
    ("default mode", {}),
    ("thesis mode", {"mode": "thesis"}),
    *[(f"thesis + {fix}", {"mode": "thesis", "fixes": fix}) for fix in FIXES],
]
"""(label, optimizer hyperparameters) of every configuration, in report order."""


def load_ablation(path: str | Path | None = None, scale: str = "smoke") -> dict[str, Any]:
    """Read the ablation configuration (``probprec/bench/experiments/ablation.toml`` by default) at ``scale``."""
    from .sweeps import SweepError, read_toml

    path = Path(path) if path else DEFAULT_CONFIG
    data = read_toml(path, "ablation file")
    scales = [k for k, v in data.items() if isinstance(v, dict)]
    if scale not in scales:
        raise SweepError(f"{path}: --scale must be one of {', '.join(scales)}, got {scale!r}")
    section = data[scale]
    return {"optimizer": data.get("optimizer", "PreconditionedSGD"), "seeds": data.get("seeds", [42, 43, 44]),
            "problems": section["problems"], "epochs": section.get("epochs", {}),
            "batch_size": section.get("batch_size", {})}


def run_ablation(output_dir: str | Path = "results/ablation", scale: str = "smoke", config_path: str | None = None,
                 seeds: list[int] | None = None, data_dir: str = "data", device: str = "cpu", progress: bool = True,
                 echo: Callable[[str], None] = print) -> str:
    """Run every configuration on every problem and seed, write ``ablation.md``; return the report."""
    spec = load_ablation(config_path, scale)
    seeds = seeds or spec["seeds"]
    output = Path(output_dir)
    total = len(CONFIGURATIONS) * len(spec["problems"]) * len(seeds)
    echo(f"ablation ({scale}): {counted(len(CONFIGURATIONS), 'configuration')} x "
         f"{counted(len(spec['problems']), 'problem')} x {counted(len(seeds), 'seed')} = {counted(total, 'run')} "
         f"-> {output}")
    results: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    done = 0
    with using_threads(threads_per_process()):  # the runs take turns in this process
        for problem in spec["problems"]:
            for label, hyperparams in CONFIGURATIONS:
                for seed in seeds:
                    config = RunConfig(problem, spec["optimizer"], dict(hyperparams), seed=seed,
                                       epochs=spec["epochs"].get(problem), batch_size=spec["batch_size"].get(problem),
                                       data_dir=data_dir, device=device, output_dir=str(output / "runs"),
                                       progress=progress)
                    result = run(config)
                    results[(problem, label)].append(result)
                    done += 1
                    if result.status in ("failed", "interrupted"):
                        echo(f"  [{done}/{total}] {problem} {label} seed {seed}: {result.status} "
                             f"({result.record.get('status_reason')})")
            echo(f"  {problem}: {done}/{total} runs done")
    text = report(results, spec["problems"], scale)
    write_text_atomic(output / "ablation.md", text)
    echo(f"wrote {output / 'ablation.md'}")
    return text


def _median(values: list[float | None]) -> float | None:
    """The median of the values that are not None (None if there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def _change(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "n/a"
    return f"{100 * (value - base) / abs(base):+.1f} %"


def _summary(records: list[dict[str, Any]], quadratic: bool) -> dict[str, Any]:
    finished = [r for r in records if r.get("test_losses")]
    out: dict[str, Any] = {
        "runs": len(records), "completed": sum(r["status"] == "completed" for r in records),
        "loss": _median([r["test_losses"][-1] for r in finished]),
        "accuracy": _median([r["test_accuracies"][-1] for r in finished if r.get("test_accuracies")]),
    }
    if quadratic:
        estimates = [r["optimizer_logs"][-1]["eigenvalues"][0] for r in finished
                     if r.get("optimizer_logs") and r["optimizer_logs"][-1]["eigenvalues"][0]]
        out["top"] = [_median([e[j] for e in estimates if len(e) > j]) for j in range(2)] if estimates else []
        diagnostics = [r.get("diagnostics") or {} for r in finished]
        out["truth"] = next((d["true_top_eigenvalues"] for d in diagnostics if d.get("true_top_eigenvalues")), [])
        out["condition"] = next((d["condition_number"] for d in diagnostics if d.get("condition_number")), None)
        out["preconditioned"] = _median([d.get("preconditioned_condition_number") for d in diagnostics])
    return out


NO_EFFECT_NOTE = (
    "Some fixes cannot change these runs by construction: `guarded_step_size` matters only where the curvature "
    "along the gradients is negative, `true_gradient` changes what `p.grad` holds after a step but not the "
    "trajectory, `persistent_inner` keeps the momentum of a stateful inner optimizer (plain SGD has none), and "
    "`regularized_directions` matters only with the optimizer's own `weight_decay` (these problems put their L2 "
    "term in the loss)."
)


def report(results: dict[tuple[str, str], list[RunResult]], problems: list[str], scale: str) -> str:
    """The Markdown report (module docstring)."""
    lines = [f"# Ablation of the 2019 class ({scale} scale)", "",
             "PreconditionedSGD in the default mode, in the thesis mode (the 2019 arithmetic, "
             "`mode=\"thesis\"`), and in the thesis mode with one fix at a time (`fixes=...`). Medians over "
             "seeds of the last epoch; the change is against the thesis mode.", "", NO_EFFECT_NOTE, ""]
    for problem in problems:
        accuracy = get_problem(problem).metric == "accuracy"
        quadratic = problem == "quadratic_deep"
        rows = [(label, _summary([r.record for r in results.get((problem, label), [])], quadratic))
                for label, _ in CONFIGURATIONS if results.get((problem, label))]
        base = dict(rows).get("thesis mode", {})
        head = ["configuration", "runs completed", "final test loss", "change"]
        if accuracy:
            head += ["final test accuracy", "change"]
        if quadratic:
            head += ["estimated top curvatures", "error of the top one", "cond. number, preconditioned"]
        lines += [f"## {problem}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, row in rows:
            cells = [label, f"{row['completed']}/{row['runs']}", _fmt(row["loss"]),
                     "" if label == "thesis mode" else _change(row["loss"], base.get("loss"))]
            if accuracy:
                cells += [_fmt(row["accuracy"], ".4f"),
                          "" if label == "thesis mode" else _change(row["accuracy"], base.get("accuracy"))]
            if quadratic:
                top, truth = row["top"], row["truth"]
                error = (top[0] - truth[0]) / truth[0] if top and truth and top[0] is not None else None
                cells += [", ".join(_fmt(t) for t in top) or "n/a",
                          "n/a" if error is None else f"{100 * error:+.1f} %", _fmt(row["preconditioned"])]
            lines.append("| " + " | ".join(cells) + " |")
        if quadratic and base.get("truth"):
            lines += ["", f"True top eigenvalues of the Hessian: {', '.join(_fmt(t) for t in base['truth'])}; "
                          f"condition number {_fmt(base['condition'])}."]
        lines.append("")
    return "\n".join(lines)
