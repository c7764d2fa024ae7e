"""The main job at smoke scale: runs, the report with its tables and figures; a second invocation only skips."""

from __future__ import annotations

import pandas as pd

from probprec.bench.cli import main


def test_benchmark_writes_results_report_and_figures(tmp_path, capsys):
    argv = ["benchmark", "--quick", "--problems", "quadratic_deep", "digits_cnn", "--optimizers", "SGD",
            "PreconditionedSGD", "--seeds", "1", "--output-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and out.count("completed") >= 4
    assert len(list(tmp_path.rglob("*.json"))) == 4
    report = tmp_path / "report"
    markdown = (report / "report.md").read_text()
    assert "### quadratic_deep" in markdown and "### digits_cnn" in markdown
    summary = pd.read_csv(report / "tables" / "summary.csv")
    assert list(zip(summary["problem"], summary["optimizer"], strict=True)) == [
        ("quadratic_deep", "SGD"), ("quadratic_deep", "PreconditionedSGD"),
        ("digits_cnn", "SGD"), ("digits_cnn", "PreconditionedSGD")]
    assert set(summary["status"]) == {"1 completed"}
    figures = {p.name for p in (report / "figures").iterdir()}
    assert {"performance_1.png", "performance_2.png", "optimizer_state_1.png", "runtime.png"} <= figures
    assert (report / "report.html").read_text().count("data:image/png;base64,") >= 4
    assert "quadratic_deep         PreconditionedSGD" in out  # the console table
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("skipped") == 4
    assert len(list(tmp_path.rglob("*.json"))) == 4
