"""Result files written by hand, in DeepOBS's layout, with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

from probprec.bench.results import format_value


def write_deepobs_run(root: Path, problem: str, optimizer: str, hyperparams: dict, seed: int, *,
                      train_losses: list, valid_losses: list, test_losses: list,
                      train_accuracies: list | None = None, valid_accuracies: list | None = None,
                      test_accuracies: list | None = None, batch_size: int = 128, **extra) -> Path:
    """A DeepOBS 1.2 result file (no status, no timing): the keys and the folder layout of 1.2."""
    epochs = len(train_losses) - 1 if "num_epochs" not in extra else extra.pop("num_epochs")
    record = {"testproblem": problem, "batch_size": batch_size, "num_epochs": epochs, "random_seed": seed,
              "weight_decay": None, "optimizer_name": optimizer, "optimizer_hyperparams": hyperparams,
              "training_params": {}, "train_losses": train_losses, "valid_losses": valid_losses,
              "test_losses": test_losses, "minibatch_train_losses": [1.0, 0.5]}
    if train_accuracies is not None:
        record.update(train_accuracies=train_accuracies, valid_accuracies=valid_accuracies,
                      test_accuracies=test_accuracies)
    record.update(extra)
    folder = "__".join(["num_epochs", str(epochs), "batch_size", str(batch_size)]
                       + [p for k in sorted(hyperparams) for p in (k, format_value(hyperparams[k]))])
    path = root / problem / optimizer / folder / f"random_seed__{seed}__2020-01-01-00-00-{seed % 60:02d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=4))
    return path


def accuracy_run(root: Path, optimizer: str, lr: float, seed: int, valid_final: float, test_final: float,
                 problem: str = "fmnist_2c2d") -> Path:
    """A 3-epoch run whose final validation and test accuracies are given."""
    return write_deepobs_run(
        root, problem, optimizer, {"lr": lr}, seed,
        train_losses=[2.3, 1.0, 0.6, 0.4], valid_losses=[2.3, 1.1, 0.7, 0.5], test_losses=[2.3, 1.2, 0.8, 0.6],
        train_accuracies=[0.1, 0.6, 0.8, 0.9], valid_accuracies=[0.1, 0.5, 0.7, valid_final],
        test_accuracies=[0.1, 0.5, 0.7, test_final])
