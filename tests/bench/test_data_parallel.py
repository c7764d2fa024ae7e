"""Data-parallel runs (probprec.bench.data_parallel): N processes with batch b equal one process with batch N*b.

Every run here is quadratic_deep on the CPU with 2 gloo processes. The single-process reference runs are
computed once per optimizer (:func:`reference`) and shared by the tests that compare with them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from test_slurm import cluster  # noqa: F401 - the fixture: a Slurm cluster, or skip saying why (fail under CI)
from torch.utils.data import BatchSampler, RandomSampler, TensorDataset

from probprec.bench.cli import main
from probprec.bench.data_parallel import DataParallel, RankBatchSampler, SingleProcess
from probprec.bench.errors import ConfigError
from probprec.bench.orchestration import prepare_runs, run_processes, run_sweep
from probprec.bench.slurm_executor import SlurmExecutor, SlurmOptions
from probprec.bench.sweep_cli import slurm_options
from probprec.bench.sweeps import load_sweep

CURVES = ("train_losses", "valid_losses", "test_losses", "minibatch_train_losses")
RTOL = 1e-5
"""How far the data-parallel curves may be from the single-process ones, relatively.

The data-parallel gradient is the mean of 2 per-process float32 means over b examples, averaged by DDP's
bucketed all-reduce (or by the optimizer); the single process takes one float32 mean over 2b examples. Both
are the same sum in another order: they differ by float32 rounding, about 1e-7 relative per operation, and
the losses below are sums over 1000 examples after 30 steps of a stable step size on a convex quadratic, which
does not amplify the difference. 1e-5 is 100 times float32's rounding; the largest differences measured are
7.8e-8 (SGD: its minibatch losses; its evaluation curves agree exactly) and 1.5e-7 (PreconditionedSGD: its
validation losses).
"""
PROBLEM = ["run", "quadratic_deep", "--epochs", "2", "--no-progress"]
"""30 steps of a global batch of 64 (15 per epoch), minibatch losses every 10 steps."""
_REFERENCES: dict[str, dict] = {}


def files_in(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def only_result(path: Path) -> dict:
    """The one file under ``path``: a result file (no checkpoint, lock or leftover of the processes)."""
    files = files_in(path)
    assert len(files) == 1, files
    assert files[0].name.startswith("random_seed__42__") and files[0].suffix == ".json"
    return json.loads(files[0].read_text())


def reference(tmp_path_factory: pytest.TempPathFactory, optimizer: str) -> dict:
    """The single-process run with the global batch 64 (computed once per optimizer)."""
    if optimizer not in _REFERENCES:
        out = tmp_path_factory.mktemp(f"single-{optimizer}")
        assert main([*PROBLEM, "--optimizer", optimizer, "--batch-size", "64", "--output-dir", str(out)]) == 0
        _REFERENCES[optimizer] = only_result(out)
    return _REFERENCES[optimizer]


def assert_equal_runs(parallel: dict, single: dict) -> float:
    """The data-parallel record states its processes and equals the single-process one; the largest difference."""
    assert parallel["status"] == single["status"] == "completed"
    assert parallel["batch_size"] == single["batch_size"] == 64
    assert parallel["training_params"]["processes"] == 2 and "processes" not in single["training_params"]
    assert parallel["steps"] == single["steps"] == 30
    largest = 0.0
    for key in CURVES:
        assert len(parallel[key]) == len(single[key]) > 0
        np.testing.assert_allclose(parallel[key], single[key], rtol=RTOL, err_msg=key)
        largest = max(largest, float(np.max(np.abs(np.subtract(parallel[key], single[key])) / np.abs(single[key]))))
    sizes = [[log["step_sizes"] for log in record["optimizer_logs"]] for record in (parallel, single)]
    np.testing.assert_allclose(np.array(sizes[0], dtype=float), np.array(sizes[1], dtype=float), rtol=RTOL)
    return largest


# ---------------------------------------------------------------------------------------------------------------
# (a) probprec run --nproc-per-node 2 equals one process with the global batch


@pytest.mark.parametrize("optimizer", ["SGD", "PreconditionedSGD"])
def test_two_processes_write_one_result_equal_to_one_process_with_the_global_batch(tmp_path, tmp_path_factory,
                                                                                   capsys, optimizer):
    single = reference(tmp_path_factory, optimizer)
    capsys.readouterr()
    out = tmp_path / "two"
    assert main([*PROBLEM, "--optimizer", optimizer, "--batch-size", "32", "--nproc-per-node", "2",
                 "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith(f"completed: quadratic_deep {optimizer} seed 42")
    parallel = only_result(out)
    folder = files_in(out)[0].parent.name
    assert folder.startswith("num_epochs__2__batch_size__64__") and folder.endswith("__processes__2")
    largest = assert_equal_runs(parallel, single)
    print(f"{optimizer}: largest relative difference of the curves {largest:.3g}")
    capsys.readouterr()
    assert main([*PROBLEM, "--optimizer", optimizer, "--batch-size", "32", "--nproc-per-node", "2",
                 "--output-dir", str(out)]) == 0  # again: skipped, nothing new
    assert capsys.readouterr().out.startswith(f"skipped: quadratic_deep {optimizer} seed 42")
    assert only_result(out) == parallel


def test_torchrun_processes_join_its_group_and_equal_one_process(tmp_path, tmp_path_factory):
    """``torchrun --nproc-per-node 2 probprec run ...``: the two processes train one run (rank 0 writes it)."""
    single = reference(tmp_path_factory, "PreconditionedSGD")
    out = tmp_path / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--module",
               "probprec.bench.cli", *PROBLEM, "--optimizer", "PreconditionedSGD", "--batch-size", "32",
               "--output-dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("completed: quadratic_deep PreconditionedSGD seed 42") == 1  # rank 0 reports
    assert_equal_runs(only_result(out), single)


class FailingSGD(torch.optim.SGD):
    """SGD whose rank 1 raises at its 20th step (the other rank then waits in a collective)."""

    def __init__(self, params, lr: float = 0.01):
        super().__init__(params, lr=lr)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        if dist.is_initialized() and dist.get_rank() == 1 and self.steps == 20:
            raise RuntimeError("rank 1 broke on purpose")
        return super().step(closure)


def test_a_failing_process_stops_the_run_and_rank_0_records_its_reason(tmp_path, capsys):
    out = tmp_path / "out"
    start = time.monotonic()
    code = main([*PROBLEM, "--optimizer", "test_data_parallel.FailingSGD", "--batch-size", "32",
                 "--nproc-per-node", "2", "--output-dir", str(out)])
    assert time.monotonic() - start < 120  # the waiting rank learns of the failure, it does not hang
    assert code == 1
    record = only_result(out)  # the failed run's record; no checkpoint left (a failed run starts anew)
    assert record["status"] == "failed"
    assert record["status_reason"] == "process 1 of 2: RuntimeError: rank 1 broke on purpose"
    assert "process 1 of 2: RuntimeError: rank 1 broke on purpose" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# (b) each rank's batches are its slices of the single-process batches


@pytest.mark.parametrize("processes", [2, 3])
def test_each_rank_takes_its_slice_and_together_they_are_the_single_process_batches(processes):
    data = TensorDataset(torch.arange(23))
    b = 3
    single = list(BatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(5)), processes * b,
                               drop_last=True))
    per_rank = [RankBatchSampler(RandomSampler(data, generator=torch.Generator().manual_seed(5)), b, processes, rank)
                for rank in range(processes)]
    slices = [list(sampler) for sampler in per_rank]
    assert all(len(sampler) == len(single) == 23 // (processes * b) for sampler in per_rank)
    for rank in range(processes):
        assert slices[rank] == [batch[rank * b:(rank + 1) * b] for batch in single]
    assert [[index for rank in range(processes) for index in slices[rank][i]] for i in range(len(single))] == single


def test_the_loaders_draw_the_single_process_order_and_advance_the_generator_alike():
    """What a checkpoint saves (the loader generator) goes on as in one process: resume keeps working."""
    data = TensorDataset(torch.arange(50))
    generators = [torch.Generator().manual_seed(42) for _ in range(3)]
    single = SingleProcess().loader(data, 8, generators[0])
    ranks = [DataParallel(rank, 2, rank).loader(data, 4, generators[rank + 1]) for rank in range(2)]
    for _ in range(2):  # two epochs
        batches = [[x.tolist() for (x,) in loader] for loader in (single, *ranks)]
        assert len(batches[0]) == len(batches[1]) == len(batches[2]) == 6
        assert [a + b for a, b in zip(batches[1], batches[2], strict=True)] == batches[0]
    assert all(torch.equal(g.get_state(), generators[0].get_state()) for g in generators[1:])


# ---------------------------------------------------------------------------------------------------------------
# (c) bad input is one line, before any process starts


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def exit_code(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_nproc_per_node_is_one_line(tmp_path, capsys, value):
    out = tmp_path / "out"
    assert exit_code([*PROBLEM, "--optimizer", "SGD", "--nproc-per-node", value, "--output-dir", str(out)]) == 2
    assert "--nproc-per-node: must be an integer >= 1" in error_line(capsys)
    assert files_in(out) == []


def test_an_optimizer_that_cannot_average_its_curvature_is_refused_in_one_line(tmp_path, capsys):
    pytest.importorskip("pytorch_optimizer")
    out = tmp_path / "out"
    start = time.monotonic()
    assert exit_code([*PROBLEM, "--optimizer", "AdaHessian", "--nproc-per-node", "2", "--output-dir", str(out)]) == 2
    assert "AdaHessian needs the gradient's graph" in error_line(capsys)
    assert time.monotonic() - start < 10  # refused here, no process started
    assert files_in(out) == []


def test_nproc_per_node_under_torchrun_must_match_it(tmp_path, capsys, monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    assert exit_code([*PROBLEM, "--optimizer", "SGD", "--nproc-per-node", "3", "--output-dir", str(out)]) == 2
    assert "torchrun started 2 processes" in error_line(capsys)
    assert files_in(out) == []


# ---------------------------------------------------------------------------------------------------------------
# Slurm: tasks per node (a real cluster is not needed for these; tests/bench/test_slurm.py has the cluster tests)


SWEEP = """
[s]
problems = ["quadratic_deep"]
optimizers = [{ name = "SGD" }]
seeds = [42]
epochs = 2
batch_size = 32
"""


def test_tasks_per_node_goes_to_submitit_and_into_the_runs(tmp_path, monkeypatch):
    assert "tasks_per_node" not in SlurmOptions().parameters("a")
    parameters = SlurmOptions(tasks_per_node=2, cpus_per_task=3).parameters("a")
    assert parameters["tasks_per_node"] == 2
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "slurm", cluster="slurm")
    executor.update_parameters(**parameters)
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit %j", "u")
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --cpus-per-task=3" in script
    from probprec.bench.cli import _build_parser

    args = _build_parser().parse_args(["sweep", "f.toml", "--executor", "slurm", "--tasks-per-node", "2"])
    assert slurm_options(args).tasks_per_node == 2
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)
    spec = load_sweep(path, "s")
    submitted: list = []
    monkeypatch.setattr(SlurmExecutor, "run", lambda self, pending, report: submitted.extend(pending) or [])
    monkeypatch.setattr("probprec.bench.orchestration.check_no_active_jobs", lambda output_dir: None)
    run_sweep(spec, tmp_path / "out", executor="slurm", slurm=SlurmOptions(tasks_per_node=2), echo=lambda _: None)
    assert [r.config.processes for r in submitted] == [2]
    with pytest.raises(ConfigError, match="--tasks-per-node 2 needs --executor slurm"):
        run_processes("local", SlurmOptions(tasks_per_node=2))
    assert prepare_runs(spec, tmp_path / "out")[0].config.processes == 1


_TASK = """
import sys
from probprec.bench.runner import RunConfig
from probprec.bench.slurm_executor import SlurmTask
from probprec.bench.sweeps import SweepRun

