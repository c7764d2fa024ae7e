"""The robustness family: small ReLU networks without normalisation, on embedded or generated data.

Plain networks that a new user would try first: MLPs and CNNs of several widths,
depths, strides and initialisation scales, with no batch normalisation, no
residual connections and no tuned initialisation. They are cheap (seconds per
epoch on a CPU core) and some are hard for step-size rules: a large first step
kills ReLU units, and a network with dead units is flat, so a rule that sets the
step from the curvature it measures then proposes an even larger step.

Data: scikit-learn's 8x8 digits with the split of :mod:`.digits` (397 test, 300
validation, 300 train_eval images), the 1,100 training images each also shifted
by one pixel up, down, left and right (5,500 training images, 85 minibatches of
64); or two interleaved spirals (generated, 2-D inputs). Every member trains 10
epochs with batch size 64.

Initialisation: PyTorch's default for every layer, the weights (not the biases)
then multiplied by the member's ``init_scale``.

>>> len(FAMILY), "robust_cnn_plain" in FAMILY
(11, True)
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..data import Splits
from .base import Problem
from .digits import _Digits

__all__ = ["FAMILY", "FAMILY_CLASSES", "RobustCNN", "RobustMLP", "RobustSpiralMLP", "shifted_training_set"]

SHIFTS = ((0, 1), (0, -1), (1, 1), (1, -1))
"""One-pixel shifts of the training images: (axis of the 8x8 image, direction)."""


def _shift(images: torch.Tensor, axis: int, direction: int) -> torch.Tensor:
    """Images ``N x 8 x 8`` moved one pixel along ``axis`` (0: rows, 1: columns); the pixels entering are 0."""
    moved = torch.roll(images, shifts=direction, dims=axis + 1)
    moved.select(axis + 1, 0 if direction > 0 else -1).zero_()
    return moved


def shifted_training_set(train: TensorDataset, image_shape: tuple[int, ...]) -> TensorDataset:
    """The training images, then each of them shifted by one pixel in each of :data:`SHIFTS`.

    Example:
        >>> x = torch.zeros(1, 64); x[0, 9] = 1.0  # row 1, column 1
        >>> out = shifted_training_set(TensorDataset(x, torch.zeros(1)), (64,)).tensors[0]
        >>> [int(row.argmax()) for row in out]
        [9, 17, 1, 10, 8]
    """
    images, labels = train.tensors
    square = images.reshape(-1, 8, 8)
    moved = [square] + [_shift(square, axis, direction) for axis, direction in SHIFTS]
    stacked = torch.cat(moved).reshape(-1, *image_shape)
    return TensorDataset(stacked, labels.repeat(len(moved)))


def _scale_weights(model: nn.Module, scale: float) -> nn.Module:
    """Multiply every weight (a parameter with more than one dimension) by ``scale``, in place."""
    if scale != 1.0:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.mul_(scale)
    return model


class _RobustDigits(_Digits):
    """Digits with the shifted training set, batch 64, 10 epochs (see the module docstring)."""

    batch_size = 64
    epochs = 10
    init_scale: ClassVar[float] = 1.0

    def splits(self, data_dir: str | Path = "", download: bool = False) -> Splits:
        splits = super().splits(data_dir, download)
        assert isinstance(splits.train, TensorDataset)  # what _Digits builds
        return Splits(train=shifted_training_set(splits.train, self.image_shape), train_eval=splits.train_eval,
                      valid=splits.valid, test=splits.test)


class RobustMLP(_RobustDigits):
    """A ReLU MLP on the 64 pixels: ``hidden`` gives the width of each hidden layer."""

    hidden: ClassVar[tuple[int, ...]]

    def model(self) -> nn.Module:
        layers: list[nn.Module] = []
        width = 64
        for size in self.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 10))
        return _scale_weights(nn.Sequential(*layers), self.init_scale)


class RobustCNN(_RobustDigits):
    """3x3 ReLU convolutions (padding 1) with the given channels and strides, then a dense layer to 10 classes."""

    image_shape = (1, 8, 8)
    channels: ClassVar[tuple[int, ...]]
    strides: ClassVar[tuple[int, ...]]
    pool: ClassVar[bool] = False
    """2x2 max-pooling after each of the first two convolutions."""

    def model(self) -> nn.Module:
        layers: list[nn.Module] = []
        width, size = 1, 8
        for i, (channels, stride) in enumerate(zip(self.channels, self.strides, strict=True)):
            layers += [nn.Conv2d(width, channels, 3, stride=stride, padding=1), nn.ReLU()]
            width, size = channels, (size - 1) // stride + 1
            if self.pool and i < 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        layers += [nn.Flatten(), nn.Linear(width * size * size, 10)]
        return _scale_weights(nn.Sequential(*layers), self.init_scale)


@cache
def _spirals(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points on two interleaved spirals (1.5 turns, Gaussian noise 0.1 times the radius range), labels 0/1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=n)
    t = np.sqrt(rng.uniform(0.0, 1.0, size=n)) * 3 * math.pi
    angle = t + math.pi * labels
    points = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1) / (3 * math.pi)
    points += rng.normal(scale=0.1 / 3, size=points.shape)
    return torch.tensor(points, dtype=torch.float32), torch.tensor(labels, dtype=torch.long)


class RobustSpiralMLP(Problem):
    """Two interleaved spirals (generated: 5,000 training, 1,000 validation, 1,000 test points), a ReLU MLP."""

    name = "robust_spirals_mlp"
    description = "ReLU MLP 2-64-64-64-2 on two generated spirals (robustness family)"
    batch_size = 64
    epochs = 10

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                             nn.Linear(64, 2))

    def splits(self, data_dir: str | Path = "", download: bool = False) -> Splits:
        train = TensorDataset(*_spirals(42, 5_000))
        return Splits(train=train, train_eval=TensorDataset(*train[:1_000]), valid=TensorDataset(*_spirals(44, 1_000)),
                      test=TensorDataset(*_spirals(43, 1_000)))


class RobustMLPNarrow(RobustMLP):
    """ReLU MLP 64-32-32-10."""

    name = "robust_mlp_narrow"
    description = "ReLU MLP 64-32-32-10 on shifted digits (robustness family)"
    hidden = (32, 32)


class RobustMLPWide(RobustMLP):
    """ReLU MLP 64-512-10."""

    name = "robust_mlp_wide"
    description = "ReLU MLP 64-512-10 on shifted digits (robustness family)"
    hidden = (512,)


class RobustMLPDeep(RobustMLP):
    """ReLU MLP with six hidden layers of 64."""

    name = "robust_mlp_deep"
    description = "ReLU MLP with six hidden layers of 64 on shifted digits (robustness family)"
    hidden = (64,) * 6


class RobustMLPLargeInit(RobustMLP):
    """ReLU MLP 64-100-100-10, weights three times PyTorch's initialisation."""

    name = "robust_mlp_large_init"
    description = "ReLU MLP 64-100-100-10, weights 3x PyTorch's init, on shifted digits (robustness family)"
    hidden = (100, 100)
    init_scale = 3.0


