"""Communication of data-parallel training: bytes per step, PreconditionedSGD against plain DDP SGD.

Two processes (gloo, CPU) train a model of the mnist_mlp shape (784-1000-500-100-10 by default, random
data: the bytes do not depend on the data) wrapped in DistributedDataParallel. Every collective is counted
by wrapping it: DDP's gradient all-reduce through a communication hook (the bytes of each bucket), the
optimizer's own ``all_reduce``/``all_gather`` calls by wrapping those functions. Each step is classified by
what the optimizer did: an estimation step, a check step (an update that measures its step, with
curvature) or a plain update. One process's counts are printed (every rank sends the same).

    python benchmarks/communication.py                 # about a minute on 2 cores
    python benchmarks/communication.py --steps 300 --widths 784 100 10

Expected: a plain update moves exactly what DDP SGD moves (one gradient); an estimation step one gradient
(the optimizer's, in place of DDP's) plus one Hessian-vector product plus a few numbers; a check step one
gradient plus a few numbers.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import tempfile
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from probprec import PreconditionedSGD
from probprec.distributed import curvature_context

BATCH = 64


class Counter:
    """Bytes and calls per kind of step, for the optimizer's collectives and DDP's."""

    def __init__(self) -> None:
        self.kind = "update"
        self.in_ddp_hook = False  # DDP's hook calls dist.all_reduce too: those bytes are DDP's
        self.bytes: collections.Counter[tuple[str, str]] = collections.Counter()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.steps: collections.Counter[str] = collections.Counter()

    def add(self, source: str, tensor: torch.Tensor) -> None:
        if source == "optimizer" and self.in_ddp_hook:
            return
        self.bytes[(self.kind, source)] += tensor.numel() * tensor.element_size()
        self.calls[(self.kind, source)] += 1


def wrap_collectives(counter: Counter) -> None:
    """Count the optimizer's collectives (it calls them through ``torch.distributed``'s module attributes)."""
    all_reduce, all_gather = dist.all_reduce, dist.all_gather

    def counted_all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counter.add("optimizer", tensor)
        return all_reduce(tensor, *args, **kwargs)

    def counted_all_gather(outputs: list[torch.Tensor], tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counter.add("optimizer", tensor)
        return all_gather(outputs, tensor, *args, **kwargs)

    dist.all_reduce, dist.all_gather = counted_all_reduce, counted_all_gather  # type: ignore[assignment]


def ddp_hook(counter: Counter) -> Any:
    """A DDP communication hook: count the bucket, then DDP's own averaging all-reduce."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks real annotations; ours are strings
        counter.add("DDP", bucket.buffer())
        counter.in_ddp_hook = True
        try:
            return allreduce_hook(state, bucket)
        finally:
            counter.in_ddp_hook = False

    return hook


def train(rank: int, world: int, store: str, name: str, widths: list[int], steps: int) -> Counter:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers[:-1])
    counter = Counter()
    model = nn.parallel.DistributedDataParallel(net)
    model.register_comm_hook(None, ddp_hook(counter))
    wrap_collectives(counter)
    optimizer: Any = (PreconditionedSGD(net.parameters()) if name == "PreconditionedSGD"
                      else torch.optim.SGD(net.parameters(), lr=0.01))
    generator = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        x = torch.randn(BATCH, widths[0], generator=generator)
        y = torch.randint(0, widths[-1], (BATCH,), generator=generator)
        graph = bool(getattr(optimizer, "create_graph", False))
        phase = getattr(optimizer, "phase", "optimize")
        counter.kind = "estimation" if phase != "optimize" else ("check" if graph else "update")
        counter.steps[counter.kind] += 1
        optimizer.zero_grad(set_to_none=True)
        with curvature_context(model, optimizer):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward(create_graph=graph)
        optimizer.step()
    dist.destroy_process_group()
    return counter


def worker(rank: int, world: int, store: str, name: str, widths: list[int], steps: int, out: str) -> None:
    torch.set_num_threads(1)
    counter = train(rank, world, store, name, widths, steps)
    if rank == 0:
        torch.save({"bytes": dict(counter.bytes), "calls": dict(counter.calls), "steps": dict(counter.steps)}, out)


def measure(name: str, widths: list[int], steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        out = f"{folder}/counts.pt"
        mp.spawn(worker, args=(2, f"{folder}/store", name, widths, steps, out), nprocs=2)
        return torch.load(out, weights_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (default %(default)s)")
    parser.add_argument("--widths", type=int, nargs="+", default=[784, 1000, 500, 100, 10],
                        help="layer widths of the MLP (default: the mnist_mlp shape)")
    args = parser.parse_args()
    parameters = sum(a * b + b for a, b in itertools.pairwise(args.widths))
    print(f"MLP {'-'.join(map(str, args.widths))}: {parameters:,} parameters, {4 * parameters:,} bytes of gradient "
          f"(float32); 2 ranks, {args.steps} steps, per-rank batch {BATCH}")
    sgd = measure("SGD", args.widths, args.steps)
    sgd_per_step = sum(sgd["bytes"].values()) / sum(sgd["steps"].values())
    print(f"\n{'optimizer':<19}{'step':<12}{'steps':>6}{'DDP bytes':>14}{'own bytes':>14}{'own calls':>10}"
          f"{'total/step':>14}{'x DDP SGD':>10}")
    for name, counts in (("SGD (DDP)", sgd), ("PreconditionedSGD", measure("PreconditionedSGD", args.widths,
                                                                            args.steps))):
        for kind, steps in sorted(counts["steps"].items()):
            ddp = counts["bytes"].get((kind, "DDP"), 0) / steps
            own = counts["bytes"].get((kind, "optimizer"), 0) / steps
            calls = counts["calls"].get((kind, "optimizer"), 0) / steps
            print(f"{name:<19}{kind:<12}{steps:>6}{ddp:>14,.0f}{own:>14,.0f}{calls:>10.1f}{ddp + own:>14,.0f}"
                  f"{(ddp + own) / sgd_per_step:>10.3f}")
        total = sum(counts["bytes"].values()) / sum(counts["steps"].values())
        print(f"{name:<19}{'all':<12}{sum(counts['steps'].values()):>6}{'':>38}{total:>14,.0f}"
              f"{total / sgd_per_step:>10.3f}")


if __name__ == "__main__":
    main()
