r"""Where the default mode and the 2019 class (thesis mode) compute differently: one method per place.

:class:`Arithmetic` is the default mode. :class:`ThesisArithmetic` is the arithmetic of L. Bald's 2019
class, configured by the quirks that stay on (``Preconditioner(mode="thesis", fixes=...)``; each quirk
and its fix are described in :mod:`probprec.thesis`); with every fix it behaves exactly as the default.
The estimator (:mod:`probprec.estimator`) and the optimizer call these hooks and never ask which quirks
are on:

============================  ===============================================================
hook                          what differs
============================  ===============================================================
``configure``                 the observation policy (same minibatch) and orthogonalisation
``final_start``               the prior's schedule: where its final group starts (if any)
``paired_probes``             probes shared by pairs of prior minibatches, or one per minibatch
``prior_noise``               the noise level from paired products, or the reference formula
``step_size_usable``          whether a negative or non-finite step size is refused
``first_observation``         the posterior's first column from the prior's final group or means
``extra_switch_step``         one more minibatch without a product before the update
``direction_weight_decay``    weight decay in the active directions
``coefficients``              the active direction's coefficients (exact or the reference's)
``extract``                   eigenpairs (Rayleigh-Ritz or posterior mean) or singular pairs
``factors``                   the preconditioner's factors: Newton/paper rule or absolute units
``after_cycle``               the inner optimizer kept, or rebuilt (momentum reset)
``update_weight_decay``       weight decay before preconditioning, or left to the inner optimizer
``grad_keeps_product``        ``p.grad`` the true gradient after an estimation step, or :math:`g + Hv`
``keeps_preconditioned``      ``p.grad`` the true gradient after an update, or :math:`Pg`
============================  ===============================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from . import lowrank
from ._precision import dot
from .config import Config
from .cycle_state import GroupCycle, TensorCycle
from .posterior import (
    DirectionCoefficients,
    PosteriorSystem,
    direction_coefficients,
    posterior_factors,
    posterior_system,
)
from .precondition import condition_gain, newton_factors, paper_factors
from .prior import PriorEstimate
from .thesis import (
    ThesisPosterior,
    reference_factors,
    reference_noise,
    singular_extraction,
    thesis_direction_coefficients,
    thesis_factors,
    thesis_posterior,
)

__all__ = ["Arithmetic", "ThesisArithmetic", "arithmetic_for"]

_POSTERIOR_QUIRKS = frozenset({"mixed_normalization", "inconsistent_prior_mean", "transposed_capacitance"})


class Arithmetic:
    """The default mode's arithmetic."""

    def configure(self, config: Config) -> Config:
        """The configuration as this arithmetic runs it."""
        return config

    # -- the prior

    def final_start(self, prior_iterations: int) -> int:
        """First minibatch of the prior's final group, which probes along the mean of the earlier gradients.

        The final group is the last pair (P even) or the last minibatch (P odd); its mean product is the
        posterior's first observation.
        """
        P = prior_iterations
        return P - 2 if P % 2 == 0 else P - 1

    @property
    def paired_probes(self) -> bool:
        """Whether pairs of prior minibatches share a probe (their products' spread gives the noise)."""
        return True

    @property
    def keeps_prior_sums(self) -> tuple[bool, bool]:
        """Whether each tensor keeps the sum of the prior's probes and the sum of its products."""
        return False, False

    def prior_noise(self, estimate: PriorEstimate, group: GroupCycle, tensors: Sequence[TensorCycle],
                    prior_iterations: int) -> tuple[Tensor, bool]:
        r"""The noise level :math:`\lambda_0` and whether it was measured."""
        return estimate.noise, estimate.noise_measured

    def step_size_usable(self, step_size: float, noise: float) -> bool:
        """Whether the estimated step size may be used (else the optimizer falls back)."""
        return math.isfinite(step_size) and step_size > 0 and math.isfinite(noise)

    def first_observation(self, tensor: TensorCycle, step_size: float,
                          prior_iterations: int) -> tuple[Tensor | None, Tensor | None, float]:
        r"""The probe and product that become :math:`s_0, y_0` once scaled, and the scale."""
        return tensor.probe, tensor.probe_hvp, -step_size

    @property
    def extra_switch_step(self) -> bool:
        """Whether the cycle ends with one more minibatch (no product) after the K-th observation."""
        return False

    # -- the posterior

    def direction_weight_decay(self, weight_decay: float) -> float:
        """The weight decay the active directions include."""
        return weight_decay

    def coefficients(self, group: GroupCycle, j: int, Sg: Tensor,
                     orthogonalize: bool) -> tuple[DirectionCoefficients, Tensor, bool]:
        """Coefficients of direction ``j`` (batched over the group's tensors).

        Also returns the prior mean :math:`b_B` they use, and whether they already remove the components
        along the observed directions.
        """
        system = group.system(j)
        return direction_coefficients(system, Sg, orthogonalize), system.mean, orthogonalize

    # -- the estimate

    def extract(self, group: GroupCycle, S: Sequence[Tensor], Y: Sequence[Tensor], t: int, config: Config,
                ritz: lowrank.RitzCoefficients | None) -> lowrank.LowRank:
        """The low-rank estimate of tensor ``t`` of the group from its ``len(S)`` observations.

        ``ritz`` are the group's batched Ritz pairs (:meth:`uses_ritz`).
        """
        if config.extraction == "ritz":
            assert ritz is not None
            if config.apply_preconditioner:
                U, finite = lowrank.ritz_vectors(ritz.coefficients[t], S)
            else:  # the values are logged, the vectors would not be used
                U, finite = S[0][None, :0], torch.ones((), dtype=torch.bool, device=S[0].device)
            return lowrank.LowRank(U, ritz.eigvals[t], ritz.valid[t] & finite)
        return lowrank.posterior_eigen(S, Y, self._tensor_system(group, t, len(S)), config.est_rank)

    def uses_ritz(self, config: Config) -> bool:
        """Whether :meth:`extract` needs the group's batched Ritz pairs."""
        return config.extraction == "ritz"

    @staticmethod
    def _tensor_system(group: GroupCycle, t: int, m: int) -> PosteriorSystem:
        assert group.prior is not None
        system = group.system(m)
        noise = torch.tensor(group.prior.noise, dtype=system.M.dtype, device=system.M.device)
        return posterior_system(system.SS[t], system.SY[t], system.mean, system.width, noise)

    def factors(self, values: Tensor, valid: Tensor, prior_mean: float, config: Config) -> tuple[Tensor, float | None]:
        """The preconditioner's factors :math:`c_j - 1` and, for the paper rule, its gain."""
        if config.step_rule == "newton":
            return newton_factors(values, valid, torch.tensor(prior_mean, dtype=torch.float64)), None
        return paper_factors(values, valid, config.beta), float(condition_gain(values, valid))

    # -- the update

    def after_cycle(self, inner: Optimizer) -> None:
        """What happens to the inner optimizer when a new estimate is adopted."""

    def update_weight_decay(self, weight_decay: float) -> tuple[float, float]:
        """Weight decay added before preconditioning, and the one added to the inner optimizer's own."""
        return weight_decay, 0.0

    @property
    def grad_keeps_product(self) -> bool:
        """Whether ``p.grad`` holds :math:`g + Hv` after an estimation step (not the true gradient)."""
        return False

    @property
    def keeps_preconditioned(self) -> bool:
        """Whether ``p.grad`` keeps the preconditioned gradient after an update."""
        return False


