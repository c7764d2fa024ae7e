"""Data-parallel estimation under torch.distributed (gloo, 2 processes on CPU): one estimate on every rank.

The ranks of a group must build, from their half batches, the estimate that one process builds from the
whole batch, and stay identical; ranks that disagree must fail loudly (:mod:`probprec.distributed`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

import distributed_workers as workers
from probprec.distributed import Collective

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

# Float64 throughout. The ranks receive bit-identical averages and compute the same operations on them, so
# they agree exactly. One process differs from the pair only in the order of the sums: the mean loss of 16
# examples against the mean of two means of 8 (and the same for the Hessian-vector products), a relative
# difference of a few 1e-16 per step that the step sizes, the eigendecompositions and 40 updates carry
# forward; 1e-10 leaves a factor of about 1e5 for that growth.
TOLERANCE = 1e-10


def launch(target: Any, world: int, folder: Path, *args: Any, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Run ``target(rank, *args)`` in ``world`` spawned processes; return what each wrote."""
    context = mp.start_processes(target, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world} ranks did not finish within {timeout_s} s")
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


def run_pair(tmp_path: Path, settings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return launch(workers.rank_main, 2, tmp_path, 2, str(tmp_path), settings)


def assert_same_run(a: dict[str, Any], b: dict[str, Any], tolerance: float) -> None:
    assert "error" not in a and "error" not in b, (a.get("traceback"), b.get("traceback"))
    for step, (x, y) in enumerate(zip(a["trajectory"], b["trajectory"], strict=True)):
        (size_a, curvatures_a, hvps_a), (size_b, curvatures_b, hvps_b) = x, y
        assert hvps_a == hvps_b, step
        assert (size_a is None) == (size_b is None), step
        if size_a is not None:
            assert size_a == pytest.approx(size_b, rel=tolerance, abs=0), step
        for ca, cb in zip(curvatures_a, curvatures_b, strict=True):
            assert ca == pytest.approx(cb, rel=tolerance, abs=0), step
    for pa, pb in zip(a["parameters"], b["parameters"], strict=True):
        torch.testing.assert_close(pa, pb, rtol=tolerance, atol=0)


@pytest.mark.parametrize("mode", ["manual", "ddp"])
def test_two_ranks_build_the_estimate_of_one_process_with_the_whole_batch(tmp_path: Path, mode: str) -> None:
    ranks = run_pair(tmp_path, [{"mode": mode}, {"mode": mode}])
    single = workers.train(world=1, rank=0)
    assert single["cycles"] >= 2  # two full cycles, with updates after each
    assert single["trajectory"][-1][0] is not None and single["trajectory"][-1][1][0]
    assert_same_run(ranks[0], ranks[1], tolerance=0.0)  # the ranks agree bit for bit
    assert_same_run(ranks[0], single, tolerance=TOLERANCE)


def test_ranks_with_different_parameters_fail_naming_the_rank_and_the_mismatch(tmp_path: Path) -> None:
    ranks = run_pair(tmp_path, [{"seed": 0}, {"seed": 1}])
    for result in ranks:  # every rank raises, so none waits forever for the others
        assert result["error"].startswith("ReplicaMismatchError: ")
        assert "rank 1 differs from rank 0 in parameter sum" in result["error"]
        assert "at the start of cycle 0" in result["error"]


def test_ranks_with_different_hyperparameters_fail_naming_them(tmp_path: Path) -> None:
    ranks = run_pair(tmp_path, [{"noise_floor": 1e-3}, {"noise_floor": 1e-2}])
    for result in ranks:
        assert result["error"].startswith("ReplicaMismatchError: ")
        assert "rank 1 differs from rank 0 in hyperparameters" in result["error"]


def test_ddp_without_no_sync_on_curvature_steps_fails_instead_of_training_silently(tmp_path: Path) -> None:
    # DDP's all-reduce of a gradient built with create_graph=True raises inside backward (torch's message);
    # where the graph got lost without an error, the optimizer's own check names no_sync().
    ranks = run_pair(tmp_path, [{"mode": "ddp-always-sync"}, {"mode": "ddp-always-sync"}])
    for result in ranks:
        assert "error" in result, "DDP without no_sync() trained: the documented usage is not needed"
        assert result["error"].startswith("RuntimeError: ")


def test_a_rank_without_the_graph_is_a_clear_error_on_every_rank(tmp_path: Path) -> None:
    ranks = run_pair(tmp_path, [{"mode": "manual"}, {"mode": "no-graph"}])
    for result in ranks:
        assert "the gradients of 1 of 2 ranks carry no autograd graph" in result["error"]
        assert "model.no_sync()" in result["error"]


def test_sharded_parameters_are_refused(tmp_path: Path) -> None:
    (errors,) = launch(workers.sharded_main, 1, tmp_path, str(tmp_path))
    for kind in ("dtensor", "fsdp"):
        assert "sharded parameters are not supported" in errors[kind], errors[kind]
        assert "DistributedDataParallel" in errors[kind]


def test_a_single_process_communicates_nothing() -> None:
    collective = Collective()
    assert not collective.active and collective.size == 1
    grads = [torch.ones(3)]
    assert collective.average_(grads) is None and torch.equal(grads[0], torch.ones(3))
    value = torch.tensor(2.0)
    assert collective.mean(value) is value
    collective.agree([("anything", float("nan"), True)], "now")  # nothing to compare with: no error
