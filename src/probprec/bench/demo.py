"""The embedded demo: PreconditionedSGD and SGD side by side on scikit-learn's 8x8 digits.

No download: the data set ships with scikit-learn. PreconditionedSGD decides
itself when to estimate again (its adaptive restarts); the per-epoch table shows the training loss,
the test accuracy and the step size PreconditionedSGD estimated. Training uses
the thread count of :func:`probprec.bench.threads.threads_per_process`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probprec import PreconditionedSGD

from .results import write_text_atomic
from .threads import threads_per_process, using_threads
from .wording import counted

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """Per-epoch curves of one optimizer."""

    optimizer: str
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    step_size: list[float | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


DigitSplits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""Training inputs, training labels, test inputs, test labels."""


def digits(split_seed: int = 0, test_fraction: float = 0.25) -> DigitSplits:
    """scikit-learn's digits as tensors, standardised, with a fixed train/test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        out = model(x)
        return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())


def train(name: str, epochs: int, batch_size: int, seed: int, data: DigitSplits) -> DemoResult:
    x_train, y_train, x_test, y_test = data
    model = make_model(seed)
    if name == "SGD":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        opt = PreconditionedSGD(model.parameters())
    result = DemoResult(name)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(len(y_train), generator=gen)
        losses = []
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward(create_graph=getattr(opt, "create_graph", False))
            opt.step()
            losses.append(float(loss.detach()))
        result.seconds.append(time.perf_counter() - start)
        result.train_loss.append(sum(losses) / len(losses))
        result.test_accuracy.append(evaluate(model, x_test, y_test)[1])
        step = opt.get_log()["step_sizes"][0] if isinstance(opt, PreconditionedSGD) else 0.1
        result.step_size.append(step)
    return result


def plot(results: list[DemoResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), constrained_layout=True)
    for r in results:
        epochs = range(1, len(r.train_loss) + 1)
        axes[0].plot(epochs, r.train_loss, marker="o", label=r.optimizer)
        axes[1].plot(epochs, r.test_accuracy, marker="o", label=r.optimizer)
        axes[2].plot(epochs, [math.nan if s is None else s for s in r.step_size], marker="o", label=r.optimizer)
    for ax, title in zip(axes, ["training loss", "test accuracy", "step size"], strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(epochs: int = 10, batch_size: int = 32, seed: int = 0, output_dir: str | Path = "results/demo",
             echo: Callable[[str], Any] = print) -> list[DemoResult]:
    """Train both optimizers, print the per-epoch table, write ``demo.json`` and ``demo.png``."""
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    data = digits()
    echo(f"digits: {len(data[1])} training and {len(data[3])} test images, MLP 64-128-10, "
         f"batch {batch_size}, {counted(epochs, 'epoch')}, seed {seed}")
    results = []
    with using_threads(threads_per_process()):
        for name in ("SGD", "PreconditionedSGD"):
            echo(f"training {name} ...")
            results.append(train(name, epochs, batch_size, seed, data))
    echo(f"\n{'epoch':>5} | {'SGD loss':>9} {'acc':>6} | {'PrecSGD loss':>12} {'acc':>6} {'step size':>10}")
    for e in range(epochs):
        a, b = results
        step = b.step_size[e]
        echo(f"{e + 1:>5} | {a.train_loss[e]:>9.4f} {a.test_accuracy[e]:>6.3f} | {b.train_loss[e]:>12.4f} "
             f"{b.test_accuracy[e]:>6.3f} {step if step is None else format(step, '.4g'):>10}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "demo.json", json.dumps([asdict(r) for r in results], indent=2))
    try:
        plot(results, out / "demo.png")
        echo(f"\nwrote {out / 'demo.json'} and {out / 'demo.png'}")
    except ImportError:
        echo(f"\nwrote {out / 'demo.json'} (install matplotlib for the plot)")
    return results
