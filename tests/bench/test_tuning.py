"""The tuning protocol (issue 6, acceptance 4): one seed per setting, the choice on validation, a 10-seed rerun."""

from __future__ import annotations

import json

import pytest
from sweep_helpers import results, sweep_main, write_sweep

from probprec.bench.orchestration import run_sweep
from probprec.bench.runner import ConfigError
from probprec.bench.sweeps import load_sweep
from probprec.bench.tuning import tune

GRID = """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "SGD", grid = { lr = [0.001, 0.01, 0.1, 1e6] } }]
seeds = [42]
epochs = 2
"""


def test_the_choice_is_made_on_validation_and_rerun_with_ten_seeds(tmp_path):
    """A constructed case: the best setting on the test set is not the best on validation."""
    spec = load_sweep(write_sweep(tmp_path / "t.toml", GRID), "s")
    out = tmp_path / "out"
    run_sweep(spec, out, workers=1, echo=lambda _: None)
    crafted = {0.001: (5.0, 1.0), 0.01: (2.0, 9.0), 0.1: (3.0, 3.0)}  # lr: (final valid loss, final test loss)
    for path, record in results(out):
        lr = record["optimizer_hyperparams"]["lr"]
        if lr in crafted:
            record["valid_losses"][-1], record["test_losses"][-1] = crafted[lr]
            path.write_text(json.dumps(record))
        else:
            assert record["status"] == "diverged"
    step1 = {path: path.read_text() for path, _ in results(out)}

    lines: list[str] = []
    result = tune(spec, out, workers=1, echo=lines.append)
    assert result.exit_code == 0
    assert "4 runs (4 already finished, 0 to run)" in "\n".join(lines)  # step 1 was done: nothing repeated
    (choice,) = result.choices
    assert choice["hyperparams"]["lr"] == 0.01 and choice["metric"] == "valid_loss" and choice["score"] == 2.0
    ranked = [(c["hyperparams"]["lr"], c["score"]) for c in choice["candidates"]]
    assert ranked[:3] == [(0.01, 2.0), (0.1, 3.0), (0.001, 5.0)]
    assert ranked[3][0] == 1e6 and choice["candidates"][3]["status"] == "diverged"  # diverged ranks last

    rerun = [(path, record) for path, record in results(out) if record["optimizer_hyperparams"]["lr"] == 0.01]
    assert sorted(record["random_seed"] for _, record in rerun) == list(range(42, 52))
    assert {record["status"] for _, record in rerun} == {"completed"}
    assert all(path.read_text() == text for path, text in step1.items())  # seed 42 kept, not rerun
    assert len(results(out)) == 4 + 9  # no other setting was rerun
    assert sorted(choice["rerun"]["results"]) == sorted(str(path) for path, _ in rerun)

    written = json.loads((out / "tuning.json").read_text())
    assert written["rerun_seeds"] == list(range(42, 52)) and written["candidate_seed"] == 42
    assert [c["score"] for c in written["choices"][0]["candidates"]] == [2.0, 3.0, 5.0, None]
    report = (out / "tuning.md").read_text()
    assert "Chosen: `lr=0.01" in report and "Rerun: 10 of 10 seeds (10 completed)" in report
    assert "| 4 |" in report and "diverged" in report

    lines.clear()
    again = tune(spec, out, workers=1, echo=lines.append)
    assert again.exit_code == 0 and "nothing to do: all 10 runs have results" in "\n".join(lines)


def test_tune_command_selects_on_validation_accuracy(tmp_path, capsys):
    path = write_sweep(tmp_path / "a.toml", """
[s]
problems = ["digits_mlp"]
optimizers = [{ name = "SGD", search = { lr = { log_uniform = [1e-3, 1.0] } } }]
trials = 3
seeds = [7]
epochs = 1
""")
    out = tmp_path / "out"
    assert sweep_main(["tune", str(path), "--scale", "s", "--seeds", "7", "8", "--output-dir", str(out),
                       "--workers", "1"]) == 0
    assert "step 3 of 3" in capsys.readouterr().out
    written = json.loads((out / "tuning.json").read_text())
    (choice,) = written["choices"]
    assert choice["metric"] == "valid_accuracy"
    step1 = {record["optimizer_hyperparams"]["lr"]: record["valid_accuracies"][-1]
             for _, record in results(out) if record["random_seed"] == 7}
    assert len(step1) == 3
    assert choice["score"] == max(step1.values()) == step1[choice["hyperparams"]["lr"]]
    assert sorted(choice["rerun"]["statuses"].items()) == [("completed", 2)]


def test_tuning_refuses_test_metrics_and_bad_seeds(tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "t.toml", GRID), "s")
    with pytest.raises(ConfigError, match="selects on validation"):
        tune(spec, tmp_path / "out", metric="test_loss", echo=lambda _: None)
    with pytest.raises(ConfigError, match="seeds must be"):
        tune(spec, tmp_path / "out", seeds=[], echo=lambda _: None)
    assert not (tmp_path / "out").exists()


ONE_SETTING = """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "SGD", hyperparams = { lr = 1e6 } }]
seeds = [42]
epochs = 1
"""


def test_an_optimizer_with_one_setting_runs_every_seed_even_when_the_first_fails(tmp_path):
    """A learning-rate-free optimizer has nothing to choose: its first seed's collapse or divergence is a result,
    and the other seeds run all the same (found in the contest: a peer that diverged on seed 42 had 1 run of 5)."""
    spec = load_sweep(write_sweep(tmp_path / "t.toml", ONE_SETTING), "s")
    out = tmp_path / "out"
    result = tune(spec, out, workers=1, seeds=[42, 43, 44], echo=lambda _: None)
    statuses = sorted((record["random_seed"], record["status"]) for _, record in results(out))
    assert statuses == [(42, "diverged"), (43, "diverged"), (44, "diverged")]
    assert result.choices[0]["rerun"] is not None
