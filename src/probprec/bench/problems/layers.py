"""Layers and initialisations that reproduce the TensorFlow conventions of DeepOBS.

TensorFlow's ``padding='same'`` pads so that the output has ``ceil(in / stride)``
positions, putting the odd pixel at the bottom/right; for a stride-2 layer that
is asymmetric, which PyTorch's symmetric ``padding`` cannot express. Max-pooling
pads with ``-inf`` (padding never wins the max).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Conv2dSame", "MaxPool2dSame", "same_padding", "truncated_normal_"]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same' for one spatial dimension.

    Example:
        >>> same_padding(28, 3, 2), same_padding(32, 3, 1), same_padding(28, 2, 2)
        ((0, 1), (1, 1), (0, 0))
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: int, stride: int, value: float) -> Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's 'same' padding (any stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(_pad_same(x, self.kernel_size[0], self.stride[0], 0.0))


class MaxPool2dSame(nn.MaxPool2d):
    """``nn.MaxPool2d`` with TensorFlow's 'same' padding."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__(kernel_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size if isinstance(self.kernel_size, int) else self.kernel_size[0]
        s = self.stride if isinstance(self.stride, int) else self.stride[0]
        return super().forward(_pad_same(x, k, s, -math.inf))


def truncated_normal_(tensor: Tensor, std: float) -> Tensor:
    """Normal with mean 0 and standard deviation ``std`` truncated at two standard deviations (TF's default)."""
    with torch.no_grad():
        return nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)
