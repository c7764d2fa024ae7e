"""Malformed result files: each is named (on stderr and in the report), never counted, and never stops the report."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
from analysis_helpers import probprec_record, write_record

from probprec.bench.analysis import ReportOptions, load_results, write_report
from probprec.bench.cli import main


def _set(key, value):
    return lambda record: record.__setitem__(key, value)


# (name, mutation, words the reason must contain): a completed run of ours, three epochs, broken one way each
MALFORMED = [
    # issue 15, item 6: counted as completed runs before
    ("truncated_curve", lambda r: r["test_accuracies"].pop(), "test_accuracies"),
    ("string_nan_curve", _set("test_losses", ["NaN"] * 4), "test_losses[0]"),
    ("null_curve", _set("valid_losses", None), "valid_losses"),
    # issue 15, item 8: one of them aborted the whole report with a traceback
    ("seed_word", _set("random_seed", "fifty"), "random_seed"),
    ("epochs_word", _set("num_epochs", "x"), "num_epochs"),
    ("hyperparams_list", _set("optimizer_hyperparams", [0.1, 0.9]), "optimizer_hyperparams"),
    # more of the same classes
    ("curve_too_long", lambda r: r["train_losses"].append(0.1), "train_losses"),
    ("nulls_in_a_completed_run", lambda r: r["test_losses"].__setitem__(2, None), "test_losses[2]"),
    ("bool_in_curve", lambda r: r["train_accuracies"].__setitem__(1, True), "train_accuracies[1]"),
    ("curve_of_dicts", _set("valid_accuracies", {"0": 0.1}), "valid_accuracies"),
    ("unknown_status", _set("status", "done"), "status"),
    ("negative_epochs", _set("num_epochs", -1), "num_epochs"),
    ("seed_bool", _set("random_seed", True), "random_seed"),
    ("seed_float", _set("random_seed", 42.5), "random_seed"),
    ("batch_size_zero", _set("batch_size", 0), "batch_size"),
    ("problem_number", _set("testproblem", 7), "testproblem"),
    ("training_params_list", _set("training_params", ["restart"]), "training_params"),
    ("logs_not_dicts", _set("optimizer_logs", [1, 2, 3]), "optimizer_logs"),
    ("log_step_size_word", lambda r: r["optimizer_logs"][0].__setitem__("step_sizes", ["big"]), "step_sizes"),
    ("wall_times_words", _set("epoch_wall_times", ["a", "b", "c"]), "epoch_wall_times"),
    ("metadata_string", _set("metadata", "cpu"), "metadata"),
    ("environment_list", lambda r: r["metadata"].__setitem__("environment", []), "environment"),
    ("packages_list", lambda r: r["metadata"]["environment"].__setitem__("packages", ["torch"]), "packages"),
    ("completed_too_early", _set("epochs_completed", 1), "epochs_completed"),
    ("problem_info_list", _set("problem", ["fmnist"]), "problem"),
    ("huge_integer_seed", _set("random_seed", 10**400), "random_seed"),
]


@pytest.fixture
def folder(tmp_path):
    """Two good runs (seeds 42, 43) and one malformed file per entry of MALFORMED."""
    good = [write_record(tmp_path, probprec_record(seed=seed)) for seed in (42, 43)]
    bad = {}
    for name, change, _ in MALFORMED:
        record = copy.deepcopy(probprec_record(seed=99))
        change(record)
        bad[name] = write_record(tmp_path, record, name=f"random_seed__99__{name}.json")
    return tmp_path, good, bad


def test_each_malformed_file_is_named_with_its_reason_and_not_loaded(folder):
    root, good, bad = folder
    results = load_results(root)
    assert sorted(results.runs["path"]) == sorted(map(str, good))
    for name, _, words in MALFORMED:
        lines = [line for line in results.problems_found if line.startswith(f"{bad[name]}: ")]
        assert len(lines) == 1, name
        assert words in lines[0], (name, lines[0])


def test_the_report_counts_only_valid_runs_and_lists_the_others(folder, tmp_path):
    root, _, bad = folder
    report = write_report(root, tmp_path / "out", ReportOptions())
    row = report.summary.iloc[0]
    assert row["runs"] == 2 and row["status"] == "2 completed" and row["final_test_accuracy_n"] == 2
    md = report.markdown.read_text()
    assert "2 runs of 1 problem and 1 optimizer (2 completed)" in md
    for path in bad.values():
        assert path.name in md
    summary = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv")
    assert list(summary["runs"]) == [2]


def test_the_command_line_names_every_bad_file_on_stderr_without_a_traceback(folder, tmp_path, capsys):
    root, _, bad = folder
    assert main(["report", str(root), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for path in bad.values():
        assert f"{path}: " in err


def test_deepobs_files_keep_their_inferred_status_and_bad_ones_are_named(tmp_path):
    # a DeepOBS file has no status: a short curve is an interrupted run, a non-finite loss a diverged one;
    # a curve longer than the budget or curves of different lengths are malformed
    def deepobs(seed, **changes):
        record = {k: v for k, v in probprec_record(seed=seed).items()
                  if k in ("testproblem", "batch_size", "num_epochs", "random_seed", "weight_decay", "optimizer_name",
                           "optimizer_hyperparams", "training_params", "train_losses", "valid_losses",
                           "test_losses", "train_accuracies", "valid_accuracies", "test_accuracies")}
        record.update(changes)
        return write_record(tmp_path, record, name=f"random_seed__{seed}__x.json")

    short = deepobs(1, train_losses=[2.3, 1.0], valid_losses=[2.3, 1.0], test_losses=[2.3, 1.0],
                    train_accuracies=[0.1, 0.5], valid_accuracies=[0.1, 0.5], test_accuracies=[0.1, 0.5])
    nan = deepobs(2, train_losses=[2.3, None, None, None])
    long = deepobs(3, train_losses=[2.3, 1.0, 0.5, 0.3, 0.2])
    uneven = deepobs(4, test_losses=[2.3, 1.0])
    results = load_results(tmp_path)
    status = dict(zip(results.runs["path"], results.runs["status"], strict=True))
    assert status == {str(short): "interrupted", str(nan): "diverged"}
    found = "\n".join(results.problems_found)
    assert f"{long}: train_losses" in found and f"{uneven}: " in found
