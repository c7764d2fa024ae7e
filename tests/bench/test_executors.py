"""Running sweeps (issue 6): each run once, failures isolated, kill and restart, commands for other schedulers."""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import sys

import pytest
from run_control import locks_free, pause_env, paused, release, wait_for
from sweep_helpers import EXAMPLES, per_run, results, sweep_main, write_sweep

from probprec.bench.cli import _build_parser
from probprec.bench.commands import emit_commands
from probprec.bench.hyperparams import hyperparameter_argument
from probprec.bench.optimizers import parse_hyperparameters
from probprec.bench.orchestration import prepare_runs, run_sweep
from probprec.bench.runner import ConfigError, run
from probprec.bench.sweeps import load_sweep


def test_a_local_sweep_writes_one_result_per_run_and_a_second_invocation_does_nothing(tmp_path):
    """Acceptance 1: 2 embedded problems x 3 optimizers x 3 seeds."""
    spec = load_sweep(EXAMPLES / "embedded.toml", "smoke")
    out = tmp_path / "out"
    lines: list[str] = []
    summary = run_sweep(spec, out, workers=2, echo=lines.append)
    assert lines[0] == f"18 runs (0 already finished, 18 to run) -> {out}"
    assert summary.counts == {"completed": 18} and summary.exit_code == 0
    assert "18 runs in" in summary.text and "18 completed" in summary.text
    found = per_run(out)
    assert len(found) == 18 and set(found.values()) == {1}
    assert {record["status"] for _, record in results(out)} == {"completed"}
    stamps = {path: path.stat().st_mtime_ns for path, _ in results(out)}

    lines.clear()
    again = run_sweep(spec, out, workers=2, echo=lines.append)
    assert lines == [f"18 runs (18 already finished, 0 to run) -> {out}",
                     f"nothing to do: all 18 runs have results in {out}"]
    assert again.counts == {"skipped": 18} and again.exit_code == 0
    assert {path: path.stat().st_mtime_ns for path, _ in results(out)} == stamps


FAILING = """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "torch.optim.LBFGS" }, { name = "SGD" }, { name = "SGD", grid = { lr = [1e6] }, label = "huge" }]
seeds = [42]
epochs = 2
"""


def test_a_failed_run_never_stops_the_sweep_and_only_it_is_retried(tmp_path, capsys):
    path = write_sweep(tmp_path / "f.toml", FAILING)
    out = tmp_path / "out"
    assert sweep_main(["sweep", str(path), "--scale", "s", "--output-dir", str(out), "--workers", "1"]) == 1
    text = capsys.readouterr().out
    assert "3 runs (0 already finished, 3 to run)" in text
    assert "3 runs in" in text and "1 completed, 1 diverged, 1 failed" in text
    assert "two_d_branin torch.optim.LBFGS (epochs=2) seed 42 [num_epochs__2__batch_size__128]: TypeError" in text
    statuses = {record["optimizer_name"] + str(record["optimizer_hyperparams"].get("lr")): record["status"]
                for _, record in results(out)}
    assert sorted(statuses.values()) == ["completed", "diverged", "failed"]
    failed = [record for _, record in results(out) if record["status"] == "failed"]
    assert "closure" in failed[0]["status_reason"]  # the error is recorded with the run

    assert sweep_main(["sweep", str(path), "--scale", "s", "--output-dir", str(out), "--workers", "1"]) == 1
    text = capsys.readouterr().out
    assert "3 runs (2 already finished, 1 to run)" in text  # diverged is a result; only the failure is retried
    assert len(results(out)) == 4  # the retry writes its own record; the first failure stays on record


def test_a_dead_worker_costs_only_its_own_run(tmp_path):
    path = write_sweep(tmp_path / "c.toml", """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "sweep_helpers.CrashingSGD", hyperparams = { lr = 0.01 } }, { name = "Adam" }]
seeds = [42]
epochs = 1
""")
    lines: list[str] = []
    summary = run_sweep(load_sweep(path, "s"), tmp_path / "out", workers=2, echo=lines.append)
    assert summary.counts == {"completed": 1, "failed": 1}
    assert {o.optimizer for o in summary.failures} == {"sweep_helpers.CrashingSGD"}
    assert all("killed by SIGKILL" in o.reason for o in summary.failures)
    assert summary.exit_code == 1


