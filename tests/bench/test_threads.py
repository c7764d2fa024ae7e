"""One thread policy for every place that trains (issue 15, item 20): processes x threads <= cores."""

from __future__ import annotations

import json
import os

import pytest
import torch
from sweep_helpers import results, write_sweep

from probprec.bench import demo, runner
from probprec.bench.benchmark import run_benchmark
from probprec.bench.cli import main
from probprec.bench.environment import environment
from probprec.bench.experiment import run_runtime
from probprec.bench.orchestration import run_sweep
from probprec.bench.runner import RunConfig, run
from probprec.bench.sweeps import load_sweep
from probprec.bench.threads import available_cores, threads_per_process, using_threads

ODD = 5
"""A thread count that the policy never gives on the test machines' cores (set beforehand to be overridden)."""


@pytest.fixture
def threads_seen(monkeypatch) -> list[int]:
    """torch's thread count when each run in this process starts training (seen from inside the runner)."""
    seen = []
    original = runner._seed_everything  # called once per run, right before the model is built

    def spy(seed: int) -> None:
        seen.append(torch.get_num_threads())
        original(seed)

    monkeypatch.setattr(runner, "_seed_everything", spy)
    return seen


@pytest.fixture
def odd_threads(monkeypatch):
    """torch set to ODD threads for the test (as an oversubscribed default would be), restored afterwards."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(ODD)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(("processes", "cores", "expected"), [(1, 2, 2), (2, 2, 1), (2, 8, 4), (3, 8, 2),
                                                               (4, 2, 1), (16, 2, 1), (1, 1, 1)])
def test_processes_share_the_cores(monkeypatch, processes, cores, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_process(processes, cores=cores) == expected
    assert processes * expected <= cores or expected == 1


def test_omp_num_threads_caps_the_policy_and_the_default_is_the_available_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_process(1, cores=8) == 3 and threads_per_process(4, cores=8) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert threads_per_process(1, cores=8) == 8
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads_per_process() == available_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        threads_per_process(bad)
    with pytest.raises(ValueError, match="cores must be an integer >= 1"):
        threads_per_process(1, cores=bad)


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "150000 100000\n"}, 1),             # cgroup v2, docker --cpus=1.5
    ({"cpu.max": "max 100000\n"}, None),             # v2, no quota
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "50000\n"}, 2),   # v1, 2 CPUs
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
    ({"cpu.max": "garbage"}, None),
    ({}, None),
])
def test_a_container_quota_bounds_the_available_cores(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0))
    assert available_cores(cgroup_root=tmp_path) == (affinity if expected is None else min(affinity, expected))


def test_using_threads_puts_the_previous_count_back(odd_threads):
    with using_threads(1) as count:
        assert count == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == ODD
    with pytest.raises(RuntimeError), using_threads(2):
        raise RuntimeError
    assert torch.get_num_threads() == ODD


SWEEP = """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "SGD" }]
seeds = [1, 2]
epochs = 1
"""


def _recorded_threads(out) -> list[int]:
    return [record["metadata"]["environment"]["torch_threads"] for _, record in results(out)]


def test_results_record_the_thread_count_they_ran_with(tmp_path, odd_threads):
    assert environment()["torch_threads"] == ODD
    with using_threads(1):
        assert environment()["torch_threads"] == 1
        record = run(RunConfig("two_d_branin", "SGD", epochs=1, output_dir=str(tmp_path), progress=False)).record
    assert record["metadata"]["environment"]["torch_threads"] == 1


def test_a_sweep_in_this_process_uses_the_policy_and_restores_the_callers_setting(tmp_path, odd_threads,
                                                                                  threads_seen):
    spec = load_sweep(write_sweep(tmp_path / "s.toml", SWEEP), "s")
    run_sweep(spec, tmp_path / "here", workers=1, echo=lambda _: None)
    assert threads_seen == [threads_per_process(1)] * 2
    assert _recorded_threads(tmp_path / "here") == [threads_per_process(1)] * 2
    assert torch.get_num_threads() == ODD


def test_each_pool_worker_gets_its_share_of_the_cores(tmp_path, odd_threads):
    spec = load_sweep(write_sweep(tmp_path / "s.toml", SWEEP), "s")
    run_sweep(spec, tmp_path / "pool", workers=2, echo=lambda _: None)
    assert _recorded_threads(tmp_path / "pool") == [threads_per_process(2)] * 2
    assert torch.get_num_threads() == ODD


def test_probprec_run_uses_the_policy(tmp_path, odd_threads, threads_seen, capsys):
    assert main(["run", "two_d_branin", "--optimizer", "SGD", "--epochs", "1", "--no-progress",
                 "--output-dir", str(tmp_path)]) == 0
    assert threads_seen == [threads_per_process(1)]
    assert _recorded_threads(tmp_path) == [threads_per_process(1)]


def test_the_demo_trains_with_the_policy(tmp_path, odd_threads, monkeypatch):
    seen = []
    original = demo.train

    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(demo, "train", recording)
    demo.run_demo(epochs=1, output_dir=tmp_path, echo=lambda _: None)
    assert seen == [threads_per_process(1)] * 2
    assert torch.get_num_threads() == ODD
    assert len(json.loads((tmp_path / "demo.json").read_text())) == 2


def test_the_benchmark_and_the_runtime_experiment_train_with_the_policy(tmp_path, odd_threads, threads_seen):
    lines: list[str] = []
    [result] = run_benchmark(tmp_path / "bench", problems=["two_d_branin"], optimizers=["SGD"], seeds=[1], quick=True,
                             progress=False, echo=lines.append)
    assert result.record["metadata"]["environment"]["torch_threads"] == threads_per_process(1)
    assert torch.get_num_threads() == ODD
    run_runtime("two_d_branin", ["Adam"], repetitions=1, epochs=1, output_dir=tmp_path / "runtime",
                echo=lines.append)
    assert threads_seen == [threads_per_process(1)] * 3
    assert _recorded_threads(tmp_path / "runtime" / "runs") == [threads_per_process(1)] * 2
    assert torch.get_num_threads() == ODD
