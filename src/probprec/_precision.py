"""Precision of the sums over whole tensors and of the small dense computations (scalars, K x K matrices).

Every sum over a whole parameter tensor (dot products, squared norms: the prior's sums, the posterior's
Gram matrices) is formed in :func:`accumulation_dtype` (float64) whatever the parameters' dtype, and the
K x K systems are solved in it: a float32, float16 or bfloat16 model gets the same small-matrix accuracy
as a float64 one, and a loss scaled by 1e10 or 1e-19 neither overflows nor underflows them. Each operand
is converted once per use (:func:`widened`), one at a time, so no float64 copy of the stored directions
is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["accumulation_dtype", "dot", "widened"]


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """Return float64 where the device supports it (everything but Apple's MPS), else float32."""
    return torch.float32 if device.type == "mps" else torch.float64


def widened(x: Tensor) -> Tensor:
    """``x`` in the accumulation dtype (the tensor itself when it already is): convert once, use often."""
    dtype = accumulation_dtype(x.device)
    return x if x.dtype == dtype else x.to(dtype)


def dot(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`a^\top b` of two flat tensors, formed in the accumulation dtype (a 0-dim tensor).

    The operands are converted before they are multiplied, so the products cannot overflow or underflow
    in the parameters' dtype.

    Example:
        >>> x = torch.tensor([3.0, 4.0]) * 2.0**70  # exact in float32
        >>> float(torch.dot(x, x)), float(dot(x, x)) == 25 * 2.0**140
        (inf, True)
    """
    return torch.dot(widened(a), widened(b))
