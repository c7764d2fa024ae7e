r"""The :class:`Preconditioner`: the phase machine and the ``torch.optim`` plumbing.

The mathematics lives in :mod:`probprec.prior`, :mod:`probprec.posterior`,
:mod:`probprec.lowrank` and :mod:`probprec.precondition`; this module only decides
which of them runs at which ``step()``, keeps the state, and hands the
preconditioned gradient to an inner ``torch.optim`` optimizer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import lowrank as _lowrank
from .hvp import has_graph, hessian_vector_product
from ._precision import accumulation_dtype
from .posterior import PosteriorSystem, active_direction, posterior_system
from .precondition import condition_gain, newton_factors, paper_factors, precondition
from .prior import curvature_sums, estimate_prior, noise_sums

__all__ = ["Preconditioner"]

_PHASES = ("prior", "posterior", "optimize")
_STEP_RULES = ("newton", "paper")
_EXTRACTIONS = ("ritz", "posterior")
_OBSERVATIONS = ("next", "same")
_MAX_EVENTS = 200

# Per-parameter state keys.
_GRAD_SUM = "grad_sum"  # sum of the regularised prior gradients
_PROBE = "probe"  # probe shared by a pair of prior minibatches
_PROBE_HVP = "probe_hvp"  # HVP of the first minibatch of the pair
_DIRECTIONS = "directions"  # (K, n) observed directions s_i
_OBSERVATIONS_KEY = "observations"  # (K, n) their products y_i
_GRAM_SS = "gram_ss"  # (K, K) S S', filled as directions arrive
_GRAM_SY = "gram_sy"  # (K, K) S Y', filled as directions and observations arrive
_EIGVECS = "eigvecs"  # (k', n) estimated top curvature directions, orthonormal rows
_EIGVALS = "eigvals"  # (k',) their estimated curvatures, decreasing
_FACTORS = "factors"  # (a,) c_j - 1 of the first a <= k' directions (the rescaled ones)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_float(name: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        accepted = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {accepted}, got {value!r}")
    return float(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class Preconditioner(Optimizer):
    r"""Probabilistic preconditioning of a ``torch.optim`` optimizer (de Roos & Hennig, AISTATS 2019).

    Every *cycle* (started by the constructor and by :meth:`start_estimate`) the
    optimizer stays at the current parameters :math:`\theta_0` and spends

    1. ``prior_iterations`` (:math:`P`) minibatches on the prior: one
       Hessian-vector product each gives the step size :math:`\alpha`, the prior
       mean :math:`B_0 = I/\alpha`, width :math:`w_0` and noise :math:`\lambda_0`
       (:mod:`probprec.prior`);
    2. ``num_observations`` (:math:`K`) minibatches on the active posterior: each
       observes one direction :math:`s_i` (:math:`y_i = \tilde B s_i`) and chooses the
       next one, :math:`s = -\hat B^{-1} g` (:mod:`probprec.posterior`);
    3. extracts the top ``est_rank`` (:math:`k`) curvature directions :math:`U` and
       values :math:`\sigma` per parameter tensor (:mod:`probprec.lowrank`),

    and then optimizes: the inner optimizer (``optim_class``, SGD by default) steps
    on the preconditioned gradient with the learning rate :math:`\alpha` times the
    group's ``lr`` multiplier,

    .. math::

        P g = g + U^\top \operatorname{diag}(c - 1)\, U g, \qquad
        c_j = \min(1, b_0/\sigma_j) \text{ for } \sigma_j > b_0, \text{ else } 1,

    so the step along :math:`u_j` is the Newton step :math:`1/\sigma_j`
    (:mod:`probprec.precondition`). The Hessian is modelled block-diagonally, one
    block per parameter tensor; the prior scalars and the step size are per
    parameter group. The last posterior minibatch is also the first update, so a
    cycle spends :math:`P + K - 1` minibatches without moving the parameters.

    **Training loop.** Curvature comes from the loop's own graph, so the loop asks
    the optimizer whether the next step needs it::

        loss = criterion(model(x), y)
        loss.backward(create_graph=optimizer.create_graph)
        optimizer.step()

    A loop that always passes ``create_graph=True`` works too (slower). After
    ``step()`` every ``p.grad`` holds the true gradient, without a graph.

    Args:
        params: iterable of parameters or of parameter-group dicts.
        est_rank: :math:`k`, directions per tensor that the preconditioner
            rescales; ``1 <= est_rank <= num_observations``.
        num_observations: :math:`K`, posterior observations per cycle, ``>= 1``.
        prior_iterations: :math:`P`, prior minibatches per cycle, ``>= 1``.
        weight_decay: L2 coefficient added to the objective, ``>= 0``: it enters the
            curvature (:math:`B = H + \text{wd}\,I`), the probes and the
            preconditioned gradient (the inner optimizer receives no decay of its own).
        lr: None (default) makes the step size adaptive: the effective learning
            rate is :math:`\alpha` times the group's ``lr``, which starts at 1.0 and is
            what LR schedulers scale. A number fixes the learning rate (the
            "tuned" variants); the preconditioner is still estimated and applied.
        optim_class: the inner ``torch.optim.Optimizer`` subclass.
        step_rule: ``"newton"`` (default, above) or ``"paper"``, the low-dimensional
            rule of the paper's §2.3.2 (:math:`\eta\, a^2 P^2 g` with the user's
            ``lr`` as :math:`\eta`; requires ``lr``).
        beta: :math:`\beta` of the paper rule, ``> 0``.
        extraction: ``"ritz"`` (default, Rayleigh-Ritz on the observed directions)
            or ``"posterior"`` (eigenpairs of the symmetric part of the posterior
            mean, the paper's reading).
        observe: ``"next"`` (default) observes each active direction on the
            minibatch after the one it was built from; ``"same"`` on the same one
            (the paper and the 2019 code).
        orthogonalize: orthogonalise each new direction against the observed
            ones (default True).
        noise_floor: lower bound of :math:`\lambda_0` relative to :math:`w_0`, ``> 0``.
        restart_interval: optimization steps after which :meth:`maybe_start_estimate`
            starts a new cycle; None (default) never.
        build_preconditioner: run the posterior and the extraction (phases 2-3).
        apply_preconditioner: apply :math:`P`; requires ``build_preconditioner``.
        **optim_hyperparams: further hyperparameters of the inner optimizer
            (e.g. ``momentum=0.9``); they live in the parameter groups, where
            schedulers can change them.

    Raises:
        ValueError: for a hyperparameter out of its range (the message names it).
        TypeError: if ``optim_class`` is not a ``torch.optim.Optimizer`` subclass.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        est_rank: int = 2,
        num_observations: int = 5,
        prior_iterations: int = 10,
        weight_decay: float = 0.0,
        lr: float | None = None,
        optim_class: type[Optimizer] = torch.optim.SGD,
        *,
        step_rule: str = "newton",
        beta: float = 1.0,
        extraction: str = "ritz",
        observe: str = "next",
        orthogonalize: bool = True,
        noise_floor: float = 1e-3,
        restart_interval: int | None = None,
        build_preconditioner: bool = True,
        apply_preconditioner: bool = True,
        **optim_hyperparams: Any,
    ) -> None:
        self.est_rank = _check_int("est_rank", est_rank, 1)
        self.num_observations = _check_int("num_observations", num_observations, 1)
        self.prior_iterations = _check_int("prior_iterations", prior_iterations, 1)
        if est_rank > num_observations:
            raise ValueError(
                f"est_rank must be <= num_observations ({num_observations}), got {est_rank}"
            )
        weight_decay = _check_float("weight_decay", weight_decay, positive=False)
        if lr is not None:
            lr = _check_float("lr", lr, positive=True)
        if not (isinstance(optim_class, type) and issubclass(optim_class, Optimizer)):
            raise TypeError(
                f"optim_class must be a torch.optim.Optimizer subclass, got {optim_class!r}"
            )
        self.step_rule = _check_choice("step_rule", step_rule, _STEP_RULES)
        self.beta = _check_float("beta", beta, positive=True)
        self.extraction = _check_choice("extraction", extraction, _EXTRACTIONS)
        self.observe = _check_choice("observe", observe, _OBSERVATIONS)
        self.orthogonalize = bool(orthogonalize)
        self.noise_floor = _check_float("noise_floor", noise_floor, positive=True)
        if restart_interval is not None:
            _check_int("restart_interval", restart_interval, 1)
        self.restart_interval = restart_interval
        if step_rule == "paper" and lr is None:
            raise ValueError("lr must be a number > 0 with step_rule='paper' (its step size eta), got None")
        if apply_preconditioner and not build_preconditioner:
            raise ValueError(
                "apply_preconditioner=True needs build_preconditioner=True, got build_preconditioner=False"
            )
        self.build_preconditioner = bool(build_preconditioner)
        self.apply_preconditioner = bool(apply_preconditioner)
        for reserved in ("adaptive_lr", "step_size"):
            if reserved in optim_hyperparams:
                raise ValueError(f"{reserved} is not a hyperparameter of the inner optimizer")
        self.optim_class = optim_class
        self._inner_keys = tuple(optim_hyperparams)
        self._inner: Optimizer | None = None
        self._cycle: dict[str, Any] = {}
        self._groups_state: list[dict[str, Any]] = []
        self._log: dict[str, Any] = {"events": [], "hvp_count": 0, "cycles_completed": 0}
        defaults = {
            "lr": 1.0 if lr is None else lr,
            "adaptive_lr": lr is None,
            "weight_decay": weight_decay,
            "step_size": None,
            **optim_hyperparams,
        }
        super().__init__(params, defaults)
        inner_groups = [self._inner_group(g) for g in self.param_groups]
        self._inner = optim_class(inner_groups, **optim_hyperparams)
        self.start_estimate()

    # ------------------------------------------------------------------ groups

    def _inner_group(self, group: dict[str, Any]) -> dict[str, Any]:
        inner = {key: group[key] for key in self._inner_keys}
        inner["params"] = group["params"]
        inner["lr"] = 1.0
        return inner

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (``torch.optim`` semantics).

        The new group takes part from the next cycle on (:meth:`start_estimate`);
        until its first estimate its parameters are not updated, unless it has a
        fixed ``lr`` and the optimizer is past estimating.
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("adaptive_lr"):
            _check_float("lr (a multiplier of the adaptive step size)", group["lr"], positive=True)
        else:
            _check_float("lr", group["lr"], positive=True)
        _check_float("weight_decay", group["weight_decay"], positive=False)
        self._groups_state.append({**self._fresh_group_state(active=False), "prior": None, "gain": 1.0})
        if self._inner is not None:
            self._inner.add_param_group(self._inner_group(group))

    @staticmethod
    def _fresh_group_state(active: bool) -> dict[str, Any]:
        return {"active": active, "posterior": False, "curvature": None, "noise": None}

    # ------------------------------------------------------------- public API

    @property
    def create_graph(self) -> bool:
        """True exactly while the next ``step()`` needs curvature (pass it to ``backward``)."""
        return self._cycle["phase"] != "optimize"

    @property
    def phase(self) -> str:
        """The current phase: ``"prior"``, ``"posterior"`` or ``"optimize"``."""
        return self._cycle["phase"]

    def start_estimate(self) -> None:
        """Start a new cycle: gather a fresh prior and posterior at the current parameters.

        The previous preconditioner is discarded; the step size of the previous
        cycle is kept only as a fallback. The parameters do not move until the
        cycle's estimate is complete.
        """
        for p in self._all_params():
            state = self.state[p]
            for key in (_GRAD_SUM, _PROBE, _PROBE_HVP, _DIRECTIONS, _OBSERVATIONS_KEY, _GRAM_SS, _GRAM_SY,
                        _EIGVECS, _EIGVALS, _FACTORS):
                state.pop(key, None)
        for gs in self._groups_state:
            gs.update(self._fresh_group_state(active=True))
        self._cycle = {"phase": "prior", "step": 0, "index": self._cycle.get("index", -1) + 1,
                       "observed": 0, "optimize_steps": 0}

    def maybe_start_estimate(self) -> bool:
        """Start a new cycle if ``restart_interval`` optimization steps have passed; return whether it did.

        Call it before computing the loss of a step, so that :attr:`create_graph` is up to date.
        """
        interval = self.restart_interval
        if interval is None or self.phase != "optimize" or self._cycle["optimize_steps"] < interval:
            return False
        self.start_estimate()
        self._event("restart", f"restart_interval of {interval} optimization steps reached")
        return True

    def get_log(self) -> dict[str, Any]:
        """What the optimizer knows, as plain Python values (no host synchronisation).

        Keys: ``phase``; ``cycle`` (index of the current cycle); ``cycles_completed``;
        ``step_sizes`` (estimated :math:`\\alpha` per group, None before the first
        estimate); ``learning_rates`` (the effective rate per group, None while the
        parameters are held); ``eigenvalues`` (per parameter tensor in
        ``param_groups`` order, its estimated top-k curvatures, empty before the
        first estimate); ``preconditioned`` (per tensor, the number of directions
        the preconditioner rescales); ``prior_mean``, ``prior_width``, ``noise``
        and ``noise_measured`` (per group, of the last prior); ``hvp_count``;
        ``events`` (fallbacks and restarts, most recent last).
        """
        priors = [gs["prior"] for gs in self._groups_state]
        tensors = self._log.get("tensors", {})
        params = self._all_params()
        return {
            "phase": self.phase,
            "cycle": self._cycle["index"],
            "cycles_completed": self._log["cycles_completed"],
            "step_sizes": [g["step_size"] for g in self.param_groups],
            "learning_rates": [self._effective_lr(i) for i in range(len(self.param_groups))],
            "eigenvalues": [list(tensors.get(i, {}).get("eigenvalues", [])) for i in range(len(params))],
            "preconditioned": [tensors.get(i, {}).get("preconditioned", 0) for i in range(len(params))],
            "prior_mean": [None if pr is None else pr["mean"] for pr in priors],
            "prior_width": [None if pr is None else pr["width"] for pr in priors],
            "noise": [None if pr is None else pr["noise"] for pr in priors],
            "noise_measured": [None if pr is None else pr["noise_measured"] for pr in priors],
            "hvp_count": self._log["hvp_count"],
            "events": [dict(e) for e in self._log["events"]],
        }

    def curvature_estimate(self) -> list[tuple[Tensor, Tensor] | None]:
        """The current low-rank curvature estimate of each parameter tensor (``param_groups`` order).

        Each entry is ``(eigvals, eigvecs)`` with ``eigvals`` of shape ``(k',)``
        (decreasing) and ``eigvecs`` of shape ``(k', *p.shape)`` (orthonormal when
        flattened), or None where the preconditioner holds no estimate (before
        the first one, while estimating, or when it is not applied).
        """
        out: list[tuple[Tensor, Tensor] | None] = []
        for p in self._all_params():
            state = self.state.get(p, {})
            if _EIGVECS in state:
                U = state[_EIGVECS]
                out.append((state[_EIGVALS], U.reshape(U.shape[0], *p.shape)))
            else:
                out.append(None)
        return out

    def precondition(self, vectors: Iterable[Tensor]) -> list[Tensor]:
        """Apply the current preconditioner :math:`P` to one vector per parameter tensor.

        ``vectors`` are in ``param_groups`` order with the parameters' shapes (a
        gradient, say); the result is :math:`P v` (:mod:`probprec.precondition`),
        the vector itself where no preconditioner is held. Weight decay and the
        learning rate are not applied.
        """
        out = []
        for p, v in zip(self._all_params(), vectors, strict=True):
            factors = self.state.get(p, {}).get(_FACTORS)
            if factors is None or factors.numel() == 0:
                out.append(v.clone())
            else:
                U = self.state[p][_EIGVECS][: factors.numel()]
                out.append(precondition(v.reshape(-1).to(U.dtype), U, factors).view_as(v))
        return out

    # ------------------------------------------------------------ state dict

    def state_dict(self) -> dict[str, Any]:
        """The ``torch.optim`` state dict plus the phase machine and the inner optimizer's state.

        Everything is tensors and plain Python values, so it survives
        ``torch.save`` / ``torch.load(weights_only=True)``.
        """
        sd = super().state_dict()
        groups_state = []
        for gs in self._groups_state:
            gs = dict(gs)
            for key in ("curvature", "noise"):
                if gs[key] is not None:
                    gs[key] = gs[key].clone()
            gs["prior"] = copy.deepcopy(gs["prior"])
            groups_state.append(gs)
        sd["probprec"] = {
            "cycle": dict(self._cycle),
            "groups": groups_state,
            "log": copy.deepcopy(self._log),
        }
        assert self._inner is not None
        sd["inner"] = self._inner.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`; training continues exactly where it was saved."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("probprec", None)
        inner = state_dict.pop("inner", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self._cycle = dict(extra["cycle"])
            self._groups_state = []
            for group, gs in zip(self.param_groups, extra["groups"], strict=True):
                gs = dict(gs)
                device = group["params"][0].device if group["params"] else None
                for key in ("curvature", "noise"):
                    if gs[key] is not None and device is not None:
                        gs[key] = gs[key].to(device)
                self._groups_state.append(gs)
            self._log = copy.deepcopy(extra["log"])
        assert self._inner is not None
        if inner is not None:
            self._inner.load_state_dict(inner)

    _OWN_ATTRIBUTES = (
        "est_rank", "num_observations", "prior_iterations", "step_rule", "beta", "extraction",
        "observe", "orthogonalize", "noise_floor", "restart_interval", "build_preconditioner",
        "apply_preconditioner", "optim_class", "_inner_keys", "_inner", "_cycle", "_groups_state", "_log",
    )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({key: self.__dict__[key] for key in self._OWN_ATTRIBUTES})
        return state

    # ------------------------------------------------------------------- step

    @torch.no_grad()
    def _optimize_no_grad(self) -> None:
        self._optimize()

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step of the phase machine; returns the closure's loss.

        The closure, if given, must compute the loss and call
        ``loss.backward(create_graph=optimizer.create_graph)``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        try:
            self._check_sparse()
            if self.phase == "optimize":
                self._optimize_no_grad()
            else:
                self._estimate(loss)
        finally:
            self._release_graphs()
        return loss

    # ------------------------------------------------------------- internals

    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _check_sparse(self) -> None:
        for p in self._all_params():
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError("Preconditioner does not support sparse gradients")

    def _release_graphs(self) -> None:
        for p in self._all_params():
            if p.grad is not None and p.grad.requires_grad:
                p.grad = p.grad.detach()

    def _event(self, kind: str, message: str, group: int | None = None) -> None:
        events = self._log["events"]
        events.append({"cycle": self._cycle.get("index", 0), "phase": self._cycle.get("phase"),
                       "kind": kind, "group": group, "message": message})
        del events[:-_MAX_EVENTS]

    def _effective_lr(self, index: int) -> float | None:
        """The learning rate the inner optimizer gets for group ``index`` (None: parameters held)."""
        group, gs = self.param_groups[index], self._groups_state[index]
        if group["adaptive_lr"]:
            if group["step_size"] is None:
                return None
            lr = group["step_size"] * group["lr"]
        else:
            lr = group["lr"]
        return lr * gs.get("gain", 1.0) if self.step_rule == "paper" else lr

    def _regularised_grad(self, p: Tensor, wd: float) -> Tensor:
        g = p.grad.detach().reshape(-1)  # type: ignore[union-attr]
        return g + wd * p.detach().reshape(-1) if wd else g

    def _participants(self, posterior: bool) -> list[tuple[int, dict[str, Any], list[Tensor]]]:
        """Groups taking part in this estimation step, with their parameters that have a gradient."""
        out = []
        for i, (group, gs) in enumerate(zip(self.param_groups, self._groups_state, strict=True)):
            if gs["active"] and (gs["posterior"] or not posterior):
                out.append((i, group, [p for p in group["params"] if p.grad is not None]))
        return out

    def _hvp(self, params: list[Tensor], vectors: list[Tensor]) -> list[Tensor]:
        grads = [p.grad for p in params]
        if not any(has_graph(g) for g in grads):
            raise RuntimeError(
                f"Preconditioner needs curvature at this step (phase {self.phase!r}), but the "
                "gradients carry no autograd graph: call "
                "loss.backward(create_graph=optimizer.create_graph) before optimizer.step() "
                "(if it was called so, the loss is linear in the parameters: there is no curvature)"
            )
        self._log["hvp_count"] += 1
        views = [v.view_as(p) for p, v in zip(params, vectors, strict=True)]
        return [h.reshape(-1) for h in hessian_vector_product(params, grads, views)]

    def _all_finite(self, loss: Any, checks: list[Tensor]) -> str | None:
        """Return a reason if the loss or any checked sum is not finite (one host sync)."""
        if loss is not None and not math.isfinite(float(loss)):
            return f"non-finite loss {float(loss)}"
        if checks and not bool(torch.cat([c.reshape(-1).to(checks[0].device) for c in checks]).isfinite().all()):
            return "non-finite gradient or Hessian-vector product"
        return None

    def _restart_after(self, reason: str) -> None:
        self._event("restart", f"{reason} during the {self.phase} phase; cycle restarted")
        self.start_estimate()

    def _estimate(self, loss: Any) -> None:
        if self.phase == "prior":
            self._prior_step(loss)
        else:
            self._posterior_step(loss)

    # -- prior

    def _prior_step(self, loss: Any) -> None:
        t = self._cycle["step"]
        first_of_pair = t % 2 == 0
        participants = self._participants(posterior=False)
        params = [p for _, _, ps in participants for p in ps]
        if not params:
            raise RuntimeError("Preconditioner.step() found no parameter with a gradient")
        probes: list[Tensor] = []
        for _, group, ps in participants:
            for p in ps:
                state = self.state[p]
                v = self._regularised_grad(p, group["weight_decay"])
                state[_GRAD_SUM] = v.clone() if _GRAD_SUM not in state else state[_GRAD_SUM].add_(v)
                if first_of_pair or _PROBE not in state:
                    state[_PROBE] = v.clone()
                probes.append(state[_PROBE])
        hvps = self._hvp(params, probes)
        checks = []
        index = 0
        for i, group, ps in participants:
            n = len(ps)
            if n == 0:
                continue
            v_g, h_g = probes[index:index + n], hvps[index:index + n]
            index += n
            wd = group["weight_decay"]
            if wd:
                h_g = [h.add(v, alpha=wd) for h, v in zip(h_g, v_g, strict=True)]
            checks.append(self._accumulate_prior(i, ps, v_g, h_g, first_of_pair))
            checks.extend(v.norm() for v in v_g)
        reason = self._all_finite(loss, checks)
        if reason is not None:
            self._restart_after(reason)
            return
        self._cycle["step"] = t + 1
        if t + 1 == self.prior_iterations:
            self._finish_prior()

    def _accumulate_prior(
        self, index: int, ps: list[Tensor], probes: list[Tensor], hvps: list[Tensor],
        first_of_pair: bool,
    ) -> Tensor:
        gs = self._groups_state[index]
        curv = curvature_sums(probes, hvps)
        gs["curvature"] = curv if gs["curvature"] is None else gs["curvature"] + curv
        check = curv
        if first_of_pair:
            for p, h in zip(ps, hvps, strict=True):
                self.state[p][_PROBE_HVP] = h
        else:
            pairs = [(v, self.state[p].get(_PROBE_HVP), h) for p, v, h in zip(ps, probes, hvps, strict=True)]
            pairs = [(v, ha, hb) for v, ha, hb in pairs if ha is not None]
            if pairs:
                noise = noise_sums(*map(list, zip(*pairs, strict=True)))
                gs["noise"] = noise if gs["noise"] is None else gs["noise"] + noise
                check = torch.cat((curv, noise))
            for p in ps:
                self.state[p].pop(_PROBE_HVP, None)
        return check

    def _finish_prior(self) -> None:
        """Turn the prior sums into scalars (one host sync), guard the step size, set up the posterior."""
        for i, (group, gs) in enumerate(zip(self.param_groups, self._groups_state, strict=True)):
            if not gs["active"]:
                continue
            if gs["curvature"] is None:
                gs["active"] = False
                self._event("skip", "no parameter of this group had a gradient during the prior", i)
                continue
            est = estimate_prior(gs["curvature"], gs["noise"], self.noise_floor)
            values = torch.stack((est.step_size, est.mean, est.width, est.noise)).tolist()
            alpha, mean, width, noise = values
            gs["prior"] = {"step_size": alpha, "mean": mean, "width": width, "noise": noise,
                           "noise_measured": est.noise_measured}
            valid = math.isfinite(alpha) and alpha > 0 and math.isfinite(noise)
            gs["posterior"] = valid and self.build_preconditioner
            if valid:
                group["step_size"] = alpha
            else:
                self._step_size_fallback(i, group, alpha)
        for p in self._all_params():
            self.state[p].pop(_PROBE, None)
            self.state[p].pop(_PROBE_HVP, None)
        missing = [i for i, (g, gs) in enumerate(zip(self.param_groups, self._groups_state, strict=True))
                   if g["adaptive_lr"] and g["step_size"] is None and gs["active"]]
        if missing:
            self._restart_after(f"no usable step size for group(s) {missing}")
            return
        if any(gs["posterior"] for gs in self._groups_state):
            self._cycle.update(phase="posterior", step=0, observed=0)
            self._first_direction()
        else:
            self._finish_estimate()

    def _step_size_fallback(self, index: int, group: dict[str, Any], alpha: float) -> None:
        previous = group["step_size"]
        if previous is not None:
            choice, value = "the previous cycle's step size", previous
        elif math.isfinite(alpha) and alpha != 0:
            choice, value = "its absolute value", abs(alpha)
        else:
            choice, value = "none available", None
        group["step_size"] = value
        self._event(
            "fallback",
            f"estimated step size {alpha!r} is not positive and finite (negative or zero curvature "
            f"along the gradients); used {choice}: {value!r}; no preconditioner this cycle",
            index,
        )

    # -- posterior

    def _posterior_params(self) -> list[tuple[int, dict[str, Any], list[Tensor]]]:
        return [(i, g, list(g["params"])) for i, g, _ in self._participants(posterior=True)]

    def _system(self, index: int, p: Tensor, m: int) -> PosteriorSystem:
        """The posterior system of tensor ``p`` over its first ``m`` directions and observations."""
        prior = self._groups_state[index]["prior"]
        state = self.state[p]
        SS, SY = state[_GRAM_SS][:m, :m], state[_GRAM_SY][:m, :m]
        dtype = accumulation_dtype(SS.device)
        b0, w0, lam = (torch.tensor(prior[k], dtype=dtype, device=SS.device) for k in ("mean", "width", "noise"))
        return posterior_system(SS, SY, b0, w0, lam)

    def _record_direction(self, p: Tensor, j: int) -> None:
        """Extend the Gram matrices by direction ``j`` (observations ``0..j-1`` exist)."""
        state = self.state[p]
        S, Y = state[_DIRECTIONS], state[_OBSERVATIONS_KEY]
        row = S[: j + 1] @ S[j]
        state[_GRAM_SS][j, : j + 1] = row
        state[_GRAM_SS][: j + 1, j] = row
        if j:
            state[_GRAM_SY][j, :j] = Y[:j] @ S[j]

    def _record_observation(self, p: Tensor, j: int) -> None:
        """Extend :math:`S Y^\\top` by observation ``j`` (directions ``0..j`` exist)."""
        state = self.state[p]
        state[_GRAM_SY][: j + 1, j] = state[_DIRECTIONS][: j + 1] @ state[_OBSERVATIONS_KEY][j]

    def _first_direction(self) -> None:
        """Set :math:`s_0 = -\\alpha \\bar g` from the mean regularised prior gradient."""
        K = self.num_observations
        for i, _, ps in self._posterior_params():
            alpha = self._groups_state[i]["prior"]["step_size"]
            for p in ps:
                state = self.state[p]
                state[_DIRECTIONS] = torch.empty((K, p.numel()), dtype=p.dtype, device=p.device)
                state[_OBSERVATIONS_KEY] = torch.empty((K, p.numel()), dtype=p.dtype, device=p.device)
                state[_GRAM_SS] = torch.zeros((K, K), dtype=p.dtype, device=p.device)
                state[_GRAM_SY] = torch.zeros((K, K), dtype=p.dtype, device=p.device)
                grad_sum = state.pop(_GRAD_SUM, None)
                if grad_sum is None:
                    state[_DIRECTIONS][0].zero_()
                else:
                    torch.mul(grad_sum, -alpha / self.prior_iterations, out=state[_DIRECTIONS][0])
                self._record_direction(p, 0)
        for p in self._all_params():
            self.state[p].pop(_GRAD_SUM, None)

    def _posterior_step(self, loss: Any) -> None:
        m = self._cycle["step"]
        groups = self._posterior_params()
        checks: list[Tensor] = []
        if self.observe == "same" and m > 0:
            checks += self._new_directions(groups, m)
        params = [p for _, _, ps in groups for p in ps]
        with_grad = [p for p in params if p.grad is not None]
        vectors = [self.state[p][_DIRECTIONS][m] for p in with_grad]
        hvps = dict(zip(map(id, with_grad), self._hvp(with_grad, vectors), strict=True)) if with_grad else {}
        for _, group, ps in groups:
            wd = group["weight_decay"]
            for p in ps:
                state = self.state[p]
                y = hvps.get(id(p))
                if y is None:
                    state[_OBSERVATIONS_KEY][m].zero_()
                    self._record_observation(p, m)
                    continue
                if wd:
                    y = y.add(state[_DIRECTIONS][m], alpha=wd)
                state[_OBSERVATIONS_KEY][m] = y
                self._record_observation(p, m)
                checks.append(state[_GRAM_SY][m, m])
                checks.append(p.grad.norm())  # type: ignore[union-attr]
        if self.observe == "next" and m + 1 < self.num_observations:
            checks += self._new_directions(groups, m + 1)
        reason = self._all_finite(loss, checks)
        if reason is not None:
            self._restart_after(reason)
            return
        self._cycle.update(step=m + 1, observed=m + 1)
        if m + 1 == self.num_observations:
            self._finish_estimate()

    def _new_directions(self, groups: list[tuple[int, dict[str, Any], list[Tensor]]], m: int) -> list[Tensor]:
        """Set direction ``m`` of every tensor from this minibatch's gradient and the first ``m`` observations."""
        checks = []
        for i, group, ps in groups:
            wd = group["weight_decay"]
            for p in ps:
                state = self.state[p]
                S, Y = state[_DIRECTIONS], state[_OBSERVATIONS_KEY]
                if p.grad is None:
                    S[m].zero_()
                else:
                    g = self._regularised_grad(p, wd)
                    active_direction(g, S[:m], Y[:m], self._system(i, p, m), self.orthogonalize, out=S[m])
                self._record_direction(p, m)
                checks.append(state[_GRAM_SS][m, m])
        return checks

    # -- extraction and switch

    def _finish_estimate(self) -> None:
        """Extract the low-rank estimate (one host sync), set the preconditioner, and take the first step."""
        index_of = {id(p): j for j, p in enumerate(self._all_params())}
        pending = []
        for i, _, ps in self._posterior_params():
            for p in ps:
                state = self.state[p]
                K = self.num_observations
                system = self._system(i, p, K)
                S, Y = state.pop(_DIRECTIONS), state.pop(_OBSERVATIONS_KEY)
                state.pop(_GRAM_SS), state.pop(_GRAM_SY)
                work = S.dtype if S.dtype in (torch.float32, torch.float64) else torch.float32
                S, Y = S.to(work), Y.to(work)
                if self.extraction == "ritz":
                    low = _lowrank.rayleigh_ritz(S, system.SS, system.SY, self.est_rank)
                else:
                    low = _lowrank.posterior_eigen(S, Y, system, self.est_rank)
                pending.append((i, p, low))
        host: list[float] = []
        if pending:
            device = pending[0][2].eigvals.device
            host = torch.cat([
                torch.cat((low.eigvals, low.valid.to(low.eigvals.dtype))).to(device) for _, _, low in pending
            ]).tolist()
        tensors_log: dict[int, dict[str, Any]] = {}
        gains: dict[int, float] = {}
        offset = 0
        for i, p, low in pending:
            k = low.eigvals.numel()
            eigvals = host[offset:offset + k]
            valid = [bool(v) for v in host[offset + k:offset + 2 * k]]
            offset += 2 * k
            kept = [e for e, v in zip(eigvals, valid, strict=True) if v]
            if not all(math.isfinite(e) for e in kept):
                self._event("fallback", "non-finite low-rank estimate; tensor not preconditioned", i)
                tensors_log[index_of[id(p)]] = {"eigenvalues": [], "preconditioned": 0}
                continue
            values = torch.tensor(eigvals, dtype=torch.float64)
            mask = torch.tensor(valid, dtype=torch.bool)
            if self.step_rule == "newton":
                mean = torch.tensor(self._groups_state[i]["prior"]["mean"], dtype=torch.float64)
                factors = newton_factors(values, mask, mean)
            else:
                factors = paper_factors(values, mask, self.beta)
                gains[i] = min(gains.get(i, math.inf), float(condition_gain(values, mask)))
            # Valid slots come first and eigenvalues decrease, so the rescaled
            # directions (factor != 0) are a prefix of the valid ones.
            num_valid = sum(valid)
            flist = factors.tolist()[:num_valid]
            num_active = next((j for j, f in enumerate(flist) if f == 0.0), num_valid)
            entry = {"eigenvalues": kept, "preconditioned": 0}
            if self.apply_preconditioner and num_valid:
                state = self.state[p]
                state[_EIGVECS] = low.eigvecs[:num_valid].to(p.dtype).contiguous()
                state[_EIGVALS] = low.eigvals[:num_valid].to(dtype=p.dtype, device=p.device)
                state[_FACTORS] = factors[:num_active].to(dtype=p.dtype, device=p.device)
                entry["preconditioned"] = num_active
            tensors_log[index_of[id(p)]] = entry
        for i, gs in enumerate(self._groups_state):
            if gs["active"]:
                gs["gain"] = gains.get(i, 1.0)
        self._log["tensors"] = tensors_log
        self._log["cycles_completed"] += 1
        self._cycle.update(phase="optimize", step=0, optimize_steps=0)
        self._optimize_no_grad()

    # -- optimization

    def _optimize(self) -> None:
        inner = self._inner
        assert inner is not None
        swapped: list[tuple[Tensor, Tensor | None]] = []
        try:
            for index, (group, inner_group) in enumerate(zip(self.param_groups, inner.param_groups,
                                                             strict=True)):
                for key in self._inner_keys:
                    inner_group[key] = group[key]
                lr = self._effective_lr(index)
                inner_group["lr"] = 0.0 if lr is None else lr
                wd = group["weight_decay"]
                for p in group["params"]:
                    g = p.grad
                    if g is None:
                        continue
                    if lr is None:
                        swapped.append((p, g))
                        p.grad = None
                        continue
                    state = self.state.get(p)
                    factors = state.get(_FACTORS) if state else None
                    if factors is not None and factors.numel() == 0:
                        factors = None
                    if factors is None and not wd:
                        continue
                    flat = self._regularised_grad(p, wd)
                    if factors is not None:
                        U = state[_EIGVECS][: factors.numel()]  # type: ignore[index]
                        flat = precondition(flat, U, factors)
                    swapped.append((p, g))
                    p.grad = flat.view_as(p)
            inner.step()
        finally:
            for p, g in swapped:
                p.grad = g
        self._cycle["optimize_steps"] += 1