config = RunConfig("quadratic_deep", "SGD", epochs=2, batch_size=32, output_dir=sys.argv[1], progress=False,
                   processes=2)
outcome = SlurmTask(threads=1, data_parallel=True)(SweepRun("SGD", config))
print(outcome.status, outcome.reason)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_slurm_tasks_export_the_group_and_train_one_run(tmp_path, tmp_path_factory):
    """Two Slurm tasks of one job, as srun starts them (the variables submitit reads), without a cluster."""
    single = reference(tmp_path_factory, "SGD")
    out = tmp_path / "out"
    port = str(_free_port())
    tasks = []
    for rank in range(2):
        env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2",
               "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "MASTER_PORT": port}
        tasks.append(subprocess.Popen([sys.executable, "-c", _TASK, str(out)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [task.communicate(timeout=300) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs
    assert [stdout.strip() for stdout, _ in outputs] == ["completed None", "completed None"]
    assert_equal_runs(only_result(out), single)


@pytest.mark.slurm
def test_a_sweep_on_slurm_trains_each_run_with_two_tasks(cluster, tmp_path, tmp_path_factory):  # noqa: F811
    """A real job array with --tasks-per-node 2: one run of 2 tasks, equal to one process with the global batch."""
    single = reference(tmp_path_factory, "SGD")
    path = tmp_path / "s.toml"
    path.write_text(SWEEP)
    options = SlurmOptions(time_min=10, cpus_per_task=1, tasks_per_node=2, array_parallelism=2, poll_s=1.0)
    summary = run_sweep(load_sweep(path, "s"), tmp_path / "out", executor="slurm", slurm=options,
                        echo=lambda _: None)
    assert summary.counts == {"completed": 1}, summary.text
    found = sorted((tmp_path / "out" / "quadratic_deep").rglob("*.json"))
    assert len(found) == 1 and found[0].parent.name.endswith("__processes__2")
    assert_equal_runs(json.loads(found[0].read_text()), single)
