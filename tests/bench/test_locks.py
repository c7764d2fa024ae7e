"""One process at a time per run and per sweep folder (issue 15, item 16), shown with real processes.

Each test holds a run still with the pause hook (the run waits after a checkpoint until the test removes its
marker), so the competing process certainly meets a run in progress; nothing depends on timing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from run_control import cli, pause_env, paused, release, wait_for
from sweep_helpers import per_run, results, write_sweep

from probprec.bench.locks import LockHeldError, holder_of, holding, run_lock_path
from probprec.bench.orchestration import run_sweep
from probprec.bench.runner import RunConfig, run, run_folder
from probprec.bench.sweeps import load_sweep

RUN = ["run", "quadratic_deep", "--optimizer", "SGD", "--epochs", "4", "--no-progress"]
SWEEP = """
[s]
problems = ["quadratic_deep"]
optimizers = [{ name = "SGD" }]
seeds = [42, 43]
epochs = 4
"""


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its bytes and permissions."""
    return {p: (p.read_bytes(), p.stat().st_mode) for p in sorted(folder.rglob("*")) if p.is_file()}


def start_paused(tmp_path, *args: str, epoch: int = 2) -> tuple[subprocess.Popen, Path]:
    """``probprec ARGS`` in another process, once its (first) run waits after the checkpoint of ``epoch``."""
    markers = tmp_path / f"markers-{len(list(tmp_path.glob('markers-*')))}"
    process = cli(*args, env=pause_env(epoch, markers))
    [marker] = wait_for(lambda: list(paused(markers)), f"a run of `probprec {' '.join(args)}` waits", process=process)
    return process, marker


def refused(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probprec.bench.cli", *args], capture_output=True, text=True,
                          timeout=240)


def holder_words(process: subprocess.Popen) -> str:
    return f"process {process.pid} on {socket.gethostname()}"


def test_a_second_identical_run_is_refused_in_one_line_and_changes_nothing(tmp_path):
    out = tmp_path / "out"
    first, marker = start_paused(tmp_path, *RUN, "--output-dir", str(out))
    before = snapshot(out)
    assert any(p.name == ".checkpoint__random_seed__42.pt" for p in before)

    second = refused(*RUN, "--output-dir", str(out))
    assert second.returncode == 2, second.stderr
    assert len(second.stderr.splitlines()) == 1 and second.stdout == ""
    assert "quadratic_deep SGD seed 42 is already running in " + holder_words(first) in second.stderr
    assert snapshot(out) == before  # neither the checkpoint, nor the lock, nor a result was touched

    release(marker)
    assert first.wait(timeout=240) == 0, first.communicate()
    [(path, record)] = results(out)
    assert record["status"] == "completed" and record["metadata"]["resumed_at_epochs"] == []
    leftovers = [p.name for p in out.rglob("*") if p.is_file() and p != path]
    assert leftovers == []  # no checkpoint, no lock file, no temporary file
    again = refused(*RUN, "--output-dir", str(out))
    assert again.returncode == 0 and again.stdout.startswith("skipped")
    assert len(results(out)) == 1


def test_a_run_in_progress_is_not_run_again_by_a_sweep_and_the_sweep_finishes_the_rest(tmp_path):
    out = tmp_path / "out"
    holder, marker = start_paused(tmp_path, *RUN, "--output-dir", str(out))
    lines: list[str] = []
    summary = run_sweep(load_sweep(write_sweep(tmp_path / "s.toml", SWEEP), "s"), out, workers=1, echo=lines.append)
    assert summary.counts == {"completed": 1, "failed": 1}, summary.text
    [busy] = summary.failures
    assert busy.seed == 42 and busy.reason.startswith("not run here: ")
    assert holder_words(holder) in busy.reason

    release(marker)
    assert holder.wait(timeout=240) == 0
    again = run_sweep(load_sweep(tmp_path / "s.toml", "s"), out, workers=1, echo=lines.append)
    assert again.counts == {"skipped": 2}
    assert set(per_run(out).values()) == {1} and len(per_run(out)) == 2  # each run once, no duplicate
    assert {r["status"] for _, r in results(out)} == {"completed"}


def test_a_run_of_a_running_sweep_is_refused_naming_the_sweep(tmp_path):
    out = tmp_path / "out"
    sweep_file = write_sweep(tmp_path / "s.toml", SWEEP.replace("seeds = [42, 43]", "seeds = [42]"))
    sweep, marker = start_paused(tmp_path, "sweep", str(sweep_file), "--scale", "s", "--workers", "1",
                                 "--output-dir", str(out))
    before = snapshot(out)
    second = refused(*RUN, "--output-dir", str(out))
    assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr
    assert holder_words(sweep) in second.stderr  # a sweep with one worker runs in its own process
    assert snapshot(out) == before

    with pytest.raises(LockHeldError, match=rf"another sweep \({holder_words(sweep)}, since .*\) is running into"):
        run_sweep(load_sweep(sweep_file, "s"), out, workers=1, echo=lambda _: None)
    assert snapshot(out) == before

    release(marker)
    assert sweep.wait(timeout=240) == 0, sweep.communicate()
    assert [r["status"] for _, r in results(out)] == ["completed"]


def test_a_lock_file_left_by_a_killed_run_blocks_nothing(tmp_path):
    out = tmp_path / "out"
    killed, _ = start_paused(tmp_path, *RUN, "--output-dir", str(out))
    config = RunConfig("quadratic_deep", "SGD", epochs=4, output_dir=str(out), progress=False)
    lock = run_lock_path(run_folder(config), 42)
    assert holder_of(lock).startswith(holder_words(killed))
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert lock.exists() and holder_of(lock) is None  # the file stays behind; the lock went with the process

    resumed = run(config)
    assert resumed.status == "completed" and resumed.record["metadata"]["resumed_at_epochs"] == [2]
    assert not lock.exists()


def test_the_lock_refuses_a_second_holder_in_the_same_process_and_is_removed_after_use(tmp_path):
    path = tmp_path / "deep" / "x.lock"
    with holding(path, "busy: {holder}"):
        assert path.read_text().startswith(f"process {os.getpid()} on {socket.gethostname()}, since ")
        with pytest.raises(LockHeldError, match=rf"^busy: process {os.getpid()} on ") as info:
            with holding(path, "busy: {holder}"):
                pass  # pragma: no cover - refused
        assert info.value.path == path and info.value.holder == holder_of(path)
    assert not path.exists() and holder_of(path) is None
    with holding(path, "busy: {holder}"):  # free again
        assert path.exists()


def test_checkpoint_temporary_files_have_names_of_their_own(tmp_path):
    config = RunConfig("quadratic_deep", "SGD", epochs=3, output_dir=str(tmp_path), progress=False)
    folder = run_folder(config)
    foreign = folder / ".checkpoint__random_seed__42.pt.tmp"  # the one fixed name every run used to share
    foreign.mkdir(parents=True)
    (foreign / "keep").write_text("someone else's")
    result = run(config)
    assert result.status == "completed", result.record["status_reason"]
    assert (foreign / "keep").read_text() == "someone else's"
    assert sorted(p.name for p in folder.iterdir()) == sorted([foreign.name, result.path.name])
    assert json.loads(result.path.read_text())["epochs_completed"] == 3
