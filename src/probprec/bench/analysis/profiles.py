r"""Performance profiles (Dolan & Moré 2002, as AlgoPerf scores optimizers).

For problems :math:`p` and optimizers :math:`o` with a time to target :math:`t_{p,o}`
(the median over seeds; :math:`\infty` if the median run never reached it), the
performance ratio is :math:`r_{p,o} = t_{p,o} / \min_{o'} t_{p,o'}` and the profile

.. math:: \rho_o(\tau) = \frac{1}{|P|}\,\bigl|\{p : r_{p,o} \le \tau\}\bigr|,

the fraction of problems on which :math:`o` is within a factor :math:`\tau` of the
fastest. The score is the normalized area :math:`\frac{1}{\tau_{\max}-1}\int_1^{\tau_{\max}} \rho_o(\tau)\,d\tau`
in [0, 1] (AlgoPerf uses :math:`\tau_{\max} = 4`). Problems that no optimizer
solved are left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["performance_profile", "performance_ratios", "profile_scores"]


def performance_ratios(times: pd.DataFrame, column: str = "seconds") -> pd.DataFrame:
    """Problems x optimizers: median time to target over seeds divided by the fastest optimizer's."""
    medians = times.groupby(["problem", "optimizer"], sort=False)[column].median().unstack("optimizer")
    best = medians.min(axis=1)
    solved = np.isfinite(best) & (best > 0)
    return medians[solved].div(best[solved], axis=0)


def performance_profile(times: pd.DataFrame, column: str = "seconds", tau_max: float = 4.0,
                        points: int = 301) -> pd.DataFrame:
    r"""Rows :math:`\tau` on a linear grid from 1 to ``tau_max``, columns optimizers, values :math:`\rho_o(\tau)`."""
    if tau_max <= 1:
        raise ValueError(f"tau_max must be > 1, got {tau_max}")
    ratios = performance_ratios(times, column)
    taus = np.linspace(1.0, tau_max, points)
    if ratios.empty:
        return pd.DataFrame(index=pd.Index(taus, name="tau"))
    data = {o: [(ratios[o] <= tau).mean() for tau in taus] for o in ratios.columns}
    return pd.DataFrame(data, index=pd.Index(taus, name="tau"))


def profile_scores(profile: pd.DataFrame) -> pd.Series:
    """The normalized area under each optimizer's profile (1: fastest on every problem)."""
    taus = profile.index.to_numpy()
    width = taus[-1] - taus[0]
    return pd.Series({o: float(np.trapezoid(profile[o].to_numpy(), taus) / width) for o in profile.columns},
                     dtype=float)