def test_generated_data_are_written_once_and_used(tmp_path):
    path = write_sweep(tmp_path / "g.toml", """
[s]
problems = ["mnist_logreg"]
optimizers = [{ name = "SGD" }]
seeds = [42]
epochs = 1
batch_size = 10
data = "generate"
""")
    out = tmp_path / "out"
    summary = run_sweep(load_sweep(path, "s"), out, workers=1, data_dir="nowhere", echo=lambda _: None)
    assert summary.counts == {"completed": 1}
    marker = out / "data" / ".generated"
    assert marker.exists()
    stamp = marker.stat().st_mtime_ns
    runs = prepare_runs(load_sweep(path, "s"), out)
    assert runs[0].config.data_dir == str(out / "data") and marker.stat().st_mtime_ns == stamp


def test_missing_data_fail_before_anything_runs(tmp_path):
    path = write_sweep(tmp_path / "m.toml", '[s]\nproblems = ["mnist_logreg"]\noptimizers = [{ name = "SGD" }]\n'
                                            'seeds = [42]\n')
    with pytest.raises(ConfigError, match="MNIST"):
        run_sweep(load_sweep(path, "s"), tmp_path / "out", data_dir=str(tmp_path / "none"), echo=lambda _: None)
    assert not (tmp_path / "out").exists() or not results(tmp_path / "out")


KILL_SWEEP = """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "SGD" }, { name = "Adam" }]
seeds = [1, 2, 3, 4]
epochs = 8
"""


def _completed(out) -> int:
    return sum(record["status"] == "completed" for _, record in results(out)) if out.exists() else 0


