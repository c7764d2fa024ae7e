"""Every shipped experiment runs at smoke scale and writes its report; every full scale is a valid sweep."""

from __future__ import annotations

import pandas as pd
import pytest

from probprec.bench.cli import main
from probprec.bench.experiment import experiment_names, experiment_path, report_options, run_experiment
from probprec.bench.sweeps import SweepError, expand, load_sweep
from probprec.config import MECHANISMS

EXPECTED = {"exp1a", "exp1b", "exp2_runtime", "exp3_init", "exp4_first_lr", "lr_free", "lr_free_ablation",
            "paper_fig1", "paper_fig2"}


def test_every_thesis_and_paper_experiment_ships():
    assert set(experiment_names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_scale_is_a_valid_sweep_with_the_thesis_budget(name):
    spec = load_sweep(experiment_path(name), "full")
    options = report_options(spec)
    runs = list(expand(spec, "unused"))
    assert runs and {r.label for r in runs} == set(options.optimizers)
    if name in ("exp1a", "exp1b", "exp3_init"):
        assert spec.seeds == list(range(42, 52))
    if name in ("exp1a", "exp1b", "exp4_first_lr"):
        assert spec.epochs == 100
    if name == "exp4_first_lr":
        lrs = sorted({r.config.hyperparams["first_cycle_lr"] for r in runs if "first_cycle_lr" in r.config.hyperparams})
        assert len(lrs) == 10 and lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(100.0)
    if name == "lr_free_ablation":  # every mechanism switched off alone, then all of them, on the contest's problems
        switched = [r.config.hyperparams for r in runs if r.config.hyperparams]
        for mechanism in MECHANISMS:
            assert {mechanism: False} in switched
        assert dict.fromkeys(MECHANISMS, False) in switched
        assert {"secant_check": True} in switched, "the option that is off by default, switched on"
        assert spec.problems == load_sweep(experiment_path("lr_free"), "full").problems
    if name == "exp3_init":
        assert spec.batch_size == [32, 64, 128] and set(spec.problems) == {"cifar10_roos", "cifar10_3c3d"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED - {"lr_free"}))  # lr_free's smoke scale: test_contest.py
def test_smoke_scale_runs_and_writes_its_report(name, tmp_path):
    lines: list[str] = []
    result = run_experiment(name, "smoke", tmp_path, echo=lines.append)
    report = result.report
    assert report.html.exists() and report.markdown.exists()
    summary = pd.read_csv(tmp_path / "report" / "tables" / "summary.csv")
    spec = load_sweep(experiment_path(name), "smoke")
    labels = report_options(spec).optimizers
    assert set(summary["optimizer"]) == set(labels)  # every entry of the sweep is reported by its label
    assert set(summary["problem"]) == set(spec.problems)
    assert not result.sweep.failures, lines
    names = {p.stem for p in report.figures}
    assert "performance" in names or "performance_1" in names
    if name == "exp2_runtime":
        assert report.curves["runtime"] == 0 and "runtime" in names  # dots and bars, no labelled lines
        assert "wall clock / epoch, x SGD" in report.markdown.read_text()
    if name == "exp3_init":
        assert report.curves["batch_size_grid"] == 2 * 2 * 2  # problems x batch sizes x optimizers
    if name == "exp4_first_lr":
        assert report.curves["sensitivity"] == 3  # two swept optimizers and the constructed reference line
    if name != "paper_fig2":
        return
    # a second invocation runs nothing and rewrites the report (checked once: it costs a report)
    again: list[str] = []
    run_experiment(name, "smoke", tmp_path, echo=again.append)
    assert any("nothing to do" in line for line in again), again


def test_experiment_command_rejects_unknown_names_and_bad_report_keys(tmp_path, capsys):
    assert main(["experiment", "exp9", "--output-dir", str(tmp_path)]) == 2
    assert "unknown experiment 'exp9'; known experiments: exp1a" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[report]\ncolour = "red"\n[smoke]\nproblems = ["quadratic_deep"]\nseeds = [1]\n'
                   'optimizers = [{ name = "SGD" }]\n')
    assert main(["experiment", str(bad), "--output-dir", str(tmp_path / "out")]) == 2
    assert "[report]: unknown key 'colour'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SweepError, match="sensitivity names 'Adam'"):
        bad.write_text('[report]\nsensitivity = { Adam = "lr" }\n[smoke]\nproblems = ["quadratic_deep"]\n'
                       'seeds = [1]\noptimizers = [{ name = "SGD" }]\n')
        report_options(load_sweep(bad, "smoke"))


def test_runtime_command_prints_ratios_against_sgd(tmp_path, capsys):
    argv = ["runtime", "--problem", "digits_mlp", "--optimizers", "PreconditionedSGD", "OnlyAdaptiveSGD",
            "--repetitions", "2", "--epochs", "1", "--output-dir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "digits_mlp, 2 repetitions x 3 optimizers x 1 epoch, " in out
    rows = [line for line in out.splitlines() if line.startswith(("SGD ", "PreconditionedSGD", "OnlyAdaptiveSGD"))]
    assert len(rows) == 3 and rows[0].split()[2] == "1.000"  # SGD against itself
    ratios = pd.read_csv(tmp_path / "report" / "tables" / "runtime.csv")
    assert len(ratios) == 6 and (ratios["wall_ratio"] > 0).all() and (ratios["cpu_ratio"] > 0).all()
