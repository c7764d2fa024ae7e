"""DeepOBS's image problems (as in its PyTorch version 1.2.0-beta0) and the paper's networks.

Architectures, initialisations, L2 terms and default batch sizes and epochs as in
DeepOBS, with TensorFlow's 'same' padding. Deliberate deviations, each a fix:
fixed validation splits (see :mod:`probprec.bench.data`), a train_eval set that
is never augmented, BatchNorm momentum 0.1 in the WRN (PyTorch's equivalent of
TensorFlow's 0.9, which the beta copied literally), and evaluation over every
example (the beta dropped the last partial batch).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..data import ImageDataset, Splits, load_cifar, load_mnist, load_svhn, split_indices
from .base import Problem
from .layers import Conv2dSame, MaxPool2dSame, truncated_normal_

__all__ = [
    "Cifar10Roos",
    "Cifar10ThreeCThreeD",
    "Cifar100AllCNNC",
    "Cifar100ThreeCThreeD",
    "FmnistMLP",
    "FmnistTwoCTwoD",
    "Mnist35LogReg",
    "MnistLogReg",
    "MnistMLP",
    "MnistTwoCTwoD",
    "SvhnWRN164",
]

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


# ----------------------------------------------------------------------------- pipelines


def _to_unit(image: Tensor) -> Tensor:
    return image.float().div_(255.0)


Transform = Callable[[Tensor], Tensor]
"""A per-image transform: a uint8 image tensor to the network's input."""


def _normalizer(mean: Sequence[float], std: Sequence[float]) -> Transform:
    mean_t, std_t = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

    def transform(image: Tensor) -> Tensor:
        return (_to_unit(image) - mean_t) / std_t

    return transform


