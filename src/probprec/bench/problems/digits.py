"""Problems on scikit-learn's 8x8 digits (1,797 images, shipped with scikit-learn: no download)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..data import Splits, split_indices
from .base import Problem

__all__ = ["DigitsCNN", "DigitsMLP", "DigitsMLPLayerwise"]


@cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32) / 16.0, torch.tensor(data.target, dtype=torch.long)


class _Digits(Problem):
    """Fixed split (split seed 42): 397 test, 300 validation, 1,100 training images; pixels in [0, 1]."""

    batch_size = 32
    epochs = 20
    image_shape: tuple[int, ...] = (64,)

    def splits(self, data_dir: str | Path = "", download: bool = False) -> Splits:
        x, y = _digits()
        x = x.reshape(-1, *self.image_shape)
        rest, test, _ = split_indices(len(y), 397)
        train_part, valid_part, eval_part = split_indices(len(rest), 300)
        train, valid, train_eval = rest[train_part], rest[valid_part], rest[eval_part]

        def subset(idx: np.ndarray) -> TensorDataset:
            index = torch.as_tensor(idx)
            return TensorDataset(x[index], y[index])

        return Splits(train=subset(train), train_eval=subset(train_eval), valid=subset(valid), test=subset(test))


class DigitsMLP(_Digits):
    """64-128-10 ReLU network, PyTorch's default initialisation."""

    name = "digits_mlp"
    description = "MLP on scikit-learn's 8x8 digits (embedded, no download)"

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


class DigitsCNN(_Digits):
    """Two 3x3 conv layers (16, 32 channels) with 2x2 max-pooling and a dense layer, PyTorch's default init."""

    name = "digits_cnn"
    description = "small CNN on scikit-learn's 8x8 digits (embedded, no download)"
    image_shape = (1, 8, 8)

    def model(self) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(128, 10),
        )


class DigitsMLPLayerwise(DigitsMLP):
    """digits_mlp whose optimizer receives one parameter group per layer (thesis §4.7 asks for such a problem)."""

    name = "digits_mlp_layerwise"
    description = "digits_mlp with one parameter group per layer (embedded)"

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return [{"params": list(layer.parameters())} for layer in model.children()
                if any(True for _ in layer.parameters())]
