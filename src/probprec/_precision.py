"""Precision of the small dense computations (scalars and K x K matrices)."""

from __future__ import annotations

import torch

__all__ = ["accumulation_dtype"]


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """Return float64 where the device supports it (everything but Apple's MPS), else float32.

    Sums over whole parameter tensors and the K x K systems of the posterior are
    formed in this dtype whatever the parameters' dtype, so that a float32 or
    bfloat16 model gets the same small-matrix accuracy as a float64 one.
    """
    return torch.float32 if device.type == "mps" else torch.float64
