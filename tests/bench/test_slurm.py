"""Sweeps through real Slurm job arrays (issue 6, acceptance 2).

These tests need a Slurm cluster: `.ci/slurm-up.sh` starts a single-node one (and `.ci/run` calls it).
Without `sbatch` on PATH, or when `sinfo` fails, they skip and say why; nothing is faked.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import threading
import time

import pytest
from sweep_helpers import per_run, results, write_sweep

from probprec.bench.executors import SlurmOptions, run_sweep
from probprec.bench.sweeps import load_sweep

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


def _close(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def _options(**overrides) -> SlurmOptions:
    return SlurmOptions(**{"time_min": 30, "cpus_per_task": 1, "array_parallelism": 2, "poll_s": 1.0, **overrides})


def test_slurm_job_arrays_give_the_local_results(cluster, tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "s.toml", SWEEP), "s")
    local = run_sweep(spec, tmp_path / "local", workers=2, echo=lambda _: None)  # one torch thread per run
    assert local.counts == {"completed": 4}

    lines: list[str] = []
    out = tmp_path / "slurm"
    summary = run_sweep(spec, out, executor="slurm", slurm=_options(), echo=lines.append)
    assert summary.counts == {"completed": 4}, summary.text
    submitted = [line for line in lines if line.startswith("submitted 4 runs as Slurm job array")]
    assert submitted, lines
    array = submitted[0].split("job array ")[1].split()[0]
    assert sorted(p.name for p in (out / ".slurm").rglob(f"{array}_*_log.out")) == [
        f"{array}_{i}_0_log.out" for i in range(4)]  # one array task per run, with its log
    assert set(per_run(out).values()) == {1}

    slurm_metrics, local_metrics = _metrics(out), _metrics(tmp_path / "local")
    assert slurm_metrics.keys() == local_metrics.keys() and len(slurm_metrics) == 4
    for key, values in local_metrics.items():
        for name, value in values.items():
            assert _close(slurm_metrics[key][name], value), (key, name)

    lines.clear()
    again = run_sweep(spec, out, executor="slurm", slurm=_options(), echo=lines.append)
    assert again.counts == {"skipped": 4} and lines[-1] == f"nothing to do: all 4 runs have results in {out}"


PREEMPT = """
[s]
problems = ["digits_mlp"]
optimizers = [{ name = "SGD" }]
seeds = [42]
epochs = 30
"""


def _preempt_once(out, seen: list[str]) -> None:
    """Send the task the signal Slurm sends before its time limit, once it has a checkpoint."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if list(out.rglob(".checkpoint__random_seed__42.pt")):
            command = ["squeue", "--noheader", "--array", "--format=%i %t", "--name", f"probprec-{out.name}"]
            jobs = subprocess.run(command, capture_output=True, text=True).stdout.split("\n")
            running = [line.split()[0] for line in jobs if line.strip().endswith(" R")]
            if running:
                subprocess.run(["scancel", "--signal=USR2", running[0]], check=True)
                seen.append(running[0])
                return
        time.sleep(0.2)


def test_a_preempted_task_is_requeued_and_resumes_from_its_checkpoint(cluster, tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "p.toml", PREEMPT), "s")
    out = tmp_path / "preempted"
    seen: list[str] = []
    preempter = threading.Thread(target=_preempt_once, args=(out, seen), daemon=True)
    preempter.start()
    summary = run_sweep(spec, out, executor="slurm", slurm=_options(), echo=lambda _: None)
    preempter.join(timeout=5)
    assert seen, "the task finished before it could be preempted"
    assert summary.counts == {"completed": 1}, summary.text
    ((_, record),) = results(out)
    assert record["metadata"]["resumed_at_epochs"], "the requeued task started again from scratch"
    logs = "".join(p.read_text() for p in (out / ".slurm").rglob("*_log.err"))
    assert "Requeued" in logs or "requeue" in logs.lower()

    local = run_sweep(spec, tmp_path / "local", workers=2, echo=lambda _: None)
    assert local.counts == {"completed": 1}
    ((_, uninterrupted),) = results(tmp_path / "local")
    for name in METRICS:
        assert _close(record.get(name), uninterrupted.get(name)), name
