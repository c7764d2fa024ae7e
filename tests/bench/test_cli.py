"""Acceptance 4 of the harness: bad input exits non-zero with one clear line and writes nothing."""

from __future__ import annotations

import pytest

from probprec.bench.cli import main
from probprec.bench.problems import PROBLEMS


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def files_in(path):
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["run", "no_such_problem", "--optimizer", "SGD"], "unknown problem 'no_such_problem'"),
        (["run", "quadratic_deep", "--optimizer", "NoSuchOpt"], "unknown optimizer 'NoSuchOpt'"),
        (["run", "quadratic_deep", "--optimizer", "SGD", "--hp", "lr=-1"], "lr must be a finite number >= 0, got -1"),
        (["run", "quadratic_deep", "--optimizer", "SGD", "--hp", "bogus=1"], "bogus"),
        (["run", "quadratic_deep", "--optimizer", "PreconditionedSGD", "--hp", "est_rank=0"], "est_rank"),
        (["run", "quadratic_deep", "--optimizer", "SGD", "--hp", "lr"], "must look like name=value"),
        (["run", "quadratic_deep", "--optimizer", "PreconditionedTunedSGD"], "lr"),
        (["run", "quadratic_deep", "--optimizer", "SGD", "--epochs", "0"], "--epochs"),
        (["run", "quadratic_deep", "--optimizer", "SGD", "--seed", "-3"], "--seed"),
        (["run", "quadratic_deep", "--optimizer", "SGD", "--batch-size", "5000"], "larger than the training set"),
        (["run", "quadratic_deep", "--optimizer", "SGD", "--restart", "sometimes"], "--restart"),
        (["run", "quadratic_deep", "--optimizer", "SGD", "--l2", "-1"], "l2 must be a number >= 0"),
        (["benchmark", "--problems", "mnist_mlp"], "not an embedded problem"),
    ],
)
def test_bad_input_one_line_non_zero_nothing_written(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    argv = [*argv, "--output-dir", str(out)] if argv[0] in ("run", "benchmark") else argv
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert expected in error_line(capsys)
    assert files_in(out) == []


def test_missing_data_directory(tmp_path, capsys):
    code = main(["run", "mnist_mlp", "--optimizer", "SGD", "--data-dir", str(tmp_path / "none"),
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2
    line = error_line(capsys)
    assert "MNIST not found" in line and "--download" in line
    assert files_in(tmp_path / "out") == []


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = main(["run", "quadratic_deep", "--optimizer", "SGD", "--epochs", "1", "--output-dir",
                 str(blocker / "results")])
    assert code == 2
    assert "is not writable" in error_line(capsys)


def test_run_success_and_summary_line(tmp_path, capsys):
    code = main(["run", "digits_mlp", "--optimizer", "AdaptiveSGD", "--epochs", "1", "--no-progress",
                 "--output-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("completed: digits_mlp AdaptiveSGD seed 42") and "test accuracy" in out
    assert len(list(tmp_path.rglob("*.json"))) == 1


def test_run_by_torch_optim_path(tmp_path, capsys):
    code = main(["run", "digits_mlp", "--optimizer", "torch.optim.RMSprop", "--hp", "lr=0.001", "alpha=0.9",
                 "--epochs", "1", "--no-progress", "--output-dir", str(tmp_path)])
    assert code == 0
    [path] = list(tmp_path.rglob("*.json"))
    assert path.parent.name == "num_epochs__1__batch_size__32__alpha__9.e-01__lr__1.e-03"


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in PROBLEMS:
        assert name in out
    assert "2,748,890" in out  # svhn_wrn164's parameter count
    assert "PreconditionedTunedMomentum" in out and "torch.optim" in out


@pytest.mark.parametrize("command", [[], ["run"], ["benchmark"], ["list"], ["demo"]])
def test_help_everywhere(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: probprec" in capsys.readouterr().out
