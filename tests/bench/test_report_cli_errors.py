"""`probprec report` with a missing input or an unusable output folder: one line, exit status 2, nothing created."""

from __future__ import annotations

import pytest
from analysis_helpers import probprec_record, write_record

from probprec.bench.cli import main


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("probprec: error: ")
    return lines[0]


@pytest.fixture
def results_dir(tmp_path):
    write_record(tmp_path / "runs", probprec_record())
    return tmp_path / "runs"


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.mark.parametrize("where", ["input", "one_of_two_inputs", "reference"])
def test_a_missing_input_is_an_error_and_creates_nothing(tmp_path, results_dir, capsys, where):
    missing = tmp_path / "NO_SUCH_DIR"
    before = _tree(tmp_path)
    argv = {"input": [str(missing)], "one_of_two_inputs": [str(results_dir), str(missing)],
            "reference": [str(results_dir), "--reference", str(missing)]}[where]
    out = [] if where == "input" else ["--out", str(tmp_path / "out")]
    assert main(["report", *argv, *out]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(missing) in line and "no such file or directory" in line
    assert _tree(tmp_path) == before  # neither NO_SUCH_DIR nor the report folder was created


@pytest.mark.parametrize("out", ["below_a_file", "a_file", "below_a_file_deeper"])
def test_an_unwritable_report_folder_is_one_line_naming_it(tmp_path, results_dir, capsys, out):
    blocker = tmp_path / "plain_file"
    blocker.write_text("not a folder")
    inputs = _tree(results_dir)
    target = {"below_a_file": blocker / "report", "a_file": blocker,
              "below_a_file_deeper": blocker / "a" / "b"}[out]  # holds for root too: no permission bits involved
    assert main(["report", str(results_dir), "--out", str(target)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(target) in line and "--out" in line
    assert blocker.read_text() == "not a folder"
    assert _tree(results_dir) == inputs  # the inputs untouched, no default report folder either


def test_a_write_that_fails_inside_the_report_folder_is_one_line(tmp_path, results_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "figures").write_text("a file where the figures folder goes")
    assert main(["report", str(results_dir), "--out", str(out)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line and "figures" in line
    assert not (out / "report.md").exists() and not (out / "report.html").exists()