def _start(path, out, pause_at: int, markers) -> subprocess.Popen:
    """The sweep (2 workers) in its own process group; its runs wait after the checkpoint of ``pause_at``."""
    return subprocess.Popen([sys.executable, "-m", "probprec.bench.cli", "sweep", str(path), "--scale", "s",
                             "--workers", "2", "--output-dir", str(out)], env=pause_env(pause_at, markers),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_a_killed_sweep_completes_on_restart_without_duplicates_or_losses(tmp_path):
    """Acceptance 3: stopped with SIGTERM, restarted, killed with SIGKILL (with its workers), restarted.

    The runs wait after a checkpoint (the pause hook) until the test acts, so which runs are in progress, and
    where, is certain: the test asserts it rather than hoping for it.
    """
    path = write_sweep(tmp_path / "k.toml", KILL_SWEEP)
    out, first_markers, second_markers = tmp_path / "out", tmp_path / "m1", tmp_path / "m2"
    process = _start(path, out, 4, first_markers)
    waiting = wait_for(lambda: paused(first_markers, count=2),
                       "both workers' runs wait at epoch 4", process=process)
    release(sorted(waiting)[0])
    stopped = wait_for(lambda: _completed(out) == 1 and paused(first_markers, count=2),
                       "one run completed and the next one waits", process=process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 130, output
    assert f"8 runs in {out}: 1 completed, 2 interrupted, 5 not run" in output
    assert "interrupted: 7 runs left; the same command finishes them" in output
    statuses = sorted((record["status"], record["epochs_completed"]) for _, record in results(out))
    assert statuses == [("completed", 8), ("interrupted", 4), ("interrupted", 4)]

    process = _start(path, out, 6, second_markers)
    killed = wait_for(lambda: paused(second_markers, count=2),
                      "the two interrupted runs resumed and wait at epoch 6", process=process)
    assert process.stdout.readline().strip() == f"8 runs (1 already finished, 7 to run) -> {out}"
    assert set(killed.values()) == set(stopped.values())  # the same two runs (their checkpoints)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep, its fork server and its workers
    process.communicate(timeout=60)
    wait_for(lambda: locks_free(out), "the killed workers are gone (their run locks are free)")

    lines: list[str] = []
    summary = run_sweep(load_sweep(path, "s"), out, workers=2, echo=lines.append)
    assert summary.exit_code == 0, summary.text
    assert lines[0] == f"8 runs (1 already finished, 7 to run) -> {out}"
    found = per_run(out)
    assert len(found) == 8 and set(found.values()) == {1}, found  # no lost and no duplicated result
    assert {record["status"] for _, record in results(out)} == {"completed"}
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no checkpoint, no lock file left
    resumed = sorted(record["metadata"]["resumed_at_epochs"] for _, record in results(out))
    assert resumed == [[]] * 6 + [[4, 6]] * 2  # the two runs stopped twice resumed twice, from their checkpoints


def test_emitted_commands_read_back_exactly(tmp_path):
    path = write_sweep(tmp_path / "e.toml", """
[s]
problems = ["two_d_branin", "paper_regression"]
optimizers = [
    { name = "PreconditionedSGD", grid = { orthogonalize = [false, true] }, hyperparams = { mode = "thesis" } },
    { name = "Adam", hyperparams = { betas = [0.8, 0.9], amsgrad = false }, search = { lr = { log_uniform = [1e-4, 1e-1] } } },
    { name = "torch.optim.SGD", hyperparams = { lr = 0.1, nesterov = true, momentum = 0.9 } },
]
trials = 2
seeds = [42, 43]
epochs = { two_d_branin = 2 }
batch_size = [16]
l2 = { paper_regression = 0.001 }
restart = 2
""")  # noqa: E501
    spec = load_sweep(path, "s")
    out = tmp_path / "out dir"  # a space: the commands must quote
    commands = emit_commands(spec, out, data_dir="my data")
    runs = prepare_runs(spec, out, "my data")
    assert len(commands) == len(runs) == 2 * (2 + 2 + 1) * 2
    parser = _build_parser()
    for command, sweep_run in zip(commands, runs, strict=True):
        argv = shlex.split(command)
        assert argv[:2] == ["probprec", "run"]
        args = parser.parse_args(argv[1:])
        config = sweep_run.config
        hyperparams = parse_hyperparameters(args.hp)
        assert hyperparams == config.hyperparams
        assert {k: type(v) for k, v in hyperparams.items()} == {k: type(v) for k, v in config.hyperparams.items()}
        assert (args.problem, args.optimizer, args.seed, args.epochs, args.batch_size, args.l2, args.restart,
                args.data_dir, args.output_dir) == (config.problem, config.optimizer, config.seed, config.epochs,
                                                    config.batch_size, config.l2, config.restart, config.data_dir,
                                                    config.output_dir)
    assert any("orthogonalize=False" in c for c in commands) and any("amsgrad=False" in c for c in commands)
    assert not any("--nproc-per-node" in c for c in commands)
    # pending runs only: once a run has a result, its command is no longer emitted
    run(runs[0].config)
    assert emit_commands(spec, out, data_dir="my data") == commands[1:]


def test_emitted_commands_of_data_parallel_runs_name_their_processes(tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "e.toml", """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "SGD", hyperparams = { lr = 0.01 } }]
seeds = [42]
"""), "s")
    (command,) = emit_commands(spec, tmp_path / "out", processes=2)
    (sweep_run,) = prepare_runs(spec, tmp_path / "out", "data", processes=2)
    args = _build_parser().parse_args(shlex.split(command)[1:])
    assert args.nproc_per_node == sweep_run.config.processes == 2


@pytest.mark.parametrize("value", [False, True, 0, 1, 0.1, 1e-300, -2.5, math.inf, -math.inf, "thesis", "True", "0.1",
                                   " padded", "", "x=y", "[1, 2]", [0.9, 0.999], (1, 2), "it's"])
def test_every_hyperparameter_value_reads_back(value):
    args = _build_parser().parse_args(["run", "p", "--optimizer", "o", "--hp",
                                       *shlex.split(shlex.quote(hyperparameter_argument("k", value)))])
    parsed = parse_hyperparameters(args.hp)["k"]
    assert parsed == value and type(parsed) is type(value)


def test_emit_commands_through_the_command(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep_main(["sweep", str(EXAMPLES / "embedded.toml"), "--emit-commands", "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 18 and "18 pending runs" in captured.err
    assert not out.exists()  # nothing runs


def test_bad_executor_options(tmp_path):
    spec = load_sweep(EXAMPLES / "embedded.toml", "smoke")
    with pytest.raises(ConfigError, match="executor must be one of local, slurm"):
        run_sweep(spec, tmp_path, executor="ray", echo=lambda _: None)
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        run_sweep(spec, tmp_path, workers=0, echo=lambda _: None)
