"""Sweeps through real Slurm job arrays (issue 6, acceptance 2).

These tests need a Slurm cluster: `.ci/slurm-up.sh` starts a single-node one (and `.ci/run` calls it).
Without `sbatch` on PATH, or when `sinfo` fails, they skip and say why; nothing is faked.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import threading

import pytest
from run_control import paused, release, wait_for
from sweep_helpers import per_run, results, write_sweep

from probprec.bench._pause import PAUSE_DIR_VARIABLE, PAUSE_EPOCH_VARIABLE
from probprec.bench.orchestration import run_sweep
from probprec.bench.slurm_executor import SlurmOptions
from probprec.bench.sweeps import load_sweep
from probprec.bench.threads import threads_per_process

pytestmark = pytest.mark.slurm

METRICS = ("train_losses", "valid_losses", "test_losses", "train_accuracies", "valid_accuracies", "test_accuracies",
           "minibatch_train_losses")

SWEEP = """
[s]
problems = ["digits_mlp"]
optimizers = [{ name = "PreconditionedSGD" }, { name = "SGD" }]
seeds = [42, 43]
epochs = 2
"""


def _why_not() -> str | None:
    """Why no Slurm cluster can be used here, or None."""
    if importlib.util.find_spec("submitit") is None:
        return "submitit is not installed (pip install -e '.[bench]')"
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH: no Slurm here (.ci/slurm-up.sh starts a single-node cluster)"
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo failed: {error}"
    if out.returncode != 0:
        return f"the Slurm cluster is not up (sinfo: {out.stderr.strip() or out.returncode})"
    if not any(state.startswith(("idle", "mix", "alloc")) for state in out.stdout.split()):
        return f"no node of the Slurm cluster is up (sinfo: {out.stdout.strip()})"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _why_not()
    if reason:
        pytest.skip(reason)


def _metrics(out) -> dict:
    return {(r["testproblem"], r["optimizer_name"], r["random_seed"]): {k: r.get(k) for k in METRICS}
            for _, r in results(out)}


def _threads(out) -> set[int]:
    return {r["metadata"]["environment"]["torch_threads"] for _, r in results(out)}


def _options(**overrides) -> SlurmOptions:
    return SlurmOptions(**{"time_min": 30, "cpus_per_task": 1, "array_parallelism": 2, "poll_s": 1.0, **overrides})


def test_slurm_job_arrays_give_the_local_results(cluster, tmp_path):
    """Like with like: the Slurm tasks get as many torch threads as each of the two local workers."""
    spec = load_sweep(write_sweep(tmp_path / "s.toml", SWEEP), "s")
    local = run_sweep(spec, tmp_path / "local", workers=2, echo=lambda _: None)
    assert local.counts == {"completed": 4}

    lines: list[str] = []
    out = tmp_path / "slurm"
    options = _options(cpus_per_task=threads_per_process(2))
    summary = run_sweep(spec, out, executor="slurm", slurm=options, echo=lines.append)
    assert summary.counts == {"completed": 4}, summary.text
    submitted = [line for line in lines if line.startswith("submitted 4 runs as Slurm job array")]
    assert submitted, lines
    array = submitted[0].split("job array ")[1].split()[0]
    assert sorted(p.name for p in (out / ".slurm").rglob(f"{array}_*_log.out")) == [
        f"{array}_{i}_0_log.out" for i in range(4)]  # one array task per run, with its log
    assert set(per_run(out).values()) == {1}
    assert _threads(out) == _threads(tmp_path / "local") == {threads_per_process(2)}
    assert _metrics(out) == _metrics(tmp_path / "local")  # the same arithmetic gives the same numbers

    lines.clear()
    again = run_sweep(spec, out, executor="slurm", slurm=options, echo=lines.append)
    assert again.counts == {"skipped": 4} and lines[-1] == f"nothing to do: all 4 runs have results in {out}"


PREEMPT = """
[s]
problems = ["digits_mlp"]
optimizers = [{ name = "SGD" }]
seeds = [42]
epochs = 4
"""


def _preempt_when_paused(out, markers, seen: list[str]) -> None:
    """Once the task waits after its checkpoint of epoch 2, send it the signal Slurm sends before its time limit.

    Whatever happens, the waiting task is let go on (a failure shows as an empty ``seen``, not as a hang).
    """
    try:
        wait_for(lambda: paused(markers), "the Slurm task waits after its checkpoint of epoch 2")
        command = ["squeue", "--noheader", "--array", "--states=R", "--format=%i", "--name", f"probprec-{out.name}"]
        [job] = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        seen.append(job)
    finally:
        if not seen:
            for marker in paused(markers):
                release(marker)


def test_a_preempted_task_is_requeued_and_resumes_from_its_checkpoint(cluster, tmp_path, monkeypatch):
    """The task is certainly running (it waits after a checkpoint) when preempted; compared with an uninterrupted
    Slurm run under the same settings, so that only resumption can make a difference."""
    spec = load_sweep(write_sweep(tmp_path / "p.toml", PREEMPT), "s")
    out, markers = tmp_path / "preempted", tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(PAUSE_EPOCH_VARIABLE, "2")  # sbatch passes this process's environment to the task
    monkeypatch.setenv(PAUSE_DIR_VARIABLE, str(markers))
    seen: list[str] = []
    preempter = threading.Thread(target=_preempt_when_paused, args=(out, markers, seen), daemon=True)
    preempter.start()
    summary = run_sweep(spec, out, executor="slurm", slurm=_options(), echo=lambda _: None)
    preempter.join(timeout=60)
    assert seen, "the task could not be preempted"
    assert summary.counts == {"completed": 1}, summary.text
    ((_, record),) = results(out)
    assert record["metadata"]["resumed_at_epochs"] == [2], "the requeued task did not resume from its checkpoint"
    logs = "".join(p.read_text() for p in (out / ".slurm").rglob("*_log.err"))
    assert "Requeued" in logs or "requeue" in logs.lower()

    monkeypatch.delenv(PAUSE_EPOCH_VARIABLE)
    uninterrupted = run_sweep(spec, tmp_path / "uninterrupted", executor="slurm", slurm=_options(),
                              echo=lambda _: None)
    assert uninterrupted.counts == {"completed": 1}
    ((_, reference),) = results(tmp_path / "uninterrupted")
    assert reference["metadata"]["resumed_at_epochs"] == []
    assert _threads(out) == _threads(tmp_path / "uninterrupted") == {1}
    for name in METRICS:
        assert record.get(name) == reference.get(name), name
