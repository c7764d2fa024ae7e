"""The report from result directories: tables against the JSON files, figure files, bad input."""

from __future__ import annotations

import json
import os
import statistics

import pandas as pd
import pytest
from analysis_helpers import accuracy_run, write_deepobs_run
from matplotlib.image import imread

from probprec.bench.analysis import ReportOptions, write_report
from probprec.bench.cli import main
from probprec.bench.runner import RunConfig, run

HARNESS_OPTIMIZERS = ["PreconditionedSGD", "SGD"]


@pytest.fixture(scope="module")
def harness_results(tmp_path_factory):
    """digits_mlp: PreconditionedSGD, and SGD at two learning rates; two seeds; two epochs."""
    root = tmp_path_factory.mktemp("harness")
    for optimizer, hyperparams in (("PreconditionedSGD", {}), ("SGD", {"lr": 0.05}), ("SGD", {"lr": 0.5})):
        for seed in (42, 43):
            result = run(RunConfig("digits_mlp", optimizer, hyperparams, seed=seed, epochs=2, output_dir=str(root),
                                   progress=False))
            assert result.status == "completed"
    return root


def _json_records(root):
    return [json.loads(p.read_text()) for p in sorted(root.rglob("random_seed__*.json"))]


def _assert_valid_images(paths):
    for path in paths:
        assert path.stat().st_size > 1000
        if path.suffix == ".png":
            image = imread(path)
            assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        else:
            assert path.read_bytes()[:5] == b"%PDF-"


def test_report_from_harness_results_matches_the_json_files(harness_results, tmp_path):
    report = write_report(harness_results, tmp_path / "report", ReportOptions(optimizers=HARNESS_OPTIMIZERS))
    assert report.problems_found == []
    records = _json_records(harness_results)
    summary = pd.read_csv(tmp_path / "report" / "tables" / "summary.csv")
    assert list(summary["optimizer"]) == HARNESS_OPTIMIZERS
    # SGD's setting is the one with the higher mean final validation accuracy
    sgd = {lr: statistics.mean(r["valid_accuracies"][-1] for r in records
                               if r["optimizer_name"] == "SGD" and r["optimizer_hyperparams"]["lr"] == lr)
           for lr in (0.05, 0.5)}
    best_lr = max(sgd, key=sgd.get)
    row = summary.set_index("optimizer").loc["SGD"]
    assert f"lr={best_lr}" in row["setting"]
    assert row["score"] == pytest.approx(sgd[best_lr])
    for optimizer, lr in (("SGD", best_lr), ("PreconditionedSGD", None)):
        chosen = [r for r in records if r["optimizer_name"] == optimizer
                  and (lr is None or r["optimizer_hyperparams"]["lr"] == lr)]
        row = summary.set_index("optimizer").loc[optimizer]
        for key, column in (("test_accuracies", "final_test_accuracy"), ("test_losses", "final_test_loss"),
                            ("train_losses", "final_train_loss")):
            values = [r[key][-1] for r in chosen]
            assert row[f"{column}_median"] == pytest.approx(statistics.median(values))
            assert row[f"{column}_n"] == 2
        assert row["runs"] == 2 and row["status"] == "2 completed"
        times = [t for r in chosen for t in r["epoch_wall_times"]]
        assert row["seconds_per_epoch_median"] == pytest.approx(statistics.median(times))
        # the Markdown table shows the same numbers (4 significant digits)
        text = report.markdown.read_text()
        assert f"{statistics.median([r['test_accuracies'][-1] for r in chosen]):.4g}" in text
    # figures: files exist, are valid images, and hold one curve per optimizer and panel
    names = {p.stem for p in report.figures}
    assert {"performance", "optimizer_state", "runtime"} <= names
    _assert_valid_images(report.figures)
    assert report.curves["performance"] == 4 * len(HARNESS_OPTIMIZERS)  # 4 panels
    assert report.curves["optimizer_state"] == 2  # step size and top curvature of PreconditionedSGD
    html = report.html.read_text()
    assert html.count("data:image/png;base64,") == len([p for p in report.figures if p.suffix == ".png"])
    assert "## Environment" in report.markdown.read_text() and "torch" in html
    assert (tmp_path / "report" / "tables" / "curves.csv").exists()


def test_report_from_deepobs_files_and_reference_overlay(tmp_path):
    for seed, (v1, t1, v3, t3) in zip((42, 43, 44), ((0.90, 0.70, 0.80, 0.95), (0.88, 0.72, 0.82, 0.93),
                                                     (0.89, 0.71, 0.81, 0.94)), strict=True):
        accuracy_run(tmp_path / "runs", "SGD", 0.1, seed, v1, t1)
        accuracy_run(tmp_path / "runs", "SGD", 0.3, seed, v3, t3)
        accuracy_run(tmp_path / "runs", "Adam", 0.001, seed, 0.85, 0.85)
        accuracy_run(tmp_path / "baselines", "Momentum", 0.01, seed, 0.86, 0.87)
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--reference",
                 str(tmp_path / "baselines")]) == 0
    summary = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv").set_index("optimizer")
    assert "lr=0.1" in summary.loc["SGD", "setting"]  # chosen on validation although lr=0.3 is better on test
    assert summary.loc["SGD", "final_test_accuracy_median"] == pytest.approx(0.71)
    assert summary.loc["SGD", "final_test_accuracy_q25"] == pytest.approx(0.705)
    assert summary.loc["Adam", "final_test_accuracy_median"] == pytest.approx(0.85)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "0.71 [0.705, 0.715]" in md and "best of 2 settings on the final valid_accuracy" in md
    assert "deepobs-1.2" in md  # the environment table names the source
    _assert_valid_images(sorted((tmp_path / "out" / "figures").iterdir()))
    assert (tmp_path / "out" / "report.html").read_text().count("data:image/png;base64,") == 1
    report = write_report(tmp_path / "runs", tmp_path / "out2", ReportOptions(reference=[str(tmp_path / "baselines")]))
    assert report.curves["performance"] == 4 * 3  # 2 optimizers + 1 reference, 4 panels
    selection = pd.read_csv(tmp_path / "out" / "tables" / "selection.csv")
    assert len(selection) == 3 and set(selection["metric"]) == {"valid_accuracy"}


