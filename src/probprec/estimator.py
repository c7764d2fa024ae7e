r"""One estimation cycle: the prior, the active posterior, and the low-rank estimate it ends with.

A :class:`CycleEstimator` is created fresh for every cycle (``Preconditioner.start_estimate``). At the
current parameters :math:`\theta_0` it spends

1. ``P`` minibatches on the prior (:mod:`probprec.prior`). They are probed in pairs that share a probe,
   (0, 1), (2, 3), ..., so that the spread of their Hessian-vector products measures the noise; the
   final group (the last pair, or the last minibatch when P is odd) probes along the mean of the
   earlier gradients instead. That probe, scaled by :math:`-\alpha`, is the first active direction
   :math:`s_0` (paper Alg. 1, line 2), and the final group's mean product its observation :math:`y_0`,
   taken on minibatches after the ones it was built from; so the prior's P products also give the first
   of the K observations.
2. ``K - 1`` more minibatches on the posterior (:mod:`probprec.posterior`): each observes the pending
   direction :math:`y_j = \tilde B s_j` and chooses the next one, :math:`s = -\hat B^{-1} g` (paper eq. 16).
3. the extraction of the top ``k`` curvature directions and values per tensor (:mod:`probprec.lowrank`)
   and the preconditioner's factors (:mod:`probprec.precondition`): an immutable :class:`Estimate`.

Every place where the 2019 class computes differently is a hook of the :class:`~probprec.arithmetic.Arithmetic`
it is given. The estimator never changes the parameters, the parameter groups or the inner optimizer:
each step returns an :class:`Outcome` that the optimizer acts on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import lowrank
from ._precision import accumulation_dtype, dot, widened
from .arithmetic import Arithmetic
from .config import Config
from .cycle_state import GroupCycle, PriorScalars, TensorCycle
from .posterior import add_rows, combine_direction, direction_scale, row_dots
from .prior import curvature_sums, estimate_prior, noise_sums
from .warm_start import Memory, carried_direction, combine

__all__ = ["CycleEstimator", "Estimate", "Event", "Outcome", "TensorEstimate"]

Groups = Sequence[dict[str, Any]]
CONVERGED = 1e-2
"""With ``adaptive_observations``: the posterior ends once no top curvature moved by more than this
(relative) with the last observation; noise keeps them moving, so a noisy problem observes longer."""
HVP = Callable[[list[Tensor], list[Tensor]], list[Tensor]]


@dataclass(frozen=True)
class Event:
    """Something the optimizer records in its log: a fallback, a skipped group, a restart."""

    kind: str
    message: str
    group: int | None = None


@dataclass(frozen=True)
class TensorEstimate:
    """The estimate of one parameter tensor."""

    eigvecs: Tensor | None
    """``(a, n)`` orthonormal rows in the parameter's dtype (None: nothing to apply)."""
    eigvals: Tensor | None
    """``(a,)`` their curvatures, decreasing."""
    factors: Tensor | None
    """``(b,)``, ``b <= a``: :math:`c_j - 1` of the directions the preconditioner rescales."""
    eigenvalues: tuple[float, ...]
    """The valid estimated curvatures (for the log)."""
    preconditioned: int
    """How many directions the preconditioner rescales."""
    weights: Tensor | None = None
    """``(a,)``: how many cycles each curvature averages (:mod:`probprec.warm_start`)."""


@dataclass(frozen=True)
class Estimate:
    """What a complete cycle gives: per tensor (global parameter index) and per group."""

    tensors: dict[int, TensorEstimate]
    gains: dict[int, float]
    """Per active group: the paper rule's condition gain (1 for the Newton rule)."""
    events: tuple[Event, ...] = ()
    observations: int = 0
    """The posterior observations it rests on."""


@dataclass(frozen=True)
class Outcome:
    """What one estimation step asks of the optimizer."""

    restart: str | None = None
    """The cycle failed (the reason): start a new one."""
    priors: dict[int, PriorScalars] = field(default_factory=dict)
    """Priors completed at this step, by group."""
    step_sizes: dict[int, float | None] = field(default_factory=dict)
    """Step sizes to set, by group."""
    events: tuple[Event, ...] = ()
    estimate: Estimate | None = None
    """The cycle is complete: adopt the estimate and take the first update."""


