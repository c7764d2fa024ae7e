"""Training loops that the data-parallel tests run in spawned processes (one per rank) and in the test itself.

Each rank of a group of ``world`` processes trains on its slice of every global batch (``world * BATCH``
examples); a single process with ``world=1`` trains on the whole global batch. Results go to
``<folder>/rank<r>.pt`` (or an ``error`` entry with the message of what the rank raised).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from probprec import PreconditionedSGD
from probprec.distributed import curvature_context

BATCH = 8
"""Examples per rank and step."""
STEPS = 40
RESTART_AT = 22
"""The step before which the loop starts a second cycle (the first one has ended by then)."""
EXAMPLES = 96
SETTINGS: dict[str, Any] = {"prior_iterations": 4, "num_observations": 3}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(EXAMPLES, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (EXAMPLES,), generator=generator)
    return x, y


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def batches(world: int, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's slice of each global batch of ``world * BATCH`` examples (the same order for any ``world``)."""
    x, y = data()
    order = torch.randperm(EXAMPLES, generator=torch.Generator().manual_seed(5))
    out = []
    for step in range(STEPS):
        start = (step * 2 * BATCH) % EXAMPLES  # global batches of 2 * BATCH: one process of 2 * BATCH, or 2 ranks
        global_batch = order[start: start + 2 * BATCH]
        size = 2 * BATCH // world
        mine = global_batch[rank * size: (rank + 1) * size]
        out.append((x[mine], y[mine]))
    return out


def train(world: int, rank: int, mode: str = "manual", seed: int = 0, **settings: Any) -> dict[str, Any]:
    """Train STEPS steps; return the trajectory of step sizes and curvatures and the final parameters.

    ``mode``: ``"manual"`` (an unwrapped model whose gradients the loop averages on the steps without
    curvature), ``"ddp"`` (DistributedDataParallel, backward inside ``no_sync()`` on curvature steps) or
    ``"ddp-always-sync"`` (DDP without ``no_sync()``: wrong, for the error).
    ``"no-graph"`` (a loop that never builds the graph: wrong, for the error).
    ``"ddp"`` uses :func:`probprec.distributed.curvature_context`.
    """
    net = model(seed)
    optimizer = PreconditionedSGD(net.parameters(), **{**SETTINGS, **settings})
    forward = nn.parallel.DistributedDataParallel(net) if mode.startswith("ddp") else net
    trajectory = []
    for step, (x, y) in enumerate(batches(world, rank)):
        if step == RESTART_AT:
            optimizer.start_estimate()
        graph = optimizer.create_graph
        optimizer.zero_grad(set_to_none=True)
        sync = curvature_context(forward, optimizer) if mode == "ddp" else contextlib.nullcontext()
        with sync:  # the forward pass too, as DDP requires
            loss = nn.functional.cross_entropy(forward(x), y)
            loss.backward(create_graph=graph and mode != "no-graph")
        if mode == "manual" and world > 1 and not graph:
            for p in net.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        optimizer.step()
        log = optimizer.get_log()
        trajectory.append((log["step_sizes"][0], [list(e) for e in log["eigenvalues"]], log["hvp_count"]))
    return {"trajectory": trajectory, "parameters": [p.detach().clone() for p in net.parameters()],
            "cycles": optimizer.get_log()["cycles_completed"]}


def rank_main(rank: int, world: int, folder: str, settings_by_rank: list[dict[str, Any]]) -> None:
    """A spawned rank: join the group, train with this rank's settings, write what happened."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        result = train(world, rank, **settings_by_rank[rank])
    except Exception as error:  # the test reads it
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(folder) / f"rank{rank}.pt")
    _leave()


def _leave() -> None:
    """Exit without the interpreter's finalization, in which gloo's threads that outlive the group have aborted a
    finished process now and then (SIGABRT, "terminate called without an active exception"; the harness's spawned
    processes do the same, probprec.bench.data_parallel): what the test reads is written."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def sharded_main(rank: int, folder: str) -> None:
    """One rank: build the optimizer on FSDP's flat parameters and on DTensor parameters; record the errors."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1,
                            timeout=timedelta(seconds=60))
    errors = {}
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import distribute_tensor

        mesh = init_device_mesh("cpu", (1,))
        weight = nn.Parameter(distribute_tensor(torch.ones(4, 4), mesh))
        errors["dtensor"] = _refusal([weight])
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(nn.Linear(4, 4), device_id=torch.device("cpu"), use_orig_params=False)
        errors["fsdp"] = _refusal(list(wrapped.parameters()))
    finally:
        dist.destroy_process_group()
    torch.save(errors, Path(folder) / "rank0.pt")
    _leave()


def _refusal(params: list[torch.Tensor]) -> str:
    try:
        PreconditionedSGD(params)
    except TypeError as error:
        return str(error)
    return "accepted"
