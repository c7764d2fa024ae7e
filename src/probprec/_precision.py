"""Precision of the small dense computations (scalars and K x K matrices).

Sums over whole parameter tensors (dot products, squared norms) and the K x K systems of the posterior are
formed in :func:`accumulation_dtype` whatever the parameters' dtype: a float32, float16 or bfloat16 model
gets the same small-matrix accuracy as a float64 one, and a loss scaled by 1e10 or 1e-15 neither overflows
nor underflows them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accumulation_dtype", "dot"]


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """Return float64 where the device supports it (everything but Apple's MPS), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def dot(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`a^\top b` of two flat tensors, formed in the accumulation dtype (a 0-dim tensor).

    The operands are converted before they are multiplied, so the products cannot overflow or underflow
    in the parameters' dtype.

    Example:
        >>> x = torch.tensor([3.0, 4.0]) * 2.0**70  # exact in float32
        >>> float(torch.dot(x, x)), float(dot(x, x)) == 25 * 2.0**140
        (inf, True)
    """
    dtype = accumulation_dtype(a.device)
    return torch.dot(a.to(dtype), b.to(dtype))