class ThesisArithmetic(Arithmetic):
    """The 2019 class's arithmetic, with the given quirks on (:data:`probprec.thesis.QUIRKS`)."""

    def __init__(self, quirks: frozenset[str]) -> None:
        self.quirks = quirks

    @override
    def configure(self, config: Config) -> Config:
        if "same_batch_observations" in self.quirks:
            config = dataclasses.replace(config, observe="same")
        if "unorthogonalized_directions" in self.quirks:
            config = dataclasses.replace(config, orthogonalize=False)
        return config

    @override
    def final_start(self, prior_iterations: int) -> int:
        if "reference_schedule" in self.quirks:
            return prior_iterations  # no final group: the first observation averages the whole prior
        if "probe_noise" in self.quirks:
            return prior_iterations - 1  # no pairs: the final group is the last minibatch
        return super().final_start(prior_iterations)

    @override
    @property
    def paired_probes(self) -> bool:
        return "probe_noise" not in self.quirks

    @override
    @property
    def keeps_prior_sums(self) -> tuple[bool, bool]:
        return "probe_noise" in self.quirks, "reference_schedule" in self.quirks

    @override
    def prior_noise(self, estimate: PriorEstimate, group: GroupCycle, tensors: Sequence[TensorCycle],
                    prior_iterations: int) -> tuple[Tensor, bool]:
        if "probe_noise" not in self.quirks:
            return super().prior_noise(estimate, group, tensors, prior_iterations)
        assert group.curvature is not None
        sums = [t.probe_sum for t in tensors if t.probe_sum is not None]
        sq_of_sum = torch.stack([dot(v, v).to(group.curvature) for v in sums]).sum()
        return reference_noise(group.curvature[2], sq_of_sum, prior_iterations), True

    @override
    def step_size_usable(self, step_size: float, noise: float) -> bool:
        return "unguarded_step_size" in self.quirks or super().step_size_usable(step_size, noise)

    @override
    def first_observation(self, tensor: TensorCycle, step_size: float,
                          prior_iterations: int) -> tuple[Tensor | None, Tensor | None, float]:
        if "reference_schedule" in self.quirks:  # the means of the prior's gradients and of its products
            return tensor.grad_sum, tensor.hvp_sum, -step_size / prior_iterations
        return super().first_observation(tensor, step_size, prior_iterations)

    @override
    @property
    def extra_switch_step(self) -> bool:
        return "reference_schedule" in self.quirks

    @override
    def direction_weight_decay(self, weight_decay: float) -> float:
        return 0.0 if "unregularized_directions" in self.quirks else weight_decay

    def _posterior(self, group: GroupCycle, m: int) -> ThesisPosterior:
        """The reference's posterior of the group over ``m`` observations."""
        assert group.gram_ss is not None and group.gram_sy is not None and group.prior is not None
        alpha = group.prior.step_size
        if "inconsistent_prior_mean" in self.quirks:
            shift = 1.0 if m == 1 else alpha  # the setup's residual Y - S, later Y - alpha S
        else:
            shift = 1.0 / alpha
        return thesis_posterior(group.gram_ss[:, :m, :m], group.gram_sy[:, :m, :m], alpha, group.prior.width,
                                group.prior.noise, "mixed_normalization" in self.quirks, shift)

    @override
    def coefficients(self, group: GroupCycle, j: int, Sg: Tensor,
                     orthogonalize: bool) -> tuple[DirectionCoefficients, Tensor, bool]:
        if not self.quirks & _POSTERIOR_QUIRKS:
            return super().coefficients(group, j, Sg, orthogonalize)
        post = self._posterior(group, j)
        transposed = "transposed_capacitance" in self.quirks
        return thesis_direction_coefficients(post, Sg, transposed), post.mean, False

    def _quirky_extraction(self, config: Config) -> bool:
        singular = "singular_values" in self.quirks
        return singular or (bool(self.quirks & _POSTERIOR_QUIRKS) and config.extraction == "posterior")

    @override
    def uses_ritz(self, config: Config) -> bool:
        return not self._quirky_extraction(config) and super().uses_ritz(config)

    @override
    def extract(self, group: GroupCycle, S: Sequence[Tensor], Y: Sequence[Tensor], t: int, config: Config,
                ritz: lowrank.RitzCoefficients | None) -> lowrank.LowRank:
        if not self._quirky_extraction(config):
            return super().extract(group, S, Y, t, config, ritz)
        if self.quirks & _POSTERIOR_QUIRKS:
            post = self._posterior(group, len(S))
            one = post._replace(**{f: getattr(post, f)[t] for f in ("SS", "SY", "K", "Minv_unit")})
            X, mean, width = thesis_factors(S, Y, one), one.mean, one.width
        else:
            system = self._tensor_system(group, t, len(S))
            X, mean, width = posterior_factors(S, Y, system), system.mean, system.width
        if "singular_values" in self.quirks:
            return singular_extraction(S, X, mean, width, config.est_rank)
        return lowrank.eigen_from_factors(S, X, mean, width, config.est_rank)

    @override
    def factors(self, values: Tensor, valid: Tensor, prior_mean: float, config: Config) -> tuple[Tensor, float | None]:
        if "absolute_units" in self.quirks:
            return reference_factors(values, valid), None
        return super().factors(values, valid, prior_mean, config)

    @override
    def after_cycle(self, inner: Optimizer) -> None:
        if "inner_rebuilt" in self.quirks:  # the reference builds a new inner optimizer: its state resets
            inner.state.clear()

    @override
    def update_weight_decay(self, weight_decay: float) -> tuple[float, float]:
        if "unregularized_directions" in self.quirks:  # the inner optimizer adds the decay
            return 0.0, weight_decay
        return super().update_weight_decay(weight_decay)

    @override
    @property
    def grad_keeps_product(self) -> bool:
        return "polluted_gradient" in self.quirks  # the reference leaves g + Hv in p.grad

    @override
    @property
    def keeps_preconditioned(self) -> bool:
        return "polluted_gradient" in self.quirks


def arithmetic_for(config: Config) -> Arithmetic:
    """The arithmetic of a configuration: the default one, or the 2019 class's with its quirks."""
    return ThesisArithmetic(config.quirks) if config.mode == "thesis" else Arithmetic()
