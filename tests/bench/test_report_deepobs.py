"""DeepOBS's published baselines (DeepOBS 1.1 files, no validation curves) through the analysis and the report.

The fixture files are real: 27 of DeepOBS's baseline files for fmnist_2c2d (see fixtures/deepobs/README.md).
Every expected number is computed here from those files, never typed in.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest

from probprec.bench.analysis import ReportOptions, load_results, select_settings, write_report
from probprec.bench.cli import main
from probprec.bench.runner import RunConfig, run

BASELINES = Path(__file__).parent / "fixtures" / "deepobs"
PROBLEM = BASELINES / "fmnist_2c2d"
LEGACY_LABEL = "selected on test (legacy files)"
# DeepOBS's rerun settings: the folder of each optimizer with several seeds
TUNED = {"GradientDescent": "GradientDescentOptimizer/num_epochs__100__batch_size__128__lr__1.5848931925e-01",
         "Adam": "AdamOptimizer/num_epochs__100__batch_size__128__beta1__9.e-01__beta2__9.99e-01__epsilon__1.e-08"
                 "__lr__2.5118864315e-04",
         "Momentum": "MomentumOptimizer/num_epochs__100__batch_size__128__momentum__9.9e-01__use_nesterov__False"
                     "__lr__2.5118864315e-03"}
STUCK = {"GradientDescentOptimizer/num_epochs__100__batch_size__128__lr__1.5848931925e+00",
         "MomentumOptimizer/num_epochs__100__batch_size__128__momentum__9.9e-01__use_nesterov__False"
         "__lr__1.5848931925e-01",
         "AdamOptimizer/num_epochs__100__batch_size__128__beta1__9.e-01__beta2__9.99e-01__epsilon__1.e-08__lr__1.e+00"}


def _records(folder: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((PROBLEM / folder).glob("*.json"))]


def _folder_of(path: str) -> str:
    return "/".join(Path(path).parts[-3:-1])


@pytest.fixture(scope="module")
def legacy_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("legacy") / "report"
    return write_report(BASELINES, out, ReportOptions(legacy_test_selection=True))


def test_with_the_opt_in_deepobs_rerun_settings_are_chosen_with_all_their_seeds(legacy_report):
    summary = legacy_report.summary.set_index("optimizer")
    assert set(summary.index) == set(TUNED)
    for optimizer, folder in TUNED.items():
        records = _records(folder)
        row = summary.loc[optimizer]
        assert row["runs"] == len(records) == {"GradientDescent": 7, "Adam": 6, "Momentum": 6}[optimizer]
        assert row["final_test_accuracy_n"] == len(records)
        expected = statistics.median(r["test_accuracies"][-1] for r in records)
        assert row["final_test_accuracy_median"] == pytest.approx(expected, abs=1e-12)
        assert row["selected_on"] == f"test_accuracy, {LEGACY_LABEL}"
    # the learning rate as the folder names it, not seed 42's long float
    assert "learning_rate=0.00025118864315 |" in summary.loc["Adam", "setting"]


def test_settings_are_compared_on_the_seeds_they_share(legacy_report):
    # Momentum lr 6.3e-4 (one seed, 42) beats the mean of the tuned setting's six seeds, but not its seed-42 run
    tuned, single = _records(TUNED["Momentum"]), _records(TUNED["Momentum"].replace("2.5118864315e-03",
                                                                                      "6.3095734448e-04"))
    tuned_42 = next(r for r in tuned if r["random_seed"] == 42)
    assert statistics.mean(r["test_accuracies"][-1] for r in tuned) < single[0]["test_accuracies"][-1]
    assert tuned_42["test_accuracies"][-1] > single[0]["test_accuracies"][-1]
    how = legacy_report.summary.set_index("optimizer")["how_chosen"]
    assert "compared on seed 42, shared by all 3 settings" in how["Momentum"]
    assert "compared on seed 42, shared by all 3 settings" in how["Adam"]
    assert "they share no seed" in how["GradientDescent"]  # the tuned SGD folder has no seed 42: all seeds, mean
    selection = pd.read_csv(legacy_report.html.parent / "tables" / "selection.csv")
    momentum = selection[selection["optimizer"] == "Momentum"].set_index("rank")
    assert momentum.loc[1, "score"] == pytest.approx(tuned_42["test_accuracies"][-1])


def test_every_table_and_figure_says_selected_on_test(legacy_report):
    md = legacy_report.markdown.read_text()
    section = md[md.index("### fmnist_2c2d"):]
    table = section[:section.index("\n\n", section.index("| optimizer"))]
    assert table.count(LEGACY_LABEL) >= 3  # one per optimizer's row
    assert "chosen on the validation set" not in md
    drawn = legacy_report.figure_summaries
    assert any(LEGACY_LABEL in text for text in drawn["performance"].texts)
    # the sensitivity figure shows every run of the swept optimizers, no chosen setting: no label needed
    assert not any("reference" in label for label, _ in drawn["sensitivity"].lines)
    captions = [line for line in md.splitlines() if line.startswith("*") and "PDF" in line]
    assert captions and all(LEGACY_LABEL in c for c in captions if "per epoch" in c)
    summary = pd.read_csv(legacy_report.html.parent / "tables" / "summary.csv")
    assert all(LEGACY_LABEL in s for s in summary["selected_on"])


def test_without_the_opt_in_one_line_explains_and_nothing_is_chosen_by_name(tmp_path, capsys):
    assert main(["report", str(BASELINES), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "no validation curves" in line]
    assert len(lines) == 1 and "--legacy-test-selection" in lines[0]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "no validation curves" in md and "--legacy-test-selection" in md
    assert "chosen on the validation set" not in md and LEGACY_LABEL not in md
    summary = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv")
    assert summary.empty  # several settings per optimizer, no score: none chosen, none by name
    chosen = select_settings(load_results(BASELINES))
    assert chosen.empty
    assert any("no validation curves" in note for note in chosen.attrs["notes"])


@pytest.mark.parametrize("argv", [["--mode", "best"], ["--metric", "train_loss"], ["--metric", "train_accuracy"],
                                  ["--metric", "valid_accuracy"], ["--spread", "std", "--legacy-test-selection"]])
def test_every_option_gives_a_report(tmp_path, argv):
    assert main(["report", str(BASELINES), "--out", str(tmp_path / "out"), *argv]) == 0
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "report.md").exists()


def test_selection_on_train_loss_takes_the_whole_tuned_setting():
    chosen = select_settings(load_results(BASELINES), metric="train_loss").set_index("optimizer")
    assert chosen.loc["Adam", "runs"] == 6 and chosen.loc["Momentum", "runs"] == 6
    assert chosen.loc["Adam", "selected_on"] == "train_loss, training set"


def test_seed_42s_long_float_does_not_split_the_setting():
    results = load_results(BASELINES)
    for optimizer in ("Adam", "Momentum"):
        runs = results.runs[[_folder_of(p) == TUNED[optimizer] for p in results.runs["path"]]]
        assert len(runs) == 6 and runs["setting"].nunique() == 1
        rates = {r["learning_rate"] for r in runs["hyperparams"]}
        assert len(rates) == 2  # the two representations are still there, in one setting
    assert results.runs.groupby("optimizer")["setting"].nunique().to_dict() == {
        "GradientDescent": 5, "Adam": 3, "Momentum": 3}


def test_runs_stuck_at_chance_are_flagged_and_counted(legacy_report):
    results = load_results(BASELINES)
    flagged = results.runs[results.runs["collapsed_at"].notna()]
    assert {_folder_of(p) for p in flagged["path"]} == STUCK
    slow = results.runs[[_folder_of(p).endswith("lr__1.e-05") for p in results.runs["path"]]]
    assert len(slow) == 1 and slow["collapsed_at"].isna().all()  # learns slowly (test accuracy 0.65): not stuck
    assert all("training loss" in e for e in flagged["collapse_evidence"])
    md = legacy_report.markdown.read_text()
    assert "3 runs stuck at chance" in md


def test_accuracy_axes_resolve_the_final_differences(legacy_report):
    limits = legacy_report.figure_summaries["performance"].y_limits
    finals = legacy_report.summary["final_test_accuracy_median"]
    low, high = limits["fmnist_2c2d: test_accuracy"]
    assert low <= finals.min() and finals.max() <= high
    assert high - low < 0.1  # not 0.1-1.0: differences of 0.003 between the medians are visible
    assert (finals.max() - finals.min()) / (high - low) > 0.05
    # the seed bands: one per optimizer and panel, and the final quartile range a visible part of the axis
    assert legacy_report.figure_summaries["performance"].bands == 3 * 4
    spread = legacy_report.summary["final_test_accuracy_q75"] - legacy_report.summary["final_test_accuracy_q25"]
    assert (spread / (high - low)).min() > 0.03


def test_help_names_every_accepted_metric(capsys):
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for metric in ("valid_accuracy", "valid_loss", "train_accuracy", "train_loss", "test_accuracy", "test_loss"):
        assert metric in text


def test_reference_overlays_the_baselines_dashed_next_to_our_fmnist_run(tmp_path, data_dir):
    result = run(RunConfig("fmnist_2c2d", "SGD", {"lr": 0.01}, epochs=2, batch_size=8, data_dir=str(data_dir),
                           output_dir=str(tmp_path / "ours"), progress=False))
    assert result.status == "completed"
    report = write_report(tmp_path / "ours", tmp_path / "out",
                          ReportOptions(reference=[str(BASELINES)], legacy_test_selection=True))
    styles = report.figure_summaries["performance"].lines
    ours = [s for label, s in styles if label == "SGD"]
    dashed = [label for label, s in styles if s == "--"]
    assert ours and set(ours) == {"-"}
    assert {label for label in dashed} == {f"{o} (reference, {LEGACY_LABEL})" for o in TUNED}
    assert len(dashed) == 4 * len(TUNED)  # 4 panels: test and train loss and accuracy
    assert not math.isnan(report.summary.set_index("optimizer").loc["SGD", "final_test_accuracy_median"])
