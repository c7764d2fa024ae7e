"""Acceptance 2 and 3 of the harness: result files, reproducibility, divergence, interrupts and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_control import pause_env, paused, wait_for

from probprec.bench.problems.synthetic import QuadraticDeep
from probprec.bench.runner import RunConfig, run

DEEPOBS_KEYS = {"testproblem", "batch_size", "num_epochs", "random_seed", "weight_decay", "optimizer_name",
                "optimizer_hyperparams", "training_params", "train_losses", "valid_losses", "test_losses",
                "minibatch_train_losses"}
OUR_KEYS = {"status", "status_reason", "stopped_at_step", "stopped_at_epoch", "epochs_completed", "steps",
            "epoch_wall_times", "epoch_cpu_times", "eval_wall_times", "optimizer_logs", "metadata", "problem",
            "total_wall_time", "total_cpu_time"}
CURVES = ["train_losses", "valid_losses", "test_losses", "minibatch_train_losses"]


def strict_load(path: Path) -> dict:
    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=reject)


def quadratic(tmp_path, **kwargs) -> RunConfig:
    defaults = dict(epochs=12, output_dir=str(tmp_path), progress=False)
    defaults.update(kwargs)
    return RunConfig("quadratic_deep", defaults.pop("optimizer", "PreconditionedSGD"), **defaults)


def test_result_has_deepobs_keys_layout_and_ours(tmp_path):
    result = run(quadratic(tmp_path))
    assert result.status == "completed"
    rel = result.path.relative_to(tmp_path)
    assert rel.parts[:3] == ("quadratic_deep", "PreconditionedSGD", "num_epochs__12__batch_size__128")
    assert rel.name.startswith("random_seed__42__") and rel.suffix == ".json"
    record = strict_load(result.path)
    assert DEEPOBS_KEYS | OUR_KEYS <= set(record)
    assert "test_accuracies" not in record  # no accuracy on this problem, as DeepOBS
    assert all(len(record[k]) == 13 for k in ("train_losses", "valid_losses", "test_losses"))
    assert len(record["epoch_wall_times"]) == len(record["epoch_cpu_times"]) == 12
    assert record["steps"] == 12 * 7 and len(record["minibatch_train_losses"]) == 8
    assert record["optimizer_logs"][-1]["step_sizes"][0] > 0
    env = record["metadata"]["environment"]
    assert env["packages"]["torch"] and env["python"] and "cpu" in env
    assert record["test_losses"][-1] < record["test_losses"][0]


def test_same_seed_same_curves_and_other_seed_other_curves(tmp_path):
    a = run(quadratic(tmp_path / "a")).record
    b = run(quadratic(tmp_path / "b")).record
    c = run(quadratic(tmp_path / "c", seed=7)).record
    for key in CURVES:
        assert a[key] == b[key]
    assert [log["step_sizes"] for log in a["optimizer_logs"]] == [log["step_sizes"] for log in b["optimizer_logs"]]
    assert a["test_losses"] != c["test_losses"]


def test_existing_result_is_skipped_and_force_writes_a_new_file(tmp_path):
    first = run(quadratic(tmp_path, epochs=2))
    again = run(quadratic(tmp_path, epochs=2))
    assert again.status == "skipped" and again.path == first.path
    forced = run(quadratic(tmp_path, epochs=2, force=True))
    assert forced.status == "completed" and forced.path != first.path
    assert first.path.exists() and forced.path.exists()


def test_divergence_is_recorded_at_its_step_in_strict_json(tmp_path):
    result = run(quadratic(tmp_path, optimizer="SGD", hyperparams={"lr": 100.0}, epochs=5))
    assert result.status == "diverged"
    record = strict_load(result.path)
    assert record["status"] == "diverged" and "step" in record["status_reason"]
    assert record["stopped_at_epoch"] == 0 and 0 < record["stopped_at_step"] < 7
    assert len(record["train_losses"]) == 1  # no epoch completed; nothing filled in
    text = result.path.read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_failure_is_recorded(tmp_path):
    result = run(quadratic(tmp_path, optimizer="torch.optim.LBFGS", epochs=2))
    assert result.status == "failed"
    assert "closure" in strict_load(result.path)["status_reason"]


def test_interrupt_records_and_resumes_to_the_same_result(tmp_path, monkeypatch):
    reference = run(quadratic(tmp_path / "ref", epochs=6, optimizer="PreconditionedMomentum")).record
    calls = {"n": 0}
    original = QuadraticDeep.loss

    def interrupting(self, outputs, targets):
        calls["n"] += torch.is_grad_enabled()  # training steps only, not evaluations
        if calls["n"] == 7 * 3 + 4:  # during epoch 3
            raise KeyboardInterrupt("SIGINT")
        return original(self, outputs, targets)

    monkeypatch.setattr(QuadraticDeep, "loss", interrupting)
    config = quadratic(tmp_path / "run", epochs=6, optimizer="PreconditionedMomentum")
    interrupted = run(config)
    assert interrupted.status == "interrupted"
    record = strict_load(interrupted.path)
    assert record["status"] == "interrupted" and record["stopped_at_epoch"] == 3
    assert "resumes from epoch 3" in record["status_reason"]
    monkeypatch.setattr(QuadraticDeep, "loss", original)
    resumed = run(config)
    assert resumed.status == "completed" and resumed.path == interrupted.path
    assert resumed.record["metadata"]["resumed_at_epochs"] == [3]
    for key in CURVES:
        assert resumed.record[key] == reference[key]
    assert not list((tmp_path / "run").rglob(".checkpoint*"))


def test_interrupt_before_the_first_checkpoint_leaves_one_record(tmp_path, monkeypatch):
    original = QuadraticDeep.loss

    def interrupting(self, outputs, targets):
        if torch.is_grad_enabled():
            raise KeyboardInterrupt("SIGTERM")
        return original(self, outputs, targets)

    monkeypatch.setattr(QuadraticDeep, "loss", interrupting)
    config = quadratic(tmp_path, epochs=3, optimizer="SGD")
    assert run(config).status == "interrupted"
    monkeypatch.setattr(QuadraticDeep, "loss", original)
    assert run(config).status == "completed"
    [path] = list(tmp_path.rglob("*.json"))
    assert strict_load(path)["status"] == "completed"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killed_process_resumes_to_the_same_result(tmp_path, sig):
    """The run waits after its checkpoint of epoch 3 (the pause hook) until the signal: the window is certain."""
    args = [sys.executable, "-m", "probprec.bench.cli", "run", "quadratic_deep", "--optimizer", "SGD",
            "--epochs", "6", "--no-progress"]
    reference = subprocess.run([*args, "--output-dir", str(tmp_path / "ref")], capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    out, markers = tmp_path / "run", tmp_path / "markers"
    # SIGINT at its default even where this test runs as a background job (which inherits SIGINT ignored)
    process = subprocess.Popen([*args, "--output-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=pause_env(3, markers),
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: paused(markers), "the run waits after its checkpoint of epoch 3", process=process)
    os.kill(process.pid, sig)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 130, err
    [path] = list(out.rglob("*.json"))
    interrupted = strict_load(path)
    assert interrupted["status"] == "interrupted" and interrupted["epochs_completed"] == 3
    assert f"{sig.name} during epoch 2; resumes from epoch 3" == interrupted["status_reason"]
    resumed = subprocess.run([*args, "--output-dir", str(out)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    [final] = list(out.rglob("*.json"))
    [ref_path] = list((tmp_path / "ref").rglob("*.json"))
    a, b = strict_load(final), strict_load(ref_path)
    assert final == path and a["status"] == "completed" and a["metadata"]["resumed_at_epochs"] == [3]
    for key in CURVES:
        assert a[key] == b[key]


def test_param_group_problem_gets_a_step_size_per_group(tmp_path):
    result = run(RunConfig("digits_mlp_layerwise", "PreconditionedSGD", epochs=2, output_dir=str(tmp_path),
                           progress=False))
    sizes = result.record["optimizer_logs"][-1]["step_sizes"]
    assert len(sizes) == 2 and sizes[0] != sizes[1]


@pytest.mark.parametrize("problem", ["fmnist_2c2d", "cifar10_3c3d", "mnist35_logreg"])
def test_image_problems_run_end_to_end_on_generated_files(tmp_path, data_dir, problem):
    result = run(RunConfig(problem, "PreconditionedSGD", {"prior_iterations": 1, "num_observations": 2}, epochs=2,
                           batch_size=8, data_dir=str(data_dir), output_dir=str(tmp_path), progress=False))
    assert result.status == "completed", result.record["status_reason"]
    record = strict_load(result.path)
    assert len(record["test_accuracies"]) == 3 and 0 <= record["test_accuracies"][-1] <= 1
    sizes = record["problem"]
    assert sizes["train_size"] + sizes["valid_size"] == (60 if problem != "mnist35_logreg" else 30)
