r"""The :class:`Preconditioner`: the phase machine and the ``torch.optim`` plumbing.

The mathematics lives in :mod:`probprec.prior`, :mod:`probprec.posterior`,
:mod:`probprec.lowrank` and :mod:`probprec.precondition`; this module only decides
which of them runs at which ``step()``, keeps the state, and hands the
preconditioned gradient to an inner ``torch.optim`` optimizer.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _loss_scale
from . import lowrank as _lowrank
from ._checkpoint import Expected, check_state_dict
from ._inner import INNER_WEIGHT_DECAY, InnerSpec
from ._precision import accumulation_dtype, dot
from ._validation import (
    check_choice,
    check_float,
    check_inner_class,
    check_int,
    check_memory,
    check_parameters,
    group_list,
)
from .hvp import has_graph, hessian_vector_product
from .posterior import (
    PosteriorSystem,
    add_rows,
    combine_direction,
    direction_coefficients,
    direction_scale,
    posterior_factors,
    posterior_system,
    row_dots,
)
from .precondition import condition_gain, newton_factors, paper_factors, precondition
from .prior import curvature_sums, estimate_prior, noise_sums
from .thesis import (
    FIXES,
    quirks_for,
    reference_factors,
    reference_noise,
    singular_extraction,
    thesis_direction_coefficients,
    thesis_factors,
    thesis_posterior,
)

__all__ = ["Preconditioner"]

_PHASES = ("prior", "posterior", "optimize")
_STEP_RULES = ("newton", "paper")
_EXTRACTIONS = ("ritz", "posterior")
_OBSERVATIONS = ("next", "same")
_MODES = ("default", "thesis")
_POSTERIOR_QUIRKS = frozenset({"mixed_normalization", "inconsistent_prior_mean", "transposed_capacitance"})
_MAX_EVENTS = 200
_GROUP_TENSORS = ("curvature", "noise", "gram_ss", "gram_sy")  # per-group tensors in the state dict
_RESERVED_KEYS = ("adaptive_lr", "step_size")  # group keys of the optimizer itself, not of the inner one
_FAILURES_BEFORE_BACKOFF = 3  # consecutive failed cycles before the optimizer warns and backs off
_MAX_BACKOFF = 1024  # at most this many minibatches between two attempts after repeated failures

# Per-parameter state keys.
_GRAD_SUM = "grad_sum"  # sum of the regularised prior gradients
_PROBE = "probe"  # probe shared by a pair of prior minibatches
_PROBE_HVP = "probe_hvp"  # HVP of the pair's first minibatch, then the pair's mean HVP
_PROBE_SUM = "probe_sum"  # thesis mode, quirk probe_noise: sum of the prior's probes
_HVP_SUM = "hvp_sum"  # thesis mode, quirk reference_schedule: sum of the prior's HVPs
_DIRECTIONS = "directions"  # list of the flat directions s_i observed so far (at most K)
_OBSERVATIONS_KEY = "observations"  # list of their products y_i
_EIGVECS = "eigvecs"  # (k', n) estimated top curvature directions, orthonormal rows
_EIGVALS = "eigvals"  # (k',) their estimated curvatures, decreasing
_FACTORS = "factors"  # (a,) c_j - 1 of the first a <= k' directions (the rescaled ones)


def _first_tensor(groups: list[Any]) -> Tensor | None:
    for item in groups:
        params = item.get("params", []) if isinstance(item, dict) else [item]
        for p in params:
            p = p[1] if isinstance(p, tuple) else p
            if isinstance(p, Tensor):
                return p
    return None


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
        first_cycle_lr: with an adaptive step size, a fixed learning rate for the first
            cycle only, later cycles use the estimate (the paper's stabilisation of
            §3.3, and the thesis's Experiment 4); ``> 0`` or None (default). (Not
            ``initial_lr``: LR schedulers keep their own key of that name.)
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
        mode: str = "default",
        fixes: str | Iterable[str] = (),
        first_cycle_lr: float | None = None,
        inner_weight_decay: float = 0.0,
        **optim_hyperparams: Any,
    ) -> None:
        self.est_rank = check_int("est_rank", est_rank, 1)
        self.num_observations = check_int("num_observations", num_observations, 1)
        self.prior_iterations = check_int("prior_iterations", prior_iterations, 1)
        if self.est_rank > self.num_observations:
            raise ValueError(
                f"est_rank must be <= num_observations ({num_observations}), got {est_rank}"
            )
        weight_decay = check_float("weight_decay", weight_decay, positive=False)
        inner_weight_decay = check_float("inner_weight_decay", inner_weight_decay, positive=False)
        if lr is not None:
            lr = check_float("lr", lr, positive=True)
        if first_cycle_lr is not None:
            first_cycle_lr = check_float("first_cycle_lr", first_cycle_lr, positive=True)
            if lr is not None:
                raise ValueError(
                    f"first_cycle_lr needs lr=None (an adaptive step size); with the fixed lr={lr} it would "
                    f"never be used, got first_cycle_lr={first_cycle_lr}"
                )
        self.optim_class = check_inner_class(optim_class, Preconditioner)
        self._configure(step_rule, beta, extraction, observe, orthogonalize, noise_floor, restart_interval,
                        build_preconditioner, apply_preconditioner, lr)
        self._configure_mode(mode, fixes)
        for reserved in _RESERVED_KEYS:
            if reserved in optim_hyperparams:
                raise ValueError(f"{reserved} is not a hyperparameter of the inner optimizer")
        groups = list(params)
        if groups and isinstance(groups[0], dict):
            groups = [{**g, "params": group_list(g.get("params", ()))} for g in groups]
        self._inner_spec, inner_defaults = InnerSpec.probe(self.optim_class, optim_hyperparams,
                                                           _first_tensor(groups))
        self._inner: Optimizer | None = None
        self._plan: list[list[tuple[Tensor, Tensor | None, Tensor | None]]] | None = None
        self._cycle: dict[str, Any] = {"failures": 0}
        self._groups_state: list[dict[str, Any]] = []
        self._log: dict[str, Any] = {"events": [], "hvp_count": 0, "cycles_completed": 0}
        self._warned: set[str] = set()
        defaults = {
            "lr": 1.0 if lr is None else lr,
            "adaptive_lr": lr is None,
            "first_cycle_lr": first_cycle_lr,
            "weight_decay": weight_decay,
            INNER_WEIGHT_DECAY: inner_weight_decay,
            "step_size": None,
            **inner_defaults,
        }
        super().__init__(groups, defaults)
        check_memory(self._all_params(), self.num_observations, self.est_rank)
        spec = self._inner_spec
        self._inner = self.optim_class([spec.inner_group(g) for g in self.param_groups],
                                       **{k: v for k, v in optim_hyperparams.items() if k in spec.keys})
        self._begin_cycle()

    def _configure(self, step_rule: str, beta: float, extraction: str, observe: str, orthogonalize: bool,
                   noise_floor: float, restart_interval: int | None, build_preconditioner: bool,
                   apply_preconditioner: bool, lr: float | None) -> None:
        """Validate and set the options that are the same for every parameter group."""
        self.step_rule = check_choice("step_rule", step_rule, _STEP_RULES)
        self.beta = check_float("beta", beta, positive=True)
        self.extraction = check_choice("extraction", extraction, _EXTRACTIONS)
        self.observe = check_choice("observe", observe, _OBSERVATIONS)
        self.orthogonalize = bool(orthogonalize)
        self.noise_floor = check_float("noise_floor", noise_floor, positive=True)
        self.restart_interval = (None if restart_interval is None
                                 else check_int("restart_interval", restart_interval, 1))
        if step_rule == "paper" and lr is None:
            raise ValueError("lr must be a number > 0 with step_rule='paper' (its step size eta), got None")
        if apply_preconditioner and not build_preconditioner:
            raise ValueError(
                "apply_preconditioner=True needs build_preconditioner=True, got build_preconditioner=False"
            )
        self.build_preconditioner = bool(build_preconditioner)
        self.apply_preconditioner = bool(apply_preconditioner)

    def _configure_mode(self, mode: str, fixes: Any) -> None:
        """Validate ``mode`` and ``fixes`` and set the quirks of the 2019 arithmetic that stay on."""
        self.mode = check_choice("mode", mode, _MODES)
        if fixes is None:
            fixes = ()
        if not (isinstance(fixes, str) or isinstance(fixes, Iterable)):
            raise ValueError(f"fixes must be 'all' or an iterable of fix names ({', '.join(FIXES)}), got {fixes!r}")
        fixes = fixes if isinstance(fixes, str) else tuple(fixes)
        if mode == "default":
            if fixes not in ((), "all"):
                raise ValueError(f"fixes apply to mode='thesis' only, got fixes={fixes!r} with mode='default'")
            self._quirks: frozenset[str] = frozenset()
        else:
            self._quirks = quirks_for(fixes)
        self.fixes = tuple(sorted(f for f, quirk in FIXES.items() if quirk not in self._quirks))
        if "same_batch_observations" in self._quirks:
            self.observe = "same"
        if "unorthogonalized_directions" in self._quirks:
            self.orthogonalize = False

    # ------------------------------------------------------------------ groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (``torch.optim`` semantics); a rejected group changes nothing.

        The new group takes part from the next cycle on (:meth:`start_estimate`);
        until its first estimate its parameters are not updated, unless it has a
        fixed ``lr`` and the optimizer is past estimating.

        Raises:
            ValueError, TypeError: for a value out of its range (named), a parameter the optimizer
                cannot estimate (complex, on the meta device), or one already in another group.
        """
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(f"param_group must be a dict with a 'params' entry, got {param_group!r}")
        group = {**param_group, "params": group_list(param_group["params"])}
        index = len(self.param_groups)
        self._check_group(group, index)
        before = len(self.param_groups)
        super().add_param_group(group)
        try:
            self._groups_state.append({**self._fresh_group_state(active=False), "prior": None, "gain": 1.0})
            self._plan = None
            if self._inner is not None:
                check_memory(self._all_params(), self.num_observations, self.est_rank)
                self._inner.add_param_group(self._inner_spec.inner_group(self.param_groups[-1]))
        except BaseException:
            del self.param_groups[before:]
            del self._groups_state[before:]
            raise

    def _check_group(self, group: dict[str, Any], index: int) -> None:
        """Validate a new group's values (defaults filled in) before anything is changed."""
        tensors = [p[1] if isinstance(p, tuple) else p for p in group["params"]]
        check_parameters(tensors, first_index=sum(len(g["params"]) for g in self.param_groups))
        explicit = {k: v for k, v in group.items() if k != "params"}
        filled = {**self.defaults, **group, "params": tensors}
        for reserved in _RESERVED_KEYS:
            if reserved in explicit:
                raise ValueError(f"param_groups[{index}]: {reserved} is set by the optimizer, not by a group")
        label = f"param_groups[{index}]"
        if filled["adaptive_lr"]:
            check_float(f"{label}['lr'] (a multiplier of the adaptive step size)", filled["lr"], positive=True)
        else:
            check_float(f"{label}['lr']", filled["lr"], positive=True)
        for key in ("weight_decay", INNER_WEIGHT_DECAY):
            check_float(f"{label}[{key!r}]", filled[key], positive=False)
        spec = self._inner_spec
        inner_explicit = {k: v for k, v in explicit.items() if k in spec.keys or k == INNER_WEIGHT_DECAY}
        spec.check_group(filled, inner_explicit, f"{label}: ")

    @staticmethod
    def _fresh_group_state(active: bool) -> dict[str, Any]:
        return {"active": active, "posterior": False, "curvature": None, "noise": None, "gram_ss": None,
                "gram_sy": None}

    # ------------------------------------------------------------- public API

    @property
    def create_graph(self) -> bool:
        """True exactly while the next ``step()`` needs curvature (pass it to ``backward``)."""
        phase = self._cycle["phase"]
        if phase == "posterior":  # the reference schedule's last step, and its idle posterior, need none
            return not self._cycle.get("switch") and bool(self._posterior_groups())
        return phase != "optimize"

    @property
    def phase(self) -> str:
        """The current phase: ``"prior"``, ``"posterior"`` or ``"optimize"``."""
        return self._cycle["phase"]

    def start_estimate(self) -> None:
        """Start a new cycle: gather a fresh prior and posterior at the current parameters.

        The previous preconditioner is discarded; the step size of the previous
        cycle is kept only as a fallback. The parameters do not move until the
        cycle's estimate is complete.

        A request that arrives while a cycle is still estimating (an epoch shorter than the
        ``P + K - 1`` minibatches of a cycle, say) is already satisfied: the parameters have not
        moved since that cycle began, so it is an estimate at the current parameters. It goes on
        (a ``RuntimeWarning`` once per optimizer, a ``restart_skipped`` event each time), rather
        than restarting and never finishing. A group added since the cycle began restarts it.
        """
        phase, step = self._cycle["phase"], self._cycle["step"]
        in_progress = phase == "posterior" or (phase == "prior" and step > 0)
        if in_progress and all(gs["active"] for gs in self._groups_state):
            cycle_length = self.prior_iterations + self.num_observations - 1
            done = step if phase == "prior" else self.prior_iterations + step
            message = (f"start_estimate() was called while the current cycle is still estimating (minibatch "
                       f"{done + 1} of {cycle_length}); it continues, because it already estimates at the "
                       f"current parameters")
            self._event("restart_skipped", message)
            self._warn_once("restart_skipped", f"{message}. Re-estimate less often than every {cycle_length} "
                                               "minibatches to avoid this.")
            return
        self._begin_cycle()

    def _begin_cycle(self) -> None:
        """Discard the cycle's buffers and the preconditioner; start gathering the prior."""
        for p in self._all_params():
            state = self.state[p]
            for key in (_GRAD_SUM, _PROBE, _PROBE_HVP, _PROBE_SUM, _HVP_SUM, _DIRECTIONS, _OBSERVATIONS_KEY,
                        _EIGVECS, _EIGVALS, _FACTORS):
                state.pop(key, None)
        for gs in self._groups_state:
            gs.update(self._fresh_group_state(active=True))
        self._plan = None
        self._cycle = {"phase": "prior", "step": 0, "index": self._cycle.get("index", -1) + 1,
                       "observed": 0, "optimize_steps": 0, "failures": self._cycle.get("failures", 0)}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def maybe_start_estimate(self) -> bool:
        """Start a new cycle if ``restart_interval`` optimization steps have passed; return whether it did.

        Call it before computing the loss of a step, so that :attr:`create_graph` is up to date.
        """
        interval = self.restart_interval
        if interval is None or self.phase != "optimize" or self._cycle["optimize_steps"] < interval:
            return False
        self._begin_cycle()
        self._event("restart", f"restart_interval of {interval} optimization steps reached")
        return True

    def get_log(self) -> dict[str, Any]:
        r"""What the optimizer knows, as plain Python values (no host synchronisation).

        Keys: ``phase``; ``cycle`` (index of the current cycle); ``cycles_completed``;
        ``step_sizes`` (estimated :math:`\alpha` per group, None before the first
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

    def state_floats(self) -> int:
        """Number of floats the optimizer holds for its estimate, the inner optimizer's state excluded."""
        total = 0
        for value in [*self.state.values(), *self._groups_state]:
            stack = list(value.values())
            while stack:
                item = stack.pop()
                if torch.is_tensor(item):
                    total += item.numel()
                elif isinstance(item, (list, tuple)):
                    stack.extend(item)
        return total

    # ------------------------------------------------------------ state dict

    def _config(self) -> dict[str, Any]:
        """The options that give the state its shape and meaning (saved, and compared on loading)."""
        cls = self.optim_class
        return {"est_rank": self.est_rank, "num_observations": self.num_observations,
                "prior_iterations": self.prior_iterations, "optim_class": f"{cls.__module__}.{cls.__qualname__}",
                "mode": self.mode, "fixes": list(self.fixes), "step_rule": self.step_rule,
                "extraction": self.extraction, "observe": self.observe, "orthogonalize": self.orthogonalize,
                "build_preconditioner": self.build_preconditioner, "apply_preconditioner": self.apply_preconditioner}

    def state_dict(self) -> dict[str, Any]:
        """The ``torch.optim`` state dict plus the phase machine and the inner optimizer's state.

        Everything is tensors and plain Python values, so it survives
        ``torch.save`` / ``torch.load(weights_only=True)``. It records the configuration and the
        parameters' shapes, which :meth:`load_state_dict` checks.
        """
        sd = super().state_dict()
        groups_state = []
        for gs in self._groups_state:
            gs = dict(gs)
            for key in _GROUP_TENSORS:
                if gs.get(key) is not None:
                    gs[key] = gs[key].clone()
            gs["prior"] = copy.deepcopy(gs["prior"])
            groups_state.append(gs)
        sd["probprec"] = {
            "cycle": dict(self._cycle),
            "groups": groups_state,
            "log": copy.deepcopy(self._log),
            "config": self._config(),
            "shapes": [list(p.shape) for p in self._all_params()],
        }
        assert self._inner is not None
        sd["inner"] = self._inner.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`; training continues exactly where it was saved.

        Raises:
            ValueError: if the state dict is not one of this optimizer's (another model's shapes,
                another configuration, another optimizer, a damaged file); nothing is changed then.
        """
        expected = Expected(self._config(), [len(g["params"]) for g in self.param_groups],
                            [tuple(p.shape) for p in self._all_params()], _PHASES)
        check_state_dict(state_dict, expected)
        backup = self.state_dict()
        try:
            self._load(state_dict)
        except BaseException:
            self._load(backup)
            raise

    def _load(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("probprec")
        inner = state_dict.pop("inner")
        super().load_state_dict(state_dict)
        self._plan = None
        self._cycle = {"failures": 0, **extra["cycle"]}
        self._groups_state = []
        for group, gs in zip(self.param_groups, extra["groups"], strict=True):
            gs = dict(gs)
            device = group["params"][0].device if group["params"] else None
            for key in _GROUP_TENSORS:
                if gs.get(key) is not None and device is not None:
                    gs[key] = gs[key].to(device)
            self._groups_state.append(gs)
        self._log = copy.deepcopy(extra["log"])
        assert self._inner is not None
        self._inner.load_state_dict(inner)

    _OWN_ATTRIBUTES = (
        "est_rank", "num_observations", "prior_iterations", "step_rule", "beta", "extraction",
        "observe", "orthogonalize", "noise_floor", "restart_interval", "build_preconditioner",
        "apply_preconditioner", "mode", "fixes", "_quirks", "optim_class", "_inner_spec", "_inner", "_plan",
        "_cycle", "_groups_state", "_log", "_warned",
    )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({key: self.__dict__[key] for key in self._OWN_ATTRIBUTES})
        return state

    # ------------------------------------------------------------------- step

    _step_supports_amp_scaling = True  # GradScaler hands over grad_scale and found_inf (probprec._loss_scale)
    _graph_scale = 1.0  # during an estimation step: the loss scale its Hessian-vector products divide out

    @torch.no_grad()
    def _optimize_no_grad(self) -> None:
        self._optimize()

    def step(  # type: ignore[override]
        self, closure: Callable[[], float] | None = None, *, loss_scale: float | None = None
    ) -> float | None:
        """One step of the phase machine; returns the closure's loss.

        The closure, if given, must compute the loss and call
        ``loss.backward(create_graph=optimizer.create_graph)``. Any error leaves the optimizer
        as it was before the call.

        Args:
            closure: recomputes the loss and the gradients (optional).
            loss_scale: the factor by which the loss was multiplied before ``backward`` when
                ``p.grad`` already holds the unscaled gradient: ``scaler.step(optimizer,
                loss_scale=scaler.get_scale())`` after ``scaler.unscale_(optimizer)``, or a loop
                that scales by hand (:mod:`probprec._loss_scale`). ``scaler.step(optimizer)``
                alone needs none.
        """
        if loss_scale is not None:
            loss_scale = check_float("loss_scale", loss_scale, positive=True)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        try:
            self._check_step()
            scale = _loss_scale.resolve(self, loss_scale)
            if scale.graph is None and self.create_graph and not scale.skip:
                raise RuntimeError(
                    "the gradients were unscaled before step() (scaler.unscale_), but the graph the curvature "
                    "comes from is still scaled: pass the scale, scaler.step(optimizer, "
                    "loss_scale=scaler.get_scale())"
                )
            if scale.values is not None:
                _loss_scale.unscale_([p.grad for p in self._all_params()], scale.values)
            if not scale.skip:  # a step the scaler skips (inf or NaN gradients) changes nothing
                if self.phase == "optimize":
                    self._optimize_no_grad()
                else:
                    self._estimate(loss, 1.0 if scale.graph is None else scale.graph)
        finally:
            self._release_graphs()
            for p, h in self.__dict__.pop("_pollution", []):
                if p.grad is not None:
                    p.grad = p.grad + h.view_as(p)
        return loss

    # ------------------------------------------------------------- internals

    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _check_step(self) -> None:
        """Refuse sparse gradients and group values a scheduler or the user set out of range."""
        for i, group in enumerate(self.param_groups):
            for key in ("lr", "weight_decay", INNER_WEIGHT_DECAY):
                check_float(f"param_groups[{i}][{key!r}]", group[key], positive=False)
            for p in group["params"]:
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
            if group.get("first_cycle_lr") is not None and self._log["cycles_completed"] <= 1:
                lr = group["first_cycle_lr"] * group["lr"]  # the first cycle at a fixed step size
            elif group["step_size"] is None:
                return None
            else:
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
        """Hessian-vector products of this minibatch, in the units of the unscaled loss."""
        grads = [p.grad for p in params]
        if not any(has_graph(g) for g in grads):
            raise RuntimeError(
                f"Preconditioner needs curvature at this step (phase {self.phase!r}), but the "
                "gradients carry no autograd graph: call "
                "loss.backward(create_graph=optimizer.create_graph) before optimizer.step() "
                "(if it was called so, the loss is linear in the parameters: there is no curvature)"
            )
        views = [v.view_as(p) for p, v in zip(params, vectors, strict=True)]
        hvps = [h.reshape(-1) for h in hessian_vector_product(params, grads, views)]
        if self._graph_scale != 1.0:
            for h in hvps:
                h.div_(self._graph_scale)
        self._log["hvp_count"] += 1
        if "polluted_gradient" in self._quirks:  # the reference leaves g + Hv in p.grad (added in step())
            self._pollution = [(p, h.clone()) for p, h in zip(params, hvps, strict=True)]
        return hvps

    def _all_finite(self, loss: Any, checks: list[Tensor]) -> str | None:
        """Return a reason if the loss or any checked sum is not finite (one host sync)."""
        if loss is not None and not math.isfinite(float(loss)):
            return f"non-finite loss {float(loss)}"
        if checks and not bool(torch.cat([c.reshape(-1).to(checks[0].device) for c in checks]).isfinite().all()):
            return "non-finite gradient or Hessian-vector product"
        return None

    def _restart_after(self, reason: str) -> None:
        """Restart the cycle; after repeated failures, warn once and wait longer before each attempt.

        After ``_FAILURES_BEFORE_BACKOFF`` consecutive failed cycles (a loss without usable
        curvature: linear, constant, or non-finite at every attempt) the optimizer stops spending
        every minibatch on Hessian-vector products: it optimizes with what it has (groups without a
        step size are held, a ``first_cycle_lr`` or fixed ``lr`` is used) and retries after 2, 4,
        8, ... (at most ``_MAX_BACKOFF``) minibatches.
        """
        failures = self._cycle.get("failures", 0) + 1
        self._event("restart", f"{reason} during the {self.phase} phase; cycle restarted")
        self._begin_cycle()
        self._cycle["failures"] = failures
        if failures < _FAILURES_BEFORE_BACKOFF:
            return
        wait = min(2 ** (failures - _FAILURES_BEFORE_BACKOFF + 1), _MAX_BACKOFF)
        self._cycle.update(phase="optimize", retry_after=wait)
        message = (f"{failures} consecutive cycles failed (the last: {reason}); the estimate is retried after "
                   f"{wait} minibatches, and groups without a step size are held until then")
        self._event("fallback", message)
        self._warn_once("failures", f"Preconditioner: {message}. A loss without usable curvature along its "
                                    "gradients (linear or constant) needs a learning rate: lr=... (fixed) or "
                                    "first_cycle_lr=...")

    def _estimate(self, loss: Any, graph_scale: float) -> None:
        """One estimation step; if it raises, the optimizer is restored to what it was before."""
        snapshot = self._snapshot()
        self._graph_scale = graph_scale
        try:
            if self.phase == "prior":
                self._prior_step(loss)
            else:
                self._posterior_step(loss)
        except BaseException:
            self._restore(snapshot)
            raise
        finally:
            self._graph_scale = 1.0

    def _snapshot(self) -> tuple[Any, ...]:
        """What an estimation step changes, so that :meth:`_restore` can undo it.

        The step changes no tensor it did not create before its last point of failure (the
        Hessian-vector product), so references suffice, except for the small Gram matrices.
        """
        groups = [{k: (v.clone() if k in ("gram_ss", "gram_sy") and v is not None else v) for k, v in gs.items()}
                  for gs in self._groups_state]
        states = {p: {k: (list(v) if isinstance(v, list) else v) for k, v in self.state[p].items()}
                  for p in self._all_params() if p in self.state}
        log = {k: (list(v) if k == "events" else v) for k, v in self._log.items()}
        step_sizes = [g["step_size"] for g in self.param_groups]
        return dict(self._cycle), log, groups, states, step_sizes, self._plan

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        cycle, log, groups, states, step_sizes, plan = snapshot
        self._cycle, self._log, self._groups_state, self._plan = cycle, log, groups, plan
        for group, step_size in zip(self.param_groups, step_sizes, strict=True):
            group["step_size"] = step_size
        for p in self._all_params():
            if p in states:
                self.state[p] = states[p]
            else:
                self.state.pop(p, None)
        self.__dict__.pop("_pollution", None)

    # -- prior
    #
    # The prior minibatches are probed in pairs that share a probe (0, 1), (2, 3), ...
    # so that the difference of their HVPs measures the noise. The final group (the
    # last pair, or the last step when P is odd) probes along the mean of the
    # earlier gradients instead: that probe, scaled by -alpha, is the first active
    # direction s_0 (paper Alg. 1, line 2), and the mean HVP of the final group is
    # its observation y_0, taken on minibatches after the ones it was built from.
    # So the prior's P HVPs also give the first of the K observations.

    def _final_start(self) -> int:
        """First step of the prior's final group (P in the reference schedule, which has none)."""
        P = self.prior_iterations
        if "reference_schedule" in self._quirks:
            return P
        if "probe_noise" in self._quirks:  # no pairs: the final group is the last step
            return P - 1
        return P - 2 if P % 2 == 0 else P - 1

    def _prior_step(self, loss: Any) -> None:
        t = self._cycle["step"]
        final_start = self._final_start()
        paired = "probe_noise" not in self._quirks
        first_of_pair = t % 2 == 0 or not paired
        participants = self._participants(posterior=False)
        params = [p for _, _, ps in participants for p in ps]
        if not params:
            raise RuntimeError("Preconditioner.step() found no parameter with a gradient")
        probes: list[Tensor] = []
        gradients: list[Tensor] = []
        for _, group, ps in participants:
            for p in ps:
                state = self.state[p]
                v = self._regularised_grad(p, group["weight_decay"])
                gradients.append(v)
                if t == final_start:
                    grad_sum = state.get(_GRAD_SUM)
                    probes.append(v.clone() if grad_sum is None else grad_sum / final_start)
                elif first_of_pair or _PROBE not in state:
                    probes.append(v.clone())
                else:
                    probes.append(state[_PROBE])
        hvps = self._hvp(params, probes)
        for p, v, probe in zip(params, gradients, probes, strict=True):  # past the HVP: commit
            state = self.state[p]
            if t < final_start:
                state[_GRAD_SUM] = v.clone() if _GRAD_SUM not in state else state[_GRAD_SUM].add_(v)
            elif t == final_start:
                state.pop(_GRAD_SUM, None)
            state[_PROBE] = probe
        checks = []
        offset = 0
        for i, group, ps in participants:
            v_g, h_g = probes[offset:offset + len(ps)], hvps[offset:offset + len(ps)]
            offset += len(ps)
            if not ps:
                continue
            wd = group["weight_decay"]
            if wd:
                h_g = [h.add_(v, alpha=wd) for h, v in zip(h_g, v_g, strict=True)]
            checks.append(self._accumulate_prior(i, ps, v_g, h_g, first_of_pair))
        reason = self._all_finite(loss, checks)
        if reason is not None:
            self._restart_after(reason)
            return
        self._cycle["step"] = t + 1
        if t + 1 == self.prior_iterations:
            self._finish_prior()

    def _accumulate_prior(
        self, index: int, ps: list[Tensor], probes: list[Tensor], hvps: list[Tensor], first_of_pair: bool
    ) -> Tensor:
        gs = self._groups_state[index]
        curv = curvature_sums(probes, hvps)
        gs["curvature"] = curv if gs["curvature"] is None else gs["curvature"] + curv
        check = curv
        pairs = []
        for p, v, h in zip(ps, probes, hvps, strict=True):
            state = self.state[p]
            if "probe_noise" in self._quirks:
                state[_PROBE_SUM] = v.clone() if _PROBE_SUM not in state else state[_PROBE_SUM].add_(v)
            if "reference_schedule" in self._quirks:
                state[_HVP_SUM] = h.clone() if _HVP_SUM not in state else state[_HVP_SUM].add_(h)
                if "probe_noise" in self._quirks:
                    continue
            first = state.pop(_PROBE_HVP, None) if not first_of_pair else None
            if first is None:
                state[_PROBE_HVP] = h
            else:
                difference = first.sub_(h)
                pairs.append((v, difference))
                state[_PROBE_HVP] = h.add_(difference, alpha=0.5)  # mean of the pair's HVPs
        if pairs:
            noise = noise_sums([v for v, _ in pairs], [d for _, d in pairs])
            gs["noise"] = noise if gs["noise"] is None else gs["noise"] + noise
            check = torch.cat((curv, noise))
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
            noise_t, measured = est.noise, est.noise_measured
            if "probe_noise" in self._quirks:
                sums = [self.state[p][_PROBE_SUM] for p in group["params"] if _PROBE_SUM in self.state[p]]
                sq_of_sum = torch.stack([dot(v, v).to(gs["curvature"]) for v in sums]).sum()
                noise_t, measured = reference_noise(gs["curvature"][2], sq_of_sum, self.prior_iterations), True
            alpha, mean, width, noise = torch.stack((est.step_size, est.mean, est.width, noise_t)).tolist()
            gs["prior"] = {"step_size": alpha, "mean": mean, "width": width, "noise": noise,
                           "noise_measured": measured}
            valid = math.isfinite(alpha) and alpha > 0 and math.isfinite(noise)
            if "unguarded_step_size" in self._quirks:
                valid = True
            gs["posterior"] = valid and self.build_preconditioner
            if valid:
                group["step_size"] = alpha
            else:
                self._step_size_fallback(i, group, alpha)
        missing = [i for i, (g, gs) in enumerate(zip(self.param_groups, self._groups_state, strict=True))
                   if g["adaptive_lr"] and g["step_size"] is None and gs["active"]]
        if missing:
            self._restart_after(f"no usable step size for group(s) {missing}")
            return
        posterior = self._posterior_groups()
        for i, _ in posterior:
            self._first_observation(i)
        for p in self._all_params():
            for key in (_GRAD_SUM, _PROBE, _PROBE_HVP, _PROBE_SUM, _HVP_SUM):
                self.state[p].pop(key, None)
        self._cycle.update(phase="posterior", step=0, observed=1)
        if "reference_schedule" in self._quirks:
            # K - 1 posterior minibatches (idle without a posterior), then one without an HVP
            self._cycle["switch"] = self.num_observations == 1
            if posterior and self.observe == "next" and self.num_observations > 1:
                self._form_directions(1)
        elif not posterior or self.num_observations == 1:
            self._finish_estimate()
        elif self.observe == "next":
            self._form_directions(1)

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
    #
    # Per tensor: directions S and observations Y, (K, n) each, in the parameter's
    # dtype. Per group: the Gram matrices S S' and S Y' of all its tensors, stacked
    # (T, K, K) in float64, so that the small linear algebra runs batched.

    def _posterior_groups(self) -> list[tuple[int, dict[str, Any]]]:
        return [(i, g) for i, (g, gs) in enumerate(zip(self.param_groups, self._groups_state, strict=True))
                if gs["active"] and gs["posterior"]]

    def _group_system(self, index: int, m: int) -> PosteriorSystem:
        """The batched posterior system of group ``index`` over its first ``m`` directions and observations."""
        gs = self._groups_state[index]
        SS, SY = gs["gram_ss"][:, :m, :m], gs["gram_sy"][:, :m, :m]
        prior = gs["prior"]
        b0, w0, lam = (torch.tensor(prior[k], dtype=SS.dtype, device=SS.device) for k in ("mean", "width", "noise"))
        return posterior_system(SS, SY, b0, w0, lam)

    def _first_observation(self, index: int) -> None:
        r"""Set :math:`s_0 = -\alpha \bar v` and :math:`y_0 = -\alpha \bar h` from the prior's final group."""
        group, gs = self.param_groups[index], self._groups_state[index]
        K, alpha = self.num_observations, gs["prior"]["step_size"]
        params = group["params"]
        device = params[0].device
        small = accumulation_dtype(device)
        gs["gram_ss"] = torch.zeros((len(params), K, K), dtype=small, device=device)
        gs["gram_sy"] = torch.zeros((len(params), K, K), dtype=small, device=device)
        entries = []
        reference = "reference_schedule" in self._quirks
        P = self.prior_iterations
        for p in params:
            state = self.state[p]
            if reference:  # the means of the prior's gradients and of its HVPs along them
                probe, hvp = state.pop(_GRAD_SUM, None), state.pop(_HVP_SUM, None)
                scale = -alpha / P
            else:
                probe, hvp = state.pop(_PROBE, None), state.pop(_PROBE_HVP, None)
                scale = -alpha
            if probe is None or hvp is None:
                s0, y0 = p.new_zeros(p.numel()), p.new_zeros(p.numel())
            else:  # the prior's buffers become the first row of S and of Y
                s0, y0 = probe.mul_(scale), hvp.mul_(scale)
            state[_DIRECTIONS], state[_OBSERVATIONS_KEY] = [s0], [y0]
            entries.append(torch.stack((dot(s0, s0), dot(s0, y0))).to(device, small))
        entries_t = torch.stack(entries)
        gs["gram_ss"][:, 0, 0] = entries_t[:, 0]
        gs["gram_sy"][:, 0, 0] = entries_t[:, 1]

    def _posterior_step(self, loss: Any) -> None:
        if self._cycle.get("switch"):  # the reference schedule's extra minibatch: extract and update
            self._finish_estimate()
            return
        j = self._cycle["observed"]
        checks: list[Tensor] = []
        building = bool(self._posterior_groups())
        if building and self.observe == "same":
            checks += self._form_directions(j)
        if building:
            checks += self._observe(j)
        observed = j + 1
        if building and self.observe == "next" and observed < self.num_observations:
            checks += self._form_directions(observed)
        elif observed == self.num_observations:
            checks += [p.grad.norm() for p in self._all_params() if p.grad is not None]
        reason = self._all_finite(loss, checks)
        if reason is not None:
            self._restart_after(reason)
            return
        self._cycle.update(step=self._cycle["step"] + 1, observed=observed)
        if observed == self.num_observations:
            if "reference_schedule" in self._quirks:
                self._cycle["switch"] = True
            else:
                self._finish_estimate()

    def _observe(self, j: int) -> list[Tensor]:
        """Observe direction ``j`` of every tensor on this minibatch (one HVP for all) and extend S Y'."""
        groups = self._posterior_groups()
        params = [p for _, g in groups for p in g["params"] if p.grad is not None]
        hvps = dict(zip(map(id, params), self._hvp(params, [self.state[p][_DIRECTIONS][j] for p in params]),
                        strict=True)) if params else {}
        checks = []
        for i, group in groups:
            gs, wd = self._groups_state[i], group["weight_decay"]
            columns = []
            for p in group["params"]:
                state = self.state[p]
                S, Y = state[_DIRECTIONS], state[_OBSERVATIONS_KEY]
                y = hvps.get(id(p))
                if y is None:
                    y = p.new_zeros(p.numel())
                elif wd:
                    y.add_(S[j], alpha=wd)
                Y.append(y)
                columns.append(row_dots(S[: j + 1], y))
            column = torch.stack([c.to(gs["gram_sy"]) for c in columns])
            gs["gram_sy"][:, : j + 1, j] = column
            checks.append(column)
        return checks

    def _thesis_posterior(self, index: int, m: int):
        """The reference's posterior of group ``index`` over ``m`` observations (thesis mode)."""
        gs = self._groups_state[index]
        prior = gs["prior"]
        alpha = prior["step_size"]
        if "inconsistent_prior_mean" in self._quirks:
            shift = 1.0 if m == 1 else alpha  # the setup's residual Y - S, later Y - alpha S
        else:
            shift = 1.0 / alpha
        return thesis_posterior(gs["gram_ss"][:, :m, :m], gs["gram_sy"][:, :m, :m], alpha, prior["width"],
                                prior["noise"], "mixed_normalization" in self._quirks, shift)

    def _coefficients(self, index: int, j: int, Sg: Tensor):
        """Coefficients of direction ``j`` and the prior mean :math:`b_B` they use."""
        if self._quirks & _POSTERIOR_QUIRKS:
            post = self._thesis_posterior(index, j)
            return thesis_direction_coefficients(post, Sg, "transposed_capacitance" in self._quirks), post.mean, False
        system = self._group_system(index, j)
        return direction_coefficients(system, Sg, self.orthogonalize), system.mean, self.orthogonalize

    def _form_directions(self, j: int) -> list[Tensor]:
        """Set direction ``j`` of every tensor from this minibatch's gradient and observations ``0..j-1``."""
        checks = []
        for i, group in self._posterior_groups():
            gs = self._groups_state[i]
            wd = 0.0 if "unregularized_directions" in self._quirks else group["weight_decay"]
            params = group["params"]
            small = gs["gram_ss"]
            grads = [None if p.grad is None else self._regularised_grad(p, wd) for p in params]
            Sg = torch.stack([
                (torch.zeros(j, device=small.device) if g is None else row_dots(self.state[p][_DIRECTIONS][:j], g))
                .to(small) for p, g in zip(params, grads, strict=True)
            ])
            coef, mean, projected = self._coefficients(i, j, Sg)
            directions, norms = [], []
            for t, (p, g) in enumerate(zip(params, grads, strict=True)):
                state = self.state[p]
                if g is None:
                    s = p.new_zeros(p.numel())
                else:
                    s = combine_direction(g, state[_DIRECTIONS][:j], state[_OBSERVATIONS_KEY][:j], mean,
                                          (coef.observations[t], coef.directions[t]))
                    if self.orthogonalize and not projected:  # thesis posterior: project numerically
                        S_rows = state[_DIRECTIONS][:j]
                        sq = torch.stack([dot(r, r) for r in S_rows])
                        before = torch.linalg.vector_norm(s, dtype=small.dtype) ** 2
                        add_rows(s, S_rows, -row_dots(S_rows, s) / torch.where(sq > 0, sq, torch.ones_like(sq)))
                        after = torch.linalg.vector_norm(s, dtype=small.dtype) ** 2
                        coef.projected_sqnorm[t] = (before - after).clamp_min(0)
                directions.append(s)
                norms.append(torch.linalg.vector_norm(s, dtype=small.dtype))
            norm = torch.stack([x.to(small) for x in norms])
            if self.orthogonalize:
                scale = direction_scale(norm, coef.projected_sqnorm)
                for t, s in enumerate(directions):
                    s.mul_(scale[t].to(s.dtype))
                gs["gram_ss"][:, j, j] = (norm * scale) ** 2  # orthogonal to the earlier directions
            for p, s in zip(params, directions, strict=True):
                self.state[p][_DIRECTIONS].append(s)
            if not self.orthogonalize:
                rows = torch.stack([row_dots(self.state[p][_DIRECTIONS][: j + 1], s).to(small)
                                    for p, s in zip(params, directions, strict=True)])
                gs["gram_ss"][:, j, : j + 1] = rows
                gs["gram_ss"][:, : j + 1, j] = rows
            gs["gram_sy"][:, j, :j] = torch.stack([
                row_dots(self.state[p][_OBSERVATIONS_KEY][:j], s).to(small)
                for p, s in zip(params, directions, strict=True)
            ])
            checks.append(gs["gram_ss"][:, j, j])
            checks.append(Sg.reshape(-1))
        return checks

    # -- extraction and switch

    def _finish_estimate(self) -> None:
        """Extract the low-rank estimate (one host sync), set the preconditioner, and take the first step."""
        index_of = {id(p): j for j, p in enumerate(self._all_params())}
        K = self.num_observations
        pending = []
        singular = "singular_values" in self._quirks
        thesis_posterior_used = bool(self._quirks & _POSTERIOR_QUIRKS)
        for i, group in self._posterior_groups():
            gs = self._groups_state[i]
            if not singular and self.extraction == "ritz":
                ritz = _lowrank.ritz_coefficients(gs["gram_ss"], gs["gram_sy"], self.est_rank)
            elif thesis_posterior_used:
                post = self._thesis_posterior(i, K)
            for t, p in enumerate(group["params"]):
                state = self.state[p]
                S, Y = state.pop(_DIRECTIONS), state.pop(_OBSERVATIONS_KEY)
                if p.dtype not in (torch.float32, torch.float64):  # half precision: extract in float32
                    S, Y = [r.float() for r in S], [r.float() for r in Y]
                if singular or (thesis_posterior_used and self.extraction == "posterior"):
                    if thesis_posterior_used:
                        one = post._replace(**{f: getattr(post, f)[t] for f in ("SS", "SY", "K", "Minv_unit")})
                        X, mean, width = thesis_factors(S, Y, one), one.mean, one.width
                    else:
                        system = self._group_system(i, K)
                        one = posterior_system(system.SS[t], system.SY[t], system.mean, system.width,
                                               torch.tensor(gs["prior"]["noise"], dtype=system.M.dtype,
                                                            device=system.M.device))
                        X, mean, width = posterior_factors(S, Y, one), one.mean, one.width
                    if singular:
                        low = singular_extraction(S, X, mean, width, self.est_rank)
                    else:
                        low = _lowrank.eigen_from_factors(S, X, mean, width, self.est_rank)
                elif self.extraction == "ritz":
                    if self.apply_preconditioner:
                        U, finite = _lowrank.ritz_vectors(ritz.coefficients[t], S)
                    else:  # the values are logged, the vectors would not be used
                        U, finite = S[0][None, :0], torch.ones((), dtype=torch.bool, device=p.device)
                    low = _lowrank.LowRank(U, ritz.eigvals[t], ritz.valid[t] & finite)
                else:
                    system = self._group_system(i, K)
                    one = posterior_system(system.SS[t], system.SY[t], system.mean, system.width,
                                           torch.tensor(gs["prior"]["noise"], dtype=system.M.dtype,
                                                        device=system.M.device))
                    low = _lowrank.posterior_eigen(S, Y, one, self.est_rank)
                pending.append((i, p, low))
            gs["gram_ss"] = gs["gram_sy"] = None
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
            if "absolute_units" in self._quirks:
                factors = reference_factors(values, mask)
            elif self.step_rule == "newton":
                mean = torch.tensor(self._groups_state[i]["prior"]["mean"], dtype=torch.float64)
                factors = newton_factors(values, mask, mean)
            else:
                factors = paper_factors(values, mask, self.beta)
                gains[i] = min(gains.get(i, math.inf), float(condition_gain(values, mask)))
            # Valid slots come first and eigenvalues decrease, so the rescaled
            # directions (factor != 0) are a prefix of the valid ones.
            num_valid = sum(valid)
            flist = factors.tolist()[:num_valid]
            num_active = max((j + 1 for j, f in enumerate(flist) if f != 0.0), default=0)
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
        self._plan = None
        if "inner_rebuilt" in self._quirks:  # the reference builds a new inner optimizer: its state resets
            self._inner.state.clear()  # type: ignore[union-attr]
        self._cycle.update(phase="optimize", step=0, optimize_steps=0, failures=0)
        self._optimize_no_grad()

    # -- optimization

    def _apply_plan(self) -> list[list[tuple[Tensor, Tensor | None, Tensor | None]]]:
        """Per group, the tensors whose gradient the optimizer changes: ``(p, U, factors)``.

        Derived from the state once per cycle (and after loading), so that an
        optimization step does no dictionary lookups and no host synchronisation.
        """
        if self._plan is None:
            plan = []
            for group in self.param_groups:
                entries = []
                for p in group["params"]:
                    state = self.state.get(p, {})
                    factors = state.get(_FACTORS)
                    if factors is not None and factors.numel():
                        entries.append((p, state[_EIGVECS][: factors.numel()], factors))
                    elif group["weight_decay"]:
                        entries.append((p, None, None))
                plan.append(entries)
            self._plan = plan
        return self._plan

    def _optimize(self) -> None:
        inner = self._inner
        assert inner is not None
        swapped: list[tuple[Tensor, Tensor | None]] = []
        try:
            for index, (group, inner_group, entries) in enumerate(
                zip(self.param_groups, inner.param_groups, self._apply_plan(), strict=True)
            ):
                self._inner_spec.copy_values(group, inner_group)
                lr = self._effective_lr(index)
                if lr is None:  # no step size yet: hold the group
                    inner_group["lr"] = 0.0
                    for p in group["params"]:
                        if p.grad is not None:
                            swapped.append((p, p.grad))
                            p.grad = None
                    continue
                inner_group["lr"] = lr
                wd = group["weight_decay"]
                if "unregularized_directions" in self._quirks:  # the inner optimizer adds the decay
                    inner_group["weight_decay"], wd = inner_group.get("weight_decay", 0.0) + wd, 0.0
                for p, U, factors in entries:
                    g = p.grad
                    if g is None:
                        continue
                    flat = g.reshape(-1)
                    if wd:
                        flat = flat.add(p.detach().reshape(-1), alpha=wd)
                    if U is not None:
                        flat = precondition(flat, U, factors)  # type: ignore[arg-type]
                    elif not wd:
                        continue
                    swapped.append((p, g))
                    p.grad = flat.view_as(p)
            inner.step()
        finally:
            polluted = "polluted_gradient" in self._quirks  # the reference leaves P g in p.grad
            for p, g in swapped:
                if not (polluted and p.grad is not None):
                    p.grad = g
        self._cycle["optimize_steps"] += 1
        if self._cycle["optimize_steps"] >= self._cycle.get("retry_after", math.inf):
            self._begin_cycle()  # the wait after repeated failures is over: try again
