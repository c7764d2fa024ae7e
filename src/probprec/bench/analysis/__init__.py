"""Analysis of result files: loading, selection on validation, aggregation, figures and reports.

>>> from probprec.bench.analysis import load_results, select_settings, write_report
"""

from .load import METRICS, Results, UnknownMetricError, canonical_metric, hyperparams_key, load_results
from .profiles import performance_profile, profile_scores
from .report import Report, ReportOptions, runtime_ratios, write_report
from .selection import aggregate, select_settings, selected_runs, summary_table, time_to_target

__all__ = [
    "METRICS",
    "Report",
    "ReportOptions",
    "Results",
    "UnknownMetricError",
    "aggregate",
    "canonical_metric",
    "hyperparams_key",
    "load_results",
    "performance_profile",
    "profile_scores",
    "runtime_ratios",
    "select_settings",
    "selected_runs",
    "summary_table",
    "time_to_target",
    "write_report",
]
