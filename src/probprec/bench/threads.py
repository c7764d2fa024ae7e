"""How many torch threads a run uses: the one thread policy of every executor, the benchmark and the demo.

Processes that share the cores must not each start one thread per core: ``P`` processes
with ``T`` threads each on ``C`` cores should have ``P x T <= C``.
:func:`threads_per_process` is that policy::

    threads = max(1, cores // processes), at most $OMP_NUM_THREADS when it is set

where ``cores`` are the CPUs this process may use (:func:`available_cores`: its affinity
mask, which Slurm's cgroups, ``taskset`` and ``numactl`` set, bounded by a container's CPU
quota), or the CPUs of a Slurm task (``--cpus-per-task``). With more processes than
cores each process gets one thread. :func:`using_threads` applies a count to torch (and
puts the previous count back afterwards). Every place that runs training sets it
explicitly: the local process pool (per worker), a sweep in this process, Slurm tasks,
``probprec run``, the benchmark, the demo, the ablation and the runtime experiment; a
run's result records the count it ran with (``metadata.environment.torch_threads``).
Results are reproducible bit for bit only under the same thread count (floating-point
sums are split differently across threads).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["available_cores", "threads_per_process", "using_threads"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where the CPU quota of this process's container is read (cgroup v2 ``cpu.max``, or v1 ``cpu/cpu.cfs_*``)."""


def _cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The container's CPU quota in CPUs (``--cpus`` of docker, say), or None when there is none.

    Args:
        root: the cgroup file system (a parameter for the tests).
    """
    try:
        if (root / "cpu.max").exists():  # cgroup v2: "max 100000" or "<quota> <period>"
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_file = root / "cpu" / "cpu.cfs_quota_us"  # cgroup v1: -1 means no quota
        if quota_file.exists():
            quota_us = int(quota_file.read_text())
            period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def available_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may use: its affinity mask, bounded by a container's CPU quota (at least 1).

    Args:
        cgroup_root: the cgroup file system (a parameter for the tests).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def _omp_cap() -> int | None:
    """``$OMP_NUM_THREADS`` when it is a positive integer (the user's own cap), else None."""
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(text) if text.isdigit() and int(text) >= 1 else None


def threads_per_process(processes: int = 1, cores: int | None = None) -> int:
    """The torch thread count of each of ``processes`` processes that share ``cores`` CPUs.

    Args:
        processes: how many processes train at once on these cores (the pool's workers; 1 for one run).
        cores: the CPUs they share (default: :func:`available_cores`; a Slurm task: its ``--cpus-per-task``).

    Returns:
        ``max(1, cores // processes)``, at most ``$OMP_NUM_THREADS`` when that is set.

    Raises:
        ValueError: ``processes`` or ``cores`` is not an integer >= 1.

    For example 2 processes on 8 cores get 4 threads each, 3 get 2 each, and 4 processes on 2 cores get 1 each.
    """
    for name, value in (("processes", processes), ("cores", cores)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    threads = max(1, (available_cores() if cores is None else cores) // processes)
    cap = _omp_cap()
    return threads if cap is None else min(threads, cap)


@contextmanager
def using_threads(count: int) -> Iterator[int]:
    """Run the body with ``count`` torch threads, then put the previous count back.

    Args:
        count: the thread count (from :func:`threads_per_process`).

    Yields:
        ``count``.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)
