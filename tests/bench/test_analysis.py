"""Loading, selection, aggregation, time to target and performance profiles against numbers known by hand."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from analysis_helpers import accuracy_run, write_deepobs_run

from probprec.bench.analysis import (
    UnknownMetricError,
    aggregate,
    canonical_metric,
    load_results,
    performance_profile,
    profile_scores,
    select_settings,
    selected_runs,
    time_to_target,
)
from probprec.bench.analysis.profiles import performance_ratios


def test_canonical_metric_accepts_deepobs_keys_and_rejects_unknown_names():
    assert canonical_metric("valid_accuracies") == "valid_accuracy"
    assert canonical_metric("epoch_cpu_times") == "epoch_cpu_time"
    with pytest.raises(UnknownMetricError, match=r"valid_acc.*known metrics: train_loss"):
        canonical_metric("valid_acc")


def test_deepobs_files_load_into_tidy_tables(tmp_path):
    accuracy_run(tmp_path, "SGD", 0.1, 42, 0.8, 0.75)
    accuracy_run(tmp_path, "SGD", 0.1, 43, 0.82, 0.77)
    results = load_results(tmp_path)
    assert results.problems_found == []
    assert len(results.runs) == 2 and set(results.runs["source"]) == {"deepobs-1.2"}
    assert set(results.runs["status"]) == {"completed"}
    assert results.runs["setting"].nunique() == 1
    curves = results.curves
    # 2 runs x 6 curves x 4 evaluations
    assert len(curves) == 2 * 6 * 4
    final = curves[(curves["metric"] == "valid_accuracy") & (curves["epoch"] == 3)]
    assert sorted(final["value"]) == [0.8, 0.82]
    assert results.metric_kind("fmnist_2c2d") == "accuracy"


def test_deepobs_status_is_inferred_and_kept(tmp_path):
    write_deepobs_run(tmp_path, "quadratic_deep", "SGD", {"lr": 1.0}, 42, train_losses=[90.0, float("nan")],
                      valid_losses=[90.0, float("nan")], test_losses=[90.0, float("nan")])
    write_deepobs_run(tmp_path, "quadratic_deep", "SGD", {"lr": 0.1}, 42, train_losses=[90.0, 88.0],
                      valid_losses=[90.0, 88.5], test_losses=[90.0, 88.7], num_epochs=5)
    runs = load_results(tmp_path).runs.set_index(runs_key := "setting")
    assert runs_key == "setting"
    statuses = dict(zip(runs["hyperparams"].map(lambda h: h["lr"]), runs["status"], strict=True))
    assert statuses == {1.0: "diverged", 0.1: "interrupted"}


def test_deepobs_1_1_records_load_with_their_flat_keys(tmp_path):
    path = tmp_path / "fmnist_2c2d" / "MomentumOptimizer" / "x" / "random_seed__42__2019.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"testproblem": "fmnist_2c2d", "optimizer": "MomentumOptimizer",
                                "learning_rate": 0.0025, "hyperparams": {"momentum": 0.99}, "batch_size": 128,
                                "num_epochs": 1, "random_seed": 42, "train_losses": [2.3, 0.5],
                                "test_losses": [2.3, 0.6], "train_accuracies": [0.1, 0.8],
                                "test_accuracies": [0.1, 0.78]}))
    results = load_results(tmp_path)
    run = results.runs.iloc[0]
    assert run["source"] == "deepobs-1.1" and run["optimizer"] == "Momentum"
    assert run["hyperparams"] == {"momentum": 0.99, "learning_rate": 0.0025}
    chosen = select_settings(results)
    assert len(chosen) == 1 and math.isnan(chosen["score"].iloc[0])  # no validation split in 1.1: no score


def test_selection_uses_validation_when_the_test_set_disagrees(tmp_path):
    # lr 0.1: best on validation, worse on test; lr 0.3: the reverse. Two seeds each.
    for seed, (v1, t1, v3, t3) in zip((42, 43), ((0.90, 0.70, 0.80, 0.95), (0.88, 0.72, 0.82, 0.93)), strict=True):
        accuracy_run(tmp_path, "SGD", 0.1, seed, v1, t1)
        accuracy_run(tmp_path, "SGD", 0.3, seed, v3, t3)
    chosen, candidates = select_settings(load_results(tmp_path), return_candidates=True)
    assert chosen["hyperparams"].iloc[0] == {"lr": 0.1}
    assert chosen["metric"].iloc[0] == "valid_accuracy"
    assert chosen["score"].iloc[0] == pytest.approx((0.90 + 0.88) / 2)
    assert sorted(candidates["rank"]) == [1, 2]
    with pytest.raises(ValueError, match="never on the test set"):
        select_settings(load_results(tmp_path), metric="test_accuracies")
    with pytest.raises(UnknownMetricError, match="valid_acc"):
        select_settings(load_results(tmp_path), metric="valid_acc")


def test_best_mode_takes_the_best_epoch_of_the_mean_curve(tmp_path):
    # lr 0.1 peaks early (0.95 at epoch 2) and ends at 0.7; lr 0.3 ends at 0.9 and never peaks higher.
    accuracy_run(tmp_path, "SGD", 0.1, 42, 0.7, 0.7)
    accuracy_run(tmp_path, "SGD", 0.3, 42, 0.9, 0.9)
    path = next(tmp_path.rglob("*lr__1.e-01*/*.json"))
    record = json.loads(path.read_text())
    record["valid_accuracies"][2] = 0.95
    path.write_text(json.dumps(record))
    results = load_results(tmp_path)
    assert select_settings(results, mode="final")["hyperparams"].iloc[0] == {"lr": 0.3}
    best = select_settings(results, mode="best")
    assert best["hyperparams"].iloc[0] == {"lr": 0.1} and best["score"].iloc[0] == pytest.approx(0.95)


def test_a_setting_with_a_diverged_seed_ranks_last(tmp_path):
    accuracy_run(tmp_path, "SGD", 0.1, 42, 0.80, 0.8)
    accuracy_run(tmp_path, "SGD", 0.1, 43, 0.80, 0.8)
    accuracy_run(tmp_path, "SGD", 1.0, 42, 0.99, 0.99)
    write_deepobs_run(tmp_path, "fmnist_2c2d", "SGD", {"lr": 1.0}, 43, train_losses=[2.3, float("nan")],
                      valid_losses=[2.3, float("nan")], test_losses=[2.3, float("nan")],
                      train_accuracies=[0.1, 0.1], valid_accuracies=[0.1, 0.1], test_accuracies=[0.1, 0.1],
                      num_epochs=3)
    chosen, candidates = select_settings(load_results(tmp_path), return_candidates=True)
    assert chosen["hyperparams"].iloc[0] == {"lr": 0.1}
    assert candidates.set_index("setting")["diverged"].max() == 1


def test_user_order_wins_over_file_order(tmp_path):
    for optimizer in ("Adam", "SGD", "Momentum"):
        accuracy_run(tmp_path, optimizer, 0.1, 42, 0.8, 0.8)
    chosen = select_settings(load_results(tmp_path), optimizers=["SGD", "Momentum"])
    assert list(chosen["optimizer"]) == ["SGD", "Momentum", "Adam"]


def test_aggregate_matches_numpy_quantiles(tmp_path):
    finals = [0.5, 0.6, 0.9]
    for seed, value in zip((42, 43, 44), finals, strict=True):
        accuracy_run(tmp_path, "SGD", 0.1, seed, value, value)
    table = aggregate(load_results(tmp_path))
    row = table[(table["metric"] == "valid_accuracy") & (table["epoch"] == 3)].iloc[0]
    assert row["n"] == 3
    assert row["median"] == pytest.approx(0.6)
    assert row["q25"] == pytest.approx(np.quantile(finals, 0.25))
    assert row["q75"] == pytest.approx(np.quantile(finals, 0.75))
    assert row["mean"] == pytest.approx(statistics.mean(finals))
    assert row["std"] == pytest.approx(statistics.stdev(finals))


def test_time_to_target_counts_epochs_and_training_seconds(tmp_path):
    for optimizer, valid in (("SGD", [1.0, 0.8, 0.5, 0.1]), ("Adam", [1.0, 0.2, 0.1, 0.05])):
        write_deepobs_run(tmp_path, "quadratic_deep", optimizer, {"lr": 0.1}, 42, train_losses=valid,
                          valid_losses=valid, test_losses=valid, epoch_wall_times=[2.0, 3.0, 4.0])
    results = load_results(tmp_path)
    table, targets = time_to_target(results, targets={"quadratic_deep": 0.3})
    assert targets == {"quadratic_deep": ("valid_loss", 0.3)}
    by = table.set_index("optimizer")
    assert by.loc["SGD", "epochs"] == 3 and by.loc["SGD", "seconds"] == pytest.approx(9.0)
    assert by.loc["Adam", "epochs"] == 1 and by.loc["Adam", "seconds"] == pytest.approx(2.0)
    table, targets = time_to_target(results, fraction=0.5)  # target 1.0 + 0.5 (0.05 - 1.0) = 0.525
    assert targets["quadratic_deep"][1] == pytest.approx(0.525)
    assert table.set_index("optimizer").loc["SGD", "epochs"] == 2  # 0.5 <= 0.525
    table, _ = time_to_target(results, targets={"quadratic_deep": 0.01})
    assert np.isinf(table["epochs"]).all() and np.isinf(table["seconds"]).all()


def test_performance_profile_of_known_times():
    times = pd.DataFrame({
        "problem": ["a", "a", "b", "b", "c", "c"],
        "optimizer": ["x", "y", "x", "y", "x", "y"],
        "seconds": [1.0, 2.0, 3.0, 1.0, 1.0, math.inf],
    })
    ratios = performance_ratios(times)
    assert ratios.loc["a", "y"] == 2.0 and ratios.loc["b", "x"] == 3.0 and math.isinf(ratios.loc["c", "y"])
    profile = performance_profile(times, tau_max=4.0, points=7)  # tau = 1, 1.5, ..., 4
    assert list(profile["x"]) == pytest.approx([2 / 3] * 4 + [1.0] * 3)
    assert list(profile["y"]) == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    scores = profile_scores(profile)
    assert 0 < scores["y"] < scores["x"] <= 1


def test_selected_runs_keeps_only_the_chosen_settings(tmp_path):
    accuracy_run(tmp_path, "SGD", 0.1, 42, 0.9, 0.7)
    accuracy_run(tmp_path, "SGD", 0.3, 42, 0.8, 0.9)
    results = load_results(tmp_path)
    picked = selected_runs(results, select_settings(results))
    assert len(picked.runs) == 1 and picked.runs["hyperparams"].iloc[0] == {"lr": 0.1}
    assert set(picked.curves["run_id"]) == set(picked.runs["run_id"])


def test_tables_export_to_csv_and_to_parquet_when_pyarrow_is_installed(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")  # a test dependency: present in CI
    accuracy_run(tmp_path / "runs", "SGD", 0.1, 42, 0.9, 0.9)
    results = load_results(tmp_path / "runs")
    written = {p.name for p in results.to_files(tmp_path / "out")}
    assert written == {"runs.csv", "curves.csv", "runs.parquet", "curves.parquet"}
    curves = pd.read_parquet(tmp_path / "out" / "curves.parquet")
    pd.testing.assert_frame_equal(curves, pd.read_csv(tmp_path / "out" / "curves.csv"), check_dtype=False)
    assert len(curves) == len(results.curves)
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # as if pyarrow were not installed
    written = {p.name for p in results.to_files(tmp_path / "out2")}
    assert written == {"runs.csv", "curves.csv"}


@pytest.mark.parametrize("first,second,same", [
    ({"lr": 0.1}, {"lr": 0.1 + 1e-17}, True),  # one ulp apart: one setting
    ({"lr": 0.0002511886431509582}, {"lr": 0.00025118864315}, True),  # DeepOBS's tuning run and its reruns
    ({"lr": 1}, {"lr": 1.0}, True),
    ({"betas": [0.9, 0.999]}, {"betas": [0.9, 0.9990000000000001]}, True),
    ({"lr": 0.1}, {"lr": 0.1001}, False),
    ({"nesterov": True}, {"nesterov": 1}, False),
    ({"lr": 0.1}, {"lr": 0.1, "momentum": 0.0}, False),
])
def test_settings_compare_numbers_with_a_tolerance(tmp_path, first, second, same):
    for seed, hyperparams in ((42, first), (43, second)):
        write_deepobs_run(tmp_path / str(seed), "quadratic_deep", "SGD", hyperparams, seed, train_losses=[2.0, 1.0],
                          valid_losses=[2.0, 1.0], test_losses=[2.0, 1.0])
    runs = load_results(tmp_path).runs
    assert (runs["setting"].nunique() == 1) == same
    if same:  # named by the shorter text
        assert runs["setting"].iloc[0] == min((s for s in runs["setting"]), key=len)


def test_nothing_is_chosen_by_name_when_no_setting_has_a_score(tmp_path):
    nan = float("nan")
    for lr in (0.5, 1.0):
        write_deepobs_run(tmp_path, "quadratic_deep", "SGD", {"lr": lr}, 42, train_losses=[2.0, nan],
                          valid_losses=[2.0, nan], test_losses=[2.0, nan])
    write_deepobs_run(tmp_path, "quadratic_deep", "Adam", {"lr": 0.1}, 42, train_losses=[2.0, nan],
                      valid_losses=[2.0, nan], test_losses=[2.0, nan])
    chosen, candidates = select_settings(load_results(tmp_path), return_candidates=True)
    assert list(chosen["optimizer"]) == ["Adam"]  # its only setting, shown although it diverged
    assert chosen["how_chosen"].iloc[0] == "the only setting (no choice made)"
    assert len(candidates) == 3
    assert chosen.attrs["notes"] == ["quadratic_deep/SGD: no setting has a finished valid_loss on every seed without "
                                     "diverging: none of 2 settings chosen"]


def test_settings_are_compared_on_their_shared_seeds(tmp_path):
    # lr 0.1 was rerun with seeds 43, 44 (worse); on seed 42, which both have, it beats lr 0.3
    for seed, valid in ((42, 0.9), (43, 0.6), (44, 0.6)):
        accuracy_run(tmp_path, "SGD", 0.1, seed, valid, valid)
    accuracy_run(tmp_path, "SGD", 0.3, 42, 0.85, 0.85)
    chosen = select_settings(load_results(tmp_path))
    assert chosen["hyperparams"].iloc[0] == {"lr": 0.1} and chosen["score"].iloc[0] == pytest.approx(0.9)
    assert "compared on seed 42, shared by all 2 settings" in chosen["how_chosen"].iloc[0]
    only_45 = accuracy_run(tmp_path, "SGD", 0.3, 45, 0.85, 0.85)
    next(only_45.parent.glob("random_seed__42__*.json")).unlink()  # now no seed is shared: each setting's mean
    chosen = select_settings(load_results(tmp_path))
    assert chosen["hyperparams"].iloc[0] == {"lr": 0.3}
    assert "compared on each setting's own seeds (they share no seed)" in chosen["how_chosen"].iloc[0]
