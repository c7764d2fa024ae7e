"""The options of a :class:`~probprec.Preconditioner` that are the same for every parameter group.

:class:`Config` is frozen: validated once by :meth:`Config.create`, it names each option, its range
and its meaning; the per-group values (``lr``, ``weight_decay``, the inner optimizer's
hyperparameters) live in the parameter groups instead, where schedulers change them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._validation import check_choice, check_float, check_int
from .thesis import FIXES, quirks_for

__all__ = ["EXTRACTIONS", "MECHANISMS", "METRICS", "MODES", "OBSERVATIONS", "STEP_RULES", "Config"]

STEP_RULES = ("newton", "paper")
EXTRACTIONS = ("ritz", "posterior")
OBSERVATIONS = ("next", "same")
MODES = ("default", "thesis")
METRICS = ("identity", "rms", "adam")
MECHANISMS = ("safeguard", "keep_moving", "adaptive_restarts", "adaptive_observations", "warm_start")
"""The options of the default mode's mechanisms: each on in the default mode, off in the thesis mode."""


@dataclass(frozen=True)
class Config:
    """Validated options (see :class:`~probprec.Preconditioner` for their meaning)."""

    est_rank: int = 2
    num_observations: int = 5
    prior_iterations: int = 10
    step_rule: str = "newton"
    beta: float = 1.0
    extraction: str = "ritz"
    observe: str = "next"
    orthogonalize: bool = True
    noise_floor: float = 1e-3
    restart_interval: int | None = None
    build_preconditioner: bool = True
    apply_preconditioner: bool = True
    mode: str = "default"
    safeguard: bool = True
    """Check updates against the curvature they meet (:mod:`probprec.safeguard`)."""
    keep_moving: bool = True
    """Update during a cycle's estimation with the previous estimate (from the second cycle on)."""
    adaptive_restarts: bool = True
    """Start a new cycle when the estimate is stale (:mod:`probprec.schedule`)."""
    adaptive_observations: bool = True
    """End the posterior before ``num_observations`` when its top curvatures stop changing."""
    warm_start: bool = True
    """Carry the previous estimate's directions and curvatures into the next (:mod:`probprec.warm_start`)."""
    secant_check: bool = False
    """Also measure each check's step by the gradient where it ended (:func:`~probprec.check_step.secant_ratio`)."""
    metric: str = "identity"
    """The coordinates the step size is estimated and taken in (:mod:`probprec.metric`)."""
    max_factor: float = 1.0
    """The largest factor of the safeguard on the estimated step size (:attr:`~probprec.safeguard.Safeguard.cap`)."""
    quirks: frozenset[str] = frozenset()
    """The 2019 quirks left on (thesis mode); empty in the default mode."""

    @classmethod
    def create(cls, *, lr: float | None = None, fixes: Any = (), **options: Any) -> Config:
        """Validate the options; ``lr`` only for the checks that depend on it.

        Raises:
            ValueError: for an option out of its range (the message names it and the range).
        """
        est_rank = check_int("est_rank", options.get("est_rank", cls.est_rank), 1)
        num_observations = check_int("num_observations", options.get("num_observations", cls.num_observations), 1)
        if est_rank > num_observations:
            raise ValueError(f"est_rank must be <= num_observations ({num_observations}), got {est_rank}")
        step_rule = check_choice("step_rule", options.get("step_rule", cls.step_rule), STEP_RULES)
        if step_rule == "paper" and lr is None:
            raise ValueError("lr must be a number > 0 with step_rule='paper' (its step size eta), got None")
        build = bool(options.get("build_preconditioner", cls.build_preconditioner))
        apply = bool(options.get("apply_preconditioner", cls.apply_preconditioner))
        if apply and not build:
            raise ValueError(
                "apply_preconditioner=True needs build_preconditioner=True, got build_preconditioner=False"
            )
        restart = options.get("restart_interval", cls.restart_interval)
        mode = check_choice("mode", options.get("mode", cls.mode), MODES)
        # the new mechanisms: None is on in the default mode, off in the 2019 class's
        safeguard, keep_moving, adaptive_restarts, adaptive_observations, warm_start = (
            mode == "default" if options.get(key) is None else bool(options[key]) for key in MECHANISMS)
        secant_check = bool(options.get("secant_check", cls.secant_check))
        if secant_check and not safeguard:
            raise ValueError("secant_check=True needs the safeguard, got safeguard=False (or mode='thesis', where it "
                             "is off unless safeguard=True)")
        metric, max_factor = _metric(options, mode, build, safeguard)
        return cls(
            est_rank=est_rank,
            num_observations=num_observations,
            prior_iterations=check_int("prior_iterations", options.get("prior_iterations", cls.prior_iterations), 1),
            step_rule=step_rule,
            beta=check_float("beta", options.get("beta", cls.beta), positive=True),
            extraction=check_choice("extraction", options.get("extraction", cls.extraction), EXTRACTIONS),
            observe=check_choice("observe", options.get("observe", cls.observe), OBSERVATIONS),
            orthogonalize=bool(options.get("orthogonalize", cls.orthogonalize)),
            noise_floor=check_float("noise_floor", options.get("noise_floor", cls.noise_floor), positive=True),
            restart_interval=None if restart is None else check_int("restart_interval", restart, 1),
            build_preconditioner=build,
            apply_preconditioner=apply,
            mode=mode,
            safeguard=safeguard,
            keep_moving=keep_moving,
            adaptive_restarts=adaptive_restarts,
            adaptive_observations=adaptive_observations,
            warm_start=warm_start,
            secant_check=secant_check,
            metric=metric,
            max_factor=max_factor,
            quirks=_quirks(mode, fixes),
        )

    @property
    def fixes(self) -> tuple[str, ...]:
        """The fixes in effect (all of them in the default mode), sorted."""
        return tuple(sorted(f for f, quirk in FIXES.items() if quirk not in self.quirks))

    @property
    def cycle_length(self) -> int:
        """Minibatches a full cycle spends without moving the parameters, the last included: P + K - 1."""
        return self.prior_iterations + self.num_observations - 1

    def structure(self, optim_class: type) -> dict[str, Any]:
        """The options that give the optimizer's state its shape and meaning (saved and compared on loading)."""
        return {"est_rank": self.est_rank, "num_observations": self.num_observations,
                "prior_iterations": self.prior_iterations,
                "optim_class": f"{optim_class.__module__}.{optim_class.__qualname__}", "mode": self.mode,
                "fixes": list(self.fixes), "step_rule": self.step_rule, "extraction": self.extraction,
                "observe": self.observe, "orthogonalize": self.orthogonalize,
                "build_preconditioner": self.build_preconditioner,
                "apply_preconditioner": self.apply_preconditioner, "safeguard": self.safeguard,
                "keep_moving": self.keep_moving, "adaptive_restarts": self.adaptive_restarts,
                "adaptive_observations": self.adaptive_observations, "warm_start": self.warm_start,
                "secant_check": self.secant_check, "metric": self.metric, "max_factor": self.max_factor}


