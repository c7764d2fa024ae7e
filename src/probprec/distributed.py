r"""Data-parallel estimation: one estimate, the same on every rank, from the global minibatch.

Under ``torch.distributed`` each of the :math:`R` ranks of a process group computes the gradient
:math:`g_r` and the Hessian-vector products :math:`H_r v` of its own minibatch :math:`B_r`. The
estimate of a cycle must be built from the global minibatch :math:`B = \bigcup_r B_r` (equal sizes), whose
mean loss has

.. math::

    g_B = \frac{1}{R} \sum_r g_r, \qquad H_B v = \frac{1}{R} \sum_r H_r v ,

because gradients and Hessian-vector products are linear in the loss. The optimizer averages both on
every step that needs curvature (an estimation step or a check step, exactly the steps where
``optimizer.create_graph`` is true) and then computes every statistic (step sizes, Gram matrices, noise,
the check step's ratio) from the averaged vectors, so every rank builds the estimate that one process would
build from the concatenated batch. Steps without curvature communicate nothing: the gradients arrive
averaged (by ``DistributedDataParallel`` or by the user).

:class:`Collective` is the optimizer's only access to ``torch.distributed``: bucketed averaging (one
``all_reduce`` per dtype and device for a whole list of tensors) and :meth:`Collective.agree`, the
consistency check that compares a few numbers across ranks and raises :class:`ReplicaMismatchError`,
naming the rank and what differs, instead of letting replicas drift apart.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, cast

import torch
from torch import Tensor

__all__ = ["Collective", "ReplicaMismatchError", "curvature_context", "hyperparameter_facts", "is_sharded",
           "parameter_facts"]

RELATIVE_TOLERANCE = 1e-6
"""How far a computed number (parameter checksums, step sizes, curvatures) may differ between ranks.