def test_bad_input_is_reported_by_file_and_the_rest_still_reported(tmp_path, capsys):
    good = accuracy_run(tmp_path, "SGD", 0.1, 42, 0.9, 0.9)
    corrupt = good.with_name("random_seed__43__2020-01-01-00-00-43.json")
    corrupt.write_text(good.read_text()[:200])
    (tmp_path / "notes.json").write_text(json.dumps({"comment": "not a run"}))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "image.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    odd = write_deepobs_run(tmp_path, "quadratic_deep", "SGD", {"lr": 0.1}, 42, train_losses=[2.0, 1.0],
                            valid_losses=[2.0, 1.0], test_losses=[2.0, 1.0], dev_losses=[2.0, 1.0])
    code = main(["report", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 0
    err = capsys.readouterr().err
    assert f"{corrupt}: corrupt JSON" in err
    assert f"{tmp_path / 'notes.json'}: not a run result (missing key 'testproblem')" in err
    assert f"{tmp_path / 'list.json'}: not a run result" in err
    assert f"{tmp_path / 'image.json'}:" in err
    assert f"{odd}: unknown metric 'dev_losses'" in err
    md = (tmp_path / "out" / "report.md").read_text()
    assert "could not be used" in md and corrupt.name in md
    assert "### fmnist_2c2d" in md and "### quadratic_deep" in md  # everything readable is reported
    assert (tmp_path / "out" / "report.html").exists()


def test_empty_or_missing_directory_names_it(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "out")]) == 1
    assert f"{empty}: no result files (*.json) found" in capsys.readouterr().err
    assert (tmp_path / "out" / "report.md").exists()
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "out2")]) == 2  # see test_report_cli_errors
    assert "nope: no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists() and not (tmp_path / "nope").exists()


def test_unknown_metric_and_test_selection_are_refused_before_writing(tmp_path, capsys):
    accuracy_run(tmp_path, "SGD", 0.1, 42, 0.9, 0.9)
    assert main(["report", str(tmp_path), "--metric", "valid_acc", "--out", str(tmp_path / "out")]) == 2
    assert "unknown metric 'valid_acc'" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--metric", "test_accuracy", "--out", str(tmp_path / "out")]) == 2
    assert "never on the test set" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_problem_and_optimizer_order_follow_the_user(tmp_path):
    for problem in ("fmnist_2c2d", "cifar10_3c3d"):
        for optimizer in ("Adam", "SGD"):
            accuracy_run(tmp_path, optimizer, 0.1, 42, 0.8, 0.8, problem=problem)
    report = write_report(tmp_path, tmp_path / "out", ReportOptions(problems=["fmnist_2c2d", "cifar10_3c3d"],
                                                                    optimizers=["SGD", "Adam"]))
    md = report.markdown.read_text()
    assert md.index("### fmnist_2c2d") < md.index("### cifar10_3c3d")
    section = md[md.index("### fmnist_2c2d"):md.index("### cifar10_3c3d")]
    assert section.index("| SGD |") < section.index("| Adam |")
    assert list(report.summary["problem"]) == ["fmnist_2c2d", "fmnist_2c2d", "cifar10_3c3d", "cifar10_3c3d"]


def test_sensitivity_and_batch_size_grid_figures(tmp_path):
    for lr in (0.01, 0.1, 1.0):
        for seed in (42, 43):
            accuracy_run(tmp_path, "SGD", lr, seed, 0.5 + lr / 4, 0.5 + lr / 4)
    for seed in (42, 43):
        accuracy_run(tmp_path, "Adam", 0.001, seed, 0.8, 0.8)
    for batch_size in (32, 64):
        write_deepobs_run(tmp_path, "quadratic_deep", "SGD", {"lr": 0.1}, 42, train_losses=[2.0, 1.0],
                          valid_losses=[2.0, 1.0], test_losses=[2.0, 1.0], batch_size=batch_size)
    report = write_report(tmp_path, tmp_path / "out", ReportOptions(sensitivity={"SGD": "lr"}))
    assert report.curves["sensitivity"] == 2  # SGD's median line and Adam's reference line
    assert report.curves["batch_size_grid"] == 2  # quadratic_deep x 2 batch sizes, one optimizer
    _assert_valid_images([p for p in report.figures if p.stem in ("sensitivity", "batch_size_grid")])


def test_every_report_file_gets_the_permissions_of_the_umask(tmp_path):
    accuracy_run(tmp_path / "runs", "SGD", 0.1, 42, 0.9, 0.9)
    old = os.umask(0o022)
    try:
        report = write_report(tmp_path / "runs", tmp_path / "out", ReportOptions())
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert report.figures and report.tables and len(files) >= len(report.figures) + len(report.tables) + 2
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}
    assert not [p for p in files if p.name.startswith(".")]  # no temporary left behind
