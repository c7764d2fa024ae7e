r"""The typed state of one estimation cycle: per parameter group and per parameter tensor.

A cycle (:mod:`probprec.estimator`) keeps, per tensor, the prior's running buffers and the posterior's
directions :math:`S` and observations :math:`Y` (flat rows in the parameter's dtype); per group, the
prior's sums, its scalars once the prior is complete, and the Gram matrices :math:`S S^\top` and
:math:`S Y^\top` of all its tensors, stacked ``(T, K, K)`` in float64 so that the small linear algebra
runs batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .posterior import PosteriorSystem, posterior_system

__all__ = ["GroupCycle", "PriorScalars", "TensorCycle"]


@dataclass(frozen=True)
class PriorScalars:
    """The prior of one group (:mod:`probprec.prior`), as plain floats."""

    step_size: float
    mean: float
    width: float
    noise: float
    noise_measured: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain values for a state dict."""
        return {"step_size": self.step_size, "mean": self.mean, "width": self.width, "noise": self.noise,
                "noise_measured": self.noise_measured}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> PriorScalars | None:
        """Read :meth:`as_dict` (None stays None)."""
        return None if values is None else cls(**{k: values[k] for k in cls.__dataclass_fields__})


@dataclass
class TensorCycle:
    """Buffers of one parameter tensor during a cycle (flat, in the parameter's dtype)."""

    grad_sum: Tensor | None = None
    """Sum of the regularised prior gradients before the prior's final group."""
    probe: Tensor | None = None
    """The probe of the current pair of prior minibatches (or of the final group)."""
    probe_hvp: Tensor | None = None
    """The product of the pair's first minibatch, then the mean product of the pair."""
    probe_sum: Tensor | None = None
    """Sum of the prior's probes (thesis quirk ``probe_noise``)."""
    hvp_sum: Tensor | None = None
    """Sum of the prior's products (thesis quirk ``reference_schedule``)."""
    directions: list[Tensor] = field(default_factory=list)
    """The directions :math:`s_i` observed (or pending), at most K."""
    observations: list[Tensor] = field(default_factory=list)
    """Their observed products :math:`y_i`."""

    BUFFERS = ("grad_sum", "probe", "probe_hvp", "probe_sum", "hvp_sum")

    def copy(self) -> TensorCycle:
        """A copy whose lists can grow independently (the tensors are shared)."""
        return TensorCycle(self.grad_sum, self.probe, self.probe_hvp, self.probe_sum, self.hvp_sum,
                           list(self.directions), list(self.observations))

    def clear_prior(self) -> None:
        """Drop the prior's buffers (the posterior keeps only the directions and observations)."""
        self.grad_sum = self.probe = self.probe_hvp = self.probe_sum = self.hvp_sum = None

    def tensors(self) -> list[Tensor]:
        """Every tensor held."""
        return [t for t in (*(getattr(self, k) for k in self.BUFFERS), *self.directions, *self.observations)
                if t is not None]

    def as_dict(self) -> dict[str, Any]:
        """The buffers held, for a state dict."""
        values: dict[str, Any] = {k: getattr(self, k) for k in self.BUFFERS if getattr(self, k) is not None}
        if self.directions:
            values["directions"], values["observations"] = list(self.directions), list(self.observations)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], like: Tensor) -> TensorCycle:
        """Read :meth:`as_dict`, moving every tensor to ``like``'s device and dtype."""
        def cast(t: Tensor) -> Tensor:
            return t.to(device=like.device, dtype=like.dtype)

        buffers = {k: None if values.get(k) is None else cast(values[k]) for k in cls.BUFFERS}
        return cls(**buffers, directions=[cast(t) for t in values.get("directions", [])],
                   observations=[cast(t) for t in values.get("observations", [])])


@dataclass
class GroupCycle:
    """The state of one parameter group during a cycle."""

    active: bool
    """Whether the group takes part in this cycle (a group added during it waits for the next)."""
    posterior: bool = False
    """Whether the group builds a posterior (its prior gave a usable step size)."""
    curvature: Tensor | None = None
    """Accumulated :func:`~probprec.prior.curvature_sums`."""
    noise: Tensor | None = None
    """Accumulated :func:`~probprec.prior.noise_sums`."""
    gram_ss: Tensor | None = None
    """``(T, K, K)``: :math:`S S^\\top` of each tensor."""
    gram_sy: Tensor | None = None
    """``(T, K, K)``: :math:`S Y^\\top` of each tensor."""
    prior: PriorScalars | None = None

    TENSORS = ("curvature", "noise", "gram_ss", "gram_sy")

    def copy(self) -> GroupCycle:
        """A copy whose Gram matrices (written in place) are its own."""
        return GroupCycle(self.active, self.posterior, self.curvature, self.noise,
                          None if self.gram_ss is None else self.gram_ss.clone(),
                          None if self.gram_sy is None else self.gram_sy.clone(), self.prior)

    def system(self, m: int) -> PosteriorSystem:
        """The batched posterior system over the first ``m`` directions and observations."""
        assert self.gram_ss is not None and self.gram_sy is not None and self.prior is not None
        SS, SY = self.gram_ss[:, :m, :m], self.gram_sy[:, :m, :m]
        b0, w0, lam = (torch.tensor(v, dtype=SS.dtype, device=SS.device)
                       for v in (self.prior.mean, self.prior.width, self.prior.noise))
        return posterior_system(SS, SY, b0, w0, lam)

    def tensors(self) -> list[Tensor]:
        """Every tensor held."""
        return [t for t in (getattr(self, k) for k in self.TENSORS) if t is not None]

    def as_dict(self) -> dict[str, Any]:
        """The group's state, for a state dict."""
        values: dict[str, Any] = {k: getattr(self, k) for k in self.TENSORS}
        values.update(active=self.active, posterior=self.posterior,
                      prior=None if self.prior is None else self.prior.as_dict())
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any], device: torch.device | None) -> GroupCycle:
        """Read :meth:`as_dict`, moving the tensors to ``device``."""
        tensors = {k: None if values.get(k) is None or device is None else values[k].to(device)
                   for k in cls.TENSORS}
        return cls(bool(values["active"]), bool(values["posterior"]), prior=PriorScalars.from_dict(
            values.get("prior")), **tensors)