def _all_finite(loss: Any, checks: list[Tensor]) -> str | None:
    """A reason if the loss or any checked sum is not finite (one host sync)."""
    if loss is not None and not math.isfinite(float(loss)):
        return f"non-finite loss {float(loss)}"
    if checks and not bool(torch.cat([c.reshape(-1).to(checks[0].device) for c in checks]).isfinite().all()):
        return "non-finite gradient or Hessian-vector product"
    return None


def _regularised_grad(p: Tensor, weight_decay: float) -> Tensor:
    g = p.grad.detach().reshape(-1)  # type: ignore[union-attr]
    return g + weight_decay * p.detach().reshape(-1) if weight_decay else g


def _fallback_step_size(previous: float | None, alpha: float, group: int) -> tuple[float | None, Event]:
    r"""The previous cycle's step size, else :math:`|\alpha|`, for a step size that cannot be used."""
    if previous is not None:
        choice, value = "the previous cycle's step size", previous
    elif math.isfinite(alpha) and alpha != 0:
        choice, value = "its absolute value", abs(alpha)
    else:
        choice, value = "none available", None
    message = (f"estimated step size {alpha!r} is not positive and finite (negative or zero curvature along "
               f"the gradients); used {choice}: {value!r}; no preconditioner this cycle")
    return value, Event("fallback", message, group)


