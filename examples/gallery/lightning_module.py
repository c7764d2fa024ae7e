"""
PyTorch Lightning: automatic and manual optimization
====================================================

In a :class:`lightning.pytorch.LightningModule` the optimizer comes from ``configure_optimizers``, and
the one line that differs from a plain loop, ``backward(create_graph=optimizer.create_graph)``, goes
where Lightning calls ``backward``:

* with **automatic optimization**, into an overridden :meth:`~lightning.pytorch.LightningModule.backward`.
  Lightning calls ``optimizer.step(closure)``, and the closure (the training step and ``backward``) runs
  inside :meth:`probprec.Preconditioner.step`, which supports closures;
* with **manual optimization**, into the call of
  :meth:`~lightning.pytorch.LightningModule.manual_backward`, which passes its keywords on.

Both train a small MLP on scikit-learn's digits for 160 steps on the CPU.
"""

# %%
# The data and the shared module
# ------------------------------
import logging
import warnings

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from probprec import PreconditionedSGD

# Quiet: no banner about GPUs and TPUs; a tiny in-memory data set needs no workers;
# Slurm is installed here but not used; Lightning's own use of a deprecated torch
# API; and the reference cycle of backward(create_graph=True), which step() breaks.
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
for message in (
    ".*does not have many workers.*",
    ".*`srun` command is available.*",
    ".*treespec.*",
    "Using backward\\(\\) with create_graph=True",
):
    warnings.filterwarnings("ignore", message=message)

features, labels = load_digits(return_X_y=True)
data = TensorDataset(
    torch.tensor(features[:512] / 16.0, dtype=torch.float32),
    torch.tensor(labels[:512]),
)


class Digits(pl.LightningModule):
    """An MLP on the digits; subclasses choose how it is optimized."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)
        )
        self.losses: list[float] = []

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return PreconditionedSGD(self.parameters())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            data,
            batch_size=32,
            shuffle=True,
            generator=torch.Generator().manual_seed(0),
        )


def fit(module: Digits) -> list[float]:
    """Ten epochs (160 steps) on the CPU; no logs, checkpoints or progress bars."""
    trainer = pl.Trainer(
        max_epochs=10,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    return module.losses


def went_down(losses: list[float]) -> bool:
    early, late = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"loss {early:.3f} over the first 10 steps, {late:.3f} over the last 10")
    return late < 0.5 * early


# %%
# Automatic optimization: override ``backward``
# ---------------------------------------------
class AutomaticDigits(Digits):
    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self.loss(batch)

    def backward(self, loss: torch.Tensor, *args: object, **kwargs: object) -> None:
        # the PreconditionedSGD inside Lightning's wrapper:
        optimizer = self.optimizers().optimizer
        # the one changed line:
        loss.backward(*args, create_graph=optimizer.create_graph, **kwargs)


torch.manual_seed(0)
automatic = fit(AutomaticDigits())
assert went_down(automatic), "the loss went down with automatic optimization"


# %%
# Manual optimization: pass ``create_graph`` to ``manual_backward``
# -----------------------------------------------------------------
class ManualDigits(Digits):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = self.loss(batch)
        # the one changed line:
        self.manual_backward(loss, create_graph=optimizer.optimizer.create_graph)
        optimizer.step()
        return loss


torch.manual_seed(0)
manual = fit(ManualDigits())
assert went_down(manual), "the loss went down with manual optimization"

# %%
# The two modules took the same steps: Lightning's closure computes the loss and the gradients inside
# ``step()``, at the same point of the cycle as the manual loop.
print(
    f"the same losses with automatic and manual optimization: {automatic == manual}"
)