def _augmenter(mean: Sequence[float], std: Sequence[float], flip: bool) -> Transform:
    """DeepOBS's training augmentation: pad 2, random 32x32 crop, (flip), colour jitter, normalise."""
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(32, padding=2)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ColorJitter(brightness=63 / 255, saturation=(0.5, 1.5), contrast=(0.2, 1.8)),
              v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def _image_splits(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, n_valid: int,
                  train_transform: Transform, eval_transform: Transform) -> Splits:
    """Fixed splits with the official validation size (a fifth of the data for data sets too small for it)."""
    if len(train_y) < 2 * n_valid:
        n_valid = max(1, len(train_y) // 5)
    train_idx, valid_idx, eval_idx = split_indices(len(train_y), n_valid)
    return Splits(
        train=ImageDataset(train_x[train_idx], train_y[train_idx], train_transform),
        train_eval=ImageDataset(train_x[eval_idx], train_y[eval_idx], eval_transform),
        valid=ImageDataset(train_x[valid_idx], train_y[valid_idx], eval_transform),
        test=ImageDataset(test_x, test_y, eval_transform),
    )


class _MnistData:
    """MNIST (or Fashion-MNIST): 50k train / 10k valid / 10k test, pixels in [0, 1], no normalisation."""

    dataset: ClassVar[str | None] = "mnist"
    fashion = False

    def splits(self, data_dir: str | Path, download: bool = False) -> Splits:
        data = load_mnist(data_dir, fashion=self.fashion, download=download)
        return _image_splits(*data, 10_000, _to_unit, _to_unit)


class _FmnistData(_MnistData):
    dataset: ClassVar[str | None] = "fmnist"
    fashion = True


class _CifarData:
    """CIFAR-10/100: 40k train (augmented) / 10k valid / 10k test, per-channel normalisation."""

    dataset: ClassVar[str | None] = "cifar10"
    classes = 10

    def splits(self, data_dir: str | Path, download: bool = False) -> Splits:
        data = load_cifar(data_dir, self.classes, download=download)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if self.classes == 10 else (CIFAR100_MEAN, CIFAR100_STD)
        return _image_splits(*data, 10_000, _augmenter(mean, std, flip=True), _normalizer(mean, std))


class _Cifar100Data(_CifarData):
    dataset: ClassVar[str | None] = "cifar100"
    classes = 100


# ----------------------------------------------------------------------------- networks


def _dense_relu(sizes: list[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return layers


def _init(model: nn.Module, weight: Callable[[Tensor], object], bias: float) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            weight(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)
    return model


def _xavier_3c3d(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def three_c_three_d(classes: int) -> nn.Sequential:
    """DeepOBS's 3c3d network (no initialisation applied)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 5), nn.ReLU(), MaxPool2dSame(3, 2),
        nn.Conv2d(64, 96, 3), nn.ReLU(), MaxPool2dSame(3, 2),
        Conv2dSame(96, 128, 3), nn.ReLU(), MaxPool2dSame(3, 2),
        nn.Flatten(), *_dense_relu([1152, 512, 256, classes]),
    )


class MnistLogReg(_MnistData, Problem):
    """Multinomial logistic regression on MNIST: one dense layer 784 -> 10, weights and biases zero."""

    name = "mnist_logreg"
    description = "logistic regression on MNIST (DeepOBS)"
    batch_size = 128
    epochs = 50

    def model(self) -> nn.Module:
        return _init(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), nn.init.zeros_, 0.0)


class MnistMLP(_MnistData, Problem):
    """784-1000-500-100-10 ReLU network, weights TN(0.03), biases zero."""

    name = "mnist_mlp"
    description = "4-layer MLP on MNIST (DeepOBS)"
    batch_size = 128
    epochs = 100

    def model(self) -> nn.Module:
        net = nn.Sequential(nn.Flatten(), *_dense_relu([784, 1000, 500, 100, 10]))
        return _init(net, lambda w: truncated_normal_(w, 0.03), 0.0)


class FmnistMLP(_FmnistData, MnistMLP):
    """mnist_mlp on Fashion-MNIST."""

    name = "fmnist_mlp"
    description = "4-layer MLP on Fashion-MNIST (DeepOBS)"


class MnistTwoCTwoD(_MnistData, Problem):
    """Two 5x5 'same' conv layers (32, 64) with 2x2 max-pooling, dense 3136-1024-10; weights TN(0.05), biases 0.05."""

    name = "mnist_2c2d"
    description = "2 conv + 2 dense layers on MNIST (DeepOBS)"
    batch_size = 128
    epochs = 100

    def model(self) -> nn.Module:
        net = nn.Sequential(
            Conv2dSame(1, 32, 5), nn.ReLU(), MaxPool2dSame(2, 2),
            Conv2dSame(32, 64, 5), nn.ReLU(), MaxPool2dSame(2, 2),
            nn.Flatten(), *_dense_relu([3136, 1024, 10]),
        )
        return _init(net, lambda w: truncated_normal_(w, 0.05), 0.05)


class FmnistTwoCTwoD(_FmnistData, MnistTwoCTwoD):
    """mnist_2c2d on Fashion-MNIST (thesis Experiment 1)."""

    name = "fmnist_2c2d"
    description = "2 conv + 2 dense layers on Fashion-MNIST (DeepOBS; thesis Exp. 1, 4)"


class Cifar10ThreeCThreeD(_CifarData, Problem):
    """Three conv layers (64, 96, 128) with 3x3/2 max-pooling, dense 512-256-10; Xavier init; L2 0.002."""

    name = "cifar10_3c3d"
    description = "3 conv + 3 dense layers on CIFAR-10 (DeepOBS; thesis Exp. 1, 3)"
    batch_size = 128
    epochs = 100
    l2 = 0.002

    def model(self) -> nn.Module:
        return _xavier_3c3d(three_c_three_d(10))


class Cifar100ThreeCThreeD(_Cifar100Data, Cifar10ThreeCThreeD):
    """cifar10_3c3d with 100 classes (DeepOBS has no default epochs for it; 100 here)."""

    name = "cifar100_3c3d"
    description = "3 conv + 3 dense layers on CIFAR-100 (DeepOBS)"

    def model(self) -> nn.Module:
        return _xavier_3c3d(three_c_three_d(100))


class Cifar10Roos(_CifarData, Problem):
    """The paper's network (appendix A; thesis Experiment 3) with PyTorch's default initialisation.

    Three conv layers (64, 96, 128 channels; 5x5, 3x3, 3x3), each followed by ReLU
    and max-pooling, then dense 512, 256, 10, cross-entropy with L2 0.01 (paper
    appendix A; ``l2=0.002`` reproduces the thesis, which ran it with
    cifar10_3c3d's term). The paper gives no padding or pooling geometry; the
    thesis patched DeepOBS's cifar10_3c3d, so its geometry is used.
    """

    name = "cifar10_roos"
    description = "the paper's conv net on CIFAR-10, PyTorch default init, batch 32 (thesis Exp. 3)"
    batch_size = 32
    epochs = 100
    l2 = 0.01

    def model(self) -> nn.Module:
        return three_c_three_d(10)


class Cifar100AllCNNC(_Cifar100Data, Problem):
    """All-CNN-C (Springenberg et al.) on CIFAR-100 as in DeepOBS: dropout, nine conv layers, global mean."""

    name = "cifar100_allcnnc"
    description = "All-CNN-C on CIFAR-100 (DeepOBS)"
    batch_size = 256
    epochs = 350
    l2 = 5e-4

    def model(self) -> nn.Module:
        def conv(a: int, b: int, k: int, stride: int = 1, same: bool = True) -> list[nn.Module]:
            layer = Conv2dSame(a, b, k, stride) if same else nn.Conv2d(a, b, k, stride)
            return [layer, nn.ReLU()]

        net = nn.Sequential(
            nn.Dropout(0.2),
            *conv(3, 96, 3), *conv(96, 96, 3), *conv(96, 96, 3, stride=2), nn.Dropout(0.5),
            *conv(96, 192, 3), *conv(192, 192, 3), *conv(192, 192, 3, stride=2), nn.Dropout(0.5),
            *conv(192, 192, 3, same=False), *conv(192, 192, 1), *conv(192, 100, 1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.1)
        return net


class _WideBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, 1x1 projection when the shape changes."""

    def __init__(self, a: int, b: int, stride: int, momentum: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(a, momentum=momentum)
        self.conv1 = Conv2dSame(a, b, 3, stride, bias=False)
        self.bn2 = nn.BatchNorm2d(b, momentum=momentum)
        self.conv2 = Conv2dSame(b, b, 3, 1, bias=False)
        self.shortcut = Conv2dSame(a, b, 1, stride, bias=False) if (a != b or stride != 1) else None

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class SvhnWRN164(Problem):
    """Wide ResNet 16-4 on SVHN (DeepOBS), BatchNorm momentum 0.1 (TensorFlow's 0.9).

    47,225 train / 26,032 valid (from the official 'train' split) / 26,032 test;
    augmentation without flips. L2 5e-4 on conv and dense weights, not on BatchNorm.
    """

    name = "svhn_wrn164"
    description = "Wide ResNet 16-4 on SVHN (DeepOBS)"
    dataset: ClassVar[str | None] = "svhn"
    batch_size = 128
    epochs = 160
    l2 = 5e-4

    def model(self) -> nn.Module:
        momentum = 0.1
        layers: list[nn.Module] = [Conv2dSame(3, 16, 3, bias=False)]
        width = 16
        for out, stride in ((64, 1), (128, 2), (256, 2)):
            layers += [_WideBlock(width, out, stride, momentum), _WideBlock(out, out, 1, momentum)]
            width = out
        layers += [nn.BatchNorm2d(width, momentum=momentum), nn.ReLU(), nn.AvgPool2d(8), nn.Flatten(),
                   nn.Linear(width, 10)]
        net = nn.Sequential(*layers)
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        return net

    def regularized(self, model: nn.Module) -> list[Tensor]:
        return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def splits(self, data_dir: str | Path, download: bool = False) -> Splits:
        data = load_svhn(data_dir, download=download)
        return _image_splits(*data, 26_032, _augmenter(SVHN_MEAN, SVHN_STD, flip=False),
                             _normalizer(SVHN_MEAN, SVHN_STD))


class Mnist35LogReg(Problem):
    r"""The paper's §3.2 problem: binary logistic regression on MNIST's digits 3 and 5.

    :math:`p(y = 1 \mid x) = \sigma(w^\top x + b)` on pixels in [0, 1] (label 1 for
    the digit 3), a convex regularised risk (Rasmussen & Williams 2006, §3.4) with
    L2 1e-3; weights start at zero. 2,000 of the training images form the
    validation set.
    """

    name = "mnist35_logreg"
    description = "binary logistic regression on MNIST 3 vs 5 (paper §3.2)"
    dataset: ClassVar[str | None] = "mnist"
    batch_size = 128
    epochs = 20
    l2 = 1e-3

    def model(self) -> nn.Module:
        return _init(nn.Sequential(nn.Flatten(), nn.Linear(784, 1), nn.Flatten(0)), nn.init.zeros_, 0.0)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return nn.functional.binary_cross_entropy_with_logits(outputs, targets.float())

    def correct(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return ((outputs > 0).long() == targets).sum()

    def splits(self, data_dir: str | Path, download: bool = False) -> Splits:
        train_x, train_y, test_x, test_y = load_mnist(data_dir, download=download)

        def pick(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            keep = (y == 3) | (y == 5)
            return x[keep], (y[keep] == 3).astype(np.int64)

        return _image_splits(*pick(train_x, train_y), *pick(test_x, test_y), 2000, _to_unit, _to_unit)
