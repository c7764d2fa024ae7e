"""Issue 10, item 4: the contest experiment (``probprec experiment lr_free``) and its tables.

The smoke scale runs once (every learning-rate-free optimizer at its defaults, SGD and Adam tuned on validation
through the tuning protocol, two problems, two seeds, one epoch); the rules of the tables are checked on made-up
numbers.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from probprec.bench.analysis.contest import contest, contest_table, final_test_scores, outcome, versus, versus_counts
from probprec.bench.analysis.load import Results
from probprec.bench.experiment import experiment_path, report_options, run_experiment
from probprec.bench.peers import PEERS
from probprec.bench.problems import FAMILY
from probprec.bench.sweeps import expand, load_sweep

OURS = {"PreconditionedSGD", "AdaptiveSGD", "OnlyAdaptiveSGD", "OnlyAdaptiveRMSprop", "OnlyAdaptiveAdam",
        "ThesisPreconditionedSGD"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr_free")
    lines: list[str] = []
    return out, run_experiment("lr_free", "smoke", out, echo=lines.append), lines


def test_the_full_scale_holds_every_method_against_tuned_baselines_on_every_problem():
    spec = load_sweep(experiment_path("lr_free"), "full")
    assert spec.protocol == "tune" and len(spec.seeds) >= 5
    names = [entry["name"] for entry in spec.optimizers]
    assert set(names) == OURS | {peer.name for peer in PEERS} | {"SGD", "Adam"}
    for entry in spec.optimizers:
        tuned = entry["name"] in ("SGD", "Adam")
        assert bool(entry.get("grid")) == tuned and not entry.get("hyperparams"), "defaults, or a grid to tune"
    assert set(FAMILY) <= set(spec.problems)
    assert {"quadratic_deep", "two_d_rosenbrock", "two_d_beale", "two_d_branin", "paper_regression", "digits_mlp",
            "digits_cnn", "digits_mlp_layerwise"} <= set(spec.problems)
    assert report_options(spec).versus == "SGD"
    assert sum(1 for _ in expand(spec, "unused")) == len(spec.problems) * len(spec.seeds) * len(names) + sum(
        len(spec.problems) * (len(e["grid"]["lr"]) - 1) * len(spec.seeds) for e in spec.optimizers if "grid" in e)


def test_the_smoke_scale_tunes_the_baselines_and_reports_the_contest(smoke):
    out, result, lines = smoke
    assert result.exit_code == 0 and not result.tuning.search.failures, lines
    tuning = (out / "runs" / "tuning.md").read_text()
    assert "## digits_mlp / SGD" in tuning and "valid_accuracy" in tuning
    runs = pd.read_csv(out / "report" / "tables" / "runs.csv")
    sgd = runs[(runs["problem"] == "digits_mlp") & (runs["optimizer"] == "SGD")]
    assert sorted(sgd.groupby("setting")["seed"].count()) == [1, 2], "the grid with seed 42, the choice with both"
    assert (runs[runs["optimizer"] == "DoG"].groupby("problem")["seed"].count() == 2).all()
    assert result.report.problems_found == [], "tuning.json is not taken for a result"
    text = result.report.markdown.read_text()
    assert "## Contest: every optimizer against SGD" in text
    assert "#### digits_mlp: final test accuracy" in text and "#### robust_mlp_narrow: final test accuracy" in text
    table = pd.read_csv(out / "report" / "tables" / "contest_summary.csv")
    assert set(table["optimizer"]) == OURS | {peer.name for peer in PEERS} | {"SGD", "Adam"}
    others = table[table["optimizer"] != "SGD"]
    assert (others[["win", "tie", "loss"]].sum(axis=1) == 2).all(), "an outcome on each of the two problems"
    assert table["profile_score"].between(0, 1).all() and table["epoch_profile_score"].between(0, 1).all()
    assert {"performance_profile", "contest"} <= {p.stem for p in result.report.figures}
    assert {"win", "tie", "loss"} <= set(result.report.figure_summaries["contest"].texts), "the legend's outcomes"


def made_up_results(values: dict[tuple[str, int], tuple[str, float, float]]) -> Results:
    """Runs of one accuracy problem: (optimizer, seed) -> (status, accuracy at epoch 0, accuracy at epoch 2)."""
    runs, curves = [], []
    for (optimizer, seed), (status, start, end) in values.items():
        run_id = f"{optimizer}-{seed}"
        runs.append({"run_id": run_id, "problem": "p", "optimizer": optimizer, "seed": seed, "status": status,
                     "num_epochs": 2})
        epochs = [(0, start)] + ([] if status == "diverged" else [(1, end), (2, end)])
        curves += [{"run_id": run_id, "problem": "p", "epoch": e, "metric": m, "value": v}
                   for e, v in epochs for m in ("test_accuracy", "valid_accuracy")]
    return Results(pd.DataFrame(runs), pd.DataFrame(curves))


def test_a_diverged_run_counts_with_its_start_and_a_collapsed_one_with_its_end():
    results = made_up_results({("A", 1): ("completed", 0.1, 0.9), ("A", 2): ("diverged", 0.1, math.nan),
                               ("A", 3): ("collapsed", 0.1, 0.12), ("A", 4): ("failed", 0.1, 0.5)})
    scores = final_test_scores(results)
    assert dict(zip(scores["seed"], scores["value"], strict=True)) == {1: 0.9, 2: 0.1, 3: 0.12}
    table = contest_table(scores, None).iloc[0]
    assert (table["runs"], table["completed"], table["diverged"], table["collapsed"]) == (3, 1, 1, 1)
    assert table["median"] == pytest.approx(0.12)


def test_win_tie_and_loss_against_the_baseline():
    results = made_up_results({
        **{("SGD", s): ("completed", 0.1, v) for s, v in enumerate([0.90, 0.91, 0.92])},
        **{("close", s): ("completed", 0.1, v) for s, v in enumerate([0.912, 0.913, 0.914])},  # within 0.5 points
        **{("spread", s): ("completed", 0.1, v) for s, v in enumerate([0.80, 0.93, 0.99])},  # within the IQR
        **{("better", s): ("completed", 0.1, v) for s, v in enumerate([0.95, 0.951, 0.952])},
        **{("dead", s): ("collapsed", 0.1, 0.1) for s in range(3)},
    })
    compared = versus(contest_table(final_test_scores(results), None), "SGD").set_index("optimizer")["versus"]
    assert compared.to_dict() == {"SGD": "n/a", "close": "tie", "spread": "tie", "better": "win", "dead": "loss"}
    counts = versus_counts(versus(contest_table(final_test_scores(results), None), "SGD"), "SGD")
    assert counts.set_index("optimizer").loc["dead", "lost_on"] == "p"
    assert outcome(1.0, (0.9, 1.1), 1.05, (1.0, 1.1), higher=False, accuracy=False) == "tie"
    assert outcome(1.0, (0.99, 1.01), 1.5, (1.49, 1.51), higher=False, accuracy=False) == "win"
    assert outcome(math.nan, (0, 0), 1.0, (1, 1), higher=True, accuracy=True) == "n/a"


def test_the_profile_scores_of_seconds_and_of_epochs():
    """A is fastest on the clock on both problems, B in epochs on both: each scores 1 on its own measure."""
    values = {(o, seed): ("completed", 0.1, 0.9) for o in ("A", "B") for seed in (1, 2)}
    times = pd.DataFrame([{"problem": problem, "optimizer": o, "seed": seed, "seconds": seconds, "epochs": epochs}
                          for problem in ("p", "q") for seed in (1, 2)
                          for o, seconds, epochs in (("A", 1.0, 5.0), ("B", 5.0, 1.0))])
    table = contest(made_up_results(values), None, times, "A").per_optimizer.set_index("optimizer")
    assert table.loc["A", "profile_score"] == 1.0 and table.loc["B", "epoch_profile_score"] == 1.0
    assert table.loc["B", "profile_score"] == 0.0 and table.loc["A", "epoch_profile_score"] == 0.0
