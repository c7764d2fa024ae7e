r"""The :class:`Preconditioner`: a ``torch.optim`` optimizer around one estimation cycle at a time.

It owns the ``torch.optim`` plumbing (parameter groups, the inner optimizer, the state dict, the loss
scale), decides when a cycle starts (:meth:`~Preconditioner.start_estimate`, a restart after a failure,
the back-off after repeated failures), hands each estimation step to the cycle's
:class:`~probprec.estimator.CycleEstimator`, adopts the estimate it ends with, and applies it: the
mathematics is in :mod:`probprec.prior`, :mod:`probprec.posterior`, :mod:`probprec.lowrank` and
:mod:`probprec.precondition`, the differences of the 2019 class in :mod:`probprec.arithmetic`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _checkpoint, _loss_scale, estimate_in_use
from ._groups import INNER_WEIGHT_DECAY, InnerSpec, check_new_group, normalized_groups, own_defaults
from ._validation import check_float, check_inner_class, check_memory, group_list
from .arithmetic import arithmetic_for
from .check_step import StepCheck, Tracked, tracked_choice, tracked_curvature
from .config import Config
from .distributed import Collective, hyperparameter_facts, parameter_facts
from .estimator import CycleEstimator, Estimate, Outcome
from .hvp import has_graph, hessian_vector_product
from .log import OptimizerLog
from .metric import BETA1, RMSMetric
from .safeguard import Safeguard
from .schedule import MAX_AGE, CycleSchedule, is_stale
from .step_control import Curvature, StepControl, Update

__all__ = ["Preconditioner"]


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
            preconditioned gradient.
        lr: None (default) makes the step size adaptive: the effective learning
            rate is :math:`\alpha` times the group's ``lr``, which starts at 1.0 and is
            what LR schedulers scale. A number fixes the learning rate (the
            "tuned" variants); the preconditioner is still estimated and applied.
        optim_class: the inner ``torch.optim.Optimizer`` subclass.
        first_cycle_lr: with an adaptive step size, a fixed learning rate for the first
            cycle only, later cycles use the estimate (the paper's stabilisation of
            §3.3, and the thesis's Experiment 4); ``> 0`` or None (default); needs
            ``lr=None``. (Not ``initial_lr``: LR schedulers keep their own key of that name.)
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
        mode: ``"default"`` or ``"thesis"``, the arithmetic of the 2019 class
            (:mod:`probprec.arithmetic`, :mod:`probprec.thesis`).
        fixes: in thesis mode, the names of the fixes to apply (``"all"``: the
            default mode's arithmetic); None or ``()`` for none.
        safeguard: check updates against the curvature they meet and cut the step
            size when it overshoots; bound its growth between cycles
            (:mod:`probprec.safeguard`). None (default): on, except in thesis mode.
        keep_moving: from the second cycle on, keep updating with the previous
            estimate while a cycle gathers the next one (no idle minibatches).
            None (default): on, except in thesis mode.
        adaptive_restarts: start a new cycle when the estimate is stale
            (:mod:`probprec.schedule`), so the loop needs no :meth:`start_estimate`.
            None (default): on, except in thesis mode.
        adaptive_observations: end the posterior early once its top curvatures
            stop moving (``num_observations`` is then the most). None (default): on,
            except in thesis mode.
        warm_start: carry the previous estimate's top directions and curvatures
            into the next cycle (:mod:`probprec.warm_start`). None (default): on,
            except in thesis mode.
        metric: ``"identity"`` (default), ``"rms"``: estimate the step size and step in RMSprop's coordinates,
            :math:`\Delta\theta = \eta\, D G` with :math:`D` from the average of the squared gradients, or
            ``"adam"``: the same with the step along Adam's average of the gradients, :math:`\eta\, D \hat m`
            (:mod:`probprec.metric`); both need ``build_preconditioner=False`` and ``weight_decay=0``.
        max_factor: the safeguard may grow the step size up to this many times the estimate, ``>= 1``
            (default 1: at most the estimate); above 1 it needs the safeguard.
        secant_check: the update after each check also measures the check's step by the
            gradient where it ended, and cuts the step sizes and bounds their growth where
            the step went past the minimum (:func:`~probprec.check_step.secant_ratio`);
            needs the safeguard. False (default): on minibatch noise it slowed the CNNs
            it was measured on; it helps problems whose gradients are (nearly) exact.
        inner_weight_decay: the inner optimizer's own weight decay (e.g. AdamW's
            decoupled decay), ``>= 0``; 0 unless given, whatever the inner class's default.
        process_group: the data-parallel ``torch.distributed`` group whose ranks build one estimate
            together from their minibatches (:mod:`probprec.distributed`); None (default): the world
            group when ``torch.distributed`` is initialised, else none. Not part of the state dict.
        **optim_hyperparams: further hyperparameters of the inner optimizer
            (e.g. ``momentum=0.9``), also accepted per parameter group; every one of
            them, defaults included, lives in the parameter groups, where schedulers
            see and change them.

    Raises:
        ValueError: for a hyperparameter out of its range (the message names it).
        TypeError: if ``optim_class`` cannot be the inner optimizer, or a parameter is complex.
    """

    _step_supports_amp_scaling = True  # GradScaler hands over grad_scale and found_inf (probprec._loss_scale)
    _graph_scale = 1.0  # during an estimation step: the loss scale its Hessian-vector products divide out

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
        fixes: str | Iterable[str] | None = (),
        safeguard: bool | None = None,
        keep_moving: bool | None = None,
        adaptive_restarts: bool | None = None,
        adaptive_observations: bool | None = None,
        warm_start: bool | None = None,
        secant_check: bool = False,
        metric: str = "identity",
        max_factor: float = 1.0,
        first_cycle_lr: float | None = None,
        inner_weight_decay: float = 0.0,
        process_group: Any = None,
        **optim_hyperparams: Any,
    ) -> None:
        config = Config.create(
            lr=lr, fixes=fixes, est_rank=est_rank, num_observations=num_observations,
            prior_iterations=prior_iterations, step_rule=step_rule, beta=beta, extraction=extraction,
            observe=observe, orthogonalize=orthogonalize, noise_floor=noise_floor,
            restart_interval=restart_interval, build_preconditioner=build_preconditioner,
            apply_preconditioner=apply_preconditioner, mode=mode, safeguard=safeguard, keep_moving=keep_moving,
            adaptive_restarts=adaptive_restarts, adaptive_observations=adaptive_observations,
            warm_start=warm_start, secant_check=secant_check, metric=metric, max_factor=max_factor)
        defaults = own_defaults(weight_decay, inner_weight_decay, lr, first_cycle_lr)
        self.optim_class = check_inner_class(optim_class, Preconditioner)
        self.arithmetic = arithmetic_for(config)
        self.config = self.arithmetic.configure(config)
        groups = normalized_groups(params)
        self._inner_spec, inner_defaults = InnerSpec.probe(self.optim_class, optim_hyperparams, groups)
        self._inner: Optimizer | None = None
        self._init_control()
        self._collective = Collective(process_group)
        super().__init__(groups, {**defaults, **inner_defaults})
        check_memory(self._all_params(), self.config.num_observations, self.config.est_rank)
        spec = self._inner_spec
        self._inner = self.optim_class([spec.inner_group(g) for g in self.param_groups],
                                       **{k: v for k, v in optim_hyperparams.items() if k in spec.keys})
        self._begin_cycle()

    def _init_control(self) -> None:
        """The optimizer's own state besides the groups and ``self.state`` (see ``_OWN_ATTRIBUTES``)."""
        self._plan: list[list[tuple[Tensor, Tensor | None, Tensor | None]]] | None = None
        self._schedule = CycleSchedule()
        self._estimator: CycleEstimator | None = None
        self._log = OptimizerLog()
        self._control = StepControl(self.config.max_factor)
        momentum = BETA1 if self.config.metric == "adam" else 0.0
        self._metric = None if self.config.metric == "identity" else RMSMetric(momentum)
        self._phi: dict[Tensor, Tensor] | None = None  # during an estimation step in the metric: D^1/2 per tensor
        self._gains: list[float] = []
        self._warned: set[str] = set()
        self._stale: str | None = None  # during an update: why the estimate is stale (a restart follows)
        self._products: list[tuple[Tensor, Tensor]] = []
        self._graphs: dict[Tensor, Tensor] = {}  # data-parallel curvature steps: each rank's gradient with its graph
        self._valid_values: list[tuple[Any, ...]] | None = None  # the group values _check_step last found valid

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
        before = len(self.param_groups)
        check_new_group(group, before, len(self._all_params()), self.defaults, self._inner_spec)
        self._check_metric_decay(before, group.get("weight_decay", self.defaults["weight_decay"]))
        super().add_param_group(group)
        try:
            self._log.priors.append(None)
            self._gains.append(1.0)
            self._control.safeguard.add_group()
            self._plan = None
            if self._inner is not None:
                check_memory(self._all_params(), self.config.num_observations, self.config.est_rank)
                self._inner.add_param_group(self._inner_spec.inner_group(self.param_groups[-1]))
        except BaseException:
            del self.param_groups[before:], self._log.priors[before:], self._gains[before:]
            self._control.safeguard.remove_groups(before)
            raise

    # ------------------------------------------------------------- public API

    @property
    def create_graph(self) -> bool:
        """True exactly while the next ``step()`` needs curvature (pass it to ``backward``)."""
        if self._estimator is not None:
            return self._estimator.needs_curvature
        return self._check_due()

    def _check_due(self) -> bool:
        """Whether the next update checks its step (:mod:`probprec.safeguard`, :mod:`probprec.schedule`)."""
        checking = self.config.safeguard or self.config.adaptive_restarts
        if not checking or self._schedule.cycles_completed == 0:
            return False
        return self._control.safeguard.check_due(self._schedule.optimize_steps + 1)

    @property
    def phase(self) -> str:
        """Which phase the next step belongs to, ``"prior"``, ``"posterior"`` or ``"optimize"``."""
        return "optimize" if self._estimator is None else self._estimator.phase

    def start_estimate(self) -> None:
        """Start a new cycle: gather a fresh prior and posterior at the current parameters.

        With ``keep_moving`` the parameters keep moving with the previous estimate
        until the new one is complete; without it they are held, and the previous
        preconditioner is discarded (its step size is kept as a fallback).

        A request that arrives while a cycle is still estimating (an epoch shorter than the
        ``P + K - 1`` minibatches of a cycle, say) is already satisfied: the parameters have not
        moved since that cycle began, so it is an estimate at the current parameters. It goes on
        (a ``RuntimeWarning`` once per optimizer, a ``restart_skipped`` event each time), rather
        than restarting and never finishing. A group added since the cycle began restarts it.
        """
        estimator = self._estimator
        if estimator is not None and estimator.progressed and len(estimator.params) == len(self.param_groups):
            cycle_length, P = self.config.cycle_length, self.config.prior_iterations
            done = estimator.step_index + (P if estimator.phase == "posterior" else 0)
            message = (f"start_estimate() was called while the current cycle is still estimating (minibatch "
                       f"{done + 1} of {cycle_length}); it continues, because it already estimates at the "
                       f"current parameters")
            self._event("restart_skipped", message)
            self._warn_once("restart_skipped", f"{message}. Re-estimate less often than every {cycle_length} "
                                               "minibatches to avoid this.")
            return
        self._begin_cycle()

    def maybe_start_estimate(self) -> bool:
        """Start a new cycle if ``restart_interval`` optimization steps have passed; return whether it did.

        Call it before computing the loss of a step, so that :attr:`create_graph` is up to date.
        """
        interval = self.config.restart_interval
        if self.phase != "optimize" or not self._schedule.interval_reached(interval):
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
        ``observations`` (the posterior observations of the last estimate);
        ``events`` (fallbacks and restarts, most recent last).
        """
        return {
            "phase": self.phase,
            "cycle": self._schedule.cycle,
            "cycles_completed": self._schedule.cycles_completed,
            "step_sizes": [g["step_size"] for g in self.param_groups],
            "learning_rates": [self._effective_lr(i) for i in range(len(self.param_groups))],
            **self._log.report(len(self._all_params())),
        }

    def curvature_estimate(self) -> list[tuple[Tensor, Tensor] | None]:
        """The current low-rank curvature estimate of each parameter tensor (``param_groups`` order).

        Each entry is ``(eigvals, eigvecs)`` with ``eigvals`` of shape ``(k',)``
        (decreasing) and ``eigvecs`` of shape ``(k', *p.shape)`` (orthonormal when
        flattened), or None where the preconditioner holds no estimate (before
        the first one, while estimating without ``keep_moving``, or when it is not
        applied).
        """
        return estimate_in_use.curvatures(self.state, self._all_params())

    def precondition(self, vectors: Iterable[Tensor]) -> list[Tensor]:
        """Apply the current preconditioner :math:`P` to one vector per parameter tensor.

        ``vectors`` are in ``param_groups`` order with the parameters' shapes (a
        gradient, say); the result is :math:`P v` (:mod:`probprec.precondition`),
        the vector itself where no preconditioner is held. Weight decay and the
        learning rate are not applied.
        """
        return estimate_in_use.apply(self.state, self._all_params(), vectors)

    def state_floats(self) -> int:
        """Number of floats the optimizer holds for its estimate, the inner optimizer's state excluded."""
        tensors = [t for state in self.state.values() for t in state.values() if torch.is_tensor(t)]
        tensors += [] if self._estimator is None else self._estimator.tensors_held()
        return sum(t.numel() for t in {id(t): t for t in tensors}.values())  # a tensor held twice counts once

    # ------------------------------------------------------------ state dict

    def state_dict(self) -> dict[str, Any]:
        """The ``torch.optim`` state dict, the cycle in progress, and the inner optimizer's state.

        Everything is tensors and plain Python values, so it survives ``torch.save`` /
        ``torch.load(weights_only=True)``. It carries its format version, the configuration and the
        parameters' shapes, which :meth:`load_state_dict` checks (:mod:`probprec._checkpoint`).
        """
        sd = super().state_dict()
        sd["probprec"] = {
            "version": _checkpoint.VERSION,
            "config": self.config.structure(self.optim_class),
            "shapes": [list(p.shape) for p in self._all_params()],
            "schedule": self._schedule.as_state(),
            "safeguard": self._control.safeguard.as_state(),
            "log": self._log.as_state(),
            "gains": list(self._gains),
            "estimator": None if self._estimator is None else self._estimator.state_dict(),
            "metric_steps": 0 if self._metric is None else self._metric.steps,
        }
        assert self._inner is not None
        sd["inner"] = self._inner.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict`; training continues exactly where it was saved.

        State dicts of earlier releases are read too (:mod:`probprec._checkpoint`).

        Raises:
            ValueError: if the state dict is not one of this optimizer's (another model's shapes, another
                configuration, another optimizer, a newer format, a damaged file); nothing is changed then.
        """
        expected = _checkpoint.Expected(self.config.structure(self.optim_class),
                                        [len(g["params"]) for g in self.param_groups],
                                        [tuple(p.shape) for p in self._all_params()])
        state_dict = _checkpoint.upgrade(state_dict)
        _checkpoint.check_state_dict(state_dict, expected)
        backup = self.state_dict()
        try:
            self._load(state_dict)
        except BaseException:
            self._load(backup)
            raise

    def _load(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra, inner = state_dict.pop("probprec"), state_dict.pop("inner")
        super().load_state_dict(state_dict)
        self._plan = None
        self._schedule = CycleSchedule.from_state(extra["schedule"])
        self._control.safeguard = Safeguard.from_state(extra["safeguard"])
        self._log = OptimizerLog.from_state(extra["log"])
        self._gains = [float(g) for g in extra["gains"]]
        if self._metric is not None:
            self._metric.steps = int(extra.get("metric_steps", 0))
        group_params = [g["params"] for g in self.param_groups]
        self._estimator = None if extra["estimator"] is None else CycleEstimator.from_state_dict(
            self.config, self.arithmetic, group_params, extra["estimator"])
        assert self._inner is not None
        self._inner.load_state_dict(inner)

    _OWN_ATTRIBUTES = ("config", "arithmetic", "optim_class", "_inner_spec", "_inner", "_plan", "_schedule",
                       "_control", "_estimator", "_log", "_gains", "_warned", "_products", "_metric", "_phi")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({key: self.__dict__[key] for key in self._OWN_ATTRIBUTES})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._graphs, self._valid_values = {}, None
        self._collective = Collective()  # a process group does not pickle: the default group of the new process

    # ------------------------------------------------------------------- step

    def step(  # type: ignore[override]
        self, closure: Callable[[], float] | None = None, *, loss_scale: float | None = None
    ) -> float | None:
        """One step of the cycle (or one update); returns the closure's loss.

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
                self._graph_scale = 1.0 if scale.graph is None else scale.graph
                observed = self._share_curvature_step(loss) if self._collective.active and self.create_graph else loss
                undo = None if self._metric is None else self._metric.observe(self.state, self._all_params())
                try:
                    if self._estimator is None:
                        self._optimize_no_grad(check=self._check_due())
                    else:
                        self._estimate(observed)
                except BaseException:
                    if self._metric is not None:
                        self._metric.undo(self.state, undo)  # type: ignore[arg-type]
                    raise
        finally:
            self._graph_scale = 1.0
            self._release_graphs()
        return loss

    def _check_step(self) -> None:
        """Refuse sparse gradients and group values a scheduler or the user set out of range.

        Values already found valid (plain numbers, unchanged since) are not checked again.
        """
        keys = ("lr", "weight_decay", INNER_WEIGHT_DECAY)
        values = [tuple(group[key] for key in keys) for group in self.param_groups]
        if values != self._valid_values:
            for i, group in enumerate(self.param_groups):
                for key in keys:
                    check_float(f"param_groups[{i}][{key!r}]", group[key], positive=False)
                self._check_metric_decay(i, group["weight_decay"])
            plain = all(type(value) in (float, int) for row in values for value in row)
            self._valid_values = values if plain else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError("Preconditioner does not support sparse gradients")

    def _check_metric_decay(self, index: int, weight_decay: Any) -> None:
        r"""Refuse an L2 term with the ``"rms"`` metric (its curvature :math:`\text{wd}\, I` is not rescaled)."""
        if self.config.metric != "identity" and weight_decay != 0:
            raise ValueError(f"param_groups[{index}]['weight_decay'] must be 0 with metric={self.config.metric!r} "
                             f"(use inner_weight_decay for a decoupled decay), got {weight_decay!r}")

    def _share_curvature_step(self, loss: Any) -> Any:
        """Data-parallel: average this curvature step's gradients and loss over the ranks; return the loss.

        The first step of a cycle first checks that the ranks agree (:mod:`probprec.distributed`).
        """
        if self._estimator is not None and not self._estimator.progressed:
            self._agree(f"at the start of cycle {self._schedule.cycle}")
        self._graphs, mean_loss = self._collective.average_gradients(self._all_params(), loss)
        return mean_loss

    def _agree(self, when: str) -> None:
        """Raise :class:`~probprec.distributed.ReplicaMismatchError` unless every rank holds the same state."""
        estimates = [sum(values) for values, _ in self._log.tensors.values()]
        self._collective.agree([
            *hyperparameter_facts(self.config, self.param_groups), *parameter_facts(self._all_params()),
            ("cycle", float(self._schedule.cycle), True), ("updates", float(self._schedule.optimize_steps), True),
            ("Hessian-vector products", float(self._log.hvp_count), True),
            *[(f"step size of group {i}", math.nan if g["step_size"] is None else float(g["step_size"]), False)
              for i, g in enumerate(self.param_groups)],
            ("sum of the estimated curvatures", float(sum(estimates)), False),
        ], when)

    def _release_graphs(self) -> None:
        """Detach every gradient (and, where the 2019 class did, leave g + Hv in it)."""
        self._graphs = {}
        for p in self._all_params():
            if p.grad is not None and p.grad.requires_grad:
                p.grad = p.grad.detach()
        for p, h in self._products:
            if p.grad is not None:
                p.grad = p.grad + h.view_as(p)
        self._products = []

    # ------------------------------------------------------------- estimation

    def _estimate(self, loss: Any) -> None:
        """One estimation step; if it raises, the optimizer is restored to what it was before."""
        assert self._estimator is not None
        backup, hvp_count = self._estimator.copy(), self._log.hvp_count
        swapped = self._to_metric()
        try:
            outcome = self._estimator.step(self.param_groups, loss, self._hvp)
        except BaseException:
            self._estimator, self._log.hvp_count, self._products = backup, hvp_count, []
            raise
        finally:
            self._phi = None
            for p, g in swapped:
                p.grad = g
        self._act_on(outcome)
        moving = self.config.keep_moving and self._schedule.cycles_completed > 0
        if moving and outcome.restart is None and outcome.estimate is None:
            self._optimize_no_grad()  # with the previous estimate, while this cycle gathers the next one

    def _to_metric(self) -> list[tuple[Tensor, Tensor]]:
        r"""With a metric: the estimator sees :math:`\varphi`'s gradients :math:`D^{1/2} g`; return the true ones.

        The true gradients keep their graph in ``_graphs`` for the products, which :meth:`_hvp` takes in
        :math:`\varphi` too (:mod:`probprec.metric`).
        """
        if self._metric is None:
            return []
        self._phi, swapped = self._metric.to_phi(self.state, self._all_params(), self._graphs)
        return swapped

    def _hvp(self, params: list[Tensor], vectors: list[Tensor]) -> list[Tensor]:
        """Hessian-vector products of this minibatch, in the units of the unscaled loss.

        During an estimation step with a metric, in its coordinates (:meth:`_to_metric`).
        """
        if self._phi is not None:
            halves = [self._phi[p].reshape(-1) for p in params]
            vectors = [v * h for v, h in zip(vectors, halves, strict=True)]
        grads = [self._graphs.get(p, p.grad) for p in params]
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
        self._collective.average_(hvps)
        if self._phi is not None:
            hvps = [h.mul_(half) for h, half in zip(hvps, halves, strict=True)]
        self._log.hvp_count += 1
        if self.arithmetic.grad_keeps_product:
            self._products = [(p, h.clone()) for p, h in zip(params, hvps, strict=True)]
        return hvps

    def _act_on(self, outcome: Outcome) -> None:
        for i, prior in outcome.priors.items():
            self._log.priors[i] = prior
        failed = {e.group for e in outcome.events if e.kind == "fallback"}
        for i, step_size in outcome.step_sizes.items():
            self.param_groups[i]["step_size"] = step_size
            self._control.safeguard.new_estimate(i, step_size, failed=i in failed)
        for event in outcome.events:
            self._event(event.kind, event.message, event.group)
        if outcome.restart is not None:
            self._restart_after(outcome.restart)
        elif outcome.estimate is not None:
            self._adopt(outcome.estimate)

    def _adopt(self, estimate: Estimate) -> None:
        """Make the cycle's estimate the preconditioner, and take the first update with it."""
        for event in estimate.events:
            self._event(event.kind, event.message, event.group)
        self._discard_estimate()
        estimate_in_use.store(self.state, self._all_params(), estimate)
        self._log.tensors = {i: (t.eigenvalues, t.preconditioned) for i, t in estimate.tensors.items()}
        self._log.observations = estimate.observations
        for i, gain in estimate.gains.items():
            self._gains[i] = gain
        self._schedule.complete()
        group_of = [i for i, g in enumerate(self.param_groups) for _ in g["params"]]
        self._schedule.tracked = tracked_choice(estimate, self._log.priors, group_of)
        self._control.safeguard.restart()
        self._plan = None
        assert self._inner is not None
        self.arithmetic.after_cycle(self._inner)
        self._estimator = None
        self._optimize_no_grad()
        if self._collective.active:
            self._agree(f"after cycle {self._schedule.cycle}")

    def _begin_cycle(self) -> None:
        """Start gathering a new estimate (the preconditioner is kept only to keep moving with it)."""
        memory = estimate_in_use.memory(self.state, self._all_params()) if self.config.warm_start else None
        if not self.config.keep_moving:
            self._discard_estimate()
        self._estimator = CycleEstimator(self.config, self.arithmetic, [g["params"] for g in self.param_groups],
                                         memory, self._schedule.optimize_steps)
        self._plan = None
        self._schedule.begin()

    def _restart_if_stale(self) -> None:
        """With adaptive restarts: begin a new cycle when a check found the estimate stale, or it is old."""
        reason, self._stale = self._stale, None
        if reason is None and self._schedule.optimize_steps >= MAX_AGE:
            reason = f"{MAX_AGE} updates since the last estimate"
        if reason is not None:
            self._begin_cycle()
            self._event("restart", f"stale estimate: {reason}")

    def _discard_estimate(self) -> None:
        estimate_in_use.discard(self.state, self._all_params())
        self._plan = None

    def _restart_after(self, reason: str) -> None:
        """Restart the failed cycle, or begin the back-off (:mod:`probprec.schedule`) and warn once."""
        self._event("restart", f"{reason} during the {self.phase} phase; cycle restarted")
        self._begin_cycle()
        wait = self._schedule.fail()
        if wait is None:
            return
        self._estimator = None  # groups without a step size are held, the others optimize
        message = (f"{self._schedule.failures} consecutive cycles failed (the last: {reason}); the estimate is "
                   f"retried after {wait} minibatches, and groups without a step size are held until then")
        self._event("fallback", message)
        self._warn_once("failures", f"Preconditioner: {message}. A loss without usable curvature along its "
                                    "gradients (linear or constant) needs a learning rate: lr=... (fixed) or "
                                    "first_cycle_lr=...")

    # ----------------------------------------------------------- optimization

    def _apply_plan(self) -> list[list[estimate_in_use.PlanEntry]]:
        """Per group, the tensors whose gradient the optimizer changes (:func:`estimate_in_use.apply_plan`).

        Derived from the state once per cycle (and after loading), so that an
        optimization step does no dictionary lookups and no host synchronisation.
        """
        if self._plan is None:
            self._plan = estimate_in_use.apply_plan(self.param_groups, self.state)
        return self._plan

    @torch.no_grad()
    def _optimize_no_grad(self, check: bool = False) -> None:
        self._optimize(check)

    def _optimize(self, check: bool = False) -> None:
        """One update: the inner optimizer steps on the preconditioned gradient at the effective rate.

        With ``secant_check`` the update after a check first measures the secant ratio of the check's step;
        with the safeguard every update is held to the relative limits. With ``check`` (a check step of
        :mod:`probprec.safeguard`) the step is first measured against the curvature along it, and the step
        sizes are cut if it would overshoot.
        """
        inner = self._inner
        assert inner is not None
        swapped: list[tuple[Tensor, Tensor | None]] = []
        safeguard, rates = self._control.safeguard.as_state(), [g["lr"] for g in inner.param_groups]
        measured: StepCheck | None = None
        try:
            with self._log.transaction():
                lrs = self._prepare_update(inner, swapped)
                update = Update(self.param_groups, inner.param_groups, lrs, dict(swapped),
                                self._schedule.optimize_steps + 1, self._effective_lr, self._event)
                if self.config.secant_check:
                    self._control.secant(update, self.state)
                if self.config.safeguard:
                    self._control.limit_relative(update)
                if check:
                    measured = self._check_update(update)
                inner.step()
        except BaseException:  # a failed product or step leaves no cut behind
            self._control.safeguard = Safeguard.from_state(safeguard)
            for inner_group, rate in zip(inner.param_groups, rates, strict=True):
                inner_group["lr"] = rate
            raise
        finally:
            keep = self.arithmetic.keeps_preconditioned  # the 2019 class left P g in p.grad
            for p, g in swapped:
                if not (keep and p.grad is not None):
                    p.grad = g
        if self.config.secant_check and (safeguard["pending"] is not None or measured is not None):
            self._control.keep(measured, self.state, self._all_params())
        for index in range(len(self.param_groups)):
            self._control.safeguard.used(index, self._estimated_step(index))
        if self._schedule.update():
            self._begin_cycle()  # the wait after repeated failures is over: try again
        elif self._estimator is None and self.config.adaptive_restarts:
            self._restart_if_stale()

    def _prepare_update(self, inner: Optimizer, swapped: list[tuple[Tensor, Tensor | None]]) -> list[float | None]:
        """Set each inner group's rate and hyperparameters and precondition its gradients; return the rates."""
        lrs: list[float | None] = []
        for index, (group, inner_group, entries) in enumerate(
            zip(self.param_groups, inner.param_groups, self._apply_plan(), strict=True)
        ):
            self._inner_spec.copy_values(group, inner_group)
            lr = self._effective_lr(index)
            lrs.append(lr)
            if lr is None:  # no step size yet: hold the group
                inner_group["lr"] = 0.0
                for p in group["params"]:
                    if p.grad is not None:
                        swapped.append((p, p.grad))
                        p.grad = None
                continue
            inner_group["lr"] = lr
            wd, inner_extra = self.arithmetic.update_weight_decay(group["weight_decay"])
            if inner_extra:
                inner_group["weight_decay"] = inner_group.get("weight_decay", 0.0) + inner_extra
            swapped += estimate_in_use.precondition_gradients(entries, wd)
            if self._metric is not None:
                self._metric.rescale(self.state, group["params"], swapped)
        return lrs

    def _check_update(self, update: Update) -> StepCheck | None:
        """A check step (:meth:`StepControl.check`); with adaptive restarts, also note whether the estimate is stale.

        Returns what it measured of the step as taken, for the next update's secant ratio.
        """
        tracked = self._schedule.tracked if self.config.adaptive_restarts else None
        curvature = Curvature(self._graphs, self._graph_scale, self._collective.mean)
        measured = self._control.check(update, curvature, cut_allowed=self.config.safeguard,
                                       retain_graph=tracked is not None, keep_step=self.config.secant_check)
        self._log.hvp_count += measured is not None
        if tracked is not None:
            self._track(tracked, update.originals, curvature)
        return measured

    def _track(self, tracked: Tracked, originals: dict[Tensor, Tensor | None], curvature: Curvature) -> None:
        """Measure the curvature along the tracked direction; note whether the estimate is stale."""
        index, reference, noise = tracked
        p = self._all_params()[index]
        weight_decay = next(g["weight_decay"] for g in self.param_groups if any(q is p for q in g["params"]))
        graph = curvature.graphs.get(p, originals.get(p, p.grad))
        observed = tracked_curvature(p, graph, self.state.get(p, {}).get("eigvecs"), weight_decay, curvature.scale,
                                     mean=curvature.mean)
        self._log.hvp_count += observed is not None
        if observed is not None and reference is None:
            self._schedule.tracked = (index, observed, noise)  # the first check gives the reference
        elif observed is not None and reference is not None and is_stale(observed, reference, noise):
            self._stale = f"the curvature along the tracked direction is {observed:.3g}, was {reference:.3g}"

    # ------------------------------------------------------------- internals

    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _event(self, kind: str, message: str, group: int | None = None) -> None:
        self._log.event(kind, message, self._schedule.cycle, self.phase, group)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _effective_lr(self, index: int) -> float | None:
        """The learning rate the inner optimizer gets for group ``index`` (None: parameters held)."""
        group = self.param_groups[index]
        if group["adaptive_lr"]:
            if group.get("first_cycle_lr") is not None and self._schedule.cycles_completed <= 1:
                lr = group["first_cycle_lr"] * group["lr"]  # the first cycle at a fixed step size
            elif group["step_size"] is None:
                return None
            else:
                step = self._estimated_step(index)
                assert step is not None
                lr = step * group["lr"]
        else:
            lr = group["lr"]
        return lr * self._gains[index] if self.config.step_rule == "paper" else lr

    def _estimated_step(self, index: int) -> float | None:
        """Group ``index``'s estimated step size as used (times the safeguard's factor), None if it has none."""
        group = self.param_groups[index]
        if not group["adaptive_lr"] or group["step_size"] is None:
            return None
        factor = self._control.safeguard.factors[index] if self.config.safeguard else 1.0
        return group["step_size"] * factor
