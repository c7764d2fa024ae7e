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


def probprec_record(optimizer: str = "PreconditionedSGD", seed: int = 42, epochs: int = 3,
                    problem: str = "fmnist_2c2d", hyperparams: dict | None = None) -> dict:
    """A completed result of ours (the runner's keys, status, timing and optimizer logs) with made-up numbers."""
    losses = [2.3 - 0.5 * e for e in range(epochs + 1)]
    accuracies = [0.1 + 0.2 * e for e in range(epochs + 1)]
    return {
        "testproblem": problem, "batch_size": 128, "num_epochs": epochs, "random_seed": seed, "weight_decay": None,
        "optimizer_name": optimizer, "optimizer_hyperparams": dict(hyperparams or {}),
        "training_params": {"restart": "epoch", "train_log_interval": 10},
        "train_losses": losses, "valid_losses": [v + 0.05 for v in losses], "test_losses": [v + 0.1 for v in losses],
        "minibatch_train_losses": [2.0, 1.5], "train_accuracies": accuracies,
        "valid_accuracies": [v - 0.01 for v in accuracies], "test_accuracies": [v - 0.02 for v in accuracies],
        "status": "completed", "status_reason": None, "stopped_at_step": 30 * epochs, "stopped_at_epoch": epochs,
        "epochs_completed": epochs, "steps": 30 * epochs, "epoch_wall_times": [1.0] * epochs,
        "epoch_cpu_times": [2.0] * epochs, "eval_wall_times": [0.1] * (epochs + 1),
        "optimizer_logs": [{"step_sizes": [0.1], "eigenvalues": [[1.0, 2.0]]} for _ in range(epochs)],
        "problem": {"name": problem, "metric": "accuracy"},
        "metadata": {"schema_version": 1, "started": "2024-01-01T00:00:00", "device": "cpu",
                     "environment": {"python": "3.11", "packages": {"torch": "2.4"}}},
        "total_wall_time": 3.4, "total_cpu_time": 6.0,
    }


def write_record(root: Path, record: dict, name: str | None = None) -> Path:
    """Write ``record`` (any JSON value) in the layout of ours: problem/optimizer/setting/random_seed__N__time.json."""
    seed = record.get("random_seed", 0) if isinstance(record, dict) else 0
    folder = root / "fmnist_2c2d" / "PreconditionedSGD" / "num_epochs__3__batch_size__128"
    path = folder / (name or f"random_seed__{seed}__2024-01-01-00-00-00.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return path