class CycleEstimator:
    """The state and the steps of one estimation cycle (module docstring).

    Args:
        config: the optimizer's options, as the arithmetic runs them.
        arithmetic: the default or the 2019 arithmetic.
        group_params: the parameters of each group that takes part (the groups at the cycle's start).
        memory: with warm starts, the previous estimate per parameter index (:mod:`probprec.warm_start`).
        elapsed: the updates since the previous estimate.
    """

    def __init__(self, config: Config, arithmetic: Arithmetic, group_params: Sequence[Sequence[Tensor]],
                 memory: dict[int, Memory] | None = None, elapsed: int = 0) -> None:
        self.config, self.arithmetic = config, arithmetic
        self.memory, self.elapsed = dict(memory or {}), elapsed
        self.params = [list(ps) for ps in group_params]
        self.groups = [GroupCycle(active=True) for _ in self.params]
        self.tensors = [[TensorCycle() for _ in ps] for ps in self.params]
        self.phase, self.step_index, self.observed, self.switch = "prior", 0, 0, False
        self.ritz_values: list[float] | None = None  # the top curvatures after the last observation

    # ------------------------------------------------------------------ public

    @property
    def needs_curvature(self) -> bool:
        """Whether the next step computes a Hessian-vector product."""
        if self.phase == "posterior":  # the reference schedule's last step, and an idle posterior, need none
            return not self.switch and bool(self._posterior_groups())
        return True

    @property
    def progressed(self) -> bool:
        """Whether this cycle has gathered anything yet."""
        return self.phase == "posterior" or self.step_index > 0

    def step(self, groups: Groups, loss: Any, hvp: HVP) -> Outcome:
        """One minibatch of the cycle; ``groups`` are the optimizer's parameter groups (read only)."""
        if self.phase == "prior":
            return self._prior_step(groups, loss, hvp)
        return self._posterior_step(groups, loss, hvp)

    def copy(self) -> CycleEstimator:
        """A copy to restore if a step fails.

        Steps change no tensor they did not create before their last point of failure (the
        Hessian-vector product), except the Gram matrices, which are copied.
        """
        twin = CycleEstimator.__new__(CycleEstimator)
        twin.config, twin.arithmetic, twin.params = self.config, self.arithmetic, self.params
        twin.memory, twin.elapsed = self.memory, self.elapsed
        twin.groups = [g.copy() for g in self.groups]
        twin.tensors = [[t.copy() for t in ts] for ts in self.tensors]
        twin.phase, twin.step_index, twin.observed, twin.switch = (self.phase, self.step_index, self.observed,
                                                                   self.switch)
        twin.ritz_values = self.ritz_values
        return twin

    def tensors_held(self) -> list[Tensor]:
        """Every tensor the cycle holds (its buffers, the Gram matrices, the previous estimate it starts from)."""
        tensors = [t for ts in self.tensors for tc in ts for t in tc.tensors()]
        tensors += [t for g in self.groups for t in g.tensors()]
        return tensors + [t for m in self.memory.values() for t in (m.directions, m.values, m.weights)]

    def state_dict(self) -> dict[str, Any]:
        """The cycle's state, tensors by global parameter index (the optimizer's ``param_groups`` order)."""
        tensors = {}
        for index, tc in enumerate(tc for ts in self.tensors for tc in ts):
            values = tc.as_dict()
            if values:
                tensors[index] = values
        return {"phase": self.phase, "step": self.step_index, "observed": self.observed, "switch": self.switch,
                "groups": [g.as_dict() for g in self.groups], "tensors": tensors, "ritz_values": self.ritz_values,
                "elapsed": self.elapsed,
                "memory": {i: {"directions": m.directions, "values": m.values, "weights": m.weights}
                           for i, m in self.memory.items()}}

    @classmethod
    def from_state_dict(cls, config: Config, arithmetic: Arithmetic, group_params: Sequence[Sequence[Tensor]],
                        state: dict[str, Any]) -> CycleEstimator:
        """The estimator of :meth:`state_dict`, its tensors on their parameters' devices."""
        self = cls(config, arithmetic, group_params[: len(state["groups"])])
        self.phase, self.step_index = state["phase"], int(state["step"])
        self.observed, self.switch = int(state["observed"]), bool(state["switch"])
        self.ritz_values = state.get("ritz_values")
        self.elapsed = int(state.get("elapsed", 0))
        flat_params = [p for ps in group_params for p in ps]
        self.memory = {int(i): Memory(m["directions"].to(flat_params[int(i)].device),
                                      m["values"].to(flat_params[int(i)].device),
                                      m["weights"].to(flat_params[int(i)].device))
                       for i, m in state.get("memory", {}).items()}
        self.groups = [GroupCycle.from_dict(g, ps[0].device if ps else None)
                       for g, ps in zip(state["groups"], self.params, strict=True)]
        flat = [p for ps in self.params for p in ps]
        cycles = [TensorCycle.from_dict(state["tensors"].get(i, {}), p) for i, p in enumerate(flat)]
        offsets = [0]
        for ps in self.params:
            offsets.append(offsets[-1] + len(ps))
        self.tensors = [cycles[offsets[i]:offsets[i + 1]] for i in range(len(self.params))]
        return self

    # ------------------------------------------------------------------- prior

    def _prior_step(self, groups: Groups, loss: Any, hvp: HVP) -> Outcome:
        t, P = self.step_index, self.config.prior_iterations
        final_start = self.arithmetic.final_start(P)
        first_of_pair = t % 2 == 0 or not self.arithmetic.paired_probes
        participants = [(i, [k for k, p in enumerate(self.params[i]) if p.grad is not None])
                        for i, g in enumerate(self.groups) if g.active]
        params = [self.params[i][k] for i, ks in participants for k in ks]
        if not params:
            raise RuntimeError("Preconditioner.step() found no parameter with a gradient")
        cycles = [self.tensors[i][k] for i, ks in participants for k in ks]
        gradients = [_regularised_grad(p, groups[i]["weight_decay"]) for i, ks in participants for p in
                     (self.params[i][k] for k in ks)]
        probes = [self._probe(tc, v, t, final_start, first_of_pair) for tc, v in zip(cycles, gradients, strict=True)]
        hvps = hvp(params, probes)
        for tc, v, probe in zip(cycles, gradients, probes, strict=True):  # past the HVP: commit
            if t < final_start:
                tc.grad_sum = v.clone() if tc.grad_sum is None else tc.grad_sum.add_(v)
            elif t == final_start:
                tc.grad_sum = None
            tc.probe = probe
        checks, offset = [], 0
        for i, ks in participants:
            v_g, h_g = probes[offset:offset + len(ks)], hvps[offset:offset + len(ks)]
            offset += len(ks)
            if not ks:
                continue
            wd = groups[i]["weight_decay"]
            if wd:
                h_g = [h.add_(v, alpha=wd) for h, v in zip(h_g, v_g, strict=True)]
            checks.append(self._accumulate_prior(i, ks, v_g, h_g, first_of_pair))
        reason = _all_finite(loss, checks)
        if reason is not None:
            return Outcome(restart=reason)
        self.step_index = t + 1
        return self._finish_prior(groups) if t + 1 == P else Outcome()

    @staticmethod
    def _probe(tc: TensorCycle, v: Tensor, t: int, final_start: int, first_of_pair: bool) -> Tensor:
        """This minibatch's probe: the final group's mean gradient, a new pair's gradient, or the pair's."""
        if t == final_start:
            return v.clone() if tc.grad_sum is None else tc.grad_sum / final_start
        if first_of_pair or tc.probe is None:
            return v.clone()
        return tc.probe

    def _accumulate_prior(self, index: int, ks: list[int], probes: list[Tensor], hvps: list[Tensor],
                          first_of_pair: bool) -> Tensor:
        group = self.groups[index]
        curv = curvature_sums(probes, hvps)
        group.curvature = curv if group.curvature is None else group.curvature + curv
        check = curv
        keeps_probes, keeps_hvps = self.arithmetic.keeps_prior_sums
        pairs = []
        for k, v, h in zip(ks, probes, hvps, strict=True):
            tc = self.tensors[index][k]
            if keeps_probes:
                tc.probe_sum = v.clone() if tc.probe_sum is None else tc.probe_sum.add_(v)
            if keeps_hvps:
                tc.hvp_sum = h.clone() if tc.hvp_sum is None else tc.hvp_sum.add_(h)
                if keeps_probes:
                    continue
            first = None if first_of_pair else tc.probe_hvp
            if first is None:
                tc.probe_hvp = h
            else:
                difference = first.sub_(h)
                pairs.append((v, difference))
                tc.probe_hvp = h.add_(difference, alpha=0.5)  # mean of the pair's products
        if pairs:
            noise = noise_sums([v for v, _ in pairs], [d for _, d in pairs])
            group.noise = noise if group.noise is None else group.noise + noise
            check = torch.cat((curv, noise))
        return check

    def _finish_prior(self, groups: Groups) -> Outcome:
        """Turn the prior sums into scalars (one host sync), guard the step sizes, set up the posterior."""
        priors, step_sizes, events = self._priors(groups)
        missing = [i for i, (g, gc) in enumerate(zip(groups, self.groups, strict=False))
                   if g["adaptive_lr"] and step_sizes.get(i, g["step_size"]) is None and gc.active]
        if missing:
            return Outcome(f"no usable step size for group(s) {missing}", priors, step_sizes, tuple(events))
        posterior = self._posterior_groups()
        for i in posterior:
            self._first_observation(i)
        for ts in self.tensors:
            for tc in ts:
                tc.clear_prior()
        self.phase, self.step_index, self.observed = "posterior", 0, 1
        K, observe = self.config.num_observations, self.config.observe
        estimate = None
        if self.arithmetic.extra_switch_step:  # K - 1 posterior minibatches, then one without a product
            self.switch = K == 1
            if posterior and observe == "next" and K > 1:
                self._form_directions(groups, 1)
        elif not posterior or K == 1:
            estimate = self._finish(groups)
        elif observe == "next":
            self._form_directions(groups, 1)
        return Outcome(None, priors, step_sizes, tuple(events), estimate)

    def _priors(self, groups: Groups) -> tuple[dict[int, PriorScalars], dict[int, float | None], list[Event]]:
        priors: dict[int, PriorScalars] = {}
        step_sizes: dict[int, float | None] = {}
        events: list[Event] = []
        for i, gc in enumerate(self.groups):
            if not gc.active:
                continue
            if gc.curvature is None:
                gc.active = False
                events.append(Event("skip", "no parameter of this group had a gradient during the prior", i))
                continue
            est = estimate_prior(gc.curvature, gc.noise, self.config.noise_floor)
            noise_t, measured = self.arithmetic.prior_noise(est, gc, self.tensors[i], self.config.prior_iterations)
            alpha, mean, width, noise = torch.stack((est.step_size, est.mean, est.width, noise_t)).tolist()
            gc.prior = priors[i] = PriorScalars(alpha, mean, width, noise, measured)
            usable = self.arithmetic.step_size_usable(alpha, noise)
            gc.posterior = usable and self.config.build_preconditioner
            if usable:
                step_sizes[i] = alpha
            else:
                step_sizes[i], event = _fallback_step_size(groups[i]["step_size"], alpha, i)
                events.append(event)
        return priors, step_sizes, events

    def _first_observation(self, index: int) -> None:
        r"""Set :math:`s_0` and :math:`y_0` from the prior (the arithmetic says from which buffers)."""
        group, K = self.groups[index], self.config.num_observations
        assert group.prior is not None
        params = self.params[index]
        device = params[0].device
        small = accumulation_dtype(device)
        group.gram_ss = torch.zeros((len(params), K, K), dtype=small, device=device)
        group.gram_sy = torch.zeros((len(params), K, K), dtype=small, device=device)
        entries = []
        for p, tc in zip(params, self.tensors[index], strict=True):
            probe, product, scale = self.arithmetic.first_observation(tc, group.prior.step_size,
                                                                      self.config.prior_iterations)
            if probe is None or product is None:
                s0, y0 = p.new_zeros(p.numel()), p.new_zeros(p.numel())
            else:  # the prior's buffers become the first row of S and of Y
                s0, y0 = probe.mul_(scale), product.mul_(scale)
            tc.directions, tc.observations = [s0], [y0]
            s0_wide = widened(s0)
            entries.append(torch.stack((torch.dot(s0_wide, s0_wide), dot(s0_wide, y0))).to(device, small))
        entries_t = torch.stack(entries)
        group.gram_ss[:, 0, 0] = entries_t[:, 0]
        group.gram_sy[:, 0, 0] = entries_t[:, 1]

    # --------------------------------------------------------------- posterior

    def _posterior_groups(self) -> list[int]:
        return [i for i, g in enumerate(self.groups) if g.active and g.posterior]

    def _posterior_step(self, groups: Groups, loss: Any, hvp: HVP) -> Outcome:
        if self.switch:  # the reference schedule's extra minibatch: extract and update
            return Outcome(estimate=self._finish(groups))
        j, K, observe = self.observed, self.config.num_observations, self.config.observe
        checks: list[Tensor] = []
        building = bool(self._posterior_groups())
        if building and observe == "same":
            checks += self._form_directions(groups, j)
        if building:
            checks += self._observe(groups, j, hvp)
        observed = j + 1
        last = observed == K or (building and self.config.adaptive_observations and self._converged(observed))
        if building and observe == "next" and not last:
            checks += self._form_directions(groups, observed)
        elif last:
            checks += [p.grad.norm() for g in groups for p in g["params"] if p.grad is not None]
        reason = _all_finite(loss, checks)
        if reason is not None:
            return Outcome(restart=reason)
        self.step_index, self.observed = self.step_index + 1, observed
        if not last:
            return Outcome()
        if self.arithmetic.extra_switch_step:
            self.switch = True
            return Outcome()
        return Outcome(estimate=self._finish(groups))

    def _converged(self, m: int) -> bool:
        """Whether the top curvatures moved less than ``CONVERGED`` (relative) with the ``m``-th observation.

        Then a further observation would not change the estimate beyond its noise (one host sync).
        """
        k = self.config.est_rank
        if m < k:
            return False
        values = []
        for i in self._posterior_groups():
            gc = self.groups[i]
            assert gc.gram_ss is not None and gc.gram_sy is not None
            ritz = lowrank.ritz_coefficients(gc.gram_ss[:, :m, :m], gc.gram_sy[:, :m, :m], k)
            values.append(torch.where(ritz.valid, ritz.eigvals, torch.full_like(ritz.eigvals, math.nan)))
        current = torch.cat([v.reshape(-1) for v in values]).tolist() if values else []
        previous, self.ritz_values = self.ritz_values, current
        if previous is None or len(previous) != len(current):
            return False
        return all(abs(a - b) <= CONVERGED * abs(b) for a, b in zip(current, previous, strict=True)
                   if not (math.isnan(a) and math.isnan(b)))

    def _observe(self, groups: Groups, j: int, hvp: HVP) -> list[Tensor]:
        """Observe direction ``j`` of every tensor on this minibatch (one product for all) and extend S Y'."""
        posterior = self._posterior_groups()
        pairs = [(p, tc) for i in posterior for p, tc in zip(self.params[i], self.tensors[i], strict=True)
                 if p.grad is not None]
        products = hvp([p for p, _ in pairs], [tc.directions[j] for _, tc in pairs]) if pairs else []
        by_param = dict(zip(map(id, (p for p, _ in pairs)), products, strict=True))
        checks = []
        for i in posterior:
            gc, wd = self.groups[i], groups[i]["weight_decay"]
            assert gc.gram_sy is not None
            columns = []
            for p, tc in zip(self.params[i], self.tensors[i], strict=True):
                y = by_param.get(id(p))
                if y is None:
                    y = p.new_zeros(p.numel())
                elif wd:
                    y.add_(tc.directions[j], alpha=wd)
                tc.observations.append(y)
                columns.append(row_dots(tc.directions[: j + 1], y))
            column = torch.stack([c.to(gc.gram_sy) for c in columns])
            gc.gram_sy[:, : j + 1, j] = column
            checks.append(column)
        return checks

    def _form_directions(self, groups: Groups, j: int) -> list[Tensor]:
        """Set direction ``j`` of every tensor from this minibatch's gradient and observations ``0..j-1``."""
        checks = []
        for i in self._posterior_groups():
            gc = self.groups[i]
            assert gc.gram_ss is not None and gc.gram_sy is not None
            wd = self.arithmetic.direction_weight_decay(groups[i]["weight_decay"])
            grads = [None if p.grad is None else _regularised_grad(p, wd) for p in self.params[i]]
            Sg = torch.stack([
                (torch.zeros(j, device=gc.gram_ss.device) if g is None else row_dots(tc.directions[:j], g))
                .to(gc.gram_ss) for tc, g in zip(self.tensors[i], grads, strict=True)
            ])
            directions = self._directions(i, j, grads, Sg)
            for tc, s in zip(self.tensors[i], directions, strict=True):
                tc.directions.append(s)
            if not self.config.orthogonalize:
                rows = torch.stack([row_dots(tc.directions[: j + 1], s).to(gc.gram_ss)
                                    for tc, s in zip(self.tensors[i], directions, strict=True)])
                gc.gram_ss[:, j, : j + 1] = rows
                gc.gram_ss[:, : j + 1, j] = rows
            gc.gram_sy[:, j, :j] = torch.stack([row_dots(tc.observations[:j], s).to(gc.gram_sy)
                                                for tc, s in zip(self.tensors[i], directions, strict=True)])
            checks.append(gc.gram_ss[:, j, j])
            checks.append(Sg.reshape(-1))
        return checks

    def _directions(self, index: int, j: int, grads: list[Tensor | None], Sg: Tensor) -> list[Tensor]:
        """The new direction of each tensor of group ``index``, orthogonalised and rescaled as configured.

        With warm starts, a previous top direction replaces the active one (at its length).
        """
        gc, orthogonalize = self.groups[index], self.config.orthogonalize
        assert gc.gram_ss is not None
        small = gc.gram_ss.dtype
        coef, mean, projected = self.arithmetic.coefficients(gc, j, Sg, orthogonalize)
        first = sum(len(ps) for ps in self.params[:index])
        directions, norms = [], []
        for t, (p, tc, g) in enumerate(zip(self.params[index], self.tensors[index], grads, strict=True)):
            if g is None:
                s = p.new_zeros(p.numel())
            else:
                s = combine_direction(g, tc.directions[:j], tc.observations[:j], mean,
                                      (coef.observations[t], coef.directions[t]))
                carried = (carried_direction(self.memory.get(first + t), j)
                           if j <= self.config.num_observations - 2 else None)  # keep one active direction
                if carried is not None:  # the previous top direction, at the length of the active one
                    s = carried.to(s.dtype) * (torch.linalg.vector_norm(s) / torch.linalg.vector_norm(carried))
                if orthogonalize and (not projected or carried is not None):  # project numerically
                    coef.projected_sqnorm[t] = self._project(s, tc.directions[:j], small)
            directions.append(s)
            norms.append(torch.linalg.vector_norm(s, dtype=small))
        if orthogonalize:
            norm = torch.stack([x.to(gc.gram_ss) for x in norms])
            scale = direction_scale(norm, coef.projected_sqnorm)
            for t, s in enumerate(directions):
                s.mul_(scale[t].to(s.dtype))
            gc.gram_ss[:, j, j] = (norm * scale) ** 2  # orthogonal to the earlier directions
        return directions

    @staticmethod
    def _project(s: Tensor, rows: Sequence[Tensor], small: torch.dtype) -> Tensor:
        """Remove from ``s`` (in place) its components along the mutually orthogonal ``rows``.

        Returns the squared norm removed.
        """
        sq = torch.stack([dot(r, r) for r in rows])
        before = torch.linalg.vector_norm(s, dtype=small) ** 2
        add_rows(s, rows, -row_dots(rows, s) / torch.where(sq > 0, sq, torch.ones_like(sq)))
        after = torch.linalg.vector_norm(s, dtype=small) ** 2
        return (before - after).clamp_min(0)

    # -------------------------------------------------------------- extraction

    def _finish(self, groups: Groups) -> Estimate:
        """Extract the low-rank estimate of every tensor (one host sync) and compute the factors."""
        offsets = [0]
        for ps in self.params:
            offsets.append(offsets[-1] + len(ps))
        m = self.observed  # the observations made (fewer than K when the estimate converged earlier)
        pending = []
        for i in self._posterior_groups():
            gc = self.groups[i]
            assert gc.gram_ss is not None and gc.gram_sy is not None
            uses_ritz = self.arithmetic.uses_ritz(self.config)
            ritz = (lowrank.ritz_coefficients(gc.gram_ss[:, :m, :m], gc.gram_sy[:, :m, :m], self.config.est_rank)
                    if uses_ritz else None)
            for t, (p, tc) in enumerate(zip(self.params[i], self.tensors[i], strict=True)):
                S, Y = tc.directions[:m], tc.observations[:m]
                if p.dtype not in (torch.float32, torch.float64):  # half precision: extract in float32
                    S, Y = [r.float() for r in S], [r.float() for r in Y]
                pending.append((i, offsets[i] + t, p, self.arithmetic.extract(gc, S, Y, t, self.config, ritz)))
        host: list[float] = []
        if pending:
            device = pending[0][3].eigvals.device
            host = torch.cat([torch.cat((low.eigvals, low.valid.to(low.eigvals.dtype))).to(device)
                              for *_, low in pending]).tolist()
        tensors, gains, events = self._tensor_estimates(pending, host)
        gains_by_group = {i: gains.get(i, 1.0) for i, gc in enumerate(self.groups) if gc.active}
        return Estimate(tensors, gains_by_group, tuple(events), m)

    def _tensor_estimates(self, pending: list[tuple[int, int, Tensor, lowrank.LowRank]],
                          host: list[float]) -> tuple[dict[int, TensorEstimate], dict[int, float], list[Event]]:
        tensors: dict[int, TensorEstimate] = {}
        gains: dict[int, float] = {}
        events: list[Event] = []
        offset = 0
        for i, index, p, low in pending:
            k = low.eigvals.numel()
            eigvals, valid = host[offset:offset + k], [bool(v) for v in host[offset + k:offset + 2 * k]]
            offset += 2 * k
            if not all(math.isfinite(e) for e, v in zip(eigvals, valid, strict=True) if v):
                events.append(Event("fallback", "non-finite low-rank estimate; tensor not preconditioned", i))
                tensors[index] = TensorEstimate(None, None, None, (), 0)
                continue
            eigvals, weights = combine(eigvals, valid, low.eigvecs[: len(eigvals)], self.memory.get(index),
                                       self.elapsed)
            kept = tuple(e for e, v in zip(eigvals, valid, strict=True) if v)
            prior = self.groups[i].prior
            assert prior is not None
            factors, gain = self.arithmetic.factors(torch.tensor(eigvals, dtype=torch.float64),
                                                    torch.tensor(valid, dtype=torch.bool), prior.mean, self.config)
            if gain is not None:
                gains[i] = min(gains.get(i, math.inf), gain)
            # valid slots come first and the values decrease, so the rescaled directions are a prefix
            num_valid = sum(valid)
            num_active = max((j + 1 for j, f in enumerate(factors.tolist()[:num_valid]) if f != 0.0), default=0)
            if self.config.apply_preconditioner and num_valid:
                tensors[index] = TensorEstimate(
                    low.eigvecs[:num_valid].to(p.dtype).contiguous(),
                    torch.tensor(eigvals[:num_valid], dtype=p.dtype, device=p.device),
                    factors[:num_active].to(dtype=p.dtype, device=p.device), kept, num_active,
                    torch.tensor(weights[:num_valid], dtype=p.dtype, device=p.device))
            else:
                tensors[index] = TensorEstimate(None, None, None, kept, 0)
        return tensors, gains, events
