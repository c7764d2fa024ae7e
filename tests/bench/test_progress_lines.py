"""Progress lines name the setting of each run, and counts agree in number (issue 15, item 19)."""

from __future__ import annotations

import pytest
from sweep_helpers import write_sweep

from probprec.bench.ablation import run_ablation
from probprec.bench.benchmark import run_benchmark
from probprec.bench.demo import run_demo
from probprec.bench.experiment import run_runtime
from probprec.bench.orchestration import run_sweep
from probprec.bench.sweeps import load_sweep
from probprec.bench.tuning import tune

GRID = """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "SGD", grid = { lr = [0.001, 0.01, 0.1] } }, { name = "Adam", label = "adam-b16" }]
seeds = [42]
epochs = 1
batch_size = { two_d_branin = 16 }
"""


def test_every_sweep_progress_line_names_its_setting(tmp_path):
    lines: list[str] = []
    run_sweep(load_sweep(write_sweep(tmp_path / "g.toml", GRID), "s"), tmp_path / "out", workers=1,
              echo=lines.append)
    progress = [line for line in lines if line.startswith("[")]
    assert progress == [
        "[1/4] completed   two_d_branin SGD (epochs=1, batch_size=16, lr=0.001) seed 42",
        "[2/4] completed   two_d_branin SGD (epochs=1, batch_size=16, lr=0.01) seed 42",
        "[3/4] completed   two_d_branin SGD (epochs=1, batch_size=16, lr=0.1) seed 42",
        "[4/4] completed   two_d_branin adam-b16 (epochs=1, batch_size=16) seed 42",
    ]


def test_tune_names_the_setting_of_every_search_run_and_counts_one_seed_as_one(tmp_path):
    lines: list[str] = []
    spec = load_sweep(write_sweep(tmp_path / "g.toml", GRID.replace(', { name = "Adam", label = "adam-b16" }', "")),
                      "s")
    result = tune(spec, tmp_path / "out", seeds=[42], workers=1, echo=lines.append)
    assert result.exit_code == 0
    search = [line for line in lines if line.startswith("[")]
    assert [line.split("(")[1].split(")")[0] for line in search] == [
        "epochs=1, batch_size=16, lr=0.001", "epochs=1, batch_size=16, lr=0.01", "epochs=1, batch_size=16, lr=0.1"]
    assert "step 3 of 3: the chosen settings with seed 42" in lines
    markdown = (tmp_path / "out" / "tuning.md").read_text()
    assert "rerun with 1 seed (42)." in markdown and "Rerun: 1 of 1 seed (1 completed)" in markdown


def test_a_sweep_of_one_run_says_one_run(tmp_path):
    path = write_sweep(tmp_path / "one.toml", GRID.replace("[0.001, 0.01, 0.1]", "[0.01]").replace(
        ', { name = "Adam", label = "adam-b16" }', ""))
    lines: list[str] = []
    summary = run_sweep(load_sweep(path, "s"), tmp_path / "out", workers=1, echo=lines.append)
    assert lines[0] == f"1 run (0 already finished, 1 to run) -> {tmp_path / 'out'}"
    assert summary.text == f"1 run in {tmp_path / 'out'}: 1 completed"
    lines.clear()
    run_sweep(load_sweep(path, "s"), tmp_path / "out", workers=1, echo=lines.append)
    assert lines == [f"1 run (1 already finished, 0 to run) -> {tmp_path / 'out'}",
                     f"nothing to do: the run has its result in {tmp_path / 'out'}"]


class _Header(Exception):
    """Raised by the echo below after the first line: only the header is wanted."""


def _first_line(command, *args, **kwargs) -> str:
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        raise _Header

    with pytest.raises(_Header):
        command(*args, echo=echo, **kwargs)
    return lines[0]


def test_headers_count_in_the_singular_where_there_is_one(tmp_path):
    assert _first_line(run_benchmark, tmp_path, problems=["two_d_branin"], optimizers=["SGD"], seeds=[1]) == (
        f"benchmark: 1 problem x 1 optimizer x 1 seed = 1 run -> {tmp_path}")
    assert _first_line(run_benchmark, tmp_path, problems=["two_d_branin", "quadratic_deep"], optimizers=["SGD"],
                       seeds=[1, 2]) == f"benchmark: 2 problems x 1 optimizer x 2 seeds = 4 runs -> {tmp_path}"
    assert _first_line(run_ablation, tmp_path, seeds=[7]).startswith("ablation (smoke): ")
    assert " x 1 seed = " in _first_line(run_ablation, tmp_path, seeds=[7])
    assert _first_line(run_runtime, "two_d_branin", ["SGD"], repetitions=1, epochs=1, output_dir=tmp_path) == (
        f"runtime: two_d_branin, 1 repetition x 1 optimizer x 1 epoch, 1 torch thread -> {tmp_path}"
        if _threads() == 1 else
        f"runtime: two_d_branin, 1 repetition x 1 optimizer x 1 epoch, {_threads()} torch threads -> {tmp_path}")
    assert ", 1 epoch, seed 0" in _first_line(run_demo, epochs=1, output_dir=tmp_path)


def _threads() -> int:
    from probprec.bench.threads import threads_per_process

    return threads_per_process()