On one kind of device the ranks compute it from bit-identical inputs and agree exactly; the tolerance
leaves room for kernels that are not bit-reproducible (atomics on GPUs), far below any real disagreement
(different parameters or hyperparameters change these numbers at the first significant digit)."""


class ReplicaMismatchError(RuntimeError):
    """The ranks of a data-parallel group hold different parameters, hyperparameters or progress."""


def is_sharded(p: Tensor) -> bool:
    """Whether ``p`` is a shard of a parameter (FSDP's flat parameters, a ``DTensor``), which is refused."""
    if getattr(p, "_is_flat_param", False):
        return True
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without distributed support
        return False
    return isinstance(p, DTensor)


def curvature_context(model: torch.nn.Module, optimizer: Any) -> AbstractContextManager[Any]:
    """The context for one step's forward and backward pass of a ``DistributedDataParallel`` model.

    ``model.no_sync()`` when the optimizer needs curvature at the next step (``optimizer.create_graph``):
    the optimizer then averages the gradients itself and keeps each rank's graph, which DDP's all-reduce
    would drop; otherwise (and for a model that is not DDP-wrapped) a context that does nothing, so DDP
    averages as usual. Enter it before the forward pass, as ``no_sync()`` requires::

        with curvature_context(model, optimizer):
            loss = criterion(model(x), y)
            loss.backward(create_graph=optimizer.create_graph)
        optimizer.step()
    """
    no_sync = getattr(model, "no_sync", None)
    if no_sync is not None and getattr(optimizer, "create_graph", False):
        return cast(AbstractContextManager[Any], no_sync())
    return nullcontext()


def _available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Collective:
    """Averages and comparisons across a process group; a single process (no group) does nothing.

    Args:
        process_group: the data-parallel group; None: the default (world) group when
            ``torch.distributed`` is initialised, else none.
    """

    def __init__(self, process_group: Any = None) -> None:
        if process_group is None and _available():
            process_group = torch.distributed.group.WORLD
        self.group = process_group
        self.size = 1 if process_group is None else torch.distributed.get_world_size(process_group)
        self.rank = 0 if process_group is None else torch.distributed.get_rank(process_group)

    @property
    def active(self) -> bool:
        """Whether there are other ranks to agree with."""
        return self.size > 1

    def average_(self, tensors: Sequence[Tensor], extras: Tensor | None = None) -> Tensor | None:
        """Replace each tensor by its mean over the ranks, in place: one ``all_reduce`` per dtype and device.

        ``extras`` (a few numbers) travel in the first bucket, in its dtype, instead of a call of their own;
        their sums over the ranks are returned.
        """
        if not self.active:
            return extras
        buckets: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
        for t in tensors:
            buckets.setdefault((t.dtype, t.device), []).append(t)
        if not buckets and extras is not None:  # the extras alone
            alone = extras.clone()
            torch.distributed.all_reduce(alone, group=self.group)
            return alone
        summed: Tensor | None = None
        for index, members in enumerate(buckets.values()):
            carried = extras if index == 0 else None
            parts = [t.reshape(-1) for t in members] + ([] if carried is None else [carried.to(members[0])])
            flat = torch.cat(parts)
            torch.distributed.all_reduce(flat, group=self.group)
            if carried is not None:
                summed = flat[flat.numel() - carried.numel():].to(carried, copy=True)
            flat.div_(self.size)
            offset = 0
            for t in members:
                t.copy_(flat[offset: offset + t.numel()].view_as(t))
                offset += t.numel()
        return summed

    def average_gradients(self, params: Sequence[Tensor], loss: Any) -> tuple[dict[Tensor, Tensor], Any]:
        """Average the gradients of a curvature step across the ranks, keeping each rank's own graph.

        Each ``p.grad`` becomes the (detached) mean gradient :math:`g_B`; the returned map holds the rank's own
        gradient with its autograd graph, which the Hessian-vector products differentiate. The loss (for the
        finiteness check) is averaged in the same call.

        Returns:
            The graphs by parameter and the mean loss (None if ``loss`` is None).

        Raises:
            RuntimeError: on every rank, if some rank's gradients carry no graph.
        """
        graphs = {p: p.grad for p in params if p.grad is not None}
        with_graph = any(g.requires_grad for g in graphs.values())
        extras = torch.tensor([float(with_graph), 0.0 if loss is None else float(loss)], dtype=torch.float64)
        means = [g.detach().clone() for g in graphs.values()]
        summed = self.average_(means, extras)
        assert summed is not None
        ranks_with_graph = round(float(summed[0]))
        if ranks_with_graph < self.size:
            raise RuntimeError(
                f"Preconditioner needs curvature at this step, but the gradients of {self.size - ranks_with_graph} "
                f"of {self.size} ranks carry no autograd graph: call loss.backward(create_graph="
                "optimizer.create_graph) on every rank, and with DistributedDataParallel inside model.no_sync() "
                "whenever optimizer.create_graph is true (DDP's own all-reduce drops the graph)"
            )
        for p, mean in zip(graphs, means, strict=True):
            p.grad = mean
        return graphs, None if loss is None else summed[1] / self.size

    def mean(self, value: Tensor) -> Tensor:
        """The mean over the ranks of a small tensor (a new tensor; ``value`` itself when alone)."""
        if not self.active:
            return value
        total = value.detach().clone()
        torch.distributed.all_reduce(total, group=self.group)
        return total / self.size

    def agree(self, facts: Sequence[tuple[str, float, bool]], when: str) -> None:
        """Check that every rank holds the same ``facts``; raise on every rank if one differs.

        Args:
            facts: ``(name, value, exact)``: a value that must be equal (``exact``: hashes, counters) or
                equal within :data:`RELATIVE_TOLERANCE` (computed checksums); NaN equals NaN.
            when: when the check runs, for the message (``"after cycle 3"``).

        Raises:
            ReplicaMismatchError: naming the first rank that differs from rank 0 and each differing fact.
        """
        if not self.active:
            return
        mine = torch.tensor([value for _, value, _ in facts], dtype=torch.float64)
        device = _collective_device(self.group)
        gathered = [torch.empty_like(mine, device=device) for _ in range(self.size)]
        torch.distributed.all_gather(gathered, mine.to(device), group=self.group)
        table = [g.cpu().tolist() for g in gathered]
        for rank in range(1, self.size):
            differing = [f"{name} ({table[rank][i]!r} on rank {rank}, {table[0][i]!r} on rank 0)"
                         for i, (name, _, exact) in enumerate(facts) if not _same(table[rank][i], table[0][i], exact)]
            if differing:
                raise ReplicaMismatchError(
                    f"Preconditioner: the ranks of the data-parallel group disagree {when}: rank {rank} differs "
                    f"from rank 0 in {'; '.join(differing)}. Every rank must start from the same parameters, use "
                    "the same hyperparameters and call step() equally often; with DistributedDataParallel, run "
                    "backward inside model.no_sync() exactly when optimizer.create_graph is true"
                )


def _same(a: float, b: float, exact: bool) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if exact:
        return a == b
    return abs(a - b) <= RELATIVE_TOLERANCE * max(abs(a), abs(b))


def _collective_device(group: Any) -> torch.device:
    """Where the group's backend wants small tensors: the current GPU for NCCL, else the CPU."""
    backend = torch.distributed.get_backend(group)
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def parameter_facts(params: Sequence[Tensor]) -> list[tuple[str, float, bool]]:
    """Checksums of the parameters (float64 sum and norm of all entries): equal on replicas that agree."""
    if not params:
        return []
    total = torch.stack([p.detach().sum(dtype=torch.float64).cpu() for p in params]).sum()
    norm = torch.stack([torch.linalg.vector_norm(p.detach(), dtype=torch.float64).cpu() for p in params]).norm()
    return [("parameter sum", float(total), False), ("parameter norm", float(norm), False)]


def hyperparameter_facts(config: Any, groups: Sequence[dict[str, Any]]) -> list[tuple[str, float, bool]]:
    """A CRC-32 of the configuration and of each group's hyperparameters (its values but the parameters)."""
    values = [{key: value for key, value in group.items() if key not in ("params", "step_size")} for group in groups]
    return [("hyperparameters", float(zlib.crc32(repr((config, values)).encode())), True)]