def _metric(options: dict[str, Any], mode: str, build: bool, safeguard: bool) -> tuple[str, float]:
    """``metric`` and ``max_factor``, checked against the options they need."""
    metric = check_choice("metric", options.get("metric", Config.metric), METRICS)
    if metric != "identity" and (build or mode != "default"):
        raise ValueError(f"metric={metric!r} works with build_preconditioner=False in mode='default' (the low-rank "
                         f"preconditioner is estimated in the identity metric only), got build_preconditioner={build}, "
                         f"mode={mode!r}")
    value = options.get("max_factor", Config.max_factor)
    try:
        max_factor = check_float("max_factor", value, positive=True)
    except ValueError:
        max_factor = 0.0
    if max_factor < 1.0:
        raise ValueError(f"max_factor must be a finite number >= 1, got {value!r}")
    if max_factor > 1.0 and not safeguard:
        raise ValueError(f"max_factor > 1 needs the safeguard (its checks let the step size grow), got "
                         f"max_factor={max_factor} with safeguard=False")
    return metric, max_factor


def _quirks(mode: str, fixes: Any) -> frozenset[str]:
    if fixes is None:
        fixes = ()
    if not isinstance(fixes, (str, Iterable)):
        raise ValueError(f"fixes must be 'all' or an iterable of fix names ({', '.join(FIXES)}), got {fixes!r}")
    fixes = fixes if isinstance(fixes, str) else tuple(fixes)
    if mode == "default":
        if fixes not in ((), "all"):
            raise ValueError(f"fixes apply to mode='thesis' only, got fixes={fixes!r} with mode='default'")
        return frozenset()
    return quirks_for(fixes)
