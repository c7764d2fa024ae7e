"""Analysis of result files: loading, selection, aggregation, figures and reports.

>>> from probprec.bench.analysis import load_results, select_settings, write_report

The names are imported on first use, so that ``probprec.bench.analysis.metrics``
(the metric names, for the command line's ``--help``) loads without pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "METRICS": "metrics", "SELECTION_METRICS": "metrics", "UnknownMetricError": "metrics",
    "canonical_metric": "metrics", "Results": "load", "hyperparams_key": "load", "load_results": "load",
    "performance_profile": "profiles", "profile_scores": "profiles", "Analysis": "report", "Report": "report",
    "ReportOptions": "report", "analyse": "report", "runtime_ratios": "runtime", "write_report": "report",
    "aggregate": "aggregation", "select_settings": "selection", "selected_runs": "selection",
    "summary_table": "aggregation", "time_to_target": "aggregation",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
