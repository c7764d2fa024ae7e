"""
Hugging Face Accelerate
=======================

An :class:`accelerate.Accelerator` loop: ``accelerator.prepare`` wraps the model, the optimizer and the
data loader, and ``accelerator.backward`` passes its keywords on to ``loss.backward``, so the one changed
line is ``accelerator.backward(loss, create_graph=optimizer.create_graph)``. Keep the reference to the
:class:`~probprec.PreconditionedSGD` itself: the prepared optimizer is Accelerate's wrapper around it.

:func:`probprec.distributed.curvature_context` makes the same loop right under ``accelerate launch``
on several processes: there the prepared model is a ``DistributedDataParallel``, and the steps that need
curvature run inside its ``no_sync()`` (the optimizer averages the gradients and the Hessian-vector
products over the ranks itself, see :doc:`/training`). In one process, as here, it does nothing. This
example trains a small MLP on scikit-learn's digits for 160 steps on the CPU.
"""

# %%
import warnings

import torch
from accelerate import Accelerator
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from probprec import PreconditionedSGD
from probprec.distributed import curvature_context

# PyTorch warns of a reference cycle with backward(create_graph=True); step() breaks it.
warnings.filterwarnings(
    "ignore", message="Using backward\\(\\) with create_graph=True"
)

features, labels = load_digits(return_X_y=True)
data = TensorDataset(
    torch.tensor(features[:512] / 16.0, dtype=torch.float32),
    torch.tensor(labels[:512]),
)

# The Accelerator first: under `accelerate launch` it sets up torch.distributed,
# and the optimizer, created after it, finds the process group.
accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
)
optimizer = PreconditionedSGD(model.parameters())
loader = DataLoader(
    data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
)
model, prepared_optimizer, loader = accelerator.prepare(model, optimizer, loader)

losses = []
for _epoch in range(10):
    for x, y in loader:
        prepared_optimizer.zero_grad()
        with curvature_context(model, optimizer):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            # the one changed line:
            accelerator.backward(loss, create_graph=optimizer.create_graph)
        prepared_optimizer.step()
        losses.append(loss.item())

early, late = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
print(
    f"{len(losses)} steps: loss {early:.3f} over the first 10, {late:.3f} over the last"
)
log = optimizer.get_log()
print(f"step sizes {log['step_sizes']}, {log['cycles_completed']} cycles completed")
assert late < 0.5 * early, "the loss went down"