class RobustMLPSmallInit(RobustMLP):
    """ReLU MLP 64-100-100-10, weights 0.3 times PyTorch's initialisation."""

    name = "robust_mlp_small_init"
    description = "ReLU MLP 64-100-100-10, weights 0.3x PyTorch's init, on shifted digits (robustness family)"
    hidden = (100, 100)
    init_scale = 0.3


class RobustCNNPlain(RobustCNN):
    """Three 3x3 ReLU convolutions (16, 32, 64 channels, stride 1), then a dense layer."""

    name = "robust_cnn_plain"
    description = "plain CNN, three 3x3 ReLU convolutions (16, 32, 64), on shifted digits (robustness family)"
    channels = (16, 32, 64)
    strides = (1, 1, 1)


class RobustCNNStrided(RobustCNN):
    """Three 3x3 ReLU convolutions (16, 32, 64 channels) with strides 1, 2, 2, then a dense layer."""

    name = "robust_cnn_strided"
    description = "CNN, three 3x3 ReLU convolutions with strides 1, 2, 2, on shifted digits (robustness family)"
    channels = (16, 32, 64)
    strides = (1, 2, 2)


class RobustCNNPooled(RobustCNN):
    """Three 3x3 ReLU convolutions (16, 32, 64 channels), 2x2 max-pooling after the first two."""

    name = "robust_cnn_pooled"
    description = "CNN, three 3x3 ReLU convolutions with max-pooling, on shifted digits (robustness family)"
    channels = (16, 32, 64)
    strides = (1, 1, 1)
    pool = True


class RobustCNNNarrow(RobustCNN):
    """Three 3x3 ReLU convolutions of 4, 8 and 16 channels with strides 1, 2, 2."""

    name = "robust_cnn_narrow"
    description = "narrow CNN, 3x3 ReLU convolutions (4, 8, 16), strides 1, 2, 2 (robustness family)"
    channels = (4, 8, 16)
    strides = (1, 2, 2)


class RobustCNNLargeInit(RobustCNN):
    """robust_cnn_strided with its weights twice PyTorch's initialisation."""

    name = "robust_cnn_large_init"
    description = "CNN with strides 1, 2, 2, weights 2x PyTorch's init, on shifted digits (robustness family)"
    channels = (16, 32, 64)
    strides = (1, 2, 2)
    init_scale = 2.0


FAMILY_CLASSES: tuple[type[Problem], ...] = (
    RobustMLPNarrow, RobustMLPWide, RobustMLPDeep, RobustMLPLargeInit, RobustMLPSmallInit, RobustCNNPlain,
    RobustCNNStrided, RobustCNNPooled, RobustCNNNarrow, RobustCNNLargeInit, RobustSpiralMLP,
)
"""Every member of the family, in the order reports list them."""

FAMILY: list[str] = [cls.name for cls in FAMILY_CLASSES]
"""The names of the family's members."""
