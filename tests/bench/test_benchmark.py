"""The main job at smoke scale: runs, summary table and plots; a second invocation only skips."""

from __future__ import annotations

from probprec.bench.cli import main


def test_benchmark_writes_results_summary_and_plots(tmp_path, capsys):
    argv = ["benchmark", "--quick", "--problems", "quadratic_deep", "digits_cnn", "--optimizers", "SGD",
            "PreconditionedSGD", "--seeds", "1", "--output-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and out.count("completed") >= 4
    assert len(list(tmp_path.rglob("*.json"))) == 4
    summary = (tmp_path / "summary.md").read_text()
    assert "| quadratic_deep | PreconditionedSGD | 1 | 1 completed |" in summary
    csv_lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("problem,optimizer,runs,status") and len(csv_lines) == 5
    for name in ("quadratic_deep", "digits_cnn"):
        assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("skipped") == 4
    assert len(list(tmp_path.rglob("*.json"))) == 4
